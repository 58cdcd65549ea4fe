/* ops._native's front end for the common op: ops/_fast.py's push_flat (and push_sum, push_matmul), in C.
 *
 *   front_setup(ndarray, elementwise, memory, np_empty, take_slow, releases, flush, np_frombuffer)
 *                          the classes and callables it needs, once (ops/_fast.py)
 *   front_push(spec, x[, y])
 *                          allocate the result of a FlatOp, pack its kernel's block, push its op
 *                          and return the new array: what _fast.push_flat does, step for step
 *   front_dispatch_setup, front_op
 *                          the operators' way to a FlatOp found before (ops/_front_op.c)
 *
 * spec is a FlatOp's ``c`` tuple (see ops/_fast.py for its fields; _front.h names them).  The
 * result is an NDArray made as NDArray._cpu_owner makes one (its slots written through their member
 * descriptors' offsets), with memory from ops.memory's rules (a pooled buffer from POOL_MIN bytes,
 * else numpy.empty), and the op's record an Elementwise (a Record for a sum or gemm) made the same
 * way.  The GIL is held
 * throughout; any failure raises with nothing pushed (a var already made is left unused, as
 * when the Python version fails).
 */
#include "_front.h"
#include <stdint.h>
#include <string.h>
#include <structmember.h>

#ifndef Py_T_OBJECT_EX
#define Py_T_OBJECT_EX T_OBJECT_EX
#endif

PyObject *pool_take_entry(Py_ssize_t nbytes);
PyObject *pool_store(PyObject *entry);

/* slots of NDArray and Elementwise, in the order of _front.h's A_* and R_* */
static const char *array_slots[] = {"_engine", "_var", "shape", "dtype", "device", "_data", "_store", "_addr",
                                    "_offset", "_strides", "_flat", "_base", "_ag"};
static const char *record_slots[] = {"op", "inputs", "out", "work", "shape", "attrs"};

PyTypeObject *ndarray_type;
static PyTypeObject *record_type;
Py_ssize_t array_off[A_N];
static Py_ssize_t record_off[R_N];
static PyObject *memory_mod, *np_empty, *take_slow, *releases, *flush, *np_frombuffer;
static PyObject *s_pool_min, *s_reshape, *s_meta, *s_normal;

int
offsets(PyTypeObject *type, const char **names, int n, Py_ssize_t *out)
{
    for (int i = 0; i < n; i++) {
        PyObject *d = PyObject_GetAttrString((PyObject *)type, names[i]);
        if (d == NULL)
            return -1;
        int ok = Py_IS_TYPE(d, &PyMemberDescr_Type) && ((PyMemberDescrObject *)d)->d_member->type == Py_T_OBJECT_EX;
        if (ok)
            out[i] = ((PyMemberDescrObject *)d)->d_member->offset;
        Py_DECREF(d);
        if (!ok) {
            PyErr_Format(PyExc_TypeError, "front_setup: %s.%s is not a slot", type->tp_name, names[i]);
            return -1;
        }
    }
    return 0;
}

static PyObject *
front_setup(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8 || !PyType_Check(args[0]) || !PyType_Check(args[1]))
        return PyErr_Format(PyExc_TypeError, "front_setup(ndarray, elementwise, memory, np_empty, take_slow, "
                            "releases, flush, np_frombuffer)");
    if (offsets((PyTypeObject *)args[0], array_slots, A_N, array_off) < 0 ||
        offsets((PyTypeObject *)args[1], record_slots, R_N, record_off) < 0)
        return NULL;
    Py_XSETREF(ndarray_type, (PyTypeObject *)Py_NewRef(args[0]));
    Py_XSETREF(record_type, (PyTypeObject *)Py_NewRef(args[1]));
    Py_XSETREF(memory_mod, Py_NewRef(args[2]));
    Py_XSETREF(np_empty, Py_NewRef(args[3]));
    Py_XSETREF(take_slow, Py_NewRef(args[4]));
    Py_XSETREF(releases, Py_NewRef(args[5]));
    Py_XSETREF(flush, Py_NewRef(args[6]));
    Py_XSETREF(np_frombuffer, Py_NewRef(args[7]));
    if (s_pool_min == NULL) {
        s_pool_min = PyUnicode_InternFromString("POOL_MIN");
        s_reshape = PyUnicode_InternFromString("reshape");
        s_meta = PyUnicode_InternFromString("meta");
        s_normal = PyUnicode_InternFromString("normal");
        if (!s_pool_min || !s_reshape || !s_meta || !s_normal)
            return NULL;
    }
    Py_RETURN_NONE;
}

