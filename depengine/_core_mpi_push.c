/* The mpi engine's push in C: the common case of MpiEngine.push (depengine/mpi/engine.py).
 *
 * Every rank pushes every op of the program, so the push is the mpi engine's
 * hottest path.  MpiPusher.push takes an op whose vars are all known and
 * distinct, whose writes share one owner, and whose executing rank already
 * holds the current version of every var it names (no transfer to plan), with
 * no profiler recording.  It does in C what the Python path does for such an
 * op: update the running hash and count of the op sequence, advance the
 * written vars' versions, then push the op to the local engine (on the rank
 * that runs it) or return a RemoteOp (elsewhere).  Anything else (transfers,
 * execute_on, keyword options, bad input, a closed engine) goes to the Python
 * path, which plans it and names what is wrong.  Both paths update the same
 * state: the MVar objects' slots and this object's sequence fields
 * (count, hash, since_sync, first, last), under the engine's lock.
 */
#include "_core.h"

#include <structmember.h>

#define MAXV 16          /* vars per op taken here; more go to the Python path */

typedef struct {
    PyObject_HEAD
    PyObject *engine, *vars, *codes, *lock, *local_push, *remote_op, *then_poll, *poll, *slow,
             *name_of, *recorder, *native_type, *words;
    PyObject *acquire, *release;   /* the lock's bound methods, looked up once */
    i64 *push_word;
    int rank, size;
    long long count;          /* pushes and new_var calls so far (the same on every rank) */
    Py_ssize_t hash;          /* the running hash of the op sequence */
    long long since_sync;     /* pushes since the last collective check */
    PyObject *first, *last;   /* (what, rank or None, count) of the first and last push since then */
    long long taken;          /* pushes done here (the rest went to the Python path) */
} PusherObject;

static PyObject *s_owner, *s_holders, *s_serial, *s_gen, *s_writer, *s_last, *s_var, *s_closing,
                *s_broken, *s_acquire, *s_release, *s_reads, *s_writes;
static PyObject SLOW_TAG;  /* never a real object: "take the Python path" */
#define SLOW (&SLOW_TAG)

static long
long_attr(PyObject *o, PyObject *name, int *bad)
{
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL) {
        *bad = 1;
        return 0;
    }
    long r = PyLong_CheckExact(v) ? PyLong_AsLong(v) : -1;
    Py_DECREF(v);
    if (r == -1 && PyErr_Occurred())
        *bad = 1;
    return r;
}

static int
call_lock(PyObject *method)
{
    PyObject *r = PyObject_CallNoArgs(method);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static void
drop(PyObject **mvs, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        Py_DECREF(mvs[i]);
}

/* The MVars of seq (a list or tuple) into out, new references (none unless 1 is returned); 1: taken,
 * 0: the Python path's case, -1: error. */
static int
mvars_of(PusherObject *p, PyObject *seq, PyObject **out, Py_ssize_t *n)
{
    if (!PyList_CheckExact(seq) && !PyTuple_CheckExact(seq))
        return 0;
    *n = PySequence_Fast_GET_SIZE(seq);
    if (*n > MAXV)
        return 0;
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < *n; i++) {
        PyObject *mv = PyDict_GetItemWithError(p->vars, items[i]);
        if (mv == NULL) {
            drop(out, i);
            if (PyErr_Occurred()) {  /* unhashable: not a Var; the Python path says so */
                if (!PyErr_ExceptionMatches(PyExc_TypeError))
                    return -1;
                PyErr_Clear();
            }
            return 0;
        }
        for (Py_ssize_t j = 0; j < i; j++)
            if (out[j] == mv) {
                drop(out, i);
                return 0;   /* a duplicate: collapsed by the Python path */
            }
        out[i] = Py_NewRef(mv);   /* (strong: the lock's acquire may let another thread delete it) */
    }
    return 1;
}

