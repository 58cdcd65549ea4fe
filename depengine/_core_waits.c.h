/* Part of _core_engine.c: the core's waits (wait_for_var, wait_all, close), fork, and its type. */

#include <errno.h>
#include <time.h>

static void
deadline_after(struct timespec *ts, double seconds)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    double whole = (double)(long long)seconds;
    ts->tv_sec += (time_t)whole;
    ts->tv_nsec += (long)((seconds - whole) * 1e9);
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec += 1;
        ts->tv_nsec -= 1000000000L;
    }
}

static int
before(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

static int
waiter_set(void *w)   /* no mu: wake_waiters stores fired with release order */
{
    return __atomic_load_n(&((Waiter *)w)->fired, __ATOMIC_ACQUIRE);
}

/* Block (GIL released) until done(c, arg) holds under mu, or timeout seconds pass (< 0: never).
 * seen (or NULL), a check of arg safe without mu, is watched first for up to spin_ns (core_spin).
 * Every 50 ms the GIL is taken to let signal handlers run (Ctrl-C ends the wait).
 * 1: done; 0: timed out; -1: a signal handler raised.  GIL held on entry and exit, not mu. */
int
core_wait_until(Core *c, int (*done)(Core *, void *), int (*seen)(void *), void *arg, double timeout)
{
    struct timespec end;
    if (timeout >= 0)
        deadline_after(&end, timeout);
    for (int first = 1;; first = 0) {
        int ok, expired = 0;
        Py_BEGIN_ALLOW_THREADS
        if (first && seen != NULL && c->spin_ns > 0 && timeout != 0)
            core_spin(c, seen, arg);
        struct timespec slice, now;
        deadline_after(&slice, 0.05);
        if (timeout >= 0 && before(&end, &slice))
            slice = end;
        pthread_mutex_lock(&c->mu);
        while (!(ok = done(c, arg))) {
            if (pthread_cond_timedwait(&c->cv, &c->mu, &slice) == ETIMEDOUT)
                break;
        }
        pthread_mutex_unlock(&c->mu);
        clock_gettime(CLOCK_MONOTONIC, &now);
        expired = timeout >= 0 && !before(&now, &end);
        Py_END_ALLOW_THREADS
        if (ok)
            return 1;
        if (expired)
            return 0;
        if (PyErr_CheckSignals() < 0)
            return -1;
    }
}

static double
timeout_arg(PyObject *t)   /* the Python side checked it: None or a number >= 0 */
{
    return t == NULL || t == Py_None ? -1.0 : PyFloat_AsDouble(t);
}

static int
waiter_fired(Core *c, void *w)
{
    return ((Waiter *)w)->fired;
}

static void
unlink_waiter(VarObject *v, Waiter *w)   /* mu */
{
    for (Waiter **link = &v->waiters; *link; link = &(*link)->next)
        if (*link == w) {
            *link = w->next;
            return;
        }
}

/* wait_var(var, timeout) -> (timed_out, failure): the blocking part of Engine.wait_for_var.
 * A failure it returns has been reported (Engine._report_var_failure).  GIL. */
static PyObject *
core_wait_var(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !Py_IS_TYPE(args[0], &VarType) || ((VarObject *)args[0])->core != c) {
        PyErr_SetString(PyExc_TypeError, "wait_var(var of this engine, timeout)");
        return NULL;
    }
    VarObject *v = (VarObject *)args[0];
    double timeout = timeout_arg(args[1]);
    if (timeout == -1.0 && PyErr_Occurred())
        return NULL;
    PyObject *failure = NULL;
    pthread_mutex_lock(&c->mu);
    if (v->deleted_at >= 0) {
        i64 at = v->deleted_at;
        pthread_mutex_unlock(&c->mu);
        return PyErr_Format(var_deleted_error, "wait_for_var on var %R, deleted at push #%lld", v->name, at);
    }
    if (v->pending_writes) {
        if (core_in_op(c)) {
            i64 n = v->pending_writes;
            pthread_mutex_unlock(&c->mu);
            return PyErr_Format(deadlock_error, "wait_for_var(%R) inside an op: %lld write(s) to it are pending "
                                "and could wait for this very op", v->name, n);
        }
        Waiter *w = PyMem_RawCalloc(1, sizeof(Waiter));
        if (w == NULL) {
            pthread_mutex_unlock(&c->mu);
            return PyErr_NoMemory();
        }
        w->target = v->version + v->pending_writes;
        w->next = v->waiters;
        v->waiters = w;
        pthread_mutex_unlock(&c->mu);
        int r = core_wait_until(c, waiter_fired, waiter_set, w, timeout);   /* its op often ends soon */
        pthread_mutex_lock(&c->mu);
        int fired = w->fired;
        if (!fired)
            unlink_waiter(v, w);
        pthread_mutex_unlock(&c->mu);
        failure = w->failure;
        PyMem_RawFree(w);
        if (!fired) {
            if (r < 0)
                return NULL;
            return Py_BuildValue("(OO)", Py_True, Py_None);
        }
        if (r < 0) {   /* a signal arrived just as the write completed: report the signal */
            Py_XDECREF(failure);
            return NULL;
        }
    }
    else {
        failure = v->failure != NULL && c->seq < v->clear_seq ? Py_NewRef(v->failure) : NULL;
        pthread_mutex_unlock(&c->mu);
    }
    if (failure != NULL) {   /* raised to this waiter: reported, and cleared for later ops */
        pthread_mutex_lock(&c->mu);
        if (v->failure == failure && v->clear_seq == NEVER_CLEARED)
            v->clear_seq = c->seq;
        pthread_mutex_unlock(&c->mu);
        Py_ssize_t i = PySequence_Index(c->unreported, failure);
        if (i >= 0)
            PySequence_DelItem(c->unreported, i);
        PyErr_Clear();
    }
    if (c->done_ops != NULL)   /* native ops finished without the GIL: what they held goes now */
        core_drain(c);
    PyObject *r = Py_BuildValue("(OO)", Py_False, failure ? failure : Py_None);
    Py_XDECREF(failure);
    return r;
}

