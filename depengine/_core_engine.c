/* The compiled core: the Core object, completion and failures; with the files it includes,
 * the var transitions (_core_transitions.c.h), registration (_core_push.c.h) and the waits
 * (_core_waits.c.h), one translation unit so that the hot path inlines.
 *
 * Each function says what it needs: "mu" (core->mu held), "GIL", or "no GIL".
 * Completion follows Engine._complete in depengine/_engine.py step by step.
 */
#include "_core.h"
#include <limits.h>
#include <stdlib.h>
#include <time.h>

#include "_core_transitions.c.h"

/* ----------------------------------------------------- the core object */

static PyObject *
hook(Core *c, int i)   /* borrowed; None when the engine has no such hook */
{
    return PyTuple_GET_ITEM(c->hooks, i);
}
enum { H_CAPTURE, H_PLACE, H_ROUTE_GPU, H_PREPARE, H_STREAM_DONE, NHOOKS };

static PyObject *
core_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *names[] = {"engine", "type", "hooks", "cpu", "debug", NULL};
    PyObject *engine, *hooks, *cpu;
    int etype, debug = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OiO!O|p:Core", names, &engine, &etype, &PyTuple_Type, &hooks,
                                     &cpu, &debug))
        return NULL;
    if (PyTuple_GET_SIZE(hooks) != NHOOKS) {
        PyErr_Format(PyExc_TypeError, "Core: hooks must be a tuple of %d callables or None", NHOOKS);
        return NULL;
    }
    Core *c = (Core *)type->tp_alloc(type, 0);
    if (c == NULL)
        return NULL;
    c->engine = engine;
    c->type = etype;
    c->debug = debug;
    const char *spin = getenv("DEPENGINE_SPIN_US");
    c->spin_ns = spin && *spin ? (i64)(atof(spin) * 1000) : 20000;
    c->hooks = Py_NewRef(hooks);
    c->cpu = Py_NewRef(cpu);
    c->unreported = PyList_New(0);
    c->epoch = PyMem_RawCalloc(1, sizeof(Epoch));
    c->depth = PyThread_tss_alloc();
    if (c->unreported == NULL || c->epoch == NULL || c->depth == NULL || PyThread_tss_create(c->depth)) {
        Py_DECREF(c);
        return PyErr_NoMemory();
    }
    core_mutex_init(&c->mu);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&c->cv, &attr);
    pthread_condattr_destroy(&attr);
    for (int i = 0; i < NPOOLS; i++)
        if (pool_init(&c->pools[i]) < 0) {
            Py_DECREF(c);
            return PyErr_NoMemory();
        }
    /* perdevice: normal, prioritized, copy, async -> cpu, prio, copy, cpu (Python may move prio to cpu) */
    c->pool_of_kind[0] = POOL_CPU;
    c->pool_of_kind[1] = etype == T_PERDEVICE ? POOL_PRIO : POOL_CPU;
    c->pool_of_kind[2] = etype == T_PERDEVICE ? POOL_COPY : POOL_CPU;
    c->pool_of_kind[3] = POOL_CPU;
    return (PyObject *)c;
}

static int
core_traverse(Core *c, visitproc visit, void *arg)
{
    Py_VISIT(c->hooks);
    Py_VISIT(c->cpu);
    Py_VISIT(c->prof);
    Py_VISIT(c->store);
    Py_VISIT(c->unreported);
    Py_VISIT(c->lane);
    Py_VISIT(c->poll_fn);
    return 0;
}

static int
core_clear(Core *c)
{
    Py_CLEAR(c->hooks);
    Py_CLEAR(c->cpu);
    Py_CLEAR(c->prof);
    Py_CLEAR(c->store);
    Py_CLEAR(c->unreported);
    c->poll_flag = c->kick = NULL;
    Py_CLEAR(c->lane);
    Py_CLEAR(c->poll_fn);
    return 0;
}

