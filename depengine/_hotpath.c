/* The engine's hot path in C: the op factory and the four var transitions.
 *
 * The same functions as depengine/_op.py's new_op and depengine/_var.py's
 * append_read, append_write, complete_read and complete_write, with the same
 * behaviour, called with the engine's lock (and the GIL) held.  The Python
 * versions are the reference (DEPENGINE_PURE_PYTHON=1 runs them);
 * depengine/_compiled.py picks these when the extension is built.
 *
 * Fields are read and written through the slot offsets of Op and Var learnt
 * by bind(); every argument must be exactly an Op or a Var (the engine's own
 * objects), anything else is a TypeError.
 */
#include "_speedups.h"

static PyTypeObject *op_t, *var_t;  /* NULL until bound */

/* Var slots */
static Py_ssize_t v_queue, v_nread, v_writing, v_pending, v_version;

/* Op slots, in new_op's argument order, then the ones it sets to constants */
enum { O_FN, O_NAME, O_READS, O_WRITES, O_PRIORITY, O_ALWAYS, O_ASYNC, O_DEVICE, O_KIND, O_WCOUNTS,
       O_STREAM, O_ERROR, O_STATE, O_WAIT, N_OP };
static const char *const op_slots[N_OP] = {
    "fn", "_name", "reads", "writes", "priority", "always_run", "is_async", "device", "kind", "_wcounts",
    "stream", "error", "_state", "_wait"};
static Py_ssize_t o_off[N_OP];

static PyObject *deque_append, *deque_popleft, *pending;  /* deque.append, deque.popleft, PENDING */

int
ds_bind_hotpath(PyTypeObject *op, PyTypeObject *var)
{
    Py_ssize_t offs[N_OP];
    for (int i = 0; i < N_OP; i++)
        if ((offs[i] = ds_slot_offset(op, op_slots[i])) < 0)
            return -1;
    const char *vnames[5] = {"_queue", "_nread", "_writing", "_pending_writes", "version"};
    Py_ssize_t voffs[5];
    for (int i = 0; i < 5; i++)
        if ((voffs[i] = ds_slot_offset(var, vnames[i])) < 0)
            return -1;
    if (deque_append == NULL) {
        PyObject *collections = PyImport_ImportModule("collections");
        if (collections == NULL)
            return -1;
        PyObject *deque = PyObject_GetAttrString(collections, "deque");
        Py_DECREF(collections);
        if (deque == NULL)
            return -1;
        deque_append = PyObject_GetAttrString(deque, "append");
        deque_popleft = PyObject_GetAttrString(deque, "popleft");
        Py_DECREF(deque);
        if (deque_append == NULL || deque_popleft == NULL)
            return -1;
        if ((pending = PyLong_FromLong(0)) == NULL)  /* _op.PENDING */
            return -1;
    }
    memcpy(o_off, offs, sizeof offs);
    v_queue = voffs[0];
    v_nread = voffs[1];
    v_writing = voffs[2];
    v_pending = voffs[3];
    v_version = voffs[4];
    Py_XSETREF(op_t, (PyTypeObject *)Py_NewRef(op));
    Py_XSETREF(var_t, (PyTypeObject *)Py_NewRef(var));
    return 0;
}

static int
check(PyObject *obj, PyTypeObject *type, const char *what)
{
    if (type != NULL && Py_IS_TYPE(obj, type))
        return 0;
    PyErr_Format(PyExc_TypeError, "expected a depengine %s, got %.100s%s", what, Py_TYPE(obj)->tp_name,
                 type == NULL ? " (the hot path is not bound)" : "");
    return -1;
}

