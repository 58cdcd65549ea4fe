/* ops._native's buffer pool: the free lists of ops.memory in C (see ops/memory.py for the rules).
 *
 *   pool_take(nbytes)      a free (owner, address, nbytes) entry nothing else refers to, or None
 *   pool_taken(nbytes, stalled)
 *                          count a buffer allocated fresh (a miss); stalled: stop waiting for the size
 *   pool_give(entry)       take an entry back (1), or drop it (0: full, over the limit); a Store's
 *                          dealloc does this, then calls the notify hook while pushers wait
 *   pool_live(nbytes)      (buffers of that size in use, stalled)
 *   pool_stats()/pool_trim()/pool_configure(limit, per_size, notify)/pool_waiting(delta)
 *   Store(entry)           keeps an entry alive for an array, its views and its ops; gives it back
 *
 * Each call runs under one mutex and calls no Python code while it holds it; entries dropped or
 * trimmed are released after it is let go.  An owner array whose reference count is more than the
 * entry's own (a NumPy view of the memory exported through DLPack, say) is never handed out again.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdlib.h>

typedef struct {
    PyObject_HEAD
    PyObject *entry;
} Store;

PyTypeObject PoolStoreType;

typedef struct {
    Py_ssize_t nbytes;   /* 0: an empty slot of the table */
    Py_ssize_t live;     /* buffers of this size handed out and not yet given back */
    int stalled;         /* a pusher waited for one in vain: no more waits until one comes back */
    Py_ssize_t nfree, cap;
    PyObject **free;     /* entries (tuples), most recent last */
} SizeClass;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static SizeClass *table;          /* open addressing on nbytes, capacity a power of two */
static Py_ssize_t tcap, tused;
static Py_ssize_t total_bytes, limit = 256 << 20, per_size = 64;
static long long hits, misses, dropped;
static long waiting;              /* pushers waiting for a buffer (ops.memory counts them) */
static PyObject *notify;          /* called (no arguments) when a buffer comes back while some wait */

static SizeClass *
find(Py_ssize_t nbytes, int create)   /* mu held */
{
    if (tcap == 0 || (create && 2 * (tused + 1) > tcap)) {
        if (!create)
            return NULL;
        Py_ssize_t ncap = tcap ? 2 * tcap : 64;
        SizeClass *nt = calloc((size_t)ncap, sizeof(SizeClass));
        if (nt == NULL)
            return NULL;
        for (Py_ssize_t i = 0; i < tcap; i++) {
            if (table[i].nbytes == 0)
                continue;
            Py_ssize_t j = (Py_ssize_t)((size_t)table[i].nbytes * 0x9E3779B97F4A7C15ull >> 7) & (ncap - 1);
            while (nt[j].nbytes != 0)
                j = (j + 1) & (ncap - 1);
            nt[j] = table[i];
        }
        free(table);
        table = nt;
        tcap = ncap;
    }
    Py_ssize_t j = (Py_ssize_t)((size_t)nbytes * 0x9E3779B97F4A7C15ull >> 7) & (tcap - 1);
    while (table[j].nbytes != 0) {
        if (table[j].nbytes == nbytes)
            return &table[j];
        j = (j + 1) & (tcap - 1);
    }
    if (!create)
        return NULL;
    table[j].nbytes = nbytes;
    tused++;
    return &table[j];
}

/* A free entry of nbytes (a new reference), or NULL (no exception): none. */
PyObject *
pool_take_entry(Py_ssize_t nbytes)
{
    PyObject *got = NULL, *stale[8];
    int nstale = 0;
    pthread_mutex_lock(&mu);
    SizeClass *sc = find(nbytes, 0);
    while (sc != NULL && sc->nfree > 0 && got == NULL) {
        PyObject *entry = sc->free[--sc->nfree];
        total_bytes -= nbytes;
        if (Py_REFCNT(PyTuple_GET_ITEM(entry, 0)) == 1) {   /* only the entry holds the owner */
            got = entry;
            sc->live++;
            hits++;
        } else {
            dropped++;
            if (nstale < 8)
                stale[nstale++] = entry;
            else {
                sc->free[sc->nfree++] = entry;   /* (later: release what is collected first) */
                total_bytes += nbytes;
                break;
            }
        }
    }
    pthread_mutex_unlock(&mu);
    for (int i = 0; i < nstale; i++)
        Py_DECREF(stale[i]);
    return got;   /* the table's reference, handed over */
}

