/* The compiled core's Op and Done: what depengine._op.Op and depengine._op.Done
 * are to the pure-Python engine.
 *
 * An Op is also the RunContext its body receives.  Both look like their
 * Python counterparts to Python code (same attribute names, same repr); their
 * scheduling state is C data that only the core changes, under core->mu.
 */
#include "_core.h"
#include <structmember.h>

static const char *const state_names[] = {"pending", "running", "done", "failed", "skipped"};

/* ------------------------------------------------------------------- Op */

OpObject *
op_alloc(void)
{
    OpObject *op = PyObject_GC_New(OpObject, &OpType);
    if (op == NULL)
        return NULL;
    memset((char *)op + sizeof(PyObject), 0, sizeof(OpObject) - sizeof(PyObject));
    PyObject_GC_Track(op);
    return op;
}

/* The op's name, taken from its function the first time (new reference). */
PyObject *
op_name(OpObject *op)
{
    if (op->name != NULL)
        return Py_NewRef(op->name);
    PyObject *fn = op->fn ? op->fn : Py_None, *name = NULL;
    if (PyObject_GetOptionalAttr(fn, s_qualname, &name) < 0)
        return NULL;
    if (name == NULL || !PyUnicode_Check(name)) {  /* functools.partial, callable objects */
        Py_CLEAR(name);
        PyObject *inner = NULL;
        if (PyObject_GetOptionalAttr(fn, s_func, &inner) < 0)
            return NULL;
        if (inner != NULL && PyObject_GetOptionalAttr(inner, s_qualname, &name) < 0) {
            Py_DECREF(inner);
            return NULL;
        }
        Py_XDECREF(inner);
        if (name == NULL || !PyUnicode_Check(name)) {
            Py_XDECREF(name);
            name = PyUnicode_FromString(Py_TYPE(fn)->tp_name);
            if (name == NULL)
                return NULL;
        }
    }
    op->name = Py_NewRef(name);
    return name;
}

static int
op_traverse(OpObject *op, visitproc visit, void *arg)
{
    Py_VISIT(op->fn);
    Py_VISIT(op->name);
    Py_VISIT(op->reads);
    Py_VISIT(op->writes);
    Py_VISIT(op->device);
    Py_VISIT(op->kind);
    Py_VISIT(op->stream);
    Py_VISIT(op->error);
    Py_VISIT(op->meta);
    Py_VISIT(op->wcounts);
    Py_VISIT(op->outcome);
    Py_VISIT(op->p_engine);
    Py_VISIT(op->p_lane);
    Py_VISIT(op->dict);
    return 0;
}

static int
op_clear(OpObject *op)
{
    Py_CLEAR(op->fn);
    Py_CLEAR(op->name);
    Py_CLEAR(op->reads);
    Py_CLEAR(op->writes);
    Py_CLEAR(op->device);
    Py_CLEAR(op->kind);
    Py_CLEAR(op->stream);
    Py_CLEAR(op->error);
    Py_CLEAR(op->meta);
    Py_CLEAR(op->wcounts);
    Py_CLEAR(op->outcome);
    Py_CLEAR(op->p_engine);
    Py_CLEAR(op->p_lane);
    Py_CLEAR(op->dict);
    return 0;
}

static void
op_dealloc(OpObject *op)
{
    PyObject_GC_UnTrack(op);
    op_clear(op);
    PyMem_Free(op->versions);
    PyObject_GC_Del(op);
}

static PyObject *
op_new_refuse(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    PyErr_SetString(PyExc_TypeError, "Op cannot be created directly; use Engine.push()");
    return NULL;
}

static PyObject *
op_get_name(OpObject *op, void *c)
{
    return op_name(op);
}

static PyObject *
op_get_state(OpObject *op, void *c)
{
    int s = op->state;
    if (s == PENDING && op->registered && op->wait == 0)
        return PyUnicode_FromString("ready");
    return PyUnicode_FromString(state_names[s]);
}

static PyObject *
op_get_istate(OpObject *op, void *c)
{
    return PyLong_FromLong(op->state);
}