/* The int in slot off of obj, plus delta, stored back; the new value, or -1 with an error. */
static Py_ssize_t
add_int(PyObject *obj, Py_ssize_t off, Py_ssize_t delta)
{
    PyObject *old = SLOT(obj, off);
    Py_ssize_t n = old == NULL ? -1 : PyLong_AsSsize_t(old);
    if (n == -1 && (old == NULL || PyErr_Occurred())) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_AttributeError, "an engine counter is unset");
        return -1;
    }
    PyObject *new = PyLong_FromSsize_t(n + delta);
    if (new == NULL)
        return -1;
    SLOT(obj, off) = new;
    Py_DECREF(old);
    return n + delta;
}

static void
set_slot(PyObject *obj, Py_ssize_t off, PyObject *value)
{
    PyObject *old = SLOT(obj, off);
    SLOT(obj, off) = Py_NewRef(value);
    Py_XDECREF(old);
}

static PyObject *
queue_of(PyObject *v)
{
    PyObject *q = SLOT(v, v_queue);
    if (q == NULL)
        PyErr_SetString(PyExc_AttributeError, "var has no queue");
    return q;
}

/* Does op write v?  (op.writes is a tuple of vars: identity is equality for vars.) */
static int
writes_var(PyObject *op, PyObject *v)
{
    if (check(op, op_t, "Op") < 0)
        return -1;
    PyObject *w = SLOT(op, o_off[O_WRITES]);
    if (w != NULL && PyTuple_CheckExact(w)) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(w); i++)
            if (PyTuple_GET_ITEM(w, i) == v)
                return 1;
        return 0;
    }
    return w == NULL ? 0 : PySequence_Contains(w, v);
}

/* Queue op behind the var's earlier users: False (not granted), or NULL. */
static PyObject *
enqueue(PyObject *q, PyObject *op)
{
    PyObject *pair[2] = {q, op};
    PyObject *r = PyObject_Vectorcall(deque_append, pair, 2, NULL);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_FALSE;
}

static PyObject *
popleft(PyObject *q)
{
    return PyObject_CallOneArg(deque_popleft, q);
}

/* One of nxt's vars was granted: drop its counter; at zero it is ready.  0 or -1. */
static int
granted(PyObject *nxt, PyObject *ready)
{
    if (check(nxt, op_t, "Op") < 0)
        return -1;
    Py_ssize_t left = add_int(nxt, o_off[O_WAIT], -1);
    if (left < 0)
        return -1;
    return left == 0 ? PyList_Append(ready, nxt) : 0;
}

static PyObject *
append_read(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "append_read(v, op)");
        return NULL;
    }
    PyObject *v = args[0], *op = args[1], *q;
    if (check(v, var_t, "Var") < 0 || check(op, op_t, "Op") < 0 || (q = queue_of(v)) == NULL)
        return NULL;
    Py_ssize_t n = PyObject_Size(q);
    if (n < 0)
        return NULL;
    if (SLOT(v, v_writing) == Py_True || n)
        return enqueue(q, op);
    if (add_int(v, v_nread, 1) < 0)
        return NULL;
    Py_RETURN_TRUE;
}

static PyObject *
append_write(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyLong_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "append_write(v, op, count: int)");
        return NULL;
    }
    PyObject *v = args[0], *op = args[1], *q;
    if (check(v, var_t, "Var") < 0 || check(op, op_t, "Op") < 0 || (q = queue_of(v)) == NULL)
        return NULL;
    Py_ssize_t count = PyLong_AsSsize_t(args[2]), n;
    if ((count == -1 && PyErr_Occurred()) || add_int(v, v_pending, count) < 0 || (n = PyObject_Size(q)) < 0)
        return NULL;
    PyObject *nread = SLOT(v, v_nread);
    int reading = nread != NULL && PyObject_IsTrue(nread);
    if (SLOT(v, v_writing) == Py_True || reading || n)
        return enqueue(q, op);
    set_slot(v, v_writing, Py_True);
    Py_RETURN_TRUE;
}

