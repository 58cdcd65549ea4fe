/* The compiled core's workers, and the naive engine's drain.
 *
 * A pool is a ready queue (_core_queue.c) and the threads that take from it.
 * The threads are Python threads (threading.Thread, so Python sees and joins
 * them) that call Core.work(pool) and spend their life in
 * core_work: they hold the GIL only to run a Python op body or to call into
 * Python, and run native bodies, complete them and grant their successors
 * without it.  A worker that finishes an op and finds one of the ops it made
 * ready bound for its own empty queue runs that op itself (waking a sleeping
 * thread costs more than a small op).
 */
#include "_core.h"
#include <time.h>

/* ------------------------------------------------------------- workers */

typedef struct {
    Core *c;
    int pool;
    int gil;            /* this thread holds the GIL now */
    PyThreadState *ts;  /* its thread state while it does not */
} Worker;

static void
gil_take(Worker *w)
{
    if (!w->gil) {
        PyEval_RestoreThread(w->ts);
        w->gil = 1;
    }
}

static void
gil_drop(Worker *w)
{
    if (w->gil) {
        w->ts = PyEval_SaveThread();
        w->gil = 0;
    }
}

static void
report_internal_error(Worker *w, const char *what)   /* GIL: an engine bug; the worker lives on */
{
    PyErr_WriteUnraisable(PyUnicode_FromFormat("depengine worker of pool %d: %s", w->pool, what));
}

/* Route ready ops after a completion, under one lock: the one of highest priority bound for this
 * worker's empty queue is the one it runs next, or else the head of its queue (NULL: none).  No mu. */
static PyObject *
continue_with(Worker *w, OpObject **ready, int n)
{
    Core *c = w->c;
    PyObject *next;
    pthread_mutex_lock(&c->mu);
    int python = route_ready(c, w->pool, ready, n, &next);
    pthread_mutex_unlock(&c->mu);
    if (python < 0) {
        fprintf(stderr, "depengine._core: out of memory queueing an op\n");
        abort();
    }
    if (python) {
        gil_take(w);
        if (core_dispatch_gil(c, ready, python) < 0)
            report_internal_error(w, "routing a GPU op failed");
    }
    return next;
}

/* Run a native op on this worker: without the GIL unless a failure is involved. */
static PyObject *
run_native(Worker *w, OpObject *op)
{
    Core *c = w->c;
    OpObject **ready = NULL;
    int nready = 0, r;
    PyObject *failure = NULL;
    pthread_mutex_lock(&c->mu);
    if (c->nfailed && !op->always_run)
        input_failure_visible(c, op, &failure);
    if (failure == NULL)
        op->state = RUNNING;
    pthread_mutex_unlock(&c->mu);
    if (failure != NULL)
        goto with_gil;   /* skipped: the failure's references need the GIL */
    gil_drop(w);
    if (op->stamped) {
        op->p_start = now_ns();
        op->p_thread = PyThread_get_thread_ident();
        op->started = 1;
    }
    int32_t code = op->cfn(op->carg);
    if (code == 0) {
        PyObject *next;
        r = complete_native_clean(c, op, w->pool, &next, &ready, &nready);
        if (r == 1) {
            if (nready) {   /* GPU ops made ready: routed with the GIL */
                gil_take(w);
                if (core_dispatch_gil(c, ready, nready) < 0)
                    report_internal_error(w, "routing a GPU op failed");
            }
            PyMem_RawFree(ready);
            return next;
        }
        if (r < 0) {
            fprintf(stderr, "depengine._core: out of memory completing an op\n");
            abort();
        }
    }
    gil_take(w);
    PyObject *error = code ? native_error(code, op) : NULL;
    if (code && error == NULL) {
        report_internal_error(w, "making a NativeError failed");
        error = Py_NewRef(Py_None);   /* still complete the op, as failed */
    }
    PyObject *res = core_complete(c, op, error, code != 0, &nready, &ready);
    Py_XDECREF(error);
    goto finish;
with_gil:
    gil_take(w);
    pthread_mutex_lock(&c->mu);
    input_failure_visible(c, op, &failure);
    Py_XINCREF(failure);
    pthread_mutex_unlock(&c->mu);
    res = core_complete(c, op, failure, 0, &nready, &ready);
    Py_XDECREF(failure);
finish:
    if (res == NULL)
        report_internal_error(w, "completing a native op failed");
    Py_XDECREF(res);
    PyObject *next = continue_with(w, ready, nready);
    PyMem_RawFree(ready);
    return next;
}

/* The per-device engine's host side of GPU ordering, before a CPU op that touches GPU work.  GIL. */
static int
prepare(Core *c, OpObject *op, OpObject ***ready, int *nready)
{
    PyObject *err = PyObject_CallOneArg(PyTuple_GET_ITEM(c->hooks, 3), (PyObject *)op);
    if (err == NULL)
        return -1;
    if (err == Py_None) {
        Py_DECREF(err);
        return 0;
    }
    PyObject *r = core_complete(c, op, err, 1, nready, ready);   /* GPU work it depends on failed */
    Py_DECREF(err);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 1;
}

