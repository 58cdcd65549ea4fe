/* A recorded plan of native op bodies, replayed by the core's workers without the GIL.
 *
 * depengine/plan.py makes one (NativePlan) for a plan whose every member is a native body in C
 * form, and runs it instead of the plan's Python chunks while nothing has failed and no profiler
 * records.  A worker runs a chunk's calls in order without the GIL, counts down the chunks that
 * follow it and queues those that became ready, all in C; Python runs twice per replay, to start
 * it (plan._start) and to finish it (the plan op's done).
 *
 * Failures keep the composite rules of depengine/_composite.py: a member that returns non-zero
 * hands the rest of its chunk to Python (run.native_failed(chunk, index, code)) and makes the rest
 * of the run careful: chunks started after that run through Python (run.run_chunk(chunk)), which
 * skips the dependents of failed vars.  Careful is set under core->mu before the failed chunk
 * releases its successors, so every dependent of a failure sees it.
 */
#include "_core.h"

typedef struct {
    native_fn fn;
    void *arg;
} Call;

typedef struct PlanObject PlanObject;

struct PlanObject {
    PyObject_HEAD
    Core *core;              /* strong */
    PyObject *keep;          /* the Native objects: they own the functions' arguments */
    PyObject *run;           /* the current run (plan._Run), strong; NULL between runs */
    Py_ssize_t n;            /* chunks */
    Call *calls;             /* chunk g's calls are calls[first[g] .. first[g + 1]) */
    Py_ssize_t *first;
    Py_ssize_t *succ;        /* chunk g's successors are succ[sfirst[g] .. sfirst[g + 1]) */
    Py_ssize_t *sfirst;
    i64 *npred, *counters;   /* counters: mu */
    Py_ssize_t *order;       /* a topological order, for runs on one thread */
    PyObject **items;        /* one PlanChunk per chunk, strong: what the ready queues hold */
    i64 remaining;           /* mu: chunks of this run not finished */
    int careful;             /* mu: a member failed in this run */
};

typedef struct {
    PyObject_HEAD
    PlanObject *plan;        /* borrowed: the plan owns its chunks */
    Py_ssize_t g;
} ChunkObject;

PyTypeObject PlanChunkType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "depengine._core.PlanChunk",
    .tp_basicsize = sizeof(ChunkObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One chunk of a NativePlan, as the ready queues hold it.",
};

/* --------------------------------------------------------------- building */

static Py_ssize_t *
index_list(PyObject *seq, Py_ssize_t bound, const char *what)   /* a list of ints in [0, bound) */
{
    Py_ssize_t n = PyList_GET_SIZE(seq);
    Py_ssize_t *out = PyMem_Malloc((n + 1) * sizeof(Py_ssize_t));
    if (out == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t k = PyLong_AsSsize_t(PyList_GET_ITEM(seq, i));
        if (k < 0 || k >= bound) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError, "NativePlan: %s %zd is not a chunk", what, k);
            PyMem_Free(out);
            return NULL;
        }
        out[i] = k;
    }
    return out;
}

static int
build(PlanObject *p, PyObject *chunks, PyObject *succ, PyObject *order)
{
    Py_ssize_t n = p->n, ncalls = 0, nsucc = 0;
    for (Py_ssize_t g = 0; g < n; g++) {
        PyObject *c = PyList_GET_ITEM(chunks, g), *s = PyList_GET_ITEM(succ, g);
        if (!PyList_Check(c) || !PyList_Check(s)) {
            PyErr_SetString(PyExc_TypeError, "NativePlan: chunks and successors are lists of lists");
            return -1;
        }
        ncalls += PyList_GET_SIZE(c);
        nsucc += PyList_GET_SIZE(s);
    }
    p->calls = PyMem_Malloc((ncalls + 1) * sizeof(Call));
    p->first = PyMem_Malloc((n + 1) * sizeof(Py_ssize_t));
    p->succ = PyMem_Malloc((nsucc + 1) * sizeof(Py_ssize_t));
    p->sfirst = PyMem_Malloc((n + 1) * sizeof(Py_ssize_t));
    p->npred = PyMem_Calloc(n + 1, sizeof(i64));
    p->counters = PyMem_Calloc(n + 1, sizeof(i64));
    p->items = PyMem_Calloc(n + 1, sizeof(PyObject *));
    if (!p->calls || !p->first || !p->succ || !p->sfirst || !p->npred || !p->counters || !p->items) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t k = 0, j = 0;
    for (Py_ssize_t g = 0; g < n; g++) {
        PyObject *c = PyList_GET_ITEM(chunks, g), *s = PyList_GET_ITEM(succ, g);
        p->first[g] = k;
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(c); i++, k++) {
            PyObject *body = PyList_GET_ITEM(c, i);
            if (!Py_IS_TYPE(body, &NativeType)) {
                PyErr_Format(PyExc_TypeError, "NativePlan: member %R is not a native body", body);
                return -1;
            }
            if (PyList_Append(p->keep, body) < 0)
                return -1;
            p->calls[k] = (Call){((NativeObject *)body)->fn, ((NativeObject *)body)->arg};
        }
        p->sfirst[g] = j;
        Py_ssize_t *s_ix = index_list(s, n, "successor");
        if (s_ix == NULL)
            return -1;
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(s); i++, j++) {
            p->succ[j] = s_ix[i];
            p->npred[s_ix[i]]++;
        }
        PyMem_Free(s_ix);
        ChunkObject *item = PyObject_New(ChunkObject, &PlanChunkType);
        if (item == NULL)
            return -1;
        item->plan = p;
        item->g = g;
        p->items[g] = (PyObject *)item;
    }
    p->first[n] = k;
    p->sfirst[n] = j;
    if (PyList_GET_SIZE(order) != n) {
        PyErr_SetString(PyExc_ValueError, "NativePlan: the order names every chunk once");
        return -1;
    }
    p->order = index_list(order, n, "order entry");
    return p->order == NULL ? -1 : 0;
}

