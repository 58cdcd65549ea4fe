/* The profiler's store of records in C, and the records of the compiled core's ops.
 *
 * depengine/profiler.py defines the record layout (profiler.Record); this
 * file exports the order of its fixed fields as RECORD_HEAD, which profiler.py
 * checks.  Records keeps the records of one profile packed; the compiled core
 * adds its ops' records with records_add_op, and the pure-Python engine's
 * hooks add theirs, in the flat layout, with Records.append.
 */
#include "_core.h"

#define SMALL 32   /* records with at most this many vars are gathered on the stack */

static const char *const record_head[] = {
    "engine", "id", "name", "device", "kind", "priority", "lane", "push", "start", "thread", "end",
    "state", "error"};
#define HEAD ((Py_ssize_t)(sizeof record_head / sizeof record_head[0]))

/* ------------------------------------------------------------------ Records
 * The records of one profile, packed: per record 8 numbers and 7 + 2n object
 * references (n = vars read + written), in two growable arrays.  Numbers are
 * stored raw, so a record makes no int objects: a recording grows by about
 * 8 * (15 + 2n) bytes per op, against about 320 for a list of Python values
 * (page faults cost ~5 us each on the project's VM).
 *
 * nums: id, push, start, end, thread, flags (bit 0: has a thread; bits 1-2:
 *       state, 0 done, 1 failed, 2 skipped), nreads, nwrites
 * objs: engine, name, device, kind, priority, lane, error, the vars read,
 *       the vars written, their versions (profiler.py documents the meaning)
 */
#define NUMS 8
#define OBJS 7

typedef struct {
    PyObject_HEAD
    Py_ssize_t nrec;
    Py_ssize_t nnum, cap_num;
    long long *num;
    Py_ssize_t nobj, cap_obj;
    PyObject **obj;
} RecordsObject;



static int
grow(void **buf, Py_ssize_t *cap, Py_ssize_t need, size_t item)
{
    if (need <= *cap)
        return 0;
    Py_ssize_t cap2 = *cap ? *cap : 1024;
    while (cap2 < need)
        cap2 += cap2 / 2;
    void *b = PyMem_Realloc(*buf, (size_t)cap2 * item);
    if (b == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *buf = b;
    *cap = cap2;
    return 0;
}

/* Append one record: nums[NUMS] and objs[nobj] (borrowed; the store takes its own). */
static int
records_add(RecordsObject *r, const long long *nums, PyObject *const *objs, Py_ssize_t nobj)
{
    if (grow((void **)&r->num, &r->cap_num, r->nnum + NUMS, sizeof(long long)) < 0 ||
        grow((void **)&r->obj, &r->cap_obj, r->nobj + nobj, sizeof(PyObject *)) < 0)
        return -1;
    memcpy(r->num + r->nnum, nums, NUMS * sizeof(long long));
    r->nnum += NUMS;
    for (Py_ssize_t j = 0; j < nobj; j++)
        r->obj[r->nobj + j] = Py_NewRef(objs[j]);
    r->nobj += nobj;
    r->nrec++;
    return 0;
}

static int
records_traverse(RecordsObject *r, visitproc visit, void *arg)
{
    for (Py_ssize_t j = 0; j < r->nobj; j++)
        Py_VISIT(r->obj[j]);
    return 0;
}

static int
records_clear(RecordsObject *r)
{
    Py_ssize_t n = r->nobj;
    r->nobj = r->nnum = r->nrec = 0;
    for (Py_ssize_t j = 0; j < n; j++)
        Py_CLEAR(r->obj[j]);
    return 0;
}

static void
records_dealloc(RecordsObject *r)
{
    PyObject_GC_UnTrack(r);
    records_clear(r);
    PyMem_Free(r->num);
    PyMem_Free(r->obj);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static Py_ssize_t
records_len(RecordsObject *r)
{
    return r->nrec;
}

static PyObject *state_names[3];

/* tolist(): the records in profiler.py's flat layout (a list of plain values). */
static PyObject *
records_tolist(RecordsObject *r, PyObject *unused)
{
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    Py_ssize_t io = 0;
    for (Py_ssize_t k = 0; k < r->nrec; k++) {
        const long long *n = r->num + k * NUMS;
        PyObject *const *o = r->obj + io;
        Py_ssize_t nv = n[6] + n[7];
        PyObject *thread = (n[5] & 1) ? PyLong_FromUnsignedLongLong((unsigned long long)n[4])
                                      : Py_NewRef(Py_None);
        PyObject *rec = Py_BuildValue("(OLOOOOOLLNLOOLL)", o[0], n[0], o[1], o[2], o[3], o[4], o[5], n[1],
                                      n[2], thread, n[3], state_names[(n[5] >> 1) & 3], o[6], n[6], n[7]);
        if (rec == NULL || PyList_SetSlice(out, PY_SSIZE_T_MAX, PY_SSIZE_T_MAX, rec) < 0)
            goto fail;
        Py_DECREF(rec);
        for (Py_ssize_t j = 0; j < 2 * nv; j++)
            if (PyList_Append(out, o[OBJS + j]) < 0)
                goto fail;
        io += OBJS + 2 * nv;
        continue;
    fail:
        Py_XDECREF(rec);
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

static int
state_code(PyObject *state)
{
    for (int c = 0; c < 3; c++) {
        int eq = PyObject_RichCompareBool(state, state_names[c], Py_EQ);
        if (eq != 0)
            return eq < 0 ? -1 : c;
    }
    PyErr_Format(PyExc_ValueError, "state %R is not done, failed or skipped", state);
    return -1;
}

/* append(record): add one record given in the flat layout (what the Python hooks make). */
static PyObject *
records_append(RecordsObject *r, PyObject *arg)
{
    PyObject *seq = PySequence_Fast(arg, "a record is a list or tuple");
    if (seq == NULL)
        return NULL;
    PyObject *const *it = PySequence_Fast_ITEMS(seq);
    Py_ssize_t len = PySequence_Fast_GET_SIZE(seq), nr = -1, nw = -1;
    if (len >= HEAD + 2) {
        nr = PyLong_AsSsize_t(it[HEAD]);
        nw = PyLong_AsSsize_t(it[HEAD + 1]);
    }
    if (PyErr_Occurred() || nr < 0 || nw < 0 || len != HEAD + 2 + 2 * (nr + nw)) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "a record of %zd items does not have the profiler's layout", len);
        Py_DECREF(seq);
        return NULL;
    }
    long long nums[NUMS] = {0};
    int state = state_code(it[11]);
    nums[0] = PyLong_AsLongLong(it[1]);
    nums[1] = PyLong_AsLongLong(it[7]);
    nums[2] = PyLong_AsLongLong(it[8]);
    if (it[9] != Py_None) {
        nums[4] = (long long)PyLong_AsUnsignedLongLong(it[9]);
        nums[5] = 1;
    }
    nums[3] = PyLong_AsLongLong(it[10]);
    nums[5] |= (long long)state << 1;
    nums[6] = nr;
    nums[7] = nw;
    PyObject *small[OBJS + 4 * SMALL], **objs = small;
    Py_ssize_t nobj = OBJS + 2 * (nr + nw);
    if (!PyErr_Occurred() && nobj > OBJS + 4 * SMALL &&
        (objs = PyMem_Malloc(nobj * sizeof(PyObject *))) == NULL)
        PyErr_NoMemory();
    if (PyErr_Occurred() || state < 0) {
        if (objs != NULL && objs != small)
            PyMem_Free(objs);
        Py_DECREF(seq);
        return NULL;
    }
    const int fields[OBJS] = {0, 2, 3, 4, 5, 6, 12};
    for (int j = 0; j < OBJS; j++)
        objs[j] = it[fields[j]];
    for (Py_ssize_t j = 0; j < 2 * (nr + nw); j++)
        objs[OBJS + j] = it[HEAD + 2 + j];
    int rc = records_add(r, nums, objs, nobj);
    if (objs != small)
        PyMem_Free(objs);
    Py_DECREF(seq);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
records_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) || (kwds && PyDict_GET_SIZE(kwds))) {
        PyErr_SetString(PyExc_TypeError, "Records() takes no arguments");
        return NULL;
    }
    return type->tp_alloc(type, 0);
}

