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
 * go to their pools (all of them when next is NULL); GPU ops (no C pool) are moved to the front of ready for the caller to route with
 * the GIL.  Returns how many, or -1 when out of memory.  mu. */
int
route_ready(Core *c, int mine, OpObject **ready, int n, PyObject **next)
{
    Pool *p = &c->pools[mine];
    int python = 0, best = -1, oom = 0;
    if (next != NULL)
        *next = NULL;
    if (next != NULL && pool_empty(p))
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
    if (next != NULL && *next == NULL)
        *next = pool_take(p);
    return oom ? -1 : python;
}

/* ------------------------------------------------------------ idleness */

int
core_idle(Core *c)   /* no op queued and no worker running one: exact under mu, else a hint */
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