/* NativePlan(core, chunks, successors, order): chunks a list of lists of native bodies, successors
 * a list of lists of chunk indices, order a topological order of the chunks. */
static PyObject *
plan_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    PyObject *core, *chunks, *succ, *order;
    if (!PyArg_ParseTuple(args, "O!O!O!O!:NativePlan", &CoreType, &core, &PyList_Type, &chunks,
                          &PyList_Type, &succ, &PyList_Type, &order))
        return NULL;
    if (PyList_GET_SIZE(succ) != PyList_GET_SIZE(chunks)) {
        PyErr_SetString(PyExc_ValueError, "NativePlan: one list of successors per chunk");
        return NULL;
    }
    PlanObject *p = (PlanObject *)type->tp_alloc(type, 0);
    if (p == NULL)
        return NULL;
    p->core = (Core *)Py_NewRef(core);
    p->n = PyList_GET_SIZE(chunks);
    p->keep = PyList_New(0);
    if (p->keep == NULL || build(p, chunks, succ, order) < 0) {
        Py_DECREF(p);
        return NULL;
    }
    return (PyObject *)p;
}

static int
plan_traverse(PlanObject *p, visitproc visit, void *arg)
{
    Py_VISIT(p->core);
    Py_VISIT(p->keep);
    Py_VISIT(p->run);
    return 0;
}

static int
plan_clear(PlanObject *p)
{
    Py_CLEAR(p->core);
    Py_CLEAR(p->keep);
    Py_CLEAR(p->run);
    return 0;
}

static void
plan_dealloc(PlanObject *p)
{
    PyObject_GC_UnTrack(p);
    plan_clear(p);
    for (Py_ssize_t g = 0; p->items && g < p->n; g++)
        Py_XDECREF(p->items[g]);
    PyMem_Free(p->items);
    PyMem_Free(p->calls);
    PyMem_Free(p->first);
    PyMem_Free(p->succ);
    PyMem_Free(p->sfirst);
    PyMem_Free(p->npred);
    PyMem_Free(p->counters);
    PyMem_Free(p->order);
    Py_TYPE(p)->tp_free((PyObject *)p);
}

/* ------------------------------------------------------------ one chunk */

/* Run chunk item's calls unless the run is careful.  No GIL.  0: all returned 0; 1: the call at
 * *at returned *code (the calls after it did not run); 2: careful, nothing ran. */
int
plan_chunk_run(PyObject *item, Py_ssize_t *at, int32_t *code)
{
    ChunkObject *ch = (ChunkObject *)item;
    PlanObject *p = ch->plan;
    pthread_mutex_lock(&p->core->mu);
    int careful = p->careful;
    pthread_mutex_unlock(&p->core->mu);
    if (careful)
        return 2;
    Call *calls = p->calls;
    for (Py_ssize_t k = p->first[ch->g], end = p->first[ch->g + 1]; k < end; k++) {
        int32_t r = calls[k].fn(calls[k].arg);
        if (r != 0) {
            *at = k - p->first[ch->g];
            *code = r;
            return 1;
        }
    }
    return 0;
}

/* Hand chunk item to Python after plan_chunk_run returned status 1 or 2.  GIL. */
int
plan_chunk_python(PyObject *item, int status, Py_ssize_t at, int32_t code)
{
    ChunkObject *ch = (ChunkObject *)item;
    PlanObject *p = ch->plan;
    PyObject *res;
    if (status == 1) {
        pthread_mutex_lock(&p->core->mu);
        p->careful = 1;
        pthread_mutex_unlock(&p->core->mu);
        res = PyObject_CallMethod(p->run, "native_failed", "nni", ch->g, at, (int)code);
    }
    else
        res = PyObject_CallMethod(p->run, "run_chunk", "n", ch->g);
    Py_XDECREF(res);
    return res == NULL ? -1 : 0;
}

/* Chunk item finished: queue its successors that became ready on pool (one of them, or the head
 * of pool, is returned for this worker to run next).  *last_run: this was the run's last chunk;
 * the caller then calls plan_finish(*last_run) with the GIL.  No GIL, mu not held. */
