/* The compiled core's ready queues, and the routing of a ready op to one.
 *
 * A queue holds priority 0 in a FIFO ring and any other priority in a heap
 * (higher first, push order among equals).  Each function says what it
 * needs: "mu" (core->mu held), "GIL", or "no GIL".
 */
#include "_core.h"


int
pool_init(Pool *p)
{
    memset(p, 0, sizeof *p);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&p->cv, &attr);
    pthread_condattr_destroy(&attr);
    return rc ? -1 : 0;
}

void
pool_free(Pool *p)
{
    PyMem_RawFree(p->fifo);
    PyMem_RawFree(p->heap);
    p->fifo = NULL;
    p->heap = NULL;
}

int
pool_empty(Pool *p)
{
    return p->flen == 0 && p->hlen == 0;
}

static void
heap_up(HeapEntry *h, Py_ssize_t i)
{
    HeapEntry e = h[i];
    while (i > 0) {
        Py_ssize_t parent = (i - 1) / 2;
        if (h[parent].key < e.key || (h[parent].key == e.key && h[parent].tie < e.tie))
            break;
        h[i] = h[parent];
        i = parent;
    }
    h[i] = e;
}

static void
heap_down(HeapEntry *h, Py_ssize_t n, Py_ssize_t i)
{
    HeapEntry e = h[i];
    for (;;) {
        Py_ssize_t child = 2 * i + 1;
        if (child >= n)
            break;
        if (child + 1 < n && (h[child + 1].key < h[child].key ||
                              (h[child + 1].key == h[child].key && h[child + 1].tie < h[child].tie)))
            child++;
        if (e.key < h[child].key || (e.key == h[child].key && e.tie < h[child].tie))
            break;
        h[i] = h[child];
        i = child;
    }
    h[i] = e;
}

/* Queue item (borrowed: the core's registration reference keeps an op alive).  mu. */
int
pool_put(Pool *p, PyObject *item, i64 priority)
{
    if (priority == 0) {
        if (p->flen == p->fcap) {
            Py_ssize_t cap = p->fcap ? 2 * p->fcap : 64;
            PyObject **ring = PyMem_RawMalloc(cap * sizeof(PyObject *));
            if (ring == NULL)
                return -1;
            for (Py_ssize_t i = 0; i < p->flen; i++)
                ring[i] = p->fifo[(p->fhead + i) % p->fcap];
            PyMem_RawFree(p->fifo);
            p->fifo = ring;
            p->fhead = 0;
            p->fcap = cap;
        }
        p->fifo[(p->fhead + p->flen) % p->fcap] = item;
        p->flen++;
    }
    else {
        if (p->hlen == p->hcap) {
            Py_ssize_t cap = p->hcap ? 2 * p->hcap : 16;
            HeapEntry *h = PyMem_RawRealloc(p->heap, cap * sizeof(HeapEntry));
            if (h == NULL)
                return -1;
            p->heap = h;
            p->hcap = cap;
        }
        p->heap[p->hlen] = (HeapEntry){-priority, p->tie++, item};
        heap_up(p->heap, p->hlen++);
    }
    /* Wake a sleeping worker only when the one watching the queue (if any) has more than it can take:
     * a wake-up is a system call answered on another core, dearer than a small op. */
    if (p->idle && (!p->spinning || p->flen + p->hlen > 1))
        pthread_cond_signal(&p->cv);
    return 0;
}

/* The best item (higher priority first; priority 0 items in push order), or NULL.  mu. */
PyObject *
pool_take(Pool *p)
{
    if (p->hlen && (p->heap[0].key < 0 || p->flen == 0)) {
        PyObject *item = p->heap[0].item;
        p->heap[0] = p->heap[--p->hlen];
        if (p->hlen)
            heap_down(p->heap, p->hlen, 0);
        return item;
    }
    if (p->flen == 0)
        return NULL;
    PyObject *item = p->fifo[p->fhead];
    p->fhead = (p->fhead + 1) % p->fcap;
    p->flen--;
    return item;
}

