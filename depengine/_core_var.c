/* The compiled core's Var: what depengine._var.Var is to the pure-Python engine.
 *
 * It looks like the Python Var to Python code (same attribute names, same
 * repr), so the shared Python parts of the engine (record(), bulk(), plans,
 * the profiler, the GPU lanes) work on either.  Its scheduling state (the
 * queue of ops, the version, the failure) is C data that only the core
 * changes, under core->mu.
 */
#include "_core.h"
#include <structmember.h>

/* ------------------------------------------------------------------ Var */

VarObject *
var_new(Core *core, PyObject *engine, PyObject *name, i64 serial)
{
    VarObject *v = PyObject_GC_New(VarObject, &VarType);
    if (v == NULL)
        return NULL;
    v->name = Py_NewRef(name);
    v->engine = Py_NewRef(engine);
    v->core = core;
    v->gpu = v->failure = v->solo = v->weakrefs = NULL;
    v->serial = serial;
    v->version = v->pending_writes = 0;
    v->clear_seq = NEVER_CLEARED;
    v->deleted_at = -1;
    v->q = NULL;
    v->qhead = v->qlen = v->qcap = 0;
    v->nread = 0;
    v->writing = 0;
    v->waiters = NULL;
    v->fprev = v->fnext = NULL;
    v->listed = 0;
    PyObject_GC_Track(v);
    return v;
}

static int
var_traverse(VarObject *v, visitproc visit, void *arg)
{
    Py_VISIT(v->name);
    Py_VISIT(v->engine);
    Py_VISIT(v->gpu);
    Py_VISIT(v->failure);
    Py_VISIT(v->solo);
    return 0;
}

static int
var_clear(VarObject *v)
{
    Py_CLEAR(v->gpu);
    Py_CLEAR(v->failure);
    Py_CLEAR(v->solo);
    return 0;
}

static void
var_dealloc(VarObject *v)
{
    PyObject_GC_UnTrack(v);
    if (v->weakrefs != NULL)
        PyObject_ClearWeakRefs((PyObject *)v);
    /* A var in the failed list is still referenced by its engine's core: unlink it. */
    if (v->listed && v->core != NULL) {
        pthread_mutex_lock(&v->core->mu);
        if (v->fprev)
            v->fprev->fnext = v->fnext;
        else
            v->core->failed = v->fnext;
        if (v->fnext)
            v->fnext->fprev = v->fprev;
        v->core->nfailed--;
        pthread_mutex_unlock(&v->core->mu);
    }
    var_clear(v);
    Py_XDECREF(v->name);
    Py_XDECREF(v->engine);
    PyMem_Free(v->q);
    PyObject_GC_Del(v);
}

static PyObject *
var_init_refuse(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    PyErr_SetString(PyExc_TypeError, "Var cannot be created directly; use Engine.new_var(name)");
    return NULL;
}

static PyObject *
var_repr(VarObject *v)
{
    PyObject *parts = PyUnicode_FromFormat("<Var %R v%lld readers=%ld writing=%s", v->name, v->version,
                                           v->nread, v->writing ? "True" : "False");
    if (parts != NULL && v->qlen) {
        PyObject *more = PyUnicode_FromFormat("%U queued=%zd", parts, v->qlen);
        Py_SETREF(parts, more);
    }
    if (parts != NULL && v->failure) {
        PyObject *more = PyUnicode_FromFormat("%U %s=%s", parts, v->clear_seq == NEVER_CLEARED ? "failed"
                                              : "failed-reported", Py_TYPE(v->failure)->tp_name);
        Py_SETREF(parts, more);
    }
    if (parts != NULL && v->deleted_at >= 0) {
        PyObject *more = PyUnicode_FromFormat("%U deleted-at=#%lld", parts, v->deleted_at);
        Py_SETREF(parts, more);
    }
    if (parts == NULL)
        return NULL;
    PyObject *r = PyUnicode_FromFormat("%U>", parts);
    Py_DECREF(parts);
    return r;
}

static PyObject *
var_get_deleted(VarObject *v, void *c)
{
    return PyBool_FromLong(v->deleted_at >= 0);
}

static PyObject *
var_get_failed(VarObject *v, void *c)
{
    return PyBool_FromLong(v->failure != NULL && v->clear_seq == NEVER_CLEARED);
}

static PyObject *
var_get_version(VarObject *v, void *c)
{
    return PyLong_FromLongLong(v->version);
}

static PyObject *
var_get_deleted_at(VarObject *v, void *c)
{
    if (v->deleted_at < 0)
        Py_RETURN_NONE;
    return PyLong_FromLongLong(v->deleted_at);
}