static PyObject *
pool_take(PyObject *self, PyObject *arg)
{
    Py_ssize_t nbytes = PyLong_AsSsize_t(arg);
    if (nbytes <= 0)
        return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_ValueError, "pool_take(%zd)", nbytes);
    PyObject *got = pool_take_entry(nbytes);
    if (got == NULL)
        Py_RETURN_NONE;
    return got;
}

/* A Store keeping entry (borrowed) alive. */
PyObject *
pool_store(PyObject *entry)
{
    Store *s = PyObject_New(Store, &PoolStoreType);
    if (s != NULL)
        s->entry = Py_NewRef(entry);
    return (PyObject *)s;
}

static PyObject *
pool_taken(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t nbytes;
    if (nargs != 2 || (nbytes = PyLong_AsSsize_t(args[0])) < 0)
        return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_TypeError, "pool_taken(nbytes, stalled)");
    int stalled = PyObject_IsTrue(args[1]);
    pthread_mutex_lock(&mu);
    SizeClass *sc = find(nbytes, 1);
    if (sc != NULL) {
        sc->live++;
        if (stalled)
            sc->stalled = 1;
        misses++;
    }
    pthread_mutex_unlock(&mu);
    if (sc == NULL)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* Take entry back: 1 kept, 0 dropped (the caller's reference then frees it), -1 an error. */
static int
give(PyObject *entry)
{
    if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 3) {
        PyErr_SetString(PyExc_TypeError, "pool_give: expected an (owner, address, nbytes) entry");
        return -1;
    }
    Py_ssize_t nbytes = PyLong_AsSsize_t(PyTuple_GET_ITEM(entry, 2));
    if (nbytes <= 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "pool_give: an entry of no bytes");
        return -1;
    }
    int kept = 0;
    pthread_mutex_lock(&mu);
    SizeClass *sc = find(nbytes, 1);
    if (sc != NULL) {
        sc->live--;
        sc->stalled = 0;
        if (sc->nfree < per_size && total_bytes + nbytes <= limit) {
            if (sc->nfree == sc->cap) {
                Py_ssize_t ncap = sc->cap ? 2 * sc->cap : 4;
                PyObject **nf = realloc(sc->free, (size_t)ncap * sizeof(PyObject *));
                if (nf != NULL) {
                    sc->free = nf;
                    sc->cap = ncap;
                }
            }
            if (sc->nfree < sc->cap) {
                sc->free[sc->nfree++] = Py_NewRef(entry);
                total_bytes += nbytes;
                kept = 1;
            }
        }
        if (!kept)
            dropped++;
    }
    pthread_mutex_unlock(&mu);
    return kept;
}

static PyObject *
pool_give(PyObject *self, PyObject *entry)
{
    int kept = give(entry);
    return kept < 0 ? NULL : PyBool_FromLong(kept);
}

static PyObject *
pool_live(PyObject *self, PyObject *arg)
{
    Py_ssize_t nbytes = PyLong_AsSsize_t(arg);
    if (nbytes == -1 && PyErr_Occurred())
        return NULL;
    pthread_mutex_lock(&mu);
    SizeClass *sc = find(nbytes, 0);
    Py_ssize_t live = sc ? sc->live : 0;
    int stalled = sc ? sc->stalled : 0;
    pthread_mutex_unlock(&mu);
    return Py_BuildValue("(nO)", live, stalled ? Py_True : Py_False);
}

static PyObject *
pool_stats(PyObject *self, PyObject *unused)
{
    pthread_mutex_lock(&mu);
    Py_ssize_t buffers = 0;
    for (Py_ssize_t i = 0; i < tcap; i++)
        buffers += table[i].nfree;
    Py_ssize_t bytes = total_bytes, lim = limit;
    long long h = hits, m = misses, d = dropped;
    pthread_mutex_unlock(&mu);
    return Py_BuildValue("{snsnsnsLsLsL}", "bytes", bytes, "buffers", buffers, "limit", lim, "hits", h,
                         "misses", m, "dropped", d);
}

