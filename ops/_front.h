/* ops/_front.c and ops/_front_op.c: what the front end's two halves share (see _front.c). */
#ifndef OPS_FRONT_H
#define OPS_FRONT_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>

enum { S_ENG, S_NEW_VAR, S_PUSH, S_MAKER, S_NATIVE, S_ENTRY, S_OP, S_NAME, S_SHAPE, S_DTYPE, S_SIZE,
       S_STRIDES, S_WORK, S_FLOAT, S_ITEMSIZE, S_CPU, S_CALL, S_DRAIN, S_CHEAP, S_KIND, S_EXTRA, S_RECORD,
       S_ATTRS, S_FIELDS };
/* S_KIND: what the op is, and what S_EXTRA holds for its block (see _fast.py) */
enum { K_ELEMENTWISE, K_SUM, K_GEMM };

/* slots of NDArray and Elementwise, in the order of _front.c's array_slots and record_slots */
enum { A_ENGINE, A_VAR, A_SHAPE, A_DTYPE, A_DEVICE, A_DATA, A_STORE, A_ADDR, A_OFFSET, A_STRIDES, A_FLAT,
       A_BASE, A_AG, A_N };
enum { R_OP, R_INPUTS, R_OUT, R_WORK, R_SHAPE, R_ATTRS, R_N };

extern PyTypeObject *ndarray_type;
extern Py_ssize_t array_off[A_N];

int offsets(PyTypeObject *type, const char **names, int n, Py_ssize_t *out);   /* slots' offsets */
PyObject *push_spec(PyObject *const *args, Py_ssize_t nargs, PyObject *into);   /* front_push's work */
PyObject *front_dispatch_setup(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *front_op(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *front_into(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

#endif
