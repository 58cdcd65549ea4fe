/* The mpi engine's probes of MPI from C (depengine/mpi/spin.py).
 *
 * MPI_Iprobe of the MPI library mpi4py loaded is found by address at run time
 * and called here: without the GIL in the progress thread's wait while the
 * engine is idle, with it for a worker's single look after each op (an mpi4py
 * call would give the GIL up, and getting it back on a busy rank means waiting
 * behind the pusher).  Handles are ints (MPICH) or pointers (the standard
 * ABI): the caller says which by their size.
 */
#include "_core.h"

typedef int (*probe4)(int, int, int, int *, void *);                /* MPI_Iprobe */
typedef int (*probe8)(int, int, void *, int *, void *);

typedef long long Status[8];   /* MPI_Status: 20 bytes in MPICH, 32 in the standard ABI */

static int
int_args(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want, long long *a)
{
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "takes %zd integers", want);
        return -1;
    }
    for (Py_ssize_t i = 0; i < want; i++) {
        a[i] = PyLong_AsLongLong(args[i]);
        if (a[i] == -1 && PyErr_Occurred())
            return -1;
    }
    return 0;
}

static int
handle_size(long long hb)
{
    if (hb != 4 && hb != 8) {
        PyErr_SetString(PyExc_ValueError, "a handle size other than 4 or 8");
        return -1;
    }
    return 0;
}

static int
probe_args(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want, long long *a)
{
    if (int_args(args, nargs, want, a) < 0 || handle_size(a[2]) < 0)
        return -1;
    if (a[0] == 0) {
        PyErr_SetString(PyExc_ValueError, "a NULL MPI_Iprobe");
        return -1;
    }
    return 0;
}

static int
probe_call(const long long *a, int *flag)   /* MPI_Iprobe(a[3], a[4], comm a[1]): 0 or -(MPI error) */
{
    Status status;
    int rc = a[2] == 4 ? ((probe4)(intptr_t)a[0])((int)a[3], (int)a[4], (int)a[1], flag, status)
                       : ((probe8)(intptr_t)a[0])((int)a[3], (int)a[4], (void *)(intptr_t)a[1], flag, status);
    return rc ? -rc : 0;
}

/* No GIL: sleep until t, a kick (Core.wake_waiter), or (busy: while the engine works) a worker
 * running out of ops.  Idleness is checked again under mu, where its counters are written, so a
 * worker that went idle just before cannot be missed. */
static void
sleep_until(Core *c, const int *kick, i64 t, int busy)
{
    struct timespec ts = {(time_t)(t / 1000000000LL), (long)(t % 1000000000LL)};
    pthread_mutex_lock(&c->mu);
    c->idle_watch++;
    if (!__atomic_load_n(kick, __ATOMIC_ACQUIRE) && !(busy && core_idle(c)))
        pthread_cond_timedwait(&c->cv, &c->mu, &ts);
    c->idle_watch--;
    pthread_mutex_unlock(&c->mu);
}

