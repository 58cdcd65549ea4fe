/* Part of _core_engine.c: the var queues and the four transitions, failed vars, epochs
 * and the DEPENGINE_DEBUG invariants.  The transitions have the names and the meaning of
 * depengine/_var.py's.  Each function says what it needs: "mu" (core->mu held), "GIL", or
 * "no GIL".
 */

/* ------------------------------------------------------- growable arrays */

typedef struct {
    OpObject **items;
    int n, cap;
} OpVec;

static int
vec_add(OpVec *v, OpObject *op)   /* no GIL needed */
{
    if (v->n == v->cap) {
        int cap = v->cap ? 2 * v->cap : 8;
        OpObject **items = PyMem_RawRealloc(v->items, cap * sizeof(OpObject *));
        if (items == NULL)
            return -1;
        v->items = items;
        v->cap = cap;
    }
    v->items[v->n++] = op;
    return 0;
}

/* ---------------------------------------------------------- var queues */

static int
vq_push(VarObject *v, OpObject *op)   /* mu */
{
    if (v->qlen == v->qcap) {
        Py_ssize_t cap = v->qcap ? 2 * v->qcap : 4;
        OpObject **q = PyMem_RawMalloc(cap * sizeof(OpObject *));
        if (q == NULL)
            return -1;
        for (Py_ssize_t i = 0; i < v->qlen; i++)
            q[i] = v->q[(v->qhead + i) % v->qcap];
        PyMem_RawFree(v->q);
        v->q = q;
        v->qhead = 0;
        v->qcap = cap;
    }
    v->q[(v->qhead + v->qlen) % v->qcap] = op;
    v->qlen++;
    return 0;
}

static inline OpObject *
vq_head(VarObject *v)
{
    return v->q[v->qhead];
}

static inline OpObject *
vq_pop(VarObject *v)
{
    OpObject *op = v->q[v->qhead];
    v->qhead = (v->qhead + 1) % v->qcap;
    v->qlen--;
    return op;
}

static int
op_writes(OpObject *op, VarObject *v)   /* no GIL needed: the tuple is alive and immutable */
{
    PyObject *w = op->writes;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(w); i++)
        if (PyTuple_GET_ITEM(w, i) == (PyObject *)v)
            return 1;
    return 0;
}

/* --------------------------------------------------- the four transitions */

/* AppendRead: op will read v; 1 when granted at once.  mu; -1 out of memory. */
static int
append_read(VarObject *v, OpObject *op)
{
    if (v->writing || v->qlen)
        return vq_push(v, op) < 0 ? -1 : 0;
    v->nread++;
    return 1;
}

/* AppendWrite: op will write v (count writes: a composite counts each member's). */
static int
append_write(VarObject *v, OpObject *op, i64 count)
{
    v->pending_writes += count;
    if (v->writing || v->nread || v->qlen)
        return vq_push(v, op) < 0 ? -1 : 0;
    v->writing = 1;
    return 1;
}

static int
grant(OpObject *nxt, OpVec *ready)
{
    return --nxt->wait == 0 ? vec_add(ready, nxt) : 0;
}

/* CompleteRead: a reader of v finished; the last one grants a queued write.  mu. */
static int
complete_read(VarObject *v, OpVec *ready)
{
    v->nread--;
    if (v->nread == 0 && v->qlen) {   /* the head is a write */
        v->writing = 1;
        return grant(vq_pop(v), ready);
    }
    return 0;
}

/* CompleteWrite: the writer of v finished (count writes); grant one write or every read up to the next. */
static int
complete_write(VarObject *v, i64 count, OpVec *ready)
{
    v->version += count;
    v->pending_writes -= count;
    v->writing = 0;
    if (!v->qlen)
        return 0;
    if (op_writes(vq_head(v), v)) {
        v->writing = 1;
        return grant(vq_pop(v), ready);
    }
    while (v->qlen && !op_writes(vq_head(v), v)) {
        v->nread++;
        if (grant(vq_pop(v), ready) < 0)
            return -1;
    }
    return 0;
}

/* ------------------------------------------------------- failed vars */