static int
set_attr_new(PyObject *o, PyObject *name, PyObject *v)   /* steals v */
{
    if (v == NULL)
        return -1;
    int r = PyObject_SetAttr(o, name, v);
    Py_DECREF(v);
    return r;
}

/* Under the lock: the sequence, the versions, then the op.  SLOW when a var needs a transfer. */
static PyObject *
push_locked(PusherObject *p, PyObject *fn, PyObject *name, PyObject *code, PyObject *prio, PyObject **ws,
            Py_ssize_t nw, PyObject **rs, Py_ssize_t nr, long x)
{
    unsigned long long bit = 1ULL << x;
    PyObject *all[2 * MAXV];
    Py_ssize_t n = 0;
    for (Py_ssize_t i = 0; i < nr; i++)
        all[n++] = rs[i];
    for (Py_ssize_t i = 0; i < nw; i++)
        all[n++] = ws[i];
    PyObject *key = PyTuple_New(4 + n);
    if (key == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *h = PyObject_GetAttr(all[i], s_holders);
        if (h == NULL)
            goto fail;
        unsigned long long held = PyLong_Check(h) ? PyLong_AsUnsignedLongLongMask(h) : 0;
        Py_DECREF(h);
        if (!(held & bit)) {   /* the executing rank lacks this version: the Python path plans it */
            Py_DECREF(key);
            return SLOW;
        }
        PyObject *serial = PyObject_GetAttr(all[i], s_serial);
        if (serial == NULL)
            goto fail;
        PyTuple_SET_ITEM(key, 4 + i, serial);
    }
    long long count = p->count + 1;
    PyObject *last = Py_BuildValue("(OlL)", name, x, count);
    PyObject *h0 = PyLong_FromSsize_t(p->hash), *x0 = PyLong_FromLong(x), *n0 = PyLong_FromSsize_t(nr);
    if (last == NULL || h0 == NULL || x0 == NULL || n0 == NULL) {
        Py_XDECREF(last);
        Py_XDECREF(h0);
        Py_XDECREF(x0);
        Py_XDECREF(n0);
        goto fail;
    }
    PyTuple_SET_ITEM(key, 0, h0);
    Py_INCREF(code);
    PyTuple_SET_ITEM(key, 1, code);
    PyTuple_SET_ITEM(key, 2, x0);
    PyTuple_SET_ITEM(key, 3, n0);
    Py_hash_t hash = PyObject_Hash(key);   /* the Python path's hash((hash, code, x, len(rs), *serials)) */
    Py_DECREF(key);
    if (hash == -1) {
        Py_DECREF(last);
        return NULL;
    }
    p->count = count;
    *p->push_word = count;   /* the progress thread does not spin while this moves (spin.py) */
    p->hash = hash;
    Py_XSETREF(p->last, last);
    if (!p->since_sync) {
        Py_INCREF(last);
        Py_XSETREF(p->first, last);
    }
    p->since_sync++;
    p->taken++;
    for (Py_ssize_t i = 0; i < nw; i++) {
        int bad = 0;
        long gen = long_attr(ws[i], s_gen, &bad);
        if (bad || set_attr_new(ws[i], s_gen, PyLong_FromLong(gen + 1)) < 0 ||
            PyObject_SetAttr(ws[i], s_writer, name) < 0 ||
            set_attr_new(ws[i], s_holders, PyLong_FromUnsignedLongLong(bit)) < 0)
            return NULL;
    }
    PyObject *op;
    if (x != p->rank) {
        return PyObject_CallFunction(p->remote_op, "Ol", name, x);   /* (no part in it: as _plan) */
    }
    PyObject *reads = PyList_New(nr), *writes = PyList_New(nw), *body;
    if (reads == NULL || writes == NULL)
        goto fail_lists;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyObject_GetAttr(all[i], s_var);
        if (v == NULL)
            goto fail_lists;
        if (i < nr)
            PyList_SET_ITEM(reads, i, v);
        else
            PyList_SET_ITEM(writes, i - nr, v);
    }
    if ((PyObject *)Py_TYPE(fn) == p->native_type || p->then_poll == Py_None)
        body = Py_NewRef(fn);
    else if ((body = PyObject_CallFunctionObjArgs(p->then_poll, fn, p->poll, NULL)) == NULL)
        goto fail_lists;
    PyObject *args[5] = {body, reads, writes, name, prio};
    op = PyObject_Vectorcall(p->local_push, args, 5, NULL);
    Py_DECREF(body);
    Py_DECREF(reads);
    Py_DECREF(writes);
    if (op == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < nw; i++)
        if (PyObject_SetAttr(ws[i], s_last, op) < 0) {
            Py_DECREF(op);
            return NULL;
        }
    return op;