static void
core_dealloc(Core *c)
{
    PyObject_GC_UnTrack(c);
    if (c->weakrefs)
        PyObject_ClearWeakRefs((PyObject *)c);
    core_drain(c);
    core_clear(c);
    for (int i = 0; i < NPOOLS; i++)
        pool_free(&c->pools[i]);
    while (c->closed_epochs) {
        Epoch *e = c->closed_epochs;
        c->closed_epochs = e->next;
        PyMem_RawFree(e);
    }
    PyMem_RawFree(c->epoch);
    PyMem_Free(c->naive);
    if (c->depth) {
        PyThread_tss_delete(c->depth);
        PyThread_tss_free(c->depth);
    }
    Py_TYPE(c)->tp_free((PyObject *)c);
}

/* ------------------------------------------------------- in an op? */

int
core_in_op(Core *c)
{
    return c->depth && PyThread_tss_get(c->depth) != NULL;
}

void
depth_add(Core *c, long delta)
{
    intptr_t d = (intptr_t)PyThread_tss_get(c->depth) + delta;
    PyThread_tss_set(c->depth, (void *)d);
}

/* --------------------------------------------------------- release */

/* Drop the reference registration took.  A registered op is hidden from the cycle collector (the
 * core keeps it alive anyway, and thousands may wait); one that outlives its completion (the
 * user's Op object) is shown to it again.  GIL. */
void
op_release(OpObject *op)
{
    if (Py_REFCNT(op) > 1 && !PyObject_GC_IsTracked((PyObject *)op))
        PyObject_GC_Track(op);
    Py_DECREF(op);
}

/* mu: an op finished; wake the threads in drain(wait) */
static inline void
op_finished(Core *c)
{
    __atomic_store_n(&c->completed, c->completed + 1, __ATOMIC_RELEASE);   /* (drain reads it without mu) */
    if (c->done_watch)
        pthread_cond_broadcast(&c->cv);
}

/* Release (and record, when profiling) the native ops that finished without the GIL.  GIL, not mu. */
void
core_drain(Core *c)
{
    if (c->done_ops == NULL)
        return;
    pthread_mutex_lock(&c->mu);
    OpObject *op = c->done_ops;
    c->done_ops = NULL;
    c->ndone = 0;
    pthread_mutex_unlock(&c->mu);
    while (op) {
        OpObject *next = op->next_done;
        op->next_done = NULL;
        if (op->versions != NULL && c->store != NULL && op->p_engine != NULL)
            if (records_add_op(c->store, op, NULL, 0, op->p_end, op->versions, 0) < 0)
                PyErr_WriteUnraisable((PyObject *)op);
        PyMem_Free(op->versions);
        op->versions = NULL;
        Py_CLEAR(op->fn);
        op_release(op);
        op = next;
    }
}

/* ---------------------------------------------------------- completion */