/* A chunk of a plan of native bodies (_core_plan.c): its calls without the GIL, Python only when
 * a member failed in this run or the run ends. */
static PyObject *
run_plan_chunk(Worker *w, PyObject *chunk)
{
    Py_ssize_t at = 0;
    int32_t code = 0;
    gil_drop(w);
    int status = plan_chunk_run(chunk, &at, &code);
    if (status) {
        gil_take(w);
        if (plan_chunk_python(chunk, status, at, code) < 0)
            report_internal_error(w, "running a plan chunk failed");
    }
    PyObject *run;
    PyObject *next = plan_chunk_done(w->c, chunk, w->pool, &run);
    if (run != NULL) {
        gil_take(w);
        if (plan_finish(run) < 0)
            report_internal_error(w, "finishing a plan run failed");
    }
    return next;
}

static PyObject *
run_item(Worker *w, PyObject *item)
{
    Core *c = w->c;
    OpObject **ready = NULL;
    int nready = 0;
    if (Py_IS_TYPE(item, &OpType)) {
        OpObject *op = (OpObject *)item;
        if (op->native && !op->host_hook && !op->is_async)
            return run_native(w, op);
        gil_take(w);
        int p = op->host_hook ? prepare(c, op, &ready, &nready) : 0;
        if (p == 0 && core_execute_py(c, op, &ready, &nready) < 0)
            p = -1;
        if (p < 0)
            report_internal_error(w, "running an op failed");
    }
    else if (Py_IS_TYPE(item, &PlanChunkType))
        return run_plan_chunk(w, item);
    else {   /* a plan chunk: execute() returns the chunks it made ready */
        gil_take(w);
        PyObject *more = PyObject_CallMethodNoArgs(item, s_execute);
        if (more == NULL)
            report_internal_error(w, "running a plan chunk failed");
        else {
            pthread_mutex_lock(&c->mu);
            int oom = 0;
            for (Py_ssize_t i = 0; i < PyList_GET_SIZE(more); i++)
                oom |= pool_put(&c->pools[w->pool], PyList_GET_ITEM(more, i), 0) < 0;
            pthread_mutex_unlock(&c->mu);
            if (oom)
                report_internal_error(w, "out of memory queueing plan chunks");
            /* the chunks stay alive: the plan holds them */
            Py_DECREF(more);
        }
        return NULL;
    }
    PyObject *next = continue_with(w, ready, nready);
    PyMem_RawFree(ready);
    if (c->done_ops != NULL && w->gil)
        core_drain(c);
    return next;
}

/* Before sleeping, one worker of a pool watches its queue for a few microseconds: waking a sleeping
 * thread (a futex call answered on another core) costs more than a small op, and a pusher or a
 * worker finishing its op usually brings the next one sooner.  Only one spins, so that on a small
 * machine the threads that make the work keep their cores.  mu held on entry and exit; 1 if work
 * (or stop) arrived. */
int
core_spin(Core *c, int (*seen)(void *), void *arg)
{
    i64 until = now_ns() + c->spin_ns;
    for (int k = 0;; k++) {
        if (seen(arg))
            return 1;
        if ((k & 63) == 63 && now_ns() > until)
            return 0;
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
}

static int
pool_has_work(void *pool)   /* no mu: a hint, confirmed under mu by the caller */
{
    Pool *p = pool;
    return __atomic_load_n(&p->flen, __ATOMIC_ACQUIRE) || __atomic_load_n(&p->hlen, __ATOMIC_ACQUIRE) ||
           __atomic_load_n(&p->stop, __ATOMIC_ACQUIRE);
}

static int
spin_for_work(Core *c, Pool *p)
{
    if (c->spin_ns <= 0)
        return 0;
    p->spinning = 1;
    pthread_mutex_unlock(&c->mu);
    int found = core_spin(c, pool_has_work, p);
    pthread_mutex_lock(&c->mu);
    p->spinning = 0;
    return found;
}

/* Core.work(pool): a worker thread's body, until Core.stop() and an empty queue.  GIL on entry/exit. */
PyObject *
core_work(Core *c, PyObject *arg)
{
    long index = PyLong_AsLong(arg);
    if (index < 0 || index >= NPOOLS) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_ValueError, "pool %ld does not exist", index);
        return NULL;
    }
    Worker w = {c, (int)index, 1, NULL};
    Pool *p = &c->pools[index];
    depth_add(c, 1);   /* this thread runs the engine's ops: waits on the engine from it deadlock */
    Py_INCREF(c);
    gil_drop(&w);
    pthread_mutex_lock(&c->mu);
    p->threads++;
    PyObject *item = NULL;
    for (;;) {
        if (item == NULL) {
            int spun = 0;
            while ((item = pool_take(p)) == NULL && !p->stop) {
                if (w.gil) {   /* never sleep holding the GIL */
                    pthread_mutex_unlock(&c->mu);
                    gil_drop(&w);
                    pthread_mutex_lock(&c->mu);
                    continue;
                }
                if (!spun && c->idle_watch)    /* the mpi progress thread waits for this */
                    pthread_cond_broadcast(&c->cv);
                if (!spun && !p->spinning) {   /* then look again, under mu, before sleeping */
                    spun = 1;
                    spin_for_work(c, p);
                    continue;
                }
                p->idle++;
                pthread_cond_wait(&p->cv, &c->mu);
                p->idle--;
                spun = 0;
            }
            if (item == NULL)
                break;
        }
        pthread_mutex_unlock(&c->mu);
        item = run_item(&w, item);
        if (c->lane != NULL)   /* the mpi engine's look at MPI (_core_mpi.c) */
            core_after_op(c, w.gil);
        pthread_mutex_lock(&c->mu);
    }
    p->threads--;
    p->exited++;
    pthread_mutex_unlock(&c->mu);
    gil_take(&w);
    depth_add(c, -1);
    Py_DECREF(c);
    Py_RETURN_NONE;
}

