/* depengine._speedups: the profiler's per-op hooks in C, and a packed store for records
 * (this file), and the engine's op factory and var transitions (_hotpath.c).
 *
 * Optional: depengine/profiler.py has the same hooks in Python (recording into
 * a list) and uses them when this module is missing (no compiler at install
 * time, another Python than the one it was built for) or DEPENGINE_PURE_PYTHON
 * is set.
 *
 *   pushed(op, engine)                  op._p_engine = engine, op._p_lane = None, op._p_push = now
 *   started(op)                         op._p_start = now, op._p_thread = the thread's ident
 *   ended(records, op, error, origin)   store op's record in a Records
 *   Records()                           the packed records of one profile; tolist() gives
 *                                       them in profiler.py's flat layout
 *   set_gc_tracked(obj, visible)        hide a container from the cycle collector, or show it
 *
 * A record is gathered before anything is stored, and storing runs no Python
 * code, so records of ops that end on two workers at once never interleave.
 *
 * Fields of an object whose type is exactly depengine.op.Op (or Var) are
 * read and written through the slot offsets found once by bind() from the
 * member descriptors; any other object, subclasses included (a subclass may
 * shadow a slot with a class attribute), goes through the generic attribute
 * protocol.
 * Clocks: the same as time.perf_counter_ns() and threading.get_ident().
 */
#include "_speedups.h"
#include <structmember.h>

enum { F_ENGINE, F_ID, F_NAME, F_DEVICE, F_KIND, F_PRIORITY, F_LANE, F_PUSH, F_START, F_THREAD,
       F_READS, F_WRITES, N_FIELDS };
static const char *const field_names[N_FIELDS] = {
    "_p_engine", "id", "_name", "device", "kind", "priority", "_p_lane", "_p_push", "_p_start", "_p_thread",
    "reads", "writes"};
/* The fixed fields of a record, before the two var counts, in the order tolist() and append()
 * use: exported as RECORD_HEAD, which profiler.py checks against its Record layout. */
static const char *const record_head[] = {
    "engine", "id", "name", "device", "kind", "priority", "lane", "push", "start", "thread", "end",
    "state", "error"};
#define HEAD ((Py_ssize_t)(sizeof record_head / sizeof record_head[0]))

static PyObject *names[N_FIELDS];     /* interned field names, for other types */
static Py_ssize_t offsets[N_FIELDS];  /* slot offsets in Op */
static PyTypeObject *op_type;         /* NULL until bind() */
static PyTypeObject *var_type;
static Py_ssize_t version_offset;
static PyObject *s_version;

static long long
now_raw(void)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyTime_t t;
    (void)PyTime_PerfCounterRaw(&t);  /* cannot fail once the clock was read at start-up */
    return (long long)t;
#else
    return (long long)_PyTime_GetPerfCounter();
#endif
}

static PyObject *
now_ns(void)
{
    return PyLong_FromLongLong(now_raw());
}

/* A new reference to field i of op, or NULL without an exception when unset. */
static PyObject *
get_field(PyObject *op, int i)
{
    if (op_type != NULL && Py_IS_TYPE(op, op_type)) {
        PyObject *v = SLOT(op, offsets[i]);
        Py_XINCREF(v);
        return v;
    }
    PyObject *v = PyObject_GetAttr(op, names[i]);
    if (v == NULL && PyErr_ExceptionMatches(PyExc_AttributeError))
        PyErr_Clear();
    return v;
}

/* Set field i of op to value (a new reference, stolen); 0 or -1. */
static int
set_field(PyObject *op, int i, PyObject *value)
{
    if (value == NULL)
        return -1;
    if (op_type != NULL && Py_IS_TYPE(op, op_type)) {
        PyObject *old = SLOT(op, offsets[i]);
        SLOT(op, offsets[i]) = value;
        Py_XDECREF(old);
        return 0;
    }
    int r = PyObject_SetAttr(op, names[i], value);
    Py_DECREF(value);
    return r;
}

static PyObject *
version_of(PyObject *var)
{
    if (var_type != NULL && Py_IS_TYPE(var, var_type)) {
        PyObject *v = SLOT(var, version_offset);
        if (v != NULL) {
            Py_INCREF(v);
            return v;
        }
    }
    return PyObject_GetAttr(var, s_version);
}

Py_ssize_t
ds_slot_offset(PyTypeObject *type, const char *name)
{
    PyObject *d = PyDict_GetItemString(type->tp_dict, name);  /* borrowed */
    if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type)) {
        PyErr_Format(PyExc_TypeError, "%s.%s is not a slot", type->tp_name, name);
        return -1;
    }
    PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
    if (m->type != T_OBJECT_EX || (m->flags & READONLY)) {
        PyErr_Format(PyExc_TypeError, "%s.%s is not a writable object slot", type->tp_name, name);
        return -1;
    }
    return m->offset;
}