static PyObject *
complete_read(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyList_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "complete_read(v, ready: list)");
        return NULL;
    }
    PyObject *v = args[0], *q;
    if (check(v, var_t, "Var") < 0 || (q = queue_of(v)) == NULL)
        return NULL;
    Py_ssize_t left = add_int(v, v_nread, -1), n;
    if (left < 0 || (n = PyObject_Size(q)) < 0)
        return NULL;
    if (left == 0 && n) {  /* the head is a write */
        PyObject *nxt = popleft(q);
        if (nxt == NULL)
            return NULL;
        set_slot(v, v_writing, Py_True);
        int rc = granted(nxt, args[1]);
        Py_DECREF(nxt);
        if (rc < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
complete_write(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyLong_Check(args[1]) || !PyList_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError, "complete_write(v, count: int, ready: list)");
        return NULL;
    }
    PyObject *v = args[0], *ready = args[2], *q;
    if (check(v, var_t, "Var") < 0 || (q = queue_of(v)) == NULL)
        return NULL;
    Py_ssize_t count = PyLong_AsSsize_t(args[1]);
    if ((count == -1 && PyErr_Occurred()) || add_int(v, v_version, count) < 0 ||
        add_int(v, v_pending, -count) < 0)
        return NULL;
    set_slot(v, v_writing, Py_False);
    int first = 1;
    for (;;) {  /* grant one write, or every read up to the next write */
        Py_ssize_t n = PyObject_Size(q);
        if (n <= 0)
            break;
        PyObject *head = PySequence_GetItem(q, 0);
        if (head == NULL)
            return NULL;
        int w = writes_var(head, v);
        Py_DECREF(head);
        if (w < 0)
            return NULL;
        if (w && !first)
            break;
        PyObject *nxt = popleft(q);
        if (nxt == NULL)
            return NULL;
        int rc = 0;
        if (w)
            set_slot(v, v_writing, Py_True);
        else
            rc = add_int(v, v_nread, 1) < 0 ? -1 : 0;
        if (rc == 0)
            rc = granted(nxt, ready);
        Py_DECREF(nxt);
        if (rc < 0)
            return NULL;
        if (w)
            break;
        first = 0;
    }
    Py_RETURN_NONE;
}

static PyObject *
new_op(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != O_STREAM) {
        PyErr_SetString(PyExc_TypeError, "new_op(fn, reads, writes, name, priority, always_run, is_async, "
                        "device, kind, wcounts) takes 10 arguments");
        return NULL;
    }
    if (op_t == NULL)
        return check(Py_None, op_t, "Op"), NULL;
    PyObject *op = op_t->tp_alloc(op_t, 0);
    if (op == NULL)
        return NULL;
    /* new_op's arguments are (fn, reads, writes, name, ...): slots O_FN, O_READS, O_WRITES, O_NAME */
    const int order[O_STREAM] = {O_FN, O_READS, O_WRITES, O_NAME, O_PRIORITY, O_ALWAYS, O_ASYNC, O_DEVICE,
                                 O_KIND, O_WCOUNTS};
    for (int i = 0; i < O_STREAM; i++)
        SLOT(op, o_off[order[i]]) = Py_NewRef(args[i]);
    SLOT(op, o_off[O_STREAM]) = Py_NewRef(Py_None);
    SLOT(op, o_off[O_ERROR]) = Py_NewRef(Py_None);
    SLOT(op, o_off[O_STATE]) = Py_NewRef(pending);
    return op;
}

PyMethodDef ds_hotpath_methods[] = {
    {"new_op", (PyCFunction)(void (*)(void))new_op, METH_FASTCALL, "_op.new_op in C."},
    {"append_read", (PyCFunction)(void (*)(void))append_read, METH_FASTCALL, "_var.append_read in C."},
    {"append_write", (PyCFunction)(void (*)(void))append_write, METH_FASTCALL, "_var.append_write in C."},
    {"complete_read", (PyCFunction)(void (*)(void))complete_read, METH_FASTCALL, "_var.complete_read in C."},
    {"complete_write", (PyCFunction)(void (*)(void))complete_write, METH_FASTCALL,
     "_var.complete_write in C."},
    {NULL, NULL, 0, NULL},
};