static inline void
put(PyObject *obj, Py_ssize_t off, PyObject *value)   /* steals value */
{
    PyObject **p = (PyObject **)((char *)obj + off);
    Py_XSETREF(*p, value);
}

/* (data, store, address) of a new C-contiguous host array, as ops.memory.alloc makes it. */
static int
allocate(PyObject **spec, PyObject **data, PyObject **store, PyObject **addr)
{
    Py_ssize_t size = PyLong_AsSsize_t(spec[S_SIZE]), item = PyLong_AsSsize_t(spec[S_ITEMSIZE]);
    Py_ssize_t nbytes = size * item;
    PyObject *pm = PyObject_GetAttr(memory_mod, s_pool_min);   /* read at each call: tests lower it */
    if (pm == NULL)
        return -1;
    Py_ssize_t pool_min = PyLong_AsSsize_t(pm);
    Py_DECREF(pm);
    if (pool_min == -1 && PyErr_Occurred())
        return -1;
    if (nbytes < pool_min) {
        PyObject *a[2] = {spec[S_SHAPE], spec[S_DTYPE]};
        *data = PyObject_Vectorcall(np_empty, a, 2, NULL);
        if (*data == NULL)
            return -1;
        void *p = NULL;
        if (nbytes) {
            Py_buffer view;
            if (PyObject_GetBuffer(*data, &view, PyBUF_SIMPLE) < 0) {
                Py_CLEAR(*data);
                return -1;
            }
            p = view.buf;
            PyBuffer_Release(&view);
        }
        *store = Py_NewRef(*data);
        *addr = PyLong_FromVoidPtr(p);
        return *addr == NULL ? -1 : 0;
    }
    PyObject *entry = pool_take_entry(nbytes);
    if (entry == NULL) {   /* none free: ops.memory waits for one or maps a new one */
        PyObject *n = PyLong_FromSsize_t(nbytes);
        if (n == NULL)
            return -1;
        PyObject *a[2] = {n, spec[S_DRAIN]};
        entry = PyObject_Vectorcall(take_slow, a, 2, NULL);
        Py_DECREF(n);
        if (entry == NULL)
            return -1;
        if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 3) {
            Py_DECREF(entry);
            PyErr_SetString(PyExc_TypeError, "front_push: take_slow gave no (owner, address, nbytes) entry");
            return -1;
        }
    }
    /* numpy.frombuffer(owner, dtype): a view whose base is the owner (owner.view(dtype) costs a third
     * more: it sets its dtype through the attribute) */
    PyObject *fa[2] = {PyTuple_GET_ITEM(entry, 0), spec[S_DTYPE]};
    PyObject *flat = PyObject_Vectorcall(np_frombuffer, fa, 2, NULL);
    /* a 1-d result: the view (the buffer's size elements) is of its shape already */
    if (flat != NULL && PyTuple_Check(spec[S_SHAPE]) && PyTuple_GET_SIZE(spec[S_SHAPE]) == 1)
        *data = flat;
    else {
        *data = flat ? PyObject_CallMethodOneArg(flat, s_reshape, spec[S_SHAPE]) : NULL;
        Py_XDECREF(flat);
    }
    *store = *data ? pool_store(entry) : NULL;
    *addr = Py_NewRef(PyTuple_GET_ITEM(entry, 1));
    Py_DECREF(entry);   /* the store holds it (or, on failure, the pool takes it back) */
    if (*store == NULL) {
        Py_CLEAR(*data);
        Py_CLEAR(*addr);
        return -1;
    }
    return 0;
}

static int
pack_slot(char *block, Py_ssize_t i, PyObject *value, int as_float)
{
    if (as_float) {
        double d = PyFloat_AsDouble(value);
        if (d == -1.0 && PyErr_Occurred())
            return -1;
        memcpy(block + 8 * i, &d, 8);
    } else {
        long long v = PyLong_AsLongLong(value);
        if (v == -1 && PyErr_Occurred())
            return -1;
        memcpy(block + 8 * i, &v, 8);
    }
    return 0;
}

/* the block of an elementwise op: rows 0..1, the row's length, then (value, row stride, column
 * stride) per operand, the output first: an array is (address, 0, 1), a scalar (value, 0, 0) */