/* bind(Op, Var): learn the slot offsets.  Until it succeeds, every access is generic. */
static PyObject *
bind(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyType_Check(args[0]) || !PyType_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "bind(Op, Var) takes two classes");
        return NULL;
    }
    Py_ssize_t offs[N_FIELDS];
    for (int i = 0; i < N_FIELDS; i++) {
        offs[i] = ds_slot_offset((PyTypeObject *)args[0], field_names[i]);
        if (offs[i] < 0)
            return NULL;
    }
    Py_ssize_t voff = ds_slot_offset((PyTypeObject *)args[1], "version");
    if (voff < 0)
        return NULL;
    if (ds_bind_hotpath((PyTypeObject *)args[0], (PyTypeObject *)args[1]) < 0)
        return NULL;
    memcpy(offsets, offs, sizeof offs);
    version_offset = voff;
    Py_INCREF(args[0]);
    Py_INCREF(args[1]);
    Py_XSETREF(op_type, (PyTypeObject *)args[0]);
    Py_XSETREF(var_type, (PyTypeObject *)args[1]);
    Py_RETURN_NONE;
}

static PyObject *
pushed(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "pushed(op, engine) takes two arguments");
        return NULL;
    }
    Py_INCREF(args[1]);
    if (set_field(args[0], F_ENGINE, args[1]) < 0)
        return NULL;
    Py_INCREF(Py_None);
    if (set_field(args[0], F_LANE, Py_None) < 0 || set_field(args[0], F_PUSH, now_ns()) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* The calling thread's ident as an int (new reference); the ints of the last few
 * threads are kept, so a worker does not make a new one for every op. */
#define IDENTS 8
static unsigned long ident_keys[IDENTS];
static PyObject *ident_values[IDENTS];
static int ident_next;

static PyObject *
thread_ident(void)
{
    unsigned long ident = PyThread_get_thread_ident();
    for (int i = 0; i < IDENTS; i++)
        if (ident_values[i] != NULL && ident_keys[i] == ident)
            return Py_NewRef(ident_values[i]);
    PyObject *v = PyLong_FromUnsignedLong(ident);
    if (v == NULL)
        return NULL;
    Py_XSETREF(ident_values[ident_next], Py_NewRef(v));
    ident_keys[ident_next] = ident;
    ident_next = (ident_next + 1) % IDENTS;
    return v;
}

static PyObject *
started(PyObject *module, PyObject *op)
{
    if (set_field(op, F_START, now_ns()) < 0 || set_field(op, F_THREAD, thread_ident()) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* The vars of a reads or writes field as a tuple (new reference), or NULL. */
static PyObject *
var_tuple(PyObject *op, int i)
{
    PyObject *vs = get_field(op, i);
    if (vs == NULL) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_AttributeError, "op has no %s", field_names[i]);
        return NULL;
    }
    if (PyTuple_CheckExact(vs))
        return vs;
    PyObject *t = PySequence_Tuple(vs);
    Py_DECREF(vs);
    return t;
}

#define SMALL 32 /* records with at most this many vars are gathered on the stack */

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

static PyTypeObject RecordsType;

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

static PyTypeObject RecordsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "depengine._speedups.Records",
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

/* A field holding an int, as a C long long; -1 with an exception if it is missing or not one. */
static int
int_field(PyObject *op, int i, long long *out)
{
    PyObject *v = get_field(op, i);
    if (v == NULL) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_AttributeError, "op has no %s", field_names[i]);
        return -1;
    }
    *out = PyLong_AsLongLong(v);
    Py_DECREF(v);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static PyObject *