static void
close_epoch(Core *c)   /* mu: the current epoch joins the closed ones; a new one starts */
{
    Epoch *e = c->epoch, *fresh = PyMem_RawCalloc(1, sizeof(Epoch));
    if (fresh == NULL) {
        fprintf(stderr, "depengine._core: out of memory\n");
        abort();
    }
    e->closed = 1;
    e->id = ++c->next_epoch;
    Epoch **link = &c->closed_epochs;
    while (*link)
        link = &(*link)->next;
    *link = e;
    c->epoch = fresh;
}

static int
epochs_drained(Core *c, void *target)   /* mu: no closed epoch up to *target is pending */
{
    i64 t = *(i64 *)target;
    for (Epoch *e = c->closed_epochs; e; e = e->next)
        if (e->id <= t)
            return 0;
    return 1;
}

/* wait_all(timeout) -> True, or False on timeout: the blocking part of Engine.wait_all.  GIL. */
static PyObject *
core_wait_all(Core *c, PyObject *timeout_obj)
{
    double timeout = timeout_arg(timeout_obj);
    if (timeout == -1.0 && PyErr_Occurred())
        return NULL;
    pthread_mutex_lock(&c->mu);
    if (c->epoch->count)
        close_epoch(c);
    i64 target = c->next_epoch;
    int pending = c->closed_epochs != NULL;
    if (pending && core_in_op(c)) {
        pthread_mutex_unlock(&c->mu);
        PyErr_SetString(deadlock_error, "wait_all() inside an op: it would wait for that op itself");
        return NULL;
    }
    pthread_mutex_unlock(&c->mu);
    core_drain(c);
    if (!pending)
        Py_RETURN_TRUE;
    int r = core_wait_until(c, epochs_drained, NULL, &target, timeout);
    core_drain(c);
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r);
}

/* take_failures() -> the failures no wait has raised, oldest first; every failed var is cleared
 * for ops pushed from now on (the second half of Engine.wait_all).  GIL. */
static PyObject *
core_take_failures(Core *c, PyObject *unused)
{
    PyObject *fresh = PyList_New(0);
    if (fresh == NULL)
        return NULL;
    pthread_mutex_lock(&c->mu);
    PyObject *failures = c->unreported;
    c->unreported = fresh;
    for (VarObject *v = c->failed; v; v = v->fnext)
        if (v->clear_seq > c->seq)
            v->clear_seq = c->seq;
    pthread_mutex_unlock(&c->mu);
    return failures;
}