/* Core.wake_waiter(): wake a thread asleep in wait_message (after setting its kick word). */
PyObject *
core_wake_waiter(Core *c, PyObject *unused)
{
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&c->mu);
    if (c->idle_watch)
        pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* Core.has_message(probe, comm, handle_bytes, source, tag): one MPI_Iprobe, GIL held (a worker's
 * look after each op: mpi4py's calls would hand the GIL to another thread).  1, 0, or -code. */
PyObject *
core_has_message(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    long long a[5];
    int flag = 0;
    if (probe_args(args, nargs, 5, a) < 0)
        return NULL;
    int rc = probe_call(a, &flag);
    return PyLong_FromLong(rc ? rc : flag);
}

/* Core.wait_message(probe, comm, handle_bytes, source, tag, kick, pushes, spin_ns, max_ns) ->
 * (why, spun_ns): the mpi engine's progress thread waits here, without the GIL, for at most max_ns.
 * While the rank is idle (no op queued, no worker running one, and the i64 push count at address
 * pushes unchanged: no thread pushing) it calls the MPI_Iprobe at address probe on communicator
 * handle comm, for at most spin_ns in all.  While a worker runs an op it sleeps until one runs out
 * of ops (workers take messages after each op); while a thread pushes, it looks again every 200 µs
 * (a spinning thread would take the pusher's core).  lane: an MpiLane polled all along.  why: 1 a message is there, 2 the int at address kick is nonzero, 3 max_ns
 * passed, 4 spin_ns spent, -code an MPI error. */
PyObject *
core_wait_message(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    long long a[9];
    if (nargs != 10) {
        PyErr_SetString(PyExc_TypeError, "wait_message() takes 9 integers and a lane (or None)");
        return NULL;
    }
    PyObject *lane = args[9] == Py_None ? NULL : args[9];
    if (lane != NULL && strcmp(Py_TYPE(lane)->tp_name, "depengine._core.MpiLane") != 0) {
        PyErr_SetString(PyExc_TypeError, "wait_message(): the lane must be an MpiLane or None");
        return NULL;
    }
    if (probe_args(args, 9, 9, a) < 0)
        return NULL;
    if (a[5] == 0 || a[6] == 0) {
        PyErr_SetString(PyExc_ValueError, "wait_message(): a NULL kick or push count address");
        return NULL;
    }
    if (a[7] < 0 || a[8] < 0 || a[8] > (i64)1 << 50) {
        PyErr_SetString(PyExc_ValueError, "wait_message(): spin_ns and max_ns must be in [0, 2**50]");
        return NULL;
    }
    const int *kick = (const int *)(intptr_t)a[5];
    const i64 *pushes = (const i64 *)(intptr_t)a[6];
    int flag = 0, rc = 0, why = 0;
    i64 spun = 0, now = now_ns(), until = now + a[8], seen = __atomic_load_n(pushes, __ATOMIC_RELAXED);
    Py_BEGIN_ALLOW_THREADS
    while (!why) {
        i64 count = __atomic_load_n(pushes, __ATOMIC_RELAXED);
        if (lane != NULL && lane_poll_nogil(lane))   /* small transfers: taken here, Python as needed */
            why = 1;
        else if (__atomic_load_n(kick, __ATOMIC_ACQUIRE))
            why = 2;
        else if (now >= until)
            why = 3;
        else if (spun >= a[7])
            why = 4;
        else if (!core_idle(c)) {
            sleep_until(c, kick, until, 1);
            now = now_ns();
        }
        else if (count != seen) {
            seen = count;
            sleep_until(c, kick, now + 200000 < until ? now + 200000 : until, 0);
            now = now_ns();
        }
        else {
            i64 from = now;
            for (int k = 1; !why; k++) {
                rc = probe_call(a, &flag);
                why = rc ? rc : flag;
                if (!why && lane != NULL && lane_poll_nogil(lane))
                    why = 1;
                if ((k & 15) == 0 || why) {
                    now = now_ns();
                    if (why || __atomic_load_n(kick, __ATOMIC_ACQUIRE) || !core_idle(c) || now >= until ||
                        spun + (now - from) >= a[7] || __atomic_load_n(pushes, __ATOMIC_RELAXED) != seen)
                        break;
                }
#if defined(__x86_64__) || defined(__i386__)
                __builtin_ia32_pause();
#endif
            }
            spun += now - from;
        }
    }
    Py_END_ALLOW_THREADS
    return Py_BuildValue("iL", why, (long long)spun);
}


/* Core.set_after_op(lane, flag_address, fn, kick_address), or (None, 0, None, 0): after each op a worker
 * runs, the lane takes what arrived (in C), and fn() (Python's look at MPI: transport.poll_after_op) runs
 * when the int at flag_address is set or the lane has a message for Python.  A worker that holds no GIL
 * (after a native op) does not take it for the flag; for the lane it sets the kick word and wakes the
 * progress thread instead.  Set before the rank's ops run, cleared once they are done. */
PyObject *
core_set_after_op(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "set_after_op(lane, flag, fn, kick)");
        return NULL;
    }
    PyObject *lane = args[0] == Py_None ? NULL : args[0], *fn = args[2] == Py_None ? NULL : args[2];
    void *flag = PyLong_AsVoidPtr(args[1]), *kick = PyLong_AsVoidPtr(args[3]);
    if (PyErr_Occurred())
        return NULL;
    if (lane != NULL && (strcmp(Py_TYPE(lane)->tp_name, "depengine._core.MpiLane") != 0 || fn == NULL ||
                         !PyCallable_Check(fn) || flag == NULL || kick == NULL)) {
        PyErr_SetString(PyExc_ValueError, "set_after_op(): an MpiLane, a flag address, a callable and a kick "
                                          "address, or None, 0, None, 0");
        return NULL;
    }
    Py_XINCREF(lane);
    Py_XINCREF(fn);
    PyObject *old_lane = c->lane, *old_fn = c->poll_fn;
    c->poll_flag = lane ? flag : NULL;
    c->kick = lane ? kick : NULL;
    c->poll_fn = lane ? fn : NULL;
    c->lane = lane;
    if (lane == NULL)
        Py_XDECREF(fn);
    Py_XDECREF(old_lane);
    Py_XDECREF(old_fn);
    Py_RETURN_NONE;
}

/* A worker after an op (c->lane set), with the GIL (gil=1: Python's look runs here when due) or
 * without it (then it wakes the progress thread, which looks in Python: at once for the lane's
 * messages, at most every 100 µs while the flag says Python watches transfers).
 * Errors are reported, not raised: the worker lives on.  Returns 0. */
int
core_after_op(Core *c, int gil)
{
    PyObject *lane = c->lane;
    int *kick = c->kick, *flag = c->poll_flag;
    if (lane == NULL)
        return 0;
    int python = lane_poll_nogil(lane);
    int watched = flag != NULL && __atomic_load_n(flag, __ATOMIC_ACQUIRE);
    if (!gil) {   /* the progress thread does Python's part: no GIL taken here */
        static i64 last;   /* (for Python's transfers, at most every 100 µs: waking it costs) */
        i64 now = watched && !python ? now_ns() : 0;
        if (kick == NULL || !(python || (watched && now - __atomic_load_n(&last, __ATOMIC_RELAXED) > 100000)))
            return 0;
        if (now)
            __atomic_store_n(&last, now, __ATOMIC_RELAXED);
        __atomic_store_n(kick, 1, __ATOMIC_RELEASE);
        pthread_mutex_lock(&c->mu);
        if (c->idle_watch)
            pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->mu);
        return 0;
    }
    if (!python && !watched)
        return 0;
    PyObject *fn = c->poll_fn;
    if (fn == NULL)
        return 0;
    Py_INCREF(fn);
    PyObject *r = PyObject_CallNoArgs(fn);
    Py_DECREF(fn);
    if (r == NULL)
        PyErr_WriteUnraisable(lane);
    Py_XDECREF(r);
    return 0;
}