/* Engine._complete: release op's vars, record its outcome; the ops made ready.  GIL, not mu. */
PyObject *
core_complete(Core *c, OpObject *op, PyObject *error, int origin, int *nready, OpObject ***ready_out)
{
    PyObject *comp = NULL, *comp_failures = NULL, *comp_origins = NULL, *name = NULL;
    PyObject **efail = NULL, **old = NULL;
    i64 *counts = NULL;
    int members_recorded = 0, rc = -1;
    OpVec ready = {0};
    Py_ssize_t nr = PyTuple_GET_SIZE(op->reads), nw = PyTuple_GET_SIZE(op->writes);
    *nready = 0;
    *ready_out = NULL;
    if (op->wcounts != NULL && op->wcounts != Py_None && error == NULL && op->outcome != NULL) {
        comp = op->outcome;
        if ((comp_failures = PyObject_GetAttr(comp, s_failures)) == NULL ||
            (comp_origins = PyObject_GetAttr(comp, s_origins)) == NULL)
            goto done;
        PyObject *mr = PyObject_GetAttr(comp, s_members_recorded);
        if (mr == NULL)
            goto done;
        members_recorded = PyObject_IsTrue(mr);
        Py_DECREF(mr);
    }
    if ((name = op_name(op)) == NULL)   /* named before letting go of its function */
        goto done;
    if (origin && error != NULL && add_note(error, "depengine: raised by op %R (#%lld)", name, op->id) < 0)
        goto done;
    if (c->prof != NULL && op->p_engine != NULL) {
        PyObject *err = comp ? (PyList_GET_SIZE(comp_origins) ? PyList_GET_ITEM(comp_origins, 0) : NULL) : error;
        if (records_add_op(c->store, op, err, comp ? 1 : origin, now_ns(), NULL, members_recorded) < 0)
            goto done;
    }
    if (op->stream != NULL && op->stream != Py_None && op->state == RUNNING &&
        hook(c, H_STREAM_DONE) != Py_None) {
        PyObject *r = PyObject_CallOneArg(hook(c, H_STREAM_DONE), (PyObject *)op);
        if (r == NULL)
            goto done;
        Py_DECREF(r);
    }
    Py_CLEAR(op->fn);   /* what the function holds is released before any waiter wakes */
    /* Everything that needs the GIL, gathered before taking mu. */
    efail = PyMem_Calloc(nw + 1, sizeof(PyObject *));
    old = PyMem_Calloc(nw + 1, sizeof(PyObject *));
    counts = PyMem_Malloc((nw + 1) * sizeof(i64));
    if (efail == NULL || old == NULL || counts == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < nw; i++) {
        PyObject *v = PyTuple_GET_ITEM(op->writes, i);
        counts[i] = 1;
        if (op->wcounts != NULL && op->wcounts != Py_None) {
            PyObject *k = PyDict_GetItemWithError(op->wcounts, v);
            if (k == NULL && PyErr_Occurred())
                goto done;
            if (k != NULL && (counts[i] = PyLong_AsLongLong(k)) == -1 && PyErr_Occurred())
                goto done;
        }
        PyObject *e = error;
        if (comp != NULL && (e = PyDict_GetItemWithError(comp_failures, v)) == NULL && PyErr_Occurred())
            goto done;
        efail[i] = e == Py_None ? NULL : e;
    }
    pthread_mutex_lock(&c->mu);
    int oom = 0;
    for (Py_ssize_t i = 0; i < nr; i++)
        oom |= complete_read((VarObject *)PyTuple_GET_ITEM(op->reads, i), &ready) < 0;
    for (Py_ssize_t i = 0; i < nw; i++) {
        VarObject *v = (VarObject *)PyTuple_GET_ITEM(op->writes, i);
        oom |= complete_write(v, counts[i], &ready) < 0;
        if (efail[i] != NULL) {   /* a failed var: references change under mu, with the GIL held */
            old[i] = v->failure;
            v->failure = Py_NewRef(efail[i]);
            v->clear_seq = NEVER_CLEARED;
            fail_list(c, v);
        }
        else if (v->failure != NULL) {
            old[i] = v->failure;
            v->failure = NULL;
            fail_unlist(c, v);
        }
        if (v->waiters)
            wake_waiters(c, v);
    }
    if (comp != NULL) {
        Py_ssize_t n = PyList_GET_SIZE(comp_origins);
        for (Py_ssize_t i = 0; i < n; i++)
            oom |= PyList_Append(c->unreported, PyList_GET_ITEM(comp_origins, i)) < 0;
        if (n && op->error == NULL)
            op->error = Py_NewRef(PyList_GET_ITEM(comp_origins, 0));
        op->state = n ? FAILED : DONE;
    }
    else if (error == NULL)
        op->state = DONE;
    else {
        if (op->error == NULL)
            op->error = Py_NewRef(error);
        op->state = origin ? FAILED : SKIPPED;
        if (origin)
            oom |= PyList_Append(c->unreported, error) < 0;
    }
    if (op->epoch) {
        epoch_done(c, op->epoch);
        op->epoch = NULL;
    }
    op_finished(c);
    if (c->debug)
        check_op_vars(op);
    pthread_mutex_unlock(&c->mu);
    if (oom) {
        PyErr_NoMemory();
        goto done;
    }
    *nready = ready.n;
    *ready_out = ready.items;
    ready.items = NULL;
    rc = 0;
done:
    for (Py_ssize_t i = 0; old && i < nw; i++)
        Py_XDECREF(old[i]);
    PyMem_Free(efail);
    PyMem_Free(old);
    PyMem_Free(counts);
    PyMem_RawFree(ready.items);
    Py_XDECREF(comp_failures);
    Py_XDECREF(comp_origins);
    Py_XDECREF(name);
    if (rc < 0)
        return NULL;
    op_release(op);
    Py_RETURN_NONE;
}