/* begin_close() -> False if the engine is already closing.  GIL. */
static PyObject *
core_begin_close(Core *c, PyObject *unused)
{
    pthread_mutex_lock(&c->mu);
    if (c->closing) {
        pthread_mutex_unlock(&c->mu);
        Py_RETURN_FALSE;
    }
    if (core_in_op(c)) {
        pthread_mutex_unlock(&c->mu);
        PyErr_SetString(deadlock_error, "close() inside an op: the engine cannot join its own thread");
        return NULL;
    }
    c->closing = 1;
    pthread_mutex_unlock(&c->mu);
    Py_RETURN_TRUE;
}

/* finish() waits for every op, including those pushed while it waits, then marks the core closed. */
static PyObject *
core_finish(Core *c, PyObject *unused)
{
    for (;;) {
        pthread_mutex_lock(&c->mu);
        if (!c->epoch->count && !c->closed_epochs) {
            c->closed = 1;
            pthread_mutex_unlock(&c->mu);
            break;
        }
        if (c->epoch->count)
            close_epoch(c);
        i64 target = c->next_epoch;
        pthread_mutex_unlock(&c->mu);
        if (core_wait_until(c, epochs_drained, NULL, &target, -1) < 0)
            return NULL;
    }
    core_drain(c);
    Py_RETURN_NONE;
}

/* stop(): every worker returns once the items queued before have run. */
static PyObject *
core_stop(Core *c, PyObject *unused)
{
    pthread_mutex_lock(&c->mu);
    for (int i = 0; i < NPOOLS; i++) {
        c->pools[i].stop = 1;
        pthread_cond_broadcast(&c->pools[i].cv);
    }
    pthread_mutex_unlock(&c->mu);
    Py_RETURN_NONE;
}

/* after_fork(): in a forked child the parent's threads are gone and its locks may be held. */
static PyObject *
core_after_fork(Core *c, PyObject *unused)
{
    core_mutex_init(&c->mu);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&c->cv, &attr);
    for (int i = 0; i < NPOOLS; i++)
        pthread_cond_init(&c->pools[i].cv, &attr);
    pthread_condattr_destroy(&attr);
    c->forked = c->closing = c->closed = 1;
    c->naive_owner = 0;
    c->naive_count = 0;
    Py_RETURN_NONE;
}

static PyObject *
core_failed_vars(Core *c, PyObject *unused)   /* the vars whose last write failed */
{
    PyObject *out = PyList_New(0);
    pthread_mutex_lock(&c->mu);
    for (VarObject *v = c->failed; out && v; v = v->fnext)
        if (PyList_Append(out, (PyObject *)v) < 0)
            Py_CLEAR(out);
    pthread_mutex_unlock(&c->mu);
    return out;
}

static PyObject *
core_in_op_meth(Core *c, PyObject *unused)
{
    return PyBool_FromLong(core_in_op(c));
}

static PyObject *
core_mark_worker(Core *c, PyObject *unused)   /* a Python thread that runs this engine's ops */
{
    depth_add(c, 1);
    Py_RETURN_NONE;
}

static i64
core_pending(Core *c)   /* mu: ops pushed and not finished, every epoch */
{
    i64 n = c->epoch->count;
    for (Epoch *e = c->closed_epochs; e; e = e->next)
        n += e->count;
    return n;
}