static PyObject *
var_get_waiters(VarObject *v, void *c)   /* None, or the versions blocked wait_for_var calls wait for */
{
    if (v->waiters == NULL)
        Py_RETURN_NONE;
    PyObject *targets = PyList_New(0);
    if (v->core)
        pthread_mutex_lock(&v->core->mu);
    for (Waiter *w = v->waiters; targets && w; w = w->next) {
        PyObject *t = PyLong_FromLongLong(w->target);
        if (t == NULL || PyList_Append(targets, t) < 0)
            Py_CLEAR(targets);
        Py_XDECREF(t);
    }
    if (v->core)
        pthread_mutex_unlock(&v->core->mu);
    return targets;
}

static PyObject *
var_get_gpu(VarObject *v, void *c)
{
    return Py_NewRef(v->gpu ? v->gpu : Py_None);
}

static int
var_set_gpu(VarObject *v, PyObject *value, void *c)
{
    PyObject *old = v->gpu;
    v->gpu = (value == NULL || value == Py_None) ? NULL : Py_NewRef(value);
    if (v->gpu && v->core)
        v->core->gpu_used = 1;
    Py_XDECREF(old);
    return 0;
}

static PyObject *
var_get_solo(VarObject *v, void *c)
{
    if (v->solo == NULL && (v->solo = PyTuple_Pack(1, (PyObject *)v)) == NULL)
        return NULL;
    return Py_NewRef(v->solo);
}

/* The scheduling state, for tests and debugging: the fields depengine._var.Var keeps. */
static PyObject *
var_state(VarObject *v, PyObject *unused)
{
    if (v->core)
        pthread_mutex_lock(&v->core->mu);
    PyObject *names = PyList_New(v->qlen);
    for (Py_ssize_t i = 0; names && i < v->qlen; i++) {
        PyObject *n = op_name(v->q[(v->qhead + i) % v->qcap]);
        if (n == NULL) {
            Py_CLEAR(names);
            break;
        }
        PyList_SET_ITEM(names, i, n);
    }
    PyObject *r = names == NULL ? NULL : Py_BuildValue(
        "{s:l,s:O,s:N,s:L,s:L}", "nread", v->nread, "writing", v->writing ? Py_True : Py_False, "queue", names,
        "pending_writes", v->pending_writes, "version", v->version);
    if (v->core)
        pthread_mutex_unlock(&v->core->mu);
    return r;
}

static PyMemberDef var_members[] = {
    {"name", T_OBJECT, offsetof(VarObject, name), READONLY, "the var's tag"},
    {"serial", T_LONGLONG, offsetof(VarObject, serial), READONLY, "unique within its engine"},
    {"_engine", T_OBJECT, offsetof(VarObject, engine), READONLY, NULL},
    {"_failure", T_OBJECT, offsetof(VarObject, failure), READONLY, NULL},
    {"_clear_seq", T_LONGLONG, offsetof(VarObject, clear_seq), READONLY, NULL},
    {"_nread", T_LONG, offsetof(VarObject, nread), READONLY, NULL},
    {"_pending_writes", T_LONGLONG, offsetof(VarObject, pending_writes), READONLY, NULL},
    {NULL},
};

static PyGetSetDef var_getset[] = {
    {"version", (getter)var_get_version, NULL, "completed writes (failed and skipped ones included)"},
    {"deleted", (getter)var_get_deleted, NULL, "True once delete_var was called"},
    {"failed", (getter)var_get_failed, NULL, "its last write failed and no wait has reported it"},
    {"_deleted_at", (getter)var_get_deleted_at, NULL, NULL},
    {"_gpu", (getter)var_get_gpu, (setter)var_set_gpu, NULL},
    {"_waiters", (getter)var_get_waiters, NULL, NULL},
    {"_solo", (getter)var_get_solo, NULL, NULL},
    {NULL},
};

static PyMethodDef var_methods[] = {
    {"_state", (PyCFunction)var_state, METH_NOARGS, "The var's scheduling state as a dict."},
    {NULL},
};

PyTypeObject VarType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "depengine._core.Var",
    .tp_basicsize = sizeof(VarObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A tag for one resource; create vars with Engine.new_var (the compiled core's).",
    .tp_traverse = (traverseproc)var_traverse,
    .tp_clear = (inquiry)var_clear,
    .tp_dealloc = (destructor)var_dealloc,
    .tp_repr = (reprfunc)var_repr,
    .tp_weaklistoffset = offsetof(VarObject, weakrefs),
    .tp_members = var_members,
    .tp_getset = var_getset,
    .tp_methods = var_methods,
    .tp_new = var_init_refuse,
};
