/* depengine._speedups: the profiler's per-op hooks in C.
 *
 * Optional: depengine/profiler.py has the first three functions in Python and
 * uses them when this module is missing (no compiler at install time, another
 * Python than the one it was built for) or DEPENGINE_PURE_PYTHON is set.
 *
 *   pushed(op, engine)               op._rec = engine, op._lane = None, op._t_push = now
 *   started(op)                      op._t_start = now, op._t_thread = the thread's ident
 *   ended(flat, op, error, origin)   append op's record to the list ``flat``
 *   set_gc_tracked(list, visible)    hide a list from the cycle collector, or show it
 *
 * The record layout is the one documented in profiler.py (Recorder).  A
 * record is gathered before anything goes into ``flat``, and the appends run
 * no Python code, so records of ops that end on two workers at once never
 * interleave.
 *
 * Fields of an object whose type is exactly depengine.op.Op (or Var) are
 * read and written through the slot offsets found once by bind() from the
 * member descriptors; any other object, subclasses included (a subclass may
 * shadow a slot with a class attribute), goes through the generic attribute
 * protocol.
 * Clocks: the same as time.perf_counter_ns() and threading.get_ident().
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

enum { F_REC, F_ID, F_NAME, F_DEVICE, F_KIND, F_PRIORITY, F_LANE, F_PUSH, F_START, F_THREAD,
       F_READS, F_WRITES, N_FIELDS };
static const char *const field_names[N_FIELDS] = {
    "_rec", "id", "_name", "device", "kind", "priority", "_lane", "_t_push", "_t_start", "_t_thread",
    "reads", "writes"};
#define HEAD 13 /* fixed fields of a record before the two var counts (profiler._HEAD) */

static PyObject *names[N_FIELDS];     /* interned field names, for other types */
static Py_ssize_t offsets[N_FIELDS];  /* slot offsets in Op */
static PyTypeObject *op_type;         /* NULL until bind() */
static PyTypeObject *var_type;
static Py_ssize_t version_offset;
static PyObject *s_version, *s_done, *s_failed, *s_skipped;

static PyObject *
now_ns(void)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyTime_t t;
    if (PyTime_PerfCounter(&t) < 0)
        return NULL;
    return PyLong_FromLongLong((long long)t);
#else
    return PyLong_FromLongLong((long long)_PyTime_GetPerfCounter());
#endif
}

#define SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

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

static Py_ssize_t
slot_offset(PyTypeObject *type, const char *name)
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
        offs[i] = slot_offset((PyTypeObject *)args[0], field_names[i]);
        if (offs[i] < 0)
            return NULL;
    }
    Py_ssize_t voff = slot_offset((PyTypeObject *)args[1], "version");
    if (voff < 0)
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
    if (set_field(args[0], F_REC, args[1]) < 0)
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

#define SMALL 32 /* records with at most this many vars are built on the stack */
#define MAX_NONES (HEAD + 2 + 2 * SMALL)
static PyObject *nones[MAX_NONES + 1]; /* nones[k]: a tuple of k Nones, made when first needed */

/* Append a[0..na) then b[0..nb) to list (borrowed references; the list takes
 * its own).  Small records grow the list once, by a slice of Nones that are
 * then replaced, rather than by one append per item.  Runs no Python code. */
static int
append_all(PyObject *list, PyObject *const *a, Py_ssize_t na, PyObject *const *b, Py_ssize_t nb)
{
    Py_ssize_t k = na + nb, n = PyList_GET_SIZE(list);
    if (k > MAX_NONES) {
        for (Py_ssize_t j = 0; j < k; j++)
            if (PyList_Append(list, j < na ? a[j] : b[j - na]) < 0)
                return -1;
        return 0;
    }
    if (nones[k] == NULL) {
        PyObject *t = PyTuple_New(k);
        if (t == NULL)
            return -1;
        for (Py_ssize_t j = 0; j < k; j++)
            PyTuple_SET_ITEM(t, j, Py_NewRef(Py_None));
        nones[k] = t;
    }
    if (PyList_SetSlice(list, n, n, nones[k]) < 0)
        return -1;
    for (Py_ssize_t j = 0; j < k; j++) {
        PyObject *item = j < na ? a[j] : b[j - na];
        Py_DECREF(Py_None);  /* the slot's reference, which SET_ITEM does not drop */
        PyList_SET_ITEM(list, n + j, Py_NewRef(item));
    }
    return 0;
}