static PySequenceMethods records_as_sequence = {.sq_length = (lenfunc)records_len};

static PyMethodDef records_methods[] = {
    {"tolist", (PyCFunction)records_tolist, METH_NOARGS, "The records in the flat layout, as a list."},
    {"append", (PyCFunction)records_append, METH_O, "Add one record given in the flat layout."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject RecordsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "depengine._core.Records",
    .tp_basicsize = sizeof(RecordsObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The records of one profile, packed (see profiler.py for the layout tolist() gives).",
    .tp_new = records_new,
    .tp_dealloc = (destructor)records_dealloc,
    .tp_traverse = (traverseproc)records_traverse,
    .tp_clear = (inquiry)records_clear,
    .tp_as_sequence = &records_as_sequence,
    .tp_methods = records_methods,
};

/* The record of one of the compiled core's ops, finished with error (None: done) and origin
 * (True: it raised; False with an error: skipped).  end: its end time; versions: the versions of its
 * reads then writes as they were when it finished (NULL: read them now); novars: a composite whose
 * members recorded themselves names no var.  GIL. */
int
records_add_op(PyObject *store, OpObject *op, PyObject *error, int origin, i64 end, const i64 *versions,
               int novars)
{
    if (op->p_engine == NULL)   /* pushed before recording began */
        return 0;
    PyObject *name = op_name(op);
    if (name == NULL)
        return -1;
    Py_ssize_t nr = novars ? 0 : PyTuple_GET_SIZE(op->reads), nw = novars ? 0 : PyTuple_GET_SIZE(op->writes);
    Py_ssize_t nvars = nr + nw;
    long long nums[NUMS] = {op->id, op->p_push, 0, end, 0, 0, nr, nw};
    if (error == NULL || origin) {
        nums[2] = op->started ? op->p_start : end;
        nums[4] = (long long)op->p_thread;
        nums[5] = (op->started ? 1 : 0) | ((error == NULL ? 0LL : 1LL) << 1);
    }
    else {   /* skipped ops never started */
        nums[2] = end;
        nums[5] = 2LL << 1;
    }
    PyObject *small[OBJS + 2 * SMALL], **objs = small;
    if (nvars > SMALL && (objs = PyMem_Malloc((OBJS + 2 * nvars) * sizeof(PyObject *))) == NULL) {
        Py_DECREF(name);
        PyErr_NoMemory();
        return -1;
    }
    PyObject *priority = PyLong_FromLongLong(op->priority);
    objs[0] = op->p_engine;
    objs[1] = name;
    objs[2] = op->device ? op->device : Py_None;
    objs[3] = op->kind ? op->kind : Py_None;
    objs[4] = priority;
    objs[5] = op->p_lane ? op->p_lane : Py_None;
    objs[6] = error ? error : Py_None;
    Py_ssize_t made = 0;
    int rc = priority == NULL ? -1 : 0;
    for (Py_ssize_t j = 0; j < nvars; j++) {
        VarObject *v = (VarObject *)(j < nr ? PyTuple_GET_ITEM(op->reads, j) : PyTuple_GET_ITEM(op->writes, j - nr));
        objs[OBJS + j] = (PyObject *)v;
    }
    for (; rc == 0 && made < nvars; made++) {
        VarObject *v = (VarObject *)objs[OBJS + made];
        PyObject *ver = PyLong_FromLongLong(versions ? versions[made] : v->version);
        if (ver == NULL)
            rc = -1;
        else
            objs[OBJS + nvars + made] = ver;
    }
    if (rc == 0) {
        if (Py_IS_TYPE(store, &RecordsType))
            rc = records_add((RecordsObject *)store, nums, objs, OBJS + 2 * nvars);
        else {   /* a list store: the flat layout */
            PyObject *thread = (nums[5] & 1) ? PyLong_FromUnsignedLongLong((unsigned long long)nums[4])
                                             : Py_NewRef(Py_None);
            PyObject *rec = thread ? Py_BuildValue("[OLOOOOOLLNLOOnn]", objs[0], nums[0], objs[1], objs[2],
                                                   objs[3], objs[4], objs[5], nums[1], nums[2], thread, nums[3],
                                                   state_names[(nums[5] >> 1) & 3], objs[6], nr, nw) : NULL;
            for (Py_ssize_t j = 0; rec && j < 2 * nvars; j++)
                if (PyList_Append(rec, objs[OBJS + j]) < 0)
                    Py_CLEAR(rec);
            PyObject *r = rec ? PySequence_InPlaceConcat(store, rec) : NULL;
            rc = r == NULL ? -1 : 0;
            Py_XDECREF(r);
            Py_XDECREF(rec);
        }
    }
    for (Py_ssize_t j = 0; j < made; j++)
        Py_DECREF(objs[OBJS + nvars + j]);
    if (objs != small)
        PyMem_Free(objs);
    Py_XDECREF(priority);
    Py_DECREF(name);
    return rc;
}

/* set_gc_tracked(obj, visible): hide a container from the cycle collector, or show it again. */
static PyObject *
set_gc_tracked(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyObject_IS_GC(args[0])) {
        PyErr_SetString(PyExc_TypeError,
                        "set_gc_tracked(container, visible: bool) takes a container and a bool");
        return NULL;
    }
    int visible = PyObject_IsTrue(args[1]);
    if (visible < 0)
        return NULL;
    if (visible && !PyObject_GC_IsTracked(args[0]))
        PyObject_GC_Track(args[0]);
    else if (!visible && PyObject_GC_IsTracked(args[0]))
        PyObject_GC_UnTrack(args[0]);
    Py_RETURN_NONE;
}

static PyMethodDef records_functions[] = {
    {"set_gc_tracked", (PyCFunction)(void (*)(void))set_gc_tracked, METH_FASTCALL,
     "Hide a container from the cycle collector (False) or show it again (True)."},
    {NULL, NULL, 0, NULL},
};

/* Add Records, RECORD_HEAD and set_gc_tracked to the module; 0 or -1. */
int
records_module_init(PyObject *m)
{
    if ((state_names[0] = PyUnicode_InternFromString("done")) == NULL ||
        (state_names[1] = PyUnicode_InternFromString("failed")) == NULL ||
        (state_names[2] = PyUnicode_InternFromString("skipped")) == NULL)
        return -1;
    if (PyType_Ready(&RecordsType) < 0)
        return -1;
    PyObject *head = PyTuple_New(HEAD);
    if (head == NULL)
        return -1;
    for (Py_ssize_t i = 0; i < HEAD; i++) {
        PyObject *name = PyUnicode_InternFromString(record_head[i]);
        if (name == NULL) {
            Py_DECREF(head);
            return -1;
        }
        PyTuple_SET_ITEM(head, i, name);
    }
    if (PyModule_AddObject(m, "RECORD_HEAD", head) < 0) {
        Py_DECREF(head);
        return -1;
    }
    if (PyModule_AddFunctions(m, records_functions) < 0 ||
        PyModule_AddObjectRef(m, "Records", (PyObject *)&RecordsType) < 0)
        return -1;
    return 0;
}