PyObject *
plan_chunk_done(Core *c, PyObject *item, int pool, PyObject **last_run)
{
    ChunkObject *ch = (ChunkObject *)item;
    PlanObject *p = ch->plan;
    Pool *mine = &c->pools[pool];
    PyObject *next = NULL;
    pthread_mutex_lock(&c->mu);
    int empty = pool_empty(mine);
    for (Py_ssize_t k = p->sfirst[ch->g]; k < p->sfirst[ch->g + 1]; k++) {
        Py_ssize_t s = p->succ[k];
        if (--p->counters[s])
            continue;
        if (next == NULL && empty)
            next = p->items[s];
        else if (pool_put(mine, p->items[s], 0) < 0) {
            fprintf(stderr, "depengine._core: out of memory queueing plan chunks\n");
            abort();
        }
    }
    *last_run = NULL;
    if (--p->remaining == 0) {   /* the run ends: take it, so nothing here touches p after */
        *last_run = p->run;
        p->run = NULL;
    }
    if (next == NULL)
        next = pool_take(mine);
    pthread_mutex_unlock(&c->mu);
    return next;
}

/* The run's last chunk finished: run.finish() completes the plan op.  GIL. */
int
plan_finish(PyObject *run)
{
    PyObject *res = PyObject_CallMethod(run, "finish", NULL);
    Py_DECREF(run);
    Py_XDECREF(res);
    return res == NULL ? -1 : 0;
}

/* ---------------------------------------------------------------- methods */

static int
begin(PlanObject *p, PyObject *run)   /* GIL */
{
    if (p->run != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "NativePlan: a run is already in progress");
        return -1;
    }
    pthread_mutex_lock(&p->core->mu);
    memcpy(p->counters, p->npred, p->n * sizeof(i64));
    p->remaining = p->n;
    p->careful = 0;
    pthread_mutex_unlock(&p->core->mu);
    p->run = Py_NewRef(run);
    return 0;
}

/* start(run): queue the chunks with no predecessor on the CPU pool; the workers do the rest and
 * call run.finish() after the last chunk.  A plan without chunks finishes at once.  GIL. */
static PyObject *
plan_start(PlanObject *p, PyObject *run)
{
    if (begin(p, run) < 0)
        return NULL;
    if (p->n == 0) {
        PyObject *r = p->run;
        p->run = NULL;
        return plan_finish(r) < 0 ? NULL : Py_NewRef(Py_None);
    }
    Core *c = p->core;
    pthread_mutex_lock(&c->mu);
    int oom = 0;
    for (Py_ssize_t g = 0; g < p->n; g++)
        if (p->npred[g] == 0)
            oom |= pool_put(&c->pools[POOL_CPU], p->items[g], 0) < 0;
    pthread_mutex_unlock(&c->mu);
    if (oom) {
        fprintf(stderr, "depengine._core: out of memory queueing plan chunks\n");
        abort();   /* chunks already queued would run against a run that was given up */
    }
    Py_RETURN_NONE;
}

/* serial(run): run every chunk on this thread in topological order, the calls without the GIL.
 * The caller finishes the run.  GIL. */
static PyObject *
plan_serial(PlanObject *p, PyObject *run)
{
    if (begin(p, run) < 0)
        return NULL;
    for (Py_ssize_t i = 0; i < p->n; i++) {
        PyObject *item = p->items[p->order[i]];
        Py_ssize_t at = 0;
        int32_t code = 0;
        int status;
        Py_BEGIN_ALLOW_THREADS
        status = plan_chunk_run(item, &at, &code);   /* 2 once a member failed: careful */
        Py_END_ALLOW_THREADS
        if (status && plan_chunk_python(item, status, at, code) < 0) {
            Py_CLEAR(p->run);
            return NULL;
        }
    }
    Py_CLEAR(p->run);
    Py_RETURN_NONE;
}

static PyObject *
plan_get_chunks(PlanObject *p, void *c)
{
    return PyLong_FromSsize_t(p->n);
}

static PyMethodDef plan_methods[] = {
    {"start", (PyCFunction)plan_start, METH_O, "Queue the first chunks of a run on the CPU pool."},
    {"serial", (PyCFunction)plan_serial, METH_O, "Run every chunk on this thread, in order."},
    {NULL},
};

static PyGetSetDef plan_getset[] = {
    {"chunks", (getter)plan_get_chunks, NULL, "number of chunks", NULL},
    {NULL},
};

PyTypeObject NativePlanType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "depengine._core.NativePlan",
    .tp_basicsize = sizeof(PlanObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A recorded plan of native bodies, replayed by the core without the GIL.",
    .tp_new = plan_new,
    .tp_traverse = (traverseproc)plan_traverse,
    .tp_clear = (inquiry)plan_clear,
    .tp_dealloc = (destructor)plan_dealloc,
    .tp_methods = plan_methods,
    .tp_getset = plan_getset,
};