fail_lists:
    Py_XDECREF(reads);
    Py_XDECREF(writes);
    return NULL;
fail:
    Py_DECREF(key);
    return NULL;
}

static PyObject *push_vars(PusherObject *p, PyObject **a, PyObject *fn, PyObject *prio, PyObject **ws,
                           Py_ssize_t nw, PyObject **rs, Py_ssize_t nr);

/* a: fn, reads, writes, name, priority (NULL: not given).  A new reference, NULL, or SLOW. */
static PyObject *
push_fast(PusherObject *p, PyObject **a)
{
    static PyObject *empty;
    if (empty == NULL && (empty = PyTuple_New(0)) == NULL)
        return NULL;
    PyObject *fn = a[0], *prio = a[4];
    if (!PyCallable_Check(fn) || (prio != NULL && !PyLong_CheckExact(prio)) ||
        (a[3] != NULL && a[3] != Py_None && !PyUnicode_CheckExact(a[3])))
        return SLOW;
    PyObject *closing = PyObject_GetAttr(p->engine, s_closing), *broken;
    if (closing == NULL)
        return NULL;
    int shut = PyObject_IsTrue(closing);
    Py_DECREF(closing);
    if (shut)
        return shut < 0 ? NULL : SLOW;
    if ((broken = PyObject_GetAttr(p->engine, s_broken)) == NULL)
        return NULL;
    Py_DECREF(broken);
    if (broken != Py_None)
        return SLOW;
    PyObject *ws[MAXV], *rs[MAXV];
    Py_ssize_t nw = 0, nr = 0;
    int got = mvars_of(p, a[2] ? a[2] : empty, ws, &nw);
    if (got == 1 && (got = mvars_of(p, a[1] ? a[1] : empty, rs, &nr)) != 1)
        drop(ws, nw);
    if (got <= 0)
        return got < 0 ? NULL : SLOW;
    PyObject *op = push_vars(p, a, fn, prio, ws, nw, rs, nr);
    drop(ws, nw);
    drop(rs, nr);
    return op;
}