/* ------------------------------------------------------------- routing */

static int
touches_gpu(OpObject *op)   /* mu: a var the op names has GPU work the host must wait for */
{
    PyObject *lists[2] = {op->reads, op->writes};
    for (int k = 0; k < 2; k++)
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(lists[k]); i++)
            if (((VarObject *)PyTuple_GET_ITEM(lists[k], i))->gpu != NULL)
                return 1;
    return 0;
}

/* The pool that runs op: an index, -1 for a GPU op (the engine's Python route), -2 naive.  mu. */
int
core_route(Core *c, OpObject *op)
{
    if (c->type == T_NAIVE)
        return -2;
    if (!op->on_cpu)
        return -1;
    if (c->gpu_used && (op->kind_ix == 2 || touches_gpu(op)))
        op->host_hook = 1;   /* the host waits for GPU work first (the engine's Python prepare hook) */
    return c->pool_of_kind[(int)op->kind_ix];
}

static int
naive_append(Core *c, OpObject *op)   /* mu */
{
    if (c->nlen == c->ncap) {
        Py_ssize_t cap = c->ncap ? 2 * c->ncap : 16;
        PyObject **ring = PyMem_RawMalloc(cap * sizeof(PyObject *));
        if (ring == NULL)
            return -1;
        for (Py_ssize_t i = 0; i < c->nlen; i++)
            ring[i] = c->naive[(c->nhead + i) % c->ncap];
        PyMem_RawFree(c->naive);
        c->naive = ring;
        c->nhead = 0;
        c->ncap = cap;
    }
    c->naive[(c->nhead + c->nlen) % c->ncap] = (PyObject *)op;
    c->nlen++;
    return 0;
}

/* Hand ready ops to their pools (Python route for GPU ops).  GIL, not mu. */
int
core_dispatch_gil(Core *c, OpObject **ops, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        OpObject *op = ops[i];
        pthread_mutex_lock(&c->mu);
        int r = core_route(c, op), oom = 0;
        if (r >= 0)
            oom = pool_put(&c->pools[r], (PyObject *)op, op->priority) < 0;
        else if (r == -2)
            oom = naive_append(c, op) < 0;
        pthread_mutex_unlock(&c->mu);
        if (oom) {
            PyErr_NoMemory();
            return -1;
        }
        if (r == -1) {
            PyObject *res = PyObject_CallOneArg(PyTuple_GET_ITEM(c->hooks, 2), (PyObject *)op);
            if (res == NULL)
                return -1;
            Py_DECREF(res);
        }
    }
    return 0;
}

/* Ops made ready by a completion on a worker of pool mine, routed: the one of highest priority bound
 * for mine, if its queue is empty, becomes *next (else the head of that queue, or NULL); the others
 * go to their pools; GPU ops (no C pool) are moved to the front of ready for the caller to route with
 * the GIL.  Returns how many, or -1 when out of memory.  mu. */
int
route_ready(Core *c, int mine, OpObject **ready, int n, PyObject **next)
{
    Pool *p = &c->pools[mine];
    int python = 0, best = -1, oom = 0;
    *next = NULL;
    if (pool_empty(p))
        for (int i = 0; i < n; i++)
            if (core_route(c, ready[i]) == mine && (best < 0 || ready[i]->priority > ready[best]->priority))
                best = i;
    for (int i = 0; i < n; i++) {
        OpObject *op = ready[i];
        int r = core_route(c, op);
        if (i == best)
            *next = (PyObject *)op;
        else if (r >= 0)
            oom |= pool_put(&c->pools[r], (PyObject *)op, op->priority) < 0;
        else
            ready[python++] = op;
    }
    if (*next == NULL)
        *next = pool_take(p);
    return oom ? -1 : python;
}

/* ------------------------------------------- waiting for a message while idle */

