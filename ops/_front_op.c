/* ops._native's front_op: the operators' way to an op the Python front end found before (_front.c). */
#include "_front.h"

static PyObject *flatop_type, *cpu_device;
static PyObject *math_dict, *core_dict;   /* the modules' namespaces: read without getattr's type lookup */
static Py_ssize_t flat_c_off, flat_eng_off;
static PyObject *s_tape, *s_flat_cache, *s_engine, *s_default, *s_closed, *s_char;

PyObject *
front_dispatch_setup(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyType_Check(args[2]))
        return PyErr_Format(PyExc_TypeError, "front_dispatch_setup(math, core, flatop, cpu)");
    static const char *names[] = {"c", "eng"};
    Py_ssize_t off[2];
    if (offsets((PyTypeObject *)args[2], names, 2, off) < 0)
        return NULL;
    flat_c_off = off[0];
    flat_eng_off = off[1];
    if (!PyModule_Check(args[0]) || !PyModule_Check(args[1]))
        return PyErr_Format(PyExc_TypeError, "front_dispatch_setup: math and core are modules");
    Py_XSETREF(flatop_type, Py_NewRef(args[2]));
    Py_XSETREF(cpu_device, Py_NewRef(args[3]));
    Py_XSETREF(math_dict, Py_NewRef(PyModule_GetDict(args[0])));
    Py_XSETREF(core_dict, Py_NewRef(PyModule_GetDict(args[1])));
    if (s_tape == NULL) {
        s_tape = PyUnicode_InternFromString("tape");
        s_flat_cache = PyUnicode_InternFromString("_FLAT");
        s_engine = PyUnicode_InternFromString("_engine");
        s_default = PyUnicode_InternFromString("_default");
        s_closed = PyUnicode_InternFromString("closed");
        s_char = PyUnicode_InternFromString("char");
        if (!s_tape || !s_flat_cache || !s_engine || !s_default || !s_closed || !s_char)
            return NULL;
    }
    Py_RETURN_NONE;
}

static inline PyObject *
slot(PyObject *obj, Py_ssize_t off)   /* borrowed; NULL when unset */
{
    return *(PyObject **)((char *)obj + off);
}

/* 1: x is a contiguous CPU NDArray, 2: a Python float or int (not bool), 0: neither */
static int
operand_kind(PyObject *x)
{
    if (Py_IS_TYPE(x, ndarray_type))
        return slot(x, array_off[A_FLAT]) == Py_True && slot(x, array_off[A_DEVICE]) == cpu_device;
    return (PyFloat_CheckExact(x) || PyLong_CheckExact(x)) ? 2 : 0;
}

/* The engine ops/ pushes to now (ops._core.engine()), borrowed, or NULL: let Python find it.
 * new_var is the spec's eng.new_var: on the compiled core a method of the Core object, whose
 * closed flag is read without the engine's Python property. */
static PyObject *
current_engine(PyObject *new_var)
{
    PyObject *eng = PyDict_GetItemWithError(core_dict, s_engine);
    if (eng == Py_None)
        eng = PyDict_GetItemWithError(core_dict, s_default);
    if (eng == NULL || eng == Py_None)
        return NULL;
    PyObject *owner = PyCFunction_Check(new_var) ? PyCFunction_GET_SELF(new_var) : NULL;
    Py_INCREF(eng);   /* (the closed property may run Python code) */
    PyObject *closed = PyObject_GetAttr(owner ? owner : eng, s_closed);
    int open = closed != NULL && PyObject_IsTrue(closed) == 0;
    Py_XDECREF(closed);
    Py_DECREF(eng);   /* the module keeps it */
    return open ? eng : NULL;
}

/* dtype.char, a new reference; kept for the first dtypes seen (held, so their addresses stay theirs) */
static PyObject *
dtype_char(PyObject *dtype)
{
    static PyObject *seen[16], *chars[16];
    static int nseen;
    for (int i = 0; i < nseen; i++)
        if (seen[i] == dtype)
            return Py_NewRef(chars[i]);
    PyObject *ch = PyObject_GetAttr(dtype, s_char);
    if (ch != NULL && nseen < 16) {
        seen[nseen] = Py_NewRef(dtype);
        chars[nseen++] = Py_NewRef(ch);
    }
    return ch;
}

/* The FlatOp ops.math found before for op over x (and y) on the current engine, a new reference, or
 * NULL with no exception: none, an autograd tape, or anything else the Python path must see.
 * kx, ky: operand_kind of x and y (0 for no y). */