/* A native op that returned 0, on a worker of pool mine: complete it without the GIL when nothing
 * needs Python, and in the same critical section hand the ops it made ready to their pools and find
 * what this worker runs next (*next: one of them if its queue is empty, else the head of its queue).
 * GPU ops made ready are left in *ready_out for the caller (they need the GIL to be routed).
 * 1: done (the op is on the release list); 0: it needs the GIL (nothing changed); -1: out of memory. */
int
complete_native_clean(Core *c, OpObject *op, int mine, PyObject **next, OpObject ***ready_out, int *nready)
{
    Py_ssize_t nr = PyTuple_GET_SIZE(op->reads), nw = PyTuple_GET_SIZE(op->writes);
    OpVec ready = {0};
    *nready = 0;
    *ready_out = NULL;
    if (next != NULL)
        *next = NULL;
    i64 *versions = NULL;
    if (c->prof != NULL && op->p_engine != NULL &&
        (versions = PyMem_RawMalloc((nr + nw + 1) * sizeof(i64))) == NULL)
        return -1;
    pthread_mutex_lock(&c->mu);
    for (Py_ssize_t i = 0; i < nw; i++)
        if (((VarObject *)PyTuple_GET_ITEM(op->writes, i))->failure != NULL) {   /* clearing needs the GIL */
            pthread_mutex_unlock(&c->mu);
            PyMem_RawFree(versions);
            return 0;
        }
    if (versions != NULL) {
        for (Py_ssize_t i = 0; i < nr; i++)
            versions[i] = ((VarObject *)PyTuple_GET_ITEM(op->reads, i))->version;
        for (Py_ssize_t i = 0; i < nw; i++)
            versions[nr + i] = ((VarObject *)PyTuple_GET_ITEM(op->writes, i))->version;
        op->p_end = now_ns();
    }
    int oom = 0;
    for (Py_ssize_t i = 0; i < nr; i++)
        oom |= complete_read((VarObject *)PyTuple_GET_ITEM(op->reads, i), &ready) < 0;
    for (Py_ssize_t i = 0; i < nw; i++) {
        VarObject *v = (VarObject *)PyTuple_GET_ITEM(op->writes, i);
        oom |= complete_write(v, 1, &ready) < 0;
        if (v->waiters)
            wake_waiters(c, v);   /* v->failure is NULL: no reference changes */
    }
    op->state = DONE;
    op->versions = (i64 *)versions;   /* freed by core_drain with PyMem_Free: allocate the same way */
    if (op->epoch) {
        epoch_done(c, op->epoch);
        op->epoch = NULL;
    }
    op->next_done = c->done_ops;
    c->done_ops = op;
    c->ndone++;
    op_finished(c);
    if (c->debug)
        check_op_vars(op);
    int python = route_ready(c, mine, ready.items, ready.n, next);
    pthread_mutex_unlock(&c->mu);
    oom |= python < 0;
    *nready = python < 0 ? 0 : python;
    *ready_out = ready.items;
    return oom ? -1 : 1;
}