/* push_fast with the vars looked up (strong references the caller drops). */
static PyObject *
push_vars(PusherObject *p, PyObject **a, PyObject *fn, PyObject *prio, PyObject **ws, Py_ssize_t nw,
          PyObject **rs, Py_ssize_t nr)
{
    if (nw == 0)
        return SLOW;
    for (Py_ssize_t i = 0; i < nr; i++)
        for (Py_ssize_t j = 0; j < nw; j++)
            if (rs[i] == ws[j])
                return SLOW;   /* read and written: the Python path drops it from the reads */
    int bad = 0;
    long x = long_attr(ws[0], s_owner, &bad);
    for (Py_ssize_t i = 1; i < nw && !bad; i++)
        if (long_attr(ws[i], s_owner, &bad) != x)
            return bad ? NULL : SLOW;
    if (bad)
        return NULL;
    if (x < 0 || x >= p->size || x >= 62)
        return SLOW;
    PyObject *rec = PyObject_CallNoArgs(p->recorder);
    if (rec == NULL)
        return NULL;
    Py_DECREF(rec);
    if (rec != Py_None)
        return SLOW;   /* a profile records: the Python path logs each op */
    PyObject *name = a[3];
    if (name == NULL || name == Py_None) {
        if ((name = PyObject_CallOneArg(p->name_of, fn)) == NULL)
            return NULL;
    }
    else
        Py_INCREF(name);
    PyObject *code = PyUnicode_CheckExact(name) ? PyDict_GetItemWithError(p->codes, name) : NULL, *op = SLOW;
    if (code == NULL) {   /* a name not seen yet: the Python path computes its code */
        Py_DECREF(name);
        return PyErr_Occurred() ? NULL : SLOW;
    }
    Py_INCREF(code);
    if (prio == NULL)
        prio = PyLong_FromLong(0);
    else
        Py_INCREF(prio);
    if (prio != NULL && call_lock(p->acquire) == 0) {
        op = push_locked(p, fn, name, code, prio, ws, nw, rs, nr, x);
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        if (call_lock(p->release) < 0) {
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(tb);
            if (op != SLOW)
                Py_XDECREF(op);
            op = NULL;
        }
        else
            PyErr_Restore(type, value, tb);
    }
    else
        op = NULL;
    Py_XDECREF(prio);
    Py_DECREF(code);
    Py_DECREF(name);
    return op;
}

static PyObject *
pusher_push(PusherObject *p, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *a[5] = {NULL, NULL, NULL, NULL, NULL};
    PyObject *const keys[5] = {NULL, s_reads, s_writes, s_name, s_priority};
    if (nargs < 1 || nargs > 5)
        goto slow;
    for (Py_ssize_t i = 0; i < nargs; i++)
        a[i] = args[i];
    if (kwnames != NULL) {
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(kwnames); k++) {
            PyObject *kw = PyTuple_GET_ITEM(kwnames, k);
            int at = 0;
            for (int j = 1; j < 5 && !at; j++)
                if (kw == keys[j] || PyUnicode_Compare(kw, keys[j]) == 0)
                    at = j;
            if (!at || a[at] != NULL)
                goto slow;
            a[at] = args[nargs + k];
        }
    }
    PyObject *op = push_fast(p, a);
    if (op != SLOW)
        return op;
slow:
    return PyObject_Vectorcall(p->slow, args, nargs, kwnames);
}

static PyObject *
pusher_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    PyObject *o[13];
    int rank, size;
    if (!PyArg_ParseTuple(args, "OO!O!OOOOOOOOOOii:MpiPusher", &o[0], &PyDict_Type, &o[1], &PyDict_Type, &o[2],
                          &o[3], &o[4], &o[5], &o[6], &o[7], &o[8], &o[9], &o[10], &o[11], &o[12], &rank, &size))
        return NULL;
    PyObject *word = PyObject_GetAttrString(o[12], "ctypes");
    PyObject *addr = word == NULL ? NULL : PyObject_GetAttrString(word, "data");
    Py_XDECREF(word);
    if (addr == NULL)
        return NULL;
    i64 *push_word = PyLong_AsVoidPtr(addr);
    Py_DECREF(addr);
    if (push_word == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "MpiPusher: a NULL push word");
        return NULL;
    }
    if (rank < 0 || rank >= size) {
        PyErr_SetString(PyExc_ValueError, "MpiPusher: rank outside [0, size)");
        return NULL;
    }
    PyObject *acquire = PyObject_GetAttr(o[3], s_acquire), *release = PyObject_GetAttr(o[3], s_release);
    PusherObject *p = acquire && release ? (PusherObject *)type->tp_alloc(type, 0) : NULL;
    if (p == NULL) {
        Py_XDECREF(acquire);
        Py_XDECREF(release);
        return NULL;
    }
    p->acquire = acquire;
    p->release = release;
    PyObject **slots[13] = {&p->engine, &p->vars, &p->codes, &p->lock, &p->local_push, &p->remote_op,
                            &p->then_poll, &p->poll, &p->slow, &p->name_of, &p->recorder, &p->native_type,
                            &p->words};
    for (int i = 0; i < 13; i++)
        *slots[i] = Py_NewRef(o[i]);
    p->push_word = push_word;
    p->rank = rank;
    p->size = size;
    p->first = Py_NewRef(Py_None);
    p->last = Py_NewRef(Py_None);
    return (PyObject *)p;
}