static PyObject *
found_spec(PyObject *op, PyObject *x, PyObject *y, int kx, int ky)
{
    PyObject *shape;
    if (y == NULL) {
        if (kx != 1)
            return NULL;
        shape = slot(x, array_off[A_SHAPE]);
    } else if (kx == 1 && ky == 1) {
        shape = slot(x, array_off[A_SHAPE]);
        PyObject *other = slot(y, array_off[A_SHAPE]);
        int same = shape == other || (shape && other && PyObject_RichCompareBool(shape, other, Py_EQ) == 1);
        if (!same) {
            PyErr_Clear();
            return NULL;
        }
    } else if (kx + ky == 3) {
        shape = slot(kx == 1 ? x : y, array_off[A_SHAPE]);
    } else
        return NULL;
    if (PyDict_GetItemWithError(core_dict, s_tape) != Py_None || shape == NULL) {
        PyErr_Clear();
        return NULL;
    }
    /* the key ops.math uses: (op, dtype char or scalar type per operand, shape) */
    PyObject *key = PyTuple_New(y ? 4 : 3);
    if (key == NULL) {
        PyErr_Clear();
        return NULL;
    }
    PyTuple_SET_ITEM(key, 0, Py_NewRef(op));
    PyObject *ops[2] = {x, y};
    for (int i = 0; i < (y ? 2 : 1); i++) {
        PyObject *part = Py_IS_TYPE(ops[i], ndarray_type)
            ? dtype_char(slot(ops[i], array_off[A_DTYPE])) : Py_NewRef(Py_TYPE(ops[i]));
        if (part == NULL) {
            Py_DECREF(key);
            PyErr_Clear();
            return NULL;
        }
        PyTuple_SET_ITEM(key, 1 + i, part);
    }
    PyTuple_SET_ITEM(key, y ? 3 : 2, Py_NewRef(shape));
    PyObject *cache = PyDict_GetItemWithError(math_dict, s_flat_cache);
    PyObject *spec = cache && PyDict_CheckExact(cache) ? PyDict_GetItemWithError(cache, key) : NULL;
    Py_XINCREF(spec);
    Py_DECREF(key);
    PyObject *c = spec != NULL && PyObject_TypeCheck(spec, (PyTypeObject *)flatop_type)
        ? slot(spec, flat_c_off) : NULL;
    PyObject *eng = c != NULL && PyTuple_Check(c) && PyTuple_GET_SIZE(c) == S_FIELDS
        ? current_engine(PyTuple_GET_ITEM(c, S_NEW_VAR)) : NULL;
    PyErr_Clear();
    if (eng == NULL || slot(spec, flat_eng_off) != eng) {
        Py_XDECREF(spec);
        return NULL;
    }
    return spec;
}

/* push spec's op over x (and y), into a new array or into (x += y); None when a scalar stops it */
static PyObject *
push_found(PyObject *spec, PyObject *x, PyObject *y, int kx, int ky, PyObject *into)
{
    PyObject *c = slot(spec, flat_c_off);
    PyObject *argv[3] = {c, x, y};
    if (kx != 2 && ky != 2)
        return push_spec(argv, y ? 3 : 2, into);
    /* a scalar: only for float64 work, where ops.math's cast is float() */
    PyObject *ch = PyObject_GetAttr(PyTuple_GET_ITEM(c, S_WORK), s_char);
    int f64 = ch && PyUnicode_CompareWithASCIIString(ch, "d") == 0;
    Py_XDECREF(ch);
    PyErr_Clear();
    if (!f64)
        Py_RETURN_NONE;
    PyObject *scalar = kx == 2 ? x : y;
    double v = PyFloat_AsDouble(scalar);
    if (v == -1.0 && PyErr_Occurred()) {   /* (an int too large for a float: Python says so) */
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    PyObject *f = PyFloat_FromDouble(v);
    if (f == NULL)
        return NULL;
    argv[kx == 2 ? 1 : 2] = f;
    PyObject *result = push_spec(argv, 3, into);
    Py_DECREF(f);
    return result;
}

/* front_op(op, x[, y]): what ops.math.binary (or unary) pushes for contiguous CPU operands of one
 * shape (or one and a Python scalar, float64 work) whose FlatOp the Python front end already found
 * for the current engine, with no autograd tape; None for anything else (the caller then takes the
 * Python path, which finds the FlatOp for next time).  Errors are Python's: none happen here. */
PyObject *
front_op(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 && nargs != 3)
        return PyErr_Format(PyExc_TypeError, "front_op(op, x[, y])");
    if (math_dict == NULL || ndarray_type == NULL)
        Py_RETURN_NONE;
    PyObject *x = args[1], *y = nargs == 3 ? args[2] : NULL;
    int kx = operand_kind(x), ky = y ? operand_kind(y) : 0;
    PyObject *spec = found_spec(args[0], x, y, kx, ky);
    if (spec == NULL)
        Py_RETURN_NONE;
    PyObject *result = push_found(spec, x, y, kx, ky, NULL);
    Py_DECREF(spec);
    return result;
}

/* front_into(op, x, y): x op= y as ops.math.binary(op, x, y, out=x) pushes it on the fast path
 * (_fast.push_into): x a contiguous CPU array of the FlatOp's shape and result dtype on its engine;
 * x itself, or None for anything else (the caller takes the Python path). */
PyObject *
front_into(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3)
        return PyErr_Format(PyExc_TypeError, "front_into(op, x, y)");
    if (math_dict == NULL || ndarray_type == NULL)
        Py_RETURN_NONE;
    PyObject *x = args[1], *y = args[2];
    int kx = operand_kind(x), ky = operand_kind(y);
    if (kx != 1)
        Py_RETURN_NONE;
    PyObject *spec = found_spec(args[0], x, y, kx, ky);
    if (spec == NULL)
        Py_RETURN_NONE;
    PyObject *c = slot(spec, flat_c_off), *dt = slot(x, array_off[A_DTYPE]);
    int fits = slot(x, array_off[A_ENGINE]) == PyTuple_GET_ITEM(c, S_ENG) && dt != NULL &&
        (dt == PyTuple_GET_ITEM(c, S_DTYPE) || PyObject_RichCompareBool(dt, PyTuple_GET_ITEM(c, S_DTYPE), Py_EQ) == 1);
    PyErr_Clear();
    PyObject *result = fits ? push_found(spec, x, y, kx, ky, x) : Py_NewRef(Py_None);
    Py_DECREF(spec);
    return result;
}