static PyObject *
core_drain_meth(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    /* drain(wait=0.0): with wait > 0 and nothing finished yet, first sleep (no GIL) until an op
     * finishes or wait seconds pass: a pusher waiting for buffers that running ops hold.  False when
     * no op was pending (none will finish: only the user can give a buffer back), else True. */
    double wait = 0.0;
    if (nargs > 1)
        return PyErr_Format(PyExc_TypeError, "drain() takes at most one argument");
    if (nargs == 1 && ((wait = PyFloat_AsDouble(args[0])) == -1.0 && PyErr_Occurred()))
        return NULL;
    if (wait != wait || wait < 0 || wait > 3600)
        return PyErr_Format(PyExc_ValueError, "drain(wait=%R): seconds in [0, 3600]", args[0]);
    int idle = 0;
    if (wait > 0 && c->done_ops == NULL) {
        /* read with the GIL: an op with a Python body finishes holding it, so none finished since
         * the caller last looked for its buffer (a native one is in done_ops); one that finishes
         * once the GIL is let go moves it */
        i64 seen = __atomic_load_n(&c->completed, __ATOMIC_ACQUIRE);
        i64 t = now_ns() + (i64)(wait * 1e9);
        struct timespec ts = {(time_t)(t / 1000000000LL), (long)(t % 1000000000LL)};
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&c->mu);
        idle = core_pending(c) == 0 && c->done_ops == NULL && c->completed == seen;   /* (none let go since) */
        c->done_watch++;
        while (!idle && c->done_ops == NULL && c->completed == seen)
            if (pthread_cond_timedwait(&c->cv, &c->mu, &ts) != 0)
                break;
        c->done_watch--;
        pthread_mutex_unlock(&c->mu);
        Py_END_ALLOW_THREADS
    }
    core_drain(c);
    return PyBool_FromLong(!idle);
}

/* ------------------------------------------------------ attributes */

static PyObject *
core_get_pending(Core *c, void *unused)
{
    pthread_mutex_lock(&c->mu);
    i64 n = core_pending(c);
    pthread_mutex_unlock(&c->mu);
    return PyLong_FromLongLong(n);
}

static PyObject *
core_get_current(Core *c, void *unused)   /* ops of the current epoch (since the last wait_all) */
{
    return PyLong_FromLongLong(c->epoch->count);
}

static PyObject *
core_get_unreported(Core *c, void *unused)   /* the list itself: Python's delete_var appends to it */
{
    return Py_NewRef(c->unreported);
}

static PyObject *
core_get_prof(Core *c, void *unused)
{
    return Py_NewRef(c->prof ? c->prof : Py_None);
}

static int
core_set_prof(Core *c, PyObject *rec, void *unused)
{
    PyObject *store = NULL;
    if (rec != NULL && rec != Py_None && (store = PyObject_GetAttrString(rec, "ops")) == NULL)
        return -1;
    PyObject *old_rec = c->prof, *old_store = c->store;
    c->prof = rec == NULL || rec == Py_None ? NULL : Py_NewRef(rec);
    c->store = store;
    Py_XDECREF(old_rec);
    Py_XDECREF(old_store);
    return 0;
}

static PyObject *
core_get_int(Core *c, void *which)
{
    switch ((intptr_t)which) {
    case 0: return PyLong_FromLong(c->capturing);
    case 1: return PyLong_FromLong(c->gpu_used);
    case 2: return PyBool_FromLong(c->closed);
    case 3: return PyBool_FromLong(c->closing);
    case 4: return PyLong_FromSsize_t(c->nfailed);
    case 5: return PyLong_FromLongLong(c->seq);
    case 7: return PyLong_FromLong(__atomic_load_n(&c->done_watch, __ATOMIC_ACQUIRE));
    default: return PyLong_FromLong(c->forked);
    }
}

static int
core_set_int(Core *c, PyObject *value, void *which)
{
    long x = value ? PyLong_AsLong(value) : -1;
    if (x == -1 && (value == NULL || PyErr_Occurred()))
        return -1;
    if ((intptr_t)which == 0)
        c->capturing = (int)x;
    else
        c->gpu_used = (int)x;
    return 0;
}

static PyObject *
core_set_prio_pool(Core *c, PyObject *use_prio)   /* perdevice with prioritized_workers=0: share the CPU pool */
{
    c->pool_of_kind[1] = PyObject_IsTrue(use_prio) ? POOL_PRIO : POOL_CPU;
    Py_RETURN_NONE;
}