static PyObject *
elementwise_block(PyObject **spec, PyObject *const *args, Py_ssize_t nops, PyObject *addr, int as_float)
{
    PyObject *block = PyBytes_FromStringAndSize(NULL, 8 * (3 + 3 * (1 + nops)));
    if (block == NULL)
        return NULL;
    char *b = PyBytes_AS_STRING(block);
    int64_t head[6] = {0, 1, (int64_t)PyLong_AsSsize_t(spec[S_SIZE]), 0, 0, 1};
    head[3] = (int64_t)(intptr_t)PyLong_AsVoidPtr(addr);
    if (PyErr_Occurred())
        goto fail;
    memcpy(b, head, sizeof head);
    for (Py_ssize_t i = 0; i < nops; i++) {
        PyObject *x = args[1 + i];
        int64_t slot[3] = {0, 0, 1};
        if (Py_IS_TYPE(x, ndarray_type)) {
            PyObject *xa = *(PyObject **)((char *)x + array_off[A_ADDR]);
            slot[0] = xa ? (int64_t)(intptr_t)PyLong_AsVoidPtr(xa) : 0;
            if (xa == NULL || PyErr_Occurred()) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_AttributeError, "front_push: an operand has no address");
                goto fail;
            }
            memcpy(b + 8 * (6 + 3 * i), slot, sizeof slot);
        } else {
            slot[2] = 0;
            memcpy(b + 8 * (6 + 3 * i), slot, sizeof slot);
            if (pack_slot(b, 6 + 3 * i, x, as_float) < 0)
                goto fail;
        }
    }
    return block;
fail:
    Py_DECREF(block);
    return NULL;
}

static int64_t
address_of(PyObject *array)   /* an NDArray's element (0, ..., 0); -1 with an exception */
{
    PyObject *xa = Py_IS_TYPE(array, ndarray_type) ? *(PyObject **)((char *)array + array_off[A_ADDR]) : NULL;
    if (xa == NULL) {
        PyErr_SetString(PyExc_TypeError, "front_push: an operand is not an array with an address");
        return -1;
    }
    int64_t a = (int64_t)(intptr_t)PyLong_AsVoidPtr(xa);
    return PyErr_Occurred() ? -1 : a;
}

/* the block of a whole-array sum or mean (ops/_sum.py): extra is (elements, count to divide by) */
static PyObject *
sum_block(PyObject *extra, PyObject *x, PyObject *addr)
{
    if (!PyTuple_Check(extra) || PyTuple_GET_SIZE(extra) != 2)
        return PyErr_Format(PyExc_TypeError, "front_push: a sum's extra is (elements, count)");
    int64_t v[4] = {address_of(x), PyLong_AsLongLong(PyTuple_GET_ITEM(extra, 0)),
                    (int64_t)(intptr_t)PyLong_AsVoidPtr(addr), PyLong_AsLongLong(PyTuple_GET_ITEM(extra, 1))};
    if (PyErr_Occurred())
        return NULL;
    return PyBytes_FromStringAndSize((const char *)v, sizeof v);
}

/* the block of out = a @ b (ops/_blas.py's gemm_block): extra is (routine, ta, tb, m, n, k, lda, ldb,
 * ldc, float64), the column-major call on b then a; alpha 1 and beta 0 as doubles, or as floats in
 * the low half of their slots */
static PyObject *
gemm_block(PyObject *extra, PyObject *const *args, PyObject *addr)
{
    if (!PyTuple_Check(extra) || PyTuple_GET_SIZE(extra) != 10)
        return PyErr_Format(PyExc_TypeError, "front_push: a gemm's extra has 10 fields");
    int64_t v[14] = {0};
    for (int i = 0; i < 9; i++)
        v[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(extra, i));
    v[9] = address_of(args[2]);    /* column-major: b first */
    v[10] = address_of(args[1]);
    v[11] = (int64_t)(intptr_t)PyLong_AsVoidPtr(addr);
    if (PyErr_Occurred())
        return NULL;
    if (PyObject_IsTrue(PyTuple_GET_ITEM(extra, 9))) {
        double one = 1.0, zero = 0.0;
        memcpy(&v[12], &one, 8);
        memcpy(&v[13], &zero, 8);
    } else {
        float one = 1.0f, zero = 0.0f;
        memcpy(&v[12], &one, 4);
        memcpy(&v[13], &zero, 4);
    }
    return PyBytes_FromStringAndSize((const char *)v, sizeof v);
}

