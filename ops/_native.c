/* ops._native: the two calls every CPU kernel of ops/ goes through, in C.
 *
 *   address(buffer)        the address of a contiguous buffer's first byte (the buffer protocol)
 *   call(entry, block[, ctx])
 *                          run the kernel at address `entry`, an `int32 (*)(void *)` (a numba
 *                          cfunc), on the argument block `block` (a bytes object), with the GIL
 *                          released; returns the kernel's int32.  `ctx` is ignored: it lets
 *                          functools.partial(call, entry, block) be an op's whole body.
 *
 * Optional: ops/_kernels.py does the same through ctypes when this module is missing
 * (no compiler at install time) or DEPENGINE_PURE_PYTHON is set.  A kernel reads only its
 * block and the memory the block points to, which its op keeps alive, so it needs no GIL
 * (and nothing here needs one beyond argument parsing: ready for a free-threaded build).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

typedef int32_t (*kernel_fn)(void *);

static PyObject *
native_address(PyObject *self, PyObject *obj)
{
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *result = PyLong_FromVoidPtr(view.buf);
    PyBuffer_Release(&view);
    return result;
}

static PyObject *
native_call(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 && nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "call(entry, block[, ctx]) takes 2 or 3 arguments");
        return NULL;
    }
    void *entry = PyLong_AsVoidPtr(args[0]);
    if (entry == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "call: the kernel entry point is NULL");
        return NULL;
    }
    if (!PyBytes_Check(args[1])) {
        PyErr_Format(PyExc_TypeError, "call: the argument block must be bytes, not %.100s",
                     Py_TYPE(args[1])->tp_name);
        return NULL;
    }
    void *block = (void *)PyBytes_AS_STRING(args[1]);
    int32_t rc;
    Py_BEGIN_ALLOW_THREADS
    rc = ((kernel_fn)entry)(block);
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(rc);
}

static PyMethodDef methods[] = {
    {"address", native_address, METH_O, "address(buffer): the address of a contiguous buffer."},
    {"call", (PyCFunction)(void (*)(void))native_call, METH_FASTCALL,
     "call(entry, block[, ctx]): run the int32(void*) kernel at entry on block without the GIL."},
    {NULL, NULL, 0, NULL},
};

extern PyMethodDef pool_methods[], front_methods[];
extern PyTypeObject PoolStoreType;

static int
native_exec(PyObject *module)   /* the buffer pool of ops.memory (ops/_pool.c), the front end (_front.c) */
{
    if (PyModule_AddFunctions(module, pool_methods) < 0 || PyModule_AddFunctions(module, front_methods) < 0 ||
        PyType_Ready(&PoolStoreType) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "Store", (PyObject *)&PoolStoreType);
}

static struct PyModuleDef_Slot slots[] = {
    {Py_mod_exec, native_exec},
#ifdef Py_mod_gil
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "ops._native", "Kernel calls without the GIL.", 0, methods, slots,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    return PyModuleDef_Init(&module_def);
}