static PyMethodDef core_methods[] = {
    {"push", (PyCFunction)(void (*)(void))core_push, METH_FASTCALL | METH_KEYWORDS, "Engine.push"},
    {"new_var", (PyCFunction)(void (*)(void))core_new_var, METH_FASTCALL, "Engine.new_var"},
    {"take_ids", (PyCFunction)core_take_ids, METH_O, "Reserve n consecutive op ids; the first."},
    {"wait_var", (PyCFunction)(void (*)(void))core_wait_var, METH_FASTCALL, "Block for a var's writes."},
    {"wait_all", (PyCFunction)core_wait_all, METH_O, "Block for every op pushed so far."},
    {"take_failures", (PyCFunction)core_take_failures, METH_NOARGS, "Unreported failures; clear all."},
    {"begin_close", (PyCFunction)core_begin_close, METH_NOARGS, NULL},
    {"finish", (PyCFunction)core_finish, METH_NOARGS, NULL},
    {"stop", (PyCFunction)core_stop, METH_NOARGS, NULL},
    {"after_fork", (PyCFunction)core_after_fork, METH_NOARGS, NULL},
    {"in_op", (PyCFunction)core_in_op_meth, METH_NOARGS, NULL},
    {"failed_vars", (PyCFunction)core_failed_vars, METH_NOARGS, "The vars whose last write failed."},
    {"mark_worker", (PyCFunction)core_mark_worker, METH_NOARGS, NULL},
    {"drain", (PyCFunction)(void (*)(void))core_drain_meth, METH_FASTCALL,
     "Release (and record) finished native ops; drain(wait) first waits up to wait s for one to finish."},
    {"work", (PyCFunction)core_work, METH_O, "A worker thread's body: run pool i's ops until stop()."},
    {"wait_message", (PyCFunction)(void (*)(void))core_wait_message, METH_FASTCALL,
     "While the engine is idle, spin on MPI_Iprobe without the GIL (the mpi engine's progress)."},
    {"has_message", (PyCFunction)(void (*)(void))core_has_message, METH_FASTCALL, "One MPI_Iprobe, GIL held."},
    {"wake_waiter", (PyCFunction)core_wake_waiter, METH_NOARGS, "Wake a thread asleep in wait_message."},
    {"set_after_op", (PyCFunction)(void (*)(void))core_set_after_op, METH_FASTCALL,
     "set_after_op(lane, flag, fn, kick): the mpi engine's look at MPI after each op (None: none)."},
    {"execute", (PyCFunction)core_execute_meth, METH_O, "Run a ready op here (GPU lanes); the ops it made ready."},
    {"dispatch", (PyCFunction)core_dispatch_meth, METH_O, "Hand ready ops to their pools."},
    {"submit", (PyCFunction)core_submit_meth, METH_O, "Queue a plan chunk (any object with execute())."},
    {"set_prio_pool", (PyCFunction)core_set_prio_pool, METH_O, NULL},
    {NULL},
};

static PyGetSetDef core_getset[] = {
    {"pending", (getter)core_get_pending, NULL, "ops pushed and not finished"},
    {"current", (getter)core_get_current, NULL, "ops of the current epoch not finished"},
    {"prof", (getter)core_get_prof, (setter)core_set_prof, "the Recorder, or None"},
    {"unreported", (getter)core_get_unreported, NULL, "failures no wait has raised, oldest first"},
    {"capturing", (getter)core_get_int, (setter)core_set_int, NULL, (void *)0},
    {"gpu_used", (getter)core_get_int, (setter)core_set_int, NULL, (void *)1},
    {"closed", (getter)core_get_int, NULL, NULL, (void *)2},
    {"closing", (getter)core_get_int, NULL, NULL, (void *)3},
    {"nfailed", (getter)core_get_int, NULL, NULL, (void *)4},
    {"seq", (getter)core_get_int, NULL, NULL, (void *)5},
    {"forked", (getter)core_get_int, NULL, NULL, (void *)6},
    {"drain_waiters", (getter)core_get_int, NULL, NULL, (void *)7},   /* threads asleep in drain(wait) */
    {NULL},
};

PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "depengine._core.Core",
    .tp_basicsize = sizeof(Core),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The compiled core of one engine (see depengine/_cengine.py).",
    .tp_new = core_new,
    .tp_traverse = (traverseproc)core_traverse,
    .tp_clear = (inquiry)core_clear,
    .tp_dealloc = (destructor)core_dealloc,
    .tp_weaklistoffset = offsetof(Core, weakrefs),
    .tp_methods = core_methods,
    .tp_getset = core_getset,
};