/* front_push's work: args[0] the spec tuple, args[1..nargs-1] the operands; into: NULL for a new
 * result, else the array the op writes (_fast.push_into's x += y: an operand, of the spec's shape and
 * result dtype, checked by the caller) */
PyObject *
push_spec(PyObject *const *args, Py_ssize_t nargs, PyObject *into)
{
    PyObject **spec = &PyTuple_GET_ITEM(args[0], 0);
    Py_ssize_t queued = PyObject_Length(releases);   /* GPU memory released since: hand it over first */
    if (queued < 0)
        return NULL;
    if (queued > 0) {
        PyObject *r = PyObject_CallNoArgs(flush);
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
    }
    Py_ssize_t nops = nargs - 1;
    int as_float = PyObject_IsTrue(spec[S_FLOAT]);
    PyObject *var = NULL, *data = NULL, *store = NULL, *addr = NULL, *out = NULL, *block = NULL;
    PyObject *body = NULL, *reads = NULL, *writes = NULL, *op = NULL, *rec = NULL, *inputs = NULL;
    PyObject *result = NULL;

    Py_ssize_t narrays = 0;
    for (Py_ssize_t i = 0; i < nops; i++)
        narrays += Py_IS_TYPE(args[1 + i], ndarray_type);
    reads = PyTuple_New(narrays);   /* the arrays' vars, in operand order */
    if (reads == NULL)
        goto done;
    for (Py_ssize_t i = 0, k = 0; i < nops; i++)
        if (Py_IS_TYPE(args[1 + i], ndarray_type)) {
            PyObject *v = *(PyObject **)((char *)args[1 + i] + array_off[A_VAR]);
            if (v == NULL) {
                PyErr_SetString(PyExc_AttributeError, "front_push: an operand has no var");
                goto done;
            }
            PyTuple_SET_ITEM(reads, k++, Py_NewRef(v));
        }
    if (into != NULL) {
        var = *(PyObject **)((char *)into + array_off[A_VAR]);
        addr = *(PyObject **)((char *)into + array_off[A_ADDR]);
        if (var == NULL || addr == NULL) {
            PyErr_SetString(PyExc_AttributeError, "front_push: the output has no var or address");
            var = addr = NULL;
            goto done;
        }
        Py_INCREF(var);
        Py_INCREF(addr);
        out = Py_NewRef(into);
        goto made;
    }
    var = PyObject_CallOneArg(spec[S_NEW_VAR], spec[S_OP]);
    if (var == NULL || allocate(spec, &data, &store, &addr) < 0)
        goto done;
    out = ndarray_type->tp_alloc(ndarray_type, 0);
    if (out == NULL)
        goto done;
    put(out, array_off[A_ENGINE], Py_NewRef(spec[S_ENG]));
    put(out, array_off[A_VAR], Py_NewRef(var));
    put(out, array_off[A_SHAPE], Py_NewRef(spec[S_SHAPE]));
    put(out, array_off[A_DTYPE], Py_NewRef(spec[S_DTYPE]));
    put(out, array_off[A_DEVICE], Py_NewRef(spec[S_CPU]));
    put(out, array_off[A_DATA], Py_NewRef(data));
    put(out, array_off[A_STORE], Py_NewRef(store));
    put(out, array_off[A_ADDR], Py_NewRef(addr));
    put(out, array_off[A_OFFSET], PyLong_FromLong(0));
    put(out, array_off[A_STRIDES], Py_NewRef(spec[S_STRIDES]));
    put(out, array_off[A_FLAT], Py_NewRef(Py_True));
    put(out, array_off[A_BASE], Py_NewRef(Py_None));
    put(out, array_off[A_AG], Py_NewRef(Py_None));
made:;
    long kind = PyLong_AsLong(spec[S_KIND]);
    if (kind == K_ELEMENTWISE)
        block = elementwise_block(spec, args, nops, addr, as_float);
    else if (kind == K_SUM || kind == K_GEMM)
        block = kind == K_SUM ? sum_block(spec[S_EXTRA], args[1], addr) : gemm_block(spec[S_EXTRA], args, addr);
    else if (!PyErr_Occurred())
        PyErr_Format(PyExc_ValueError, "front_push: no op kind %ld", kind);
    if (block == NULL)
        goto done;
    if (PyObject_IsTrue(spec[S_NATIVE])) {   /* make_native(entry, None, name, block, cheap) */
        PyObject *a[5] = {spec[S_ENTRY], Py_None, spec[S_NAME], block, spec[S_CHEAP]};
        body = PyObject_Vectorcall(spec[S_MAKER], a, 5, NULL);
    } else {                                  /* partial(call, entry, block) */
        PyObject *a[3] = {spec[S_CALL], spec[S_ENTRY], block};
        body = PyObject_Vectorcall(spec[S_MAKER], a, 3, NULL);
    }
    writes = body ? PyList_New(1) : NULL;
    if (writes == NULL)
        goto done;
    PyList_SET_ITEM(writes, 0, Py_NewRef(var));
    {
        PyObject *zero = PyLong_FromLong(0);
        if (zero == NULL)
            goto done;
        PyObject *a[9] = {body, reads, writes, spec[S_OP], zero, Py_False, Py_None, s_normal, Py_True};
        op = PyObject_Vectorcall(spec[S_PUSH], a, 9, NULL);
        Py_DECREF(zero);
    }
    if (op == NULL)
        goto done;
    /* the record: an Elementwise (the fuser's), or for a sum or gemm the Record it derives from */
    PyTypeObject *rtype = (PyTypeObject *)spec[S_RECORD];
    inputs = PyTuple_New(nops);
    rec = inputs && PyType_Check(rtype) && PyType_IsSubtype(record_type, rtype) ? rtype->tp_alloc(rtype, 0)
                                                                                  : NULL;
    if (rec == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "front_push: the record class is not Elementwise's base");
        goto done;
    }
    for (Py_ssize_t i = 0; i < nops; i++)
        PyTuple_SET_ITEM(inputs, i, Py_NewRef(args[1 + i]));
    put(rec, record_off[R_OP], Py_NewRef(spec[S_OP]));
    put(rec, record_off[R_INPUTS], Py_NewRef(inputs));
    put(rec, record_off[R_OUT], Py_NewRef(out));
    put(rec, record_off[R_ATTRS], Py_NewRef(spec[S_ATTRS]));
    if (rtype == record_type) {
        put(rec, record_off[R_WORK], Py_NewRef(spec[S_WORK]));
        put(rec, record_off[R_SHAPE], Py_NewRef(spec[S_SHAPE]));
    }
    if (PyObject_SetAttr(op, s_meta, rec) < 0)
        goto done;
    result = Py_NewRef(out);