/* ------------------------------------------------ the naive engine's drain */

static int
finished(Core *c, void *op)
{
    return ((OpObject *)op)->state >= DONE;
}

/* Run every ready op on this thread, one at a time even with several pushing threads
 * (another thread's drain runs this thread's ops too).  Re-entrant: an op may push.  GIL. */
int
naive_run(Core *c)
{
    unsigned long me = PyThread_get_thread_ident();
    if (c->naive_owner != me) {
        while (c->naive_owner != 0) {   /* another thread drains: wait for it (it runs our ops too) */
            Py_BEGIN_ALLOW_THREADS
            pthread_mutex_lock(&c->mu);
            while (c->naive_owner != 0)
                pthread_cond_wait(&c->cv, &c->mu);
            pthread_mutex_unlock(&c->mu);
            Py_END_ALLOW_THREADS
        }
        c->naive_owner = me;   /* the GIL orders this with the check above */
    }
    c->naive_count++;
    int rc = 0;
    for (;;) {
        pthread_mutex_lock(&c->mu);
        OpObject *op = NULL;
        if (c->nlen) {
            op = (OpObject *)c->naive[c->nhead];
            c->nhead = (c->nhead + 1) % c->ncap;
            c->nlen--;
        }
        pthread_mutex_unlock(&c->mu);
        if (op == NULL)
            break;
        OpObject **ready = NULL;
        int nready = 0, is_async = op->is_async;
        Py_INCREF(op);   /* completion drops the core's reference */
        if (core_execute_py(c, op, &ready, &nready) < 0)
            rc = -1;
        if (rc == 0 && is_async && op->state < DONE) {   /* push returns once done() was called */
            depth_add(c, 1);
            rc = core_wait_until(c, finished, NULL, op, -1);
            depth_add(c, -1);
        }
        Py_DECREF(op);
        if (rc == 0 && core_dispatch_gil(c, ready, nready) < 0)
            rc = -1;
        PyMem_RawFree(ready);
        if (rc < 0)
            break;
    }
    if (--c->naive_count == 0) {
        c->naive_owner = 0;
        pthread_mutex_lock(&c->mu);
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->mu);
    }
    return rc;
}

/* ------------------------------------------------ methods for the Python side */

PyObject *
core_execute_meth(Core *c, PyObject *item)   /* Core.execute(op): a GPU lane runs it here.  GIL. */
{
    if (!Py_IS_TYPE(item, &OpType))
        return PyErr_Format(PyExc_TypeError, "execute(op): %R is not an op of the compiled core", item);
    OpObject **ready = NULL;
    int nready = 0;
    depth_add(c, 1);
    int rc = core_execute_py(c, (OpObject *)item, &ready, &nready);
    depth_add(c, -1);
    PyObject *list = rc < 0 ? NULL : PyList_New(nready);
    for (int i = 0; list && i < nready; i++)
        PyList_SET_ITEM(list, i, Py_NewRef(ready[i]));
    PyMem_RawFree(ready);
    return list;
}

PyObject *
core_dispatch_meth(Core *c, PyObject *ops)   /* Core.dispatch(list of ready ops).  GIL. */
{
    PyObject *seq = PySequence_Fast(ops, "dispatch() takes a list of ops");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t i = 0; i < n; i++)
        if (!Py_IS_TYPE(PySequence_Fast_GET_ITEM(seq, i), &OpType)) {
            Py_DECREF(seq);
            return PyErr_Format(PyExc_TypeError, "dispatch(): not an op of the compiled core");
        }
    int rc = core_dispatch_gil(c, (OpObject **)PySequence_Fast_ITEMS(seq), n);
    Py_DECREF(seq);
    if (rc < 0)
        return NULL;
    if (c->type == T_NAIVE && naive_run(c) < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyObject *
core_submit_meth(Core *c, PyObject *item)   /* Core.submit(chunk): a plan run's chunk, on the CPU pool */
{
    pthread_mutex_lock(&c->mu);
    int oom = pool_put(&c->pools[POOL_CPU], item, 0) < 0;
    pthread_mutex_unlock(&c->mu);
    if (oom)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}