/* An op finished by a thread that is not a worker (the mpi lane, depengine/_core_lane.c), without
 * the GIL: the ops it made ready go to their pools.  1 done, 0 it needs the GIL (nothing changed). */
int
core_complete_external(Core *c, OpObject *op)
{
    OpObject **ready = NULL;
    int nready = 0;
    int r = complete_native_clean(c, op, POOL_CPU, NULL, &ready, &nready);
    PyMem_RawFree(ready);
    if (r < 0 && __atomic_load_n(&op->state, __ATOMIC_ACQUIRE) != DONE)
        return 0;   /* out of memory before it changed anything: the GIL path completes it */
    if (r < 0 || nready) {   /* done, but what it made ready may be lost: never complete it twice */
        fprintf(stderr, "depengine._core: out of memory completing an op in the mpi lane\n");
        return 1;
    }
    return r;
}

/* Engine._execute for an op that runs with the GIL (a Python body, or any op on the naive engine). */
int
core_execute_py(Core *c, OpObject *op, OpObject ***ready, int *nready)
{
    PyObject *r;
    *nready = 0;
    *ready = NULL;
    if (c->nfailed && !op->always_run) {
        PyObject *failure;
        pthread_mutex_lock(&c->mu);
        input_failure_visible(c, op, &failure);
        Py_XINCREF(failure);
        pthread_mutex_unlock(&c->mu);
        if (failure != NULL) {
            r = core_complete(c, op, failure, 0, nready, ready);
            Py_DECREF(failure);
            return r == NULL ? -1 : (Py_DECREF(r), 0);
        }
    }
    op->state = RUNNING;
    if (c->prof != NULL && op->p_engine != NULL) {
        op->p_start = now_ns();
        op->p_thread = PyThread_get_thread_ident();
        op->started = 1;
    }
    PyObject *error = NULL;
    depth_add(c, 1);
    if (op->is_async) {
        PyObject *done = done_new(c, op);
        if (done == NULL) {
            depth_add(c, -1);
            return -1;
        }
        PyObject *args[2] = {(PyObject *)op, done};
        r = PyObject_Vectorcall(op->fn, args, 2, NULL);
        depth_add(c, -1);
        if (r != NULL) {
            Py_DECREF(r);
            Py_DECREF(done);
            return 0;
        }
        error = fetch_exception();
        pthread_mutex_lock(&c->mu);
        int first = done_claim(done);
        pthread_mutex_unlock(&c->mu);
        Py_DECREF(done);
        if (!first) {   /* raised after it called done(): reported at the next wait_all */
            PyObject *name = op_name(op);
            int bad = name == NULL || add_note(error, "depengine: raised by async op %R (#%lld) after it "
                                               "called done()", name, op->id) < 0;
            Py_XDECREF(name);
            pthread_mutex_lock(&c->mu);
            bad |= PyList_Append(c->unreported, error) < 0;
            pthread_mutex_unlock(&c->mu);
            Py_DECREF(error);
            return bad ? -1 : 0;
        }
    }
    else if (op->native) {
        native_fn fn = op->cfn;
        void *arg = op->carg;
        int32_t code;
        Py_BEGIN_ALLOW_THREADS
        code = fn(arg);
        Py_END_ALLOW_THREADS
        depth_add(c, -1);
        if (code != 0 && (error = native_error(code, op)) == NULL)
            return -1;
    }
    else {
        r = PyObject_CallOneArg(op->fn, (PyObject *)op);
        depth_add(c, -1);
        if (r != NULL)
            Py_DECREF(r);
        else
            error = fetch_exception();
    }
    r = core_complete(c, op, error, error != NULL, nready, ready);
    Py_XDECREF(error);
    return r == NULL ? -1 : (Py_DECREF(r), 0);
}

#include <errno.h>
#include "_core_push.c.h"
#include "_core_waits.c.h"