static int
core_idle(Core *c)   /* no mu: a hint.  No op queued and no worker running one */
{
    for (int i = 0; i < NPOOLS; i++) {
        Pool *p = &c->pools[i];
        int threads = __atomic_load_n(&p->threads, __ATOMIC_RELAXED);
        if (__atomic_load_n(&p->flen, __ATOMIC_RELAXED) || __atomic_load_n(&p->hlen, __ATOMIC_RELAXED) ||
            threads > __atomic_load_n(&p->idle, __ATOMIC_RELAXED) + __atomic_load_n(&p->spinning, __ATOMIC_RELAXED))
            return 0;
    }
    return 1;
}

typedef int (*probe4)(int, int, int, int *, void *);          /* MPI_Iprobe, int handles (MPICH) */
typedef int (*probe8)(int, int, void *, int *, void *);       /* ... pointer handles */

static void
sleep_while_busy(Core *c, const int *kick, i64 t)   /* no GIL: until a worker runs out of ops, or t */
{
    struct timespec ts = {(time_t)(t / 1000000000LL), (long)(t % 1000000000LL)};
    pthread_mutex_lock(&c->mu);
    c->idle_watch++;
    if (!__atomic_load_n(kick, __ATOMIC_ACQUIRE))
        pthread_cond_timedwait(&c->cv, &c->mu, &ts);
    c->idle_watch--;
    pthread_mutex_unlock(&c->mu);
}

static int
probe_args(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want, long long *a)
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
    if (a[0] == 0 || (a[2] != 4 && a[2] != 8)) {
        PyErr_SetString(PyExc_ValueError, "a NULL MPI_Iprobe, or a handle size other than 4 or 8");
        return -1;
    }
    return 0;
}

static int
probe_call(const long long *a, int *flag)   /* MPI_Iprobe(a[3], a[4], comm a[1]): 0 or -(MPI error) */
{
    long long status[8];   /* MPI_Status: 20 bytes in MPICH, 32 in the standard ABI */
    int rc = a[2] == 4 ? ((probe4)(intptr_t)a[0])((int)a[3], (int)a[4], (int)a[1], flag, status)
                       : ((probe8)(intptr_t)a[0])((int)a[3], (int)a[4], (void *)(intptr_t)a[1], flag, status);
    return rc ? -rc : 0;
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
 * (a spinning thread would take the pusher's core).  why: 1 a message is there, 2 the int at address kick is nonzero, 3 max_ns
 * passed, 4 spin_ns spent, -code an MPI error. */
PyObject *
core_wait_message(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    long long a[9];
    if (probe_args(args, nargs, 9, a) < 0)
        return NULL;
    if (a[5] == 0 || a[6] == 0) {
        PyErr_SetString(PyExc_ValueError, "wait_message(): a NULL kick or push count address");
        return NULL;
    }
    const int *kick = (const int *)(intptr_t)a[5];
    const i64 *pushes = (const i64 *)(intptr_t)a[6];
    int flag = 0, rc = 0, why = 0;
    i64 spun = 0, now = now_ns(), until = now + a[8], seen = __atomic_load_n(pushes, __ATOMIC_RELAXED);
    Py_BEGIN_ALLOW_THREADS
    while (!why) {
        i64 count = __atomic_load_n(pushes, __ATOMIC_RELAXED);
        if (__atomic_load_n(kick, __ATOMIC_ACQUIRE))
            why = 2;
        else if (now >= until)
            why = 3;
        else if (spun >= a[7])
            why = 4;
        else if (!core_idle(c)) {
            sleep_while_busy(c, kick, until);
            now = now_ns();
        }
        else if (count != seen) {
            seen = count;
            sleep_while_busy(c, kick, now + 200000 < until ? now + 200000 : until);
            now = now_ns();
        }
        else {
            i64 from = now;
            for (int k = 1; !why; k++) {
                rc = probe_call(a, &flag);
                why = rc ? rc : flag;
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