#define PUSHER_OBJECTS(X) X(engine) X(vars) X(codes) X(lock) X(local_push) X(remote_op) X(then_poll) X(poll) \
    X(slow) X(name_of) X(recorder) X(native_type) X(words) X(first) X(last) X(acquire) X(release)

static int
pusher_traverse(PusherObject *p, visitproc visit, void *arg)
{
#define VISIT(f) Py_VISIT(p->f);
    PUSHER_OBJECTS(VISIT)
    return 0;
}

static int
pusher_clear(PusherObject *p)
{
#define CLEAR(f) Py_CLEAR(p->f);
    PUSHER_OBJECTS(CLEAR)
    return 0;
}

static void
pusher_dealloc(PusherObject *p)
{
    PyObject_GC_UnTrack(p);
    pusher_clear(p);
    Py_TYPE(p)->tp_free((PyObject *)p);
}

static PyMemberDef pusher_members[] = {
    {"count", T_LONGLONG, offsetof(PusherObject, count), 0, "pushes and new_var calls so far"},
    {"hash", T_PYSSIZET, offsetof(PusherObject, hash), 0, "the running hash of the op sequence"},
    {"since_sync", T_LONGLONG, offsetof(PusherObject, since_sync), 0, "pushes since the last check"},
    {"first", T_OBJECT, offsetof(PusherObject, first), 0, "the first push since the last check"},
    {"last", T_OBJECT, offsetof(PusherObject, last), 0, "the last push"},
    {"taken", T_LONGLONG, offsetof(PusherObject, taken), READONLY, "pushes done in C"},
    {NULL},
};

static PyMethodDef pusher_methods[] = {
    {"push", (PyCFunction)(void (*)(void))pusher_push, METH_FASTCALL | METH_KEYWORDS,
     "MpiEngine.push: the common case in C, anything else through the Python path."},
    {NULL},
};

PyTypeObject MpiPusherType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "depengine._core.MpiPusher",
    .tp_basicsize = sizeof(PusherObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "MpiPusher(engine, vars, codes, lock, local_push, RemoteOp, ThenPoll, poll, slow, name_of, "
              "active_recorder, Native, push_word, rank, size): the mpi engine's push in C, and its op sequence.",
    .tp_new = pusher_new,
    .tp_traverse = (traverseproc)pusher_traverse,
    .tp_clear = (inquiry)pusher_clear,
    .tp_dealloc = (destructor)pusher_dealloc,
    .tp_members = pusher_members,
    .tp_methods = pusher_methods,
};

int
mpi_push_ready(PyObject *m)
{
    struct { PyObject **slot; const char *text; } strings[] = {
        {&s_owner, "owner"}, {&s_holders, "holders"}, {&s_serial, "serial"},
        {&s_gen, "gen"}, {&s_writer, "writer"}, {&s_last, "last"}, {&s_var, "var"}, {&s_closing, "_closing"},
        {&s_broken, "_broken"}, {&s_acquire, "acquire"}, {&s_release, "release"}, {&s_reads, "reads"},
        {&s_writes, "writes"}};
    for (size_t i = 0; i < sizeof strings / sizeof strings[0]; i++)
        if ((*strings[i].slot = PyUnicode_InternFromString(strings[i].text)) == NULL)
            return -1;
    if (PyType_Ready(&MpiPusherType) < 0)
        return -1;
    return PyModule_AddObjectRef(m, "MpiPusher", (PyObject *)&MpiPusherType);
}