ended(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !Py_IS_TYPE(args[0], &RecordsType)) {
        PyErr_SetString(PyExc_TypeError, "ended(records: Records, op, error, origin) takes four arguments");
        return NULL;
    }
    RecordsObject *store = (RecordsObject *)args[0];
    PyObject *op = args[1], *error = args[2];
    int origin = PyObject_IsTrue(args[3]);
    if (origin < 0)
        return NULL;
    long long end = now_raw();
    /* Everything is gathered first (a generic attribute read may run Python
     * code, and so let another thread in), then stored in one go. */
    PyObject *head[OBJS] = {NULL};
    PyObject *small[OBJS + 2 * SMALL], **objs = small;
    PyObject *reads = NULL, *writes = NULL, *result = NULL;
    Py_ssize_t nvars = 0, nver = 0;
    long long nums[NUMS] = {0};
    head[0] = get_field(op, F_ENGINE);
    if (head[0] == NULL) {  /* pushed before recording began */
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NONE;
    }
    const int obj_fields[5] = {F_NAME, F_DEVICE, F_KIND, F_PRIORITY, F_LANE};
    for (int j = 0; j < 5; j++)
        if ((head[1 + j] = get_field(op, obj_fields[j])) == NULL)
            goto missing;
    head[6] = Py_NewRef(error);
    if (int_field(op, F_ID, &nums[0]) < 0 || int_field(op, F_PUSH, &nums[1]) < 0)
        goto done;
    nums[3] = end;
    if (error == Py_None || origin) {
        long long thread;
        if (int_field(op, F_START, &nums[2]) < 0)
            goto done;
        PyObject *t = get_field(op, F_THREAD);
        if (t == NULL)
            goto missing;
        thread = (long long)PyLong_AsUnsignedLongLong(t);
        Py_DECREF(t);
        if (PyErr_Occurred())
            goto done;
        nums[4] = thread;
        nums[5] = 1 | ((error == Py_None ? 0LL : 1LL) << 1);
    }
    else {  /* skipped ops never started */
        nums[2] = end;
        nums[5] = 2LL << 1;
    }
    reads = var_tuple(op, F_READS);
    writes = reads ? var_tuple(op, F_WRITES) : NULL;
    if (writes == NULL)
        goto done;
    Py_ssize_t nr = PyTuple_GET_SIZE(reads), nw = PyTuple_GET_SIZE(writes);
    nums[6] = nr;
    nums[7] = nw;
    nvars = nr + nw;
    if (nvars > SMALL && (objs = PyMem_Malloc((OBJS + 2 * nvars) * sizeof(PyObject *))) == NULL) {
        objs = small;
        PyErr_NoMemory();
        goto done;
    }
    for (int j = 0; j < OBJS; j++)
        objs[j] = head[j];
    for (Py_ssize_t j = 0; j < nvars; j++)  /* borrowed: the tuples hold them */
        objs[OBJS + j] = j < nr ? PyTuple_GET_ITEM(reads, j) : PyTuple_GET_ITEM(writes, j - nr);
    for (; nver < nvars; nver++) {
        PyObject *ver = version_of(objs[OBJS + nver]);
        if (ver == NULL)
            goto done;
        objs[OBJS + nvars + nver] = ver;
    }
    if (records_add(store, nums, objs, OBJS + 2 * nvars) == 0)
        result = Py_NewRef(Py_None);
    goto done;
missing:
    if (!PyErr_Occurred())
        PyErr_SetString(PyExc_AttributeError, "op lacks the fields the profiler stamped at push and start");
done:
    for (Py_ssize_t j = 0; j < nver; j++)
        Py_DECREF(objs[OBJS + nvars + j]);
    if (objs != small)
        PyMem_Free(objs);
    for (int i = 0; i < OBJS; i++)
        Py_XDECREF(head[i]);
    Py_XDECREF(reads);
    Py_XDECREF(writes);
    return result;
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

static PyMethodDef methods[] = {
    {"bind", (PyCFunction)(void (*)(void))bind, METH_FASTCALL, "bind(Op, Var): learn their slot offsets."},
    {"pushed", (PyCFunction)(void (*)(void))pushed, METH_FASTCALL, "Stamp an op at push."},
    {"started", started, METH_O, "Stamp an op when it starts."},
    {"ended", (PyCFunction)(void (*)(void))ended, METH_FASTCALL, "Store an ended op's record in a Records."},
    {"set_gc_tracked", (PyCFunction)(void (*)(void))set_gc_tracked, METH_FASTCALL,
     "Hide a container from the cycle collector (False) or show it again (True)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "depengine._speedups", "The profiler's per-op hooks in C.", -1, methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    for (int i = 0; i < N_FIELDS; i++)
        if ((names[i] = PyUnicode_InternFromString(field_names[i])) == NULL)
            return NULL;
    if ((s_version = PyUnicode_InternFromString("version")) == NULL ||
        (state_names[0] = PyUnicode_InternFromString("done")) == NULL ||
        (state_names[1] = PyUnicode_InternFromString("failed")) == NULL ||
        (state_names[2] = PyUnicode_InternFromString("skipped")) == NULL)
        return NULL;
    if (PyType_Ready(&RecordsType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    PyObject *head = PyTuple_New(HEAD);
    if (head == NULL) {
        Py_DECREF(m);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < HEAD; i++) {
        PyObject *name = PyUnicode_InternFromString(record_head[i]);
        if (name == NULL) {
            Py_DECREF(head);
            Py_DECREF(m);
            return NULL;
        }
        PyTuple_SET_ITEM(head, i, name);
    }
    if (PyModule_AddObject(m, "RECORD_HEAD", head) < 0) {
        Py_DECREF(head);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddFunctions(m, ds_hotpath_methods) < 0 ||
        PyModule_AddObjectRef(m, "Records", (PyObject *)&RecordsType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
