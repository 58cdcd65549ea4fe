/* The compiled core's Native: a native op body in C form (see depengine/_native.py). */
#include "_core.h"
#include <structmember.h>

/* --------------------------------------------------------------- Native */

/* A native op body in C form (what depengine.native returns when the core is built): the compiled
 * core reads its function and argument directly; calling it from Python (the pure-Python engine, a
 * bulk or a plan run) calls the function with the GIL released. */
PyObject *
native_new(native_fn fn, void *arg, PyObject *name, PyObject *keep, int inline_ok)
{
    NativeObject *n = PyObject_GC_New(NativeObject, &NativeType);
    if (n == NULL)
        return NULL;
    n->fn = fn;
    n->arg = arg;
    n->name = Py_NewRef(name);
    n->keep = Py_NewRef(keep);
    n->inline_ok = (char)inline_ok;
    if (!PyBytes_CheckExact(keep) && !PyUnicode_CheckExact(keep) && keep != Py_None)
        PyObject_GC_Track(n);   /* (a name and bytes make no cycle: nothing for a collection to see) */
    return (PyObject *)n;
}

static int
native_traverse(NativeObject *n, visitproc visit, void *arg)
{
    Py_VISIT(n->name);
    Py_VISIT(n->keep);
    return 0;
}

static int
native_clear(NativeObject *n)
{
    Py_CLEAR(n->keep);
    return 0;
}

static void
native_dealloc(NativeObject *n)
{
    PyObject_GC_UnTrack(n);
    native_clear(n);
    Py_CLEAR(n->name);
    PyObject_GC_Del(n);
}

static PyObject *
native_refuse(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    PyErr_SetString(PyExc_TypeError, "Native cannot be created directly; use depengine.native(fn, arg)");
    return NULL;
}

static PyObject *
native_call(NativeObject *n, PyObject *args, PyObject *kw)
{
    int32_t code;
    Py_BEGIN_ALLOW_THREADS
    code = n->fn(n->arg);
    Py_END_ALLOW_THREADS
    if (code == 0)
        Py_RETURN_NONE;
    PyObject *text = PyUnicode_FromFormat("native op %R", n->name);
    if (text == NULL)
        return NULL;
    PyObject *exc = PyObject_CallFunction(native_error_type, "iO", code, text);
    Py_DECREF(text);
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

static PyObject *
native_repr(NativeObject *n)
{
    return PyUnicode_FromFormat("<Native %R at %p arg=%p>", n->name, (void *)n->fn, n->arg);
}

static PyObject *
native_get_address(NativeObject *n, void *which)
{
    return PyLong_FromVoidPtr(which ? n->arg : (void *)n->fn);
}

static PyMemberDef native_members[] = {
    {"name", T_OBJECT, offsetof(NativeObject, name), READONLY, "the name its ops take when pushed without one"},
    {"arg", T_OBJECT, offsetof(NativeObject, keep), READONLY, "what the op keeps alive until it ran"},
    {NULL},
};

static PyGetSetDef native_getset[] = {
    {"address", (getter)native_get_address, NULL, "the C function's address", NULL},
    {"arg_address", (getter)native_get_address, NULL, "what it receives (0: NULL)", (void *)1},
    {NULL},
};

PyTypeObject NativeType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "depengine._core.Native",
    .tp_basicsize = sizeof(NativeObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "An op body made by depengine.native: push it like any function.",
    .tp_traverse = (traverseproc)native_traverse,
    .tp_clear = (inquiry)native_clear,
    .tp_dealloc = (destructor)native_dealloc,
    .tp_call = (ternaryfunc)native_call,
    .tp_repr = (reprfunc)native_repr,
    .tp_members = native_members,
    .tp_getset = native_getset,
    .tp_new = native_refuse,
};