static PyObject *
ended(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "ended(flat: list, op, error, origin) takes four arguments");
        return NULL;
    }
    PyObject *flat = args[0], *op = args[1], *error = args[2];
    int origin = PyObject_IsTrue(args[3]);
    if (origin < 0)
        return NULL;
    PyObject *end = now_ns();
    if (end == NULL)
        return NULL;
    /* Everything is gathered first (a generic attribute read may run Python
     * code, and so let another thread in), then appended in one go. */
    PyObject *head[HEAD + 2] = {NULL};
    PyObject *small[2 * SMALL], **items = small;
    PyObject *reads = NULL, *writes = NULL, *result = NULL;
    Py_ssize_t nvars = 0, nver = 0;
    head[0] = get_field(op, F_REC);
    if (head[0] == NULL) {  /* pushed before recording began */
        Py_DECREF(end);
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NONE;
    }
    for (int i = F_ID; i <= F_PUSH; i++) {
        head[i] = get_field(op, i);
        if (head[i] == NULL)
            goto missing;
    }
    if (error == Py_None || origin) {
        head[8] = get_field(op, F_START);
        head[9] = get_field(op, F_THREAD);
        if (head[8] == NULL || head[9] == NULL)
            goto missing;
        head[11] = Py_NewRef(error == Py_None ? s_done : s_failed);
    }
    else {  /* skipped ops never started */
        head[8] = Py_NewRef(end);
        head[9] = Py_NewRef(Py_None);
        head[11] = Py_NewRef(s_skipped);
    }
    head[10] = Py_NewRef(end);
    head[12] = Py_NewRef(error);
    reads = var_tuple(op, F_READS);
    writes = reads ? var_tuple(op, F_WRITES) : NULL;
    if (writes == NULL)
        goto done;
    Py_ssize_t nr = PyTuple_GET_SIZE(reads), nw = PyTuple_GET_SIZE(writes);
    head[HEAD] = PyLong_FromSsize_t(nr);
    head[HEAD + 1] = PyLong_FromSsize_t(nw);
    if (head[HEAD] == NULL || head[HEAD + 1] == NULL)
        goto done;
    nvars = nr + nw;
    if (nvars > SMALL && (items = PyMem_Malloc(2 * nvars * sizeof(PyObject *))) == NULL) {
        items = small;
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t j = 0; j < nvars; j++)  /* borrowed: the tuples hold them */
        items[j] = j < nr ? PyTuple_GET_ITEM(reads, j) : PyTuple_GET_ITEM(writes, j - nr);
    for (; nver < nvars; nver++) {
        PyObject *ver = version_of(items[nver]);
        if (ver == NULL)
            goto done;
        items[nvars + nver] = ver;
    }
    if (append_all(flat, head, HEAD + 2, items, 2 * nvars) < 0)
        goto done;
    result = Py_NewRef(Py_None);
    goto done;
missing:
    if (!PyErr_Occurred())
        PyErr_SetString(PyExc_AttributeError, "op lacks the fields the profiler stamped at push and start");
done:
    for (Py_ssize_t j = 0; j < nver; j++)
        Py_DECREF(items[nvars + j]);
    if (items != small)
        PyMem_Free(items);
    for (int i = 0; i < HEAD + 2; i++)
        Py_XDECREF(head[i]);
    Py_XDECREF(reads);
    Py_XDECREF(writes);
    Py_DECREF(end);
    return result;
}

/* set_gc_tracked(list, visible): hide a list from the cycle collector, or show it again. */
static PyObject *
set_gc_tracked(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyList_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "set_gc_tracked(list, visible: bool) takes a list and a bool");
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
    {"ended", (PyCFunction)(void (*)(void))ended, METH_FASTCALL, "Append an ended op's record to a list."},
    {"set_gc_tracked", (PyCFunction)(void (*)(void))set_gc_tracked, METH_FASTCALL,
     "Hide a list from the cycle collector (False) or show it again (True)."},
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
        (s_done = PyUnicode_InternFromString("done")) == NULL ||
        (s_failed = PyUnicode_InternFromString("failed")) == NULL ||
        (s_skipped = PyUnicode_InternFromString("skipped")) == NULL)
        return NULL;
    return PyModule_Create(&module_def);
}