done:
    Py_XDECREF(var);
    Py_XDECREF(data);
    Py_XDECREF(store);
    Py_XDECREF(addr);
    Py_XDECREF(out);
    Py_XDECREF(block);
    Py_XDECREF(body);
    Py_XDECREF(reads);
    Py_XDECREF(writes);
    Py_XDECREF(op);
    Py_XDECREF(rec);
    Py_XDECREF(inputs);
    return result;
}

static PyObject *
front_push(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 2 || nargs > 3 || !PyTuple_Check(args[0]) || PyTuple_GET_SIZE(args[0]) != S_FIELDS)
        return PyErr_Format(PyExc_TypeError, "front_push(spec, x[, y])");
    if (ndarray_type == NULL)
        return PyErr_Format(PyExc_RuntimeError, "front_push before front_setup");
    return push_spec(args, nargs, NULL);
}

PyMethodDef front_methods[] = {
    {"front_dispatch_setup", (PyCFunction)(void (*)(void))front_dispatch_setup, METH_FASTCALL,
     "front_dispatch_setup(math, core, flatop, cpu)."},
    {"front_op", (PyCFunction)(void (*)(void))front_op, METH_FASTCALL,
     "front_op(op, x[, y]): the fast path of ops.math.binary/unary, or None."},
    {"front_into", (PyCFunction)(void (*)(void))front_into, METH_FASTCALL,
     "front_into(op, x, y): x op= y on the fast path (x itself), or None."},
    {"front_setup", (PyCFunction)(void (*)(void))front_setup, METH_FASTCALL,
     "front_setup(ndarray, elementwise, memory, np_empty, take_slow, releases, flush, np_frombuffer)."},
    {"front_push", (PyCFunction)(void (*)(void))front_push, METH_FASTCALL,
     "front_push(spec, x[, y]): ops/_fast.py's push_flat."},
    {NULL, NULL, 0, NULL},
};
