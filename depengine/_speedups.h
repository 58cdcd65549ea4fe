/* Shared by the two files of depengine._speedups: _speedups.c (the profiler's hooks and
 * its record store) and _hotpath.c (the op factory and the four var transitions). */
#ifndef DEPENGINE_SPEEDUPS_H
#define DEPENGINE_SPEEDUPS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* The object in a __slots__ slot at byte offset off (NULL when unset). */
#define SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

/* The offset of a writable object slot of type, or -1 with TypeError. */
Py_ssize_t ds_slot_offset(PyTypeObject *type, const char *name);

/* _hotpath.c: learn Op's and Var's slots (from bind()), and its functions. */
int ds_bind_hotpath(PyTypeObject *op, PyTypeObject *var);
extern PyMethodDef ds_hotpath_methods[];

#endif