static void
fail_list(Core *c, VarObject *v)   /* mu */
{
    if (v->listed)
        return;
    v->fprev = NULL;
    v->fnext = c->failed;
    if (c->failed)
        c->failed->fprev = v;
    c->failed = v;
    v->listed = 1;
    c->nfailed++;
}

static void
fail_unlist(Core *c, VarObject *v)   /* mu */
{
    if (!v->listed)
        return;
    if (v->fprev)
        v->fprev->fnext = v->fnext;
    else
        c->failed = v->fnext;
    if (v->fnext)
        v->fnext->fprev = v->fprev;
    v->listed = 0;
    c->nfailed--;
}

/* The failure op must inherit from a var it names, if it sees one (borrowed).  mu. */
int
input_failure_visible(Core *c, OpObject *op, PyObject **failure)
{
    PyObject *lists[2] = {op->reads, op->writes};
    for (int k = 0; k < 2; k++)
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(lists[k]); i++) {
            VarObject *v = (VarObject *)PyTuple_GET_ITEM(lists[k], i);
            if (v->failure != NULL && op->id < v->clear_seq) {
                *failure = v->failure;
                return 1;
            }
        }
    *failure = NULL;
    return 0;
}

/* Fire the waiters whose write completed.  mu; with_gil says whether refcounts may change. */
static void
wake_waiters(Core *c, VarObject *v)
{
    Waiter **link = &v->waiters;
    int woke = 0;
    while (*link) {
        Waiter *w = *link;
        if (v->version >= w->target) {
            w->failure = v->failure ? Py_NewRef(v->failure) : NULL;   /* only with the GIL: see callers */
            __atomic_store_n(&w->fired, 1, __ATOMIC_RELEASE);   /* (watched without mu by waiter_set) */
            *link = w->next;
            woke = 1;
        }
        else
            link = &w->next;
    }
    if (woke)
        pthread_cond_broadcast(&c->cv);
}

#define BACKLOG 2048   /* pending ops past which a pushing thread waits for the workers (push) */
#define DRAIN_EVERY 32 /* native ops finished without the GIL that a push lets gather before it releases them */

static void
epoch_done(Core *c, Epoch *e)   /* mu: one of e's ops finished */
{
    if (c->pressing && e == c->epoch && e->count == BACKLOG / 2 + 1)
        pthread_cond_broadcast(&c->cv);   /* a pusher waits for the backlog to shrink */
    if (--e->count || !e->closed)
        return;
    Epoch **link = &c->closed_epochs;
    while (*link && *link != e)
        link = &(*link)->next;
    if (*link)
        *link = e->next;
    PyMem_RawFree(e);
    pthread_cond_broadcast(&c->cv);
}

/* ---------------------------------------------------------- invariants */

static void
check_var(VarObject *v)   /* mu: DEPENGINE_DEBUG; an engine bug aborts with the var's state */
{
    const char *bad = NULL;
    i64 queued = 0;
    for (Py_ssize_t i = 0; i < v->qlen; i++) {
        OpObject *op = v->q[(v->qhead + i) % v->qcap];
        if (op_writes(op, v))
            queued++;   /* composites are registered as one write each here, see below */
    }
    if (v->nread < 0 || v->pending_writes < 0)
        bad = "negative counter";
    else if (v->nread && v->writing)
        bad = "readers and a writer at once";
    else if (v->qlen && !(v->writing || v->nread))
        bad = "queue head waits for nobody";
    else if (v->qlen && !op_writes(vq_head(v), v) && !v->writing)
        bad = "a read waits while no write runs";
    else if (v->pending_writes < queued + v->writing)
        bad = "pending_writes is too small";
    if (bad) {
        fprintf(stderr, "depengine._core: broken invariant of var #%lld (v%lld): %s "
                "(nread=%ld writing=%d queued=%zd pending_writes=%lld)\n", v->serial, v->version, bad,
                v->nread, v->writing, v->qlen, v->pending_writes);
        abort();
    }
}

static void
check_op_vars(OpObject *op)
{
    PyObject *lists[2] = {op->reads, op->writes};
    for (int k = 0; k < 2; k++)
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(lists[k]); i++)
            check_var((VarObject *)PyTuple_GET_ITEM(lists[k], i));
}