static PyObject *
pool_trim(PyObject *self, PyObject *unused)
{
    PyObject *gone = PyList_New(0);   /* released after mu */
    if (gone == NULL)
        return NULL;
    pthread_mutex_lock(&mu);
    int failed = 0;
    for (Py_ssize_t i = 0; i < tcap; i++) {
        SizeClass *sc = &table[i];
        while (sc->nfree > 0) {
            PyObject *entry = sc->free[--sc->nfree];
            if (!failed && PyList_Append(gone, entry) < 0)
                failed = 1;   /* (leak the rest rather than run Python code under mu) */
            Py_DECREF(entry); /* the list holds it (or it leaks above) */
        }
    }
    total_bytes = 0;
    pthread_mutex_unlock(&mu);
    Py_DECREF(gone);
    if (failed)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
pool_configure(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3)
        return PyErr_Format(PyExc_TypeError, "pool_configure(limit, per_size, notify)");
    Py_ssize_t lim = PyLong_AsSsize_t(args[0]), per = PyLong_AsSsize_t(args[1]);
    if ((lim == -1 || per == -1) && PyErr_Occurred())
        return NULL;
    PyObject *old = notify;
    notify = args[2] == Py_None ? NULL : Py_NewRef(args[2]);
    Py_XDECREF(old);
    pthread_mutex_lock(&mu);
    limit = lim;
    per_size = per;
    pthread_mutex_unlock(&mu);
    Py_RETURN_NONE;
}

static PyObject *
pool_waiting(PyObject *self, PyObject *arg)
{
    long delta = PyLong_AsLong(arg);
    if (delta == -1 && PyErr_Occurred())
        return NULL;
    __atomic_add_fetch(&waiting, delta, __ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- Store */

static PyObject *
store_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *entry;
    if (!PyArg_ParseTuple(args, "O!:Store", &PyTuple_Type, &entry))
        return NULL;
    Store *s = (Store *)type->tp_alloc(type, 0);
    if (s != NULL)
        s->entry = Py_NewRef(entry);
    return (PyObject *)s;
}

static void
store_dealloc(Store *s)
{
    PyObject *entry = s->entry;
    s->entry = NULL;
    Py_TYPE(s)->tp_free((PyObject *)s);
    if (entry == NULL)
        return;
    PyObject *et, *ev, *tb;   /* a dealloc may run while an exception is set: keep it */
    PyErr_Fetch(&et, &ev, &tb);
    int kept = give(entry);
    if (kept < 0)
        PyErr_WriteUnraisable(entry);
    Py_DECREF(entry);
    if (kept > 0 && notify != NULL && __atomic_load_n(&waiting, __ATOMIC_SEQ_CST) > 0) {
        PyObject *r = PyObject_CallNoArgs(notify);
        if (r == NULL)
            PyErr_WriteUnraisable(notify);
        Py_XDECREF(r);
    }
    PyErr_Restore(et, ev, tb);
}

static PyObject *
store_entry(Store *s, void *closure)
{
    return Py_NewRef(s->entry ? s->entry : Py_None);
}

static PyGetSetDef store_getset[] = {
    {"entry", (getter)store_entry, NULL, "(owner, address, nbytes) of the pooled buffer", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject PoolStoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ops._native.Store",
    .tp_basicsize = sizeof(Store),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Keeps a pooled buffer alive for an array, its views and its ops; gives it back after.",
    .tp_new = store_new,
    .tp_dealloc = (destructor)store_dealloc,
    .tp_getset = store_getset,
};

PyMethodDef pool_methods[] = {
    {"pool_take", pool_take, METH_O, "pool_take(nbytes): a free entry, or None."},
    {"pool_taken", (PyCFunction)(void (*)(void))pool_taken, METH_FASTCALL,
     "pool_taken(nbytes, stalled): count a fresh allocation."},
    {"pool_give", pool_give, METH_O, "pool_give(entry): True if kept."},
    {"pool_live", pool_live, METH_O, "pool_live(nbytes): (in use, stalled)."},
    {"pool_stats", pool_stats, METH_NOARGS, "pool_stats(): the counters."},
    {"pool_trim", pool_trim, METH_NOARGS, "pool_trim(): free every kept buffer."},
    {"pool_configure", (PyCFunction)(void (*)(void))pool_configure, METH_FASTCALL,
     "pool_configure(limit, per_size, notify)."},
    {"pool_waiting", pool_waiting, METH_O, "pool_waiting(delta): pushers now waiting."},
    {NULL, NULL, 0, NULL},
};
