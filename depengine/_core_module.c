/* depengine._core: the module (see _core.h for the whole design). */
#include "_core.h"
#include <stdarg.h>
#include <time.h>

PyObject *s_priority, *s_execute, *s_address, *s_arg_address, *s_name, *s_qualname, *s_func, *s_failures,
    *s_origins, *s_members_recorded, *s_add_note, *native_type;
PyObject *engine_closed_error, *var_deleted_error, *deadlock_error, *native_error_type;

i64
now_ns(void)   /* time.perf_counter_ns(): CLOCK_MONOTONIC; no GIL needed */
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (i64)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int
add_note(PyObject *exc, const char *format, ...)
{
    va_list va;
    va_start(va, format);
    PyObject *note = PyUnicode_FromFormatV(format, va);
    va_end(va);
    if (note == NULL)
        return -1;
    PyObject *r = PyObject_CallMethodOneArg(exc, s_add_note, note);
    Py_DECREF(note);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

PyObject *
fetch_exception(void)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
}

PyObject *
native_error(i64 code, OpObject *op)   /* NativeError(code, "native op 'name'"), or NULL.  GIL. */
{
    PyObject *name = op_name(op);
    if (name == NULL)
        return NULL;
    PyObject *text = PyUnicode_FromFormat("native op %R", name);
    Py_DECREF(name);
    if (text == NULL)
        return NULL;
    PyObject *exc = PyObject_CallFunction(native_error_type, "LO", code, text);
    Py_DECREF(text);
    return exc;
}

/* configure(EngineClosedError, VarDeletedError, DeadlockError, NativeError, Native): what the core
 * raises and how it knows a native body; called once by depengine/_cengine.py. */
static PyObject *
configure(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "configure() takes five classes");
        return NULL;
    }
    PyObject **slots[5] = {&engine_closed_error, &var_deleted_error, &deadlock_error, &native_error_type,
                           &native_type};
    for (int i = 0; i < 5; i++) {
        if (!PyType_Check(args[i])) {
            PyErr_SetString(PyExc_TypeError, "configure() takes five classes");
            return NULL;
        }
        Py_XSETREF(*slots[i], Py_NewRef(args[i]));
    }
    Py_RETURN_NONE;
}

/* make_native(address, arg_address, name, keep[, inline]): depengine.native's body in C form.  With
 * arg_address None, keep is a bytes object and the function receives its first byte (NULL when
 * empty): bytes cannot change or move while the body holds them.  inline (default False): the body
 * is cheap (a few microseconds), so a push that finds its op ready runs it on the pushing thread
 * rather than hand it to a worker (core_push). */
static PyObject *
make_native(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    int of_bytes = (nargs == 4 || nargs == 5) && args[1] == Py_None && PyBytes_CheckExact(args[3]);
    if ((nargs != 4 && nargs != 5) || !PyLong_Check(args[0]) || !(of_bytes || PyLong_Check(args[1])) ||
        !PyUnicode_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "make_native(address: int, arg_address: int | None, name: str, "
                        "keep: object | bytes[, inline: bool])");
        return NULL;
    }
    int inline_ok = nargs == 5 ? PyObject_IsTrue(args[4]) : 0;
    if (inline_ok < 0)
        return NULL;
    void *fn = PyLong_AsVoidPtr(args[0]);
    void *arg = of_bytes ? (PyBytes_GET_SIZE(args[3]) ? (void *)PyBytes_AS_STRING(args[3]) : NULL)
                         : PyLong_AsVoidPtr(args[1]);
    if (PyErr_Occurred())
        return NULL;
    if (fn == NULL) {
        PyErr_SetString(PyExc_ValueError, "make_native: the function address is NULL");
        return NULL;
    }
    return native_new((native_fn)fn, arg, args[2], args[3], inline_ok);
}

static int
objects_ready(void)
{
    if (PyType_Ready(&VarType) < 0 || PyType_Ready(&OpType) < 0 || PyType_Ready(&DoneType) < 0 ||
        PyType_Ready(&NativeType) < 0 || PyType_Ready(&NativePlanType) < 0 || PyType_Ready(&PlanChunkType) < 0)
        return -1;
    return 0;
}

static PyMethodDef module_functions[] = {
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL, NULL},
    {"make_native", (PyCFunction)(void (*)(void))make_native, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "depengine._core",
    "The compiled engine core: vars, ops, push, completion, ready queues and workers in C.", -1,
    module_functions,
};

PyMODINIT_FUNC
PyInit__core(void)
{
    struct { PyObject **slot; const char *text; } strings[] = {
        {&s_priority, "priority"}, {&s_execute, "execute"}, {&s_address, "address"},
        {&s_arg_address, "arg_address"}, {&s_name, "name"}, {&s_qualname, "__qualname__"}, {&s_func, "func"},
        {&s_failures, "failures"}, {&s_origins, "origins"}, {&s_members_recorded, "members_recorded"},
        {&s_add_note, "add_note"}};
    for (size_t i = 0; i < sizeof strings / sizeof strings[0]; i++)
        if ((*strings[i].slot = PyUnicode_InternFromString(strings[i].text)) == NULL)
            return NULL;
    if (objects_ready() < 0 || push_ready() < 0 || PyType_Ready(&CoreType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Var", (PyObject *)&VarType) < 0 ||
        PyModule_AddObjectRef(m, "Op", (PyObject *)&OpType) < 0 ||
        PyModule_AddObjectRef(m, "Done", (PyObject *)&DoneType) < 0 ||
        PyModule_AddObjectRef(m, "Native", (PyObject *)&NativeType) < 0 ||
        PyModule_AddObjectRef(m, "NativePlan", (PyObject *)&NativePlanType) < 0 ||
        PyModule_AddObjectRef(m, "Core", (PyObject *)&CoreType) < 0 ||
        PyModule_AddIntConstant(m, "NAIVE", T_NAIVE) < 0 ||
        PyModule_AddIntConstant(m, "THREADED", T_THREADED) < 0 ||
        PyModule_AddIntConstant(m, "PERDEVICE", T_PERDEVICE) < 0 ||
        records_module_init(m) < 0 || mpi_push_ready(m) < 0 ||
        mpi_lane_ready(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