static int
op_set_istate(OpObject *op, PyObject *value, void *c)
{
    long s = value ? PyLong_AsLong(value) : -1;
    if (s < PENDING || s > SKIPPED) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "_state must be one of depengine._op's states");
        return -1;
    }
    op->state = (char)s;
    return 0;
}

#define INT_FIELD(field, unset_test)                                                        \
    static PyObject *op_get_##field(OpObject *op, void *c)                                  \
    {                                                                                       \
        if (unset_test) {                                                                   \
            PyErr_SetString(PyExc_AttributeError, #field);                                  \
            return NULL;                                                                    \
        }                                                                                   \
        return PyLong_FromLongLong(op->field);                                              \
    }                                                                                       \
    static int op_set_##field(OpObject *op, PyObject *value, void *c)                       \
    {                                                                                       \
        if (value == NULL) {                                                                \
            PyErr_SetString(PyExc_AttributeError, "cannot delete " #field);                 \
            return -1;                                                                      \
        }                                                                                   \
        i64 x = PyLong_AsLongLong(value);                                                   \
        if (x == -1 && PyErr_Occurred())                                                    \
            return -1;                                                                      \
        op->field = x;                                                                      \
        return 0;                                                                           \
    }
INT_FIELD(id, 0)
INT_FIELD(priority, 0)

static PyObject *
op_get_wait(OpObject *op, void *c)
{
    return PyLong_FromLong(op->wait);
}

static int
op_set_wait(OpObject *op, PyObject *value, void *c)
{
    long w = value ? PyLong_AsLong(value) : -1;
    if (w == -1 && (value == NULL || PyErr_Occurred()))
        return -1;
    op->wait = (int)w;
    return 0;
}

static PyObject *
op_get_p_push(OpObject *op, void *c)
{
    if (!op->stamped) {
        PyErr_SetString(PyExc_AttributeError, "_p_push");
        return NULL;
    }
    return PyLong_FromLongLong(op->p_push);
}

static int
op_set_p_push(OpObject *op, PyObject *value, void *c)
{
    i64 x = value ? PyLong_AsLongLong(value) : -1;
    if (x == -1 && (value == NULL || PyErr_Occurred()))
        return -1;
    op->p_push = x;
    op->stamped = 1;
    return 0;
}

static PyObject *
op_get_p_start(OpObject *op, void *c)
{
    if (!op->started) {
        PyErr_SetString(PyExc_AttributeError, "_p_start");
        return NULL;
    }
    return PyLong_FromLongLong(op->p_start);
}

static int
op_set_p_start(OpObject *op, PyObject *value, void *c)
{
    i64 x = value ? PyLong_AsLongLong(value) : -1;
    if (x == -1 && (value == NULL || PyErr_Occurred()))
        return -1;
    op->p_start = x;
    op->started = 1;
    return 0;
}

static PyObject *
op_get_p_thread(OpObject *op, void *c)
{
    if (!op->started) {
        PyErr_SetString(PyExc_AttributeError, "_p_thread");
        return NULL;
    }
    return PyLong_FromUnsignedLong(op->p_thread);
}

static int
op_set_p_thread(OpObject *op, PyObject *value, void *c)
{
    unsigned long x = value ? PyLong_AsUnsignedLong(value) : (unsigned long)-1;
    if (x == (unsigned long)-1 && (value == NULL || PyErr_Occurred()))
        return -1;
    op->p_thread = x;
    return 0;
}

static PyObject *
op_get_input_failure(OpObject *op, void *c)   /* RunContext.input_failure */
{
    PyObject *failure = NULL;
    if (op->core != NULL && op->reads != NULL && op->writes != NULL) {
        pthread_mutex_lock(&op->core->mu);
        input_failure_visible(op->core, op, &failure);
        Py_XINCREF(failure);
        pthread_mutex_unlock(&op->core->mu);
    }
    return failure ? failure : Py_NewRef(Py_None);
}

static PyObject *
op_get_bool(OpObject *op, void *closure)
{
    return PyBool_FromLong(closure ? op->is_async : op->always_run);
}

static PyObject *
op_repr(OpObject *op)
{
    PyObject *name = op_name(op), *state = op_get_state(op, NULL), *r = NULL, *rn = NULL, *wn = NULL;
    PyObject *sep = PyUnicode_FromString(", ");
    if (name && state && sep) {
        PyObject *lists[2] = {op->reads, op->writes}, *joined[2] = {NULL, NULL};
        for (int k = 0; k < 2; k++) {
            PyObject *names = PyList_New(0);
            Py_ssize_t n = lists[k] && PyTuple_Check(lists[k]) ? PyTuple_GET_SIZE(lists[k]) : 0;
            for (Py_ssize_t i = 0; names && i < n; i++) {
                PyObject *vn = PyObject_GetAttr(PyTuple_GET_ITEM(lists[k], i), s_name);
                if (vn == NULL || PyList_Append(names, vn) < 0)
                    Py_CLEAR(names);
                Py_XDECREF(vn);
            }
            joined[k] = names ? PyUnicode_Join(sep, names) : NULL;
            Py_XDECREF(names);
        }
        rn = joined[0];
        wn = joined[1];
        if (rn && wn) {
            if (op->registered)
                r = PyUnicode_FromFormat("<Op #%lld %R %U reads=[%U] writes=[%U]>", op->id, name, state, rn, wn);
            else
                r = PyUnicode_FromFormat("<Op #? %R %U reads=[%U] writes=[%U]>", name, state, rn, wn);
        }
    }
    Py_XDECREF(name);
    Py_XDECREF(state);
    Py_XDECREF(sep);
    Py_XDECREF(rn);
    Py_XDECREF(wn);
    return r;
}

static PyMemberDef op_members[] = {
    {"fn", T_OBJECT, offsetof(OpObject, fn), 0, NULL},
    {"_name", T_OBJECT, offsetof(OpObject, name), 0, NULL},
    {"reads", T_OBJECT, offsetof(OpObject, reads), 0, NULL},
    {"writes", T_OBJECT, offsetof(OpObject, writes), 0, NULL},
    {"device", T_OBJECT, offsetof(OpObject, device), 0, NULL},
    {"kind", T_OBJECT, offsetof(OpObject, kind), 0, NULL},
    {"stream", T_OBJECT, offsetof(OpObject, stream), 0, NULL},
    {"error", T_OBJECT, offsetof(OpObject, error), 0, NULL},
    {"meta", T_OBJECT_EX, offsetof(OpObject, meta), 0, NULL},
    {"_wcounts", T_OBJECT, offsetof(OpObject, wcounts), 0, NULL},
    {"_outcome", T_OBJECT_EX, offsetof(OpObject, outcome), 0, NULL},
    {"_p_engine", T_OBJECT_EX, offsetof(OpObject, p_engine), 0, NULL},
    {"_p_lane", T_OBJECT, offsetof(OpObject, p_lane), 0, NULL},
    {"__dictoffset__", T_PYSSIZET, offsetof(OpObject, dict), READONLY},
    {NULL},
};

static PyGetSetDef op_getset[] = {
    {"name", (getter)op_get_name, NULL, "the op's name (its function's when pushed without one)"},
    {"op_name", (getter)op_get_name, NULL, "RunContext: the op's name"},
    {"state", (getter)op_get_state, NULL, "pending, ready, running, done, failed or skipped"},
    {"input_failure", (getter)op_get_input_failure, NULL, "RunContext: the failure of an input, or None"},
    {"_state", (getter)op_get_istate, (setter)op_set_istate, NULL},
    {"id", (getter)op_get_id, (setter)op_set_id, "its id: push order within its engine"},
    {"op_id", (getter)op_get_id, NULL, "RunContext: the op's id"},
    {"priority", (getter)op_get_priority, (setter)op_set_priority, NULL},
    {"_wait", (getter)op_get_wait, (setter)op_set_wait, NULL},
    {"always_run", (getter)op_get_bool, NULL, NULL, NULL},
    {"is_async", (getter)op_get_bool, NULL, NULL, (void *)1},
    {"_p_push", (getter)op_get_p_push, (setter)op_set_p_push, NULL},
    {"_p_start", (getter)op_get_p_start, (setter)op_set_p_start, NULL},
    {"_p_thread", (getter)op_get_p_thread, (setter)op_set_p_thread, NULL},
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict},
    {NULL},
};

PyTypeObject OpType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "depengine._core.Op",
    .tp_basicsize = sizeof(OpObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One pushed operation (the compiled core's); returned by Engine.push, read-only for users.",
    .tp_traverse = (traverseproc)op_traverse,
    .tp_clear = (inquiry)op_clear,
    .tp_dealloc = (destructor)op_dealloc,
    .tp_repr = (reprfunc)op_repr,
    .tp_members = op_members,
    .tp_getset = op_getset,
    .tp_dictoffset = offsetof(OpObject, dict),
    .tp_new = op_new_refuse,
};

/* ----------------------------------------------------------------- Done */


PyObject *
done_new(Core *core, OpObject *op)
{
    DoneObject *d = PyObject_GC_New(DoneObject, &DoneType);
    if (d == NULL)
        return NULL;
    d->core = core;
    d->op = (OpObject *)Py_NewRef(op);
    d->engine = Py_NewRef(core->engine);
    d->called = 0;
    PyObject_GC_Track(d);
    return (PyObject *)d;
}

int
done_claim(PyObject *done)   /* mu held: 1 if this call is the one that completes the op */
{
    DoneObject *d = (DoneObject *)done;
    int first = !d->called;
    d->called = 1;
    return first;
}

static int
done_traverse(DoneObject *d, visitproc visit, void *arg)
{
    Py_VISIT(d->op);
    Py_VISIT(d->engine);
    return 0;
}

static void
done_dealloc(DoneObject *d)
{
    PyObject_GC_UnTrack(d);
    Py_CLEAR(d->op);
    Py_CLEAR(d->engine);
    PyObject_GC_Del(d);
}

static PyObject *
done_call(DoneObject *d, PyObject *args, PyObject *kw)
{
    static char *names[] = {"error", NULL};
    PyObject *error = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|O:done", names, &error))
        return NULL;
    if (error != Py_None && !PyExceptionInstance_Check(error)) {
        PyErr_Format(PyExc_TypeError, "done(error=%R): error must be an exception instance or None", error);
        return NULL;
    }
    Core *c = d->core;
    pthread_mutex_lock(&c->mu);
    int first = done_claim((PyObject *)d);
    pthread_mutex_unlock(&c->mu);
    if (!first) {
        PyObject *name = op_name(d->op);
        if (name != NULL)
            PyErr_Format(PyExc_RuntimeError, "done() was already called for op %R (#%lld)", name, d->op->id);
        Py_XDECREF(name);
        return NULL;
    }
    OpObject **ready = NULL;
    int nready = 0;
    PyObject *r = core_complete(c, d->op, error == Py_None ? NULL : error, error != Py_None, &nready, &ready);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    int rc = core_dispatch_gil(c, ready, nready);
    PyMem_Free(ready);
    if (rc < 0)
        return NULL;
    pthread_mutex_lock(&c->mu);
    pthread_cond_broadcast(&c->cv);  /* a naive engine's push waits for this */
    pthread_mutex_unlock(&c->mu);
    Py_RETURN_NONE;
}

static PyObject *
done_repr(DoneObject *d)
{
    return PyUnicode_FromFormat("<done for op #%lld %s>", d->op->id, d->called ? "called" : "pending");
}

static PyObject *
done_get_called(DoneObject *d, void *c)
{
    return PyBool_FromLong(d->called);
}

static PyGetSetDef done_getset[] = {
    {"_called", (getter)done_get_called, NULL, NULL},
    {NULL},
};

PyTypeObject DoneType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "depengine._core.Done",
    .tp_basicsize = sizeof(DoneObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The done callback an async op receives; callable exactly once.",
    .tp_traverse = (traverseproc)done_traverse,
    .tp_dealloc = (destructor)done_dealloc,
    .tp_call = (ternaryfunc)done_call,
    .tp_repr = (reprfunc)done_repr,
    .tp_getset = done_getset,
};
