/* The mpi engine's lane for small transfers in C (depengine/mpi/lane.py).
 *
 * A transfer of a small clean version (its header and bytes in one message)
 * needs no Python once its ops run.  The send op copies the header and the
 * bytes into a message of its own and posts MPI_Isend (the op is done: the
 * var may be written again at once); the lane tests the request later and
 * frees the message.  The recv op registers what it expects (source, tag,
 * the exact header, where the bytes go, its Done).  Whoever looks at MPI next
 * (the progress thread spinning without the GIL, a worker after each op, the
 * recv op itself) matches the message with MPI_Improbe, receives it with
 * MPI_Mrecv, and when its header is byte for byte the expected one, copies
 * the bytes and completes the recv op in C, without the GIL where nothing
 * else needs it.  Any other message (a failure, a header that does not fit,
 * a forged one) is handed to Python with its bytes, which checks it as
 * transport.py does.  Messages that come before their recv op wait, matched,
 * in a list.  The lane has its own communicator, so mpi4py never matches its
 * messages.  MPICH's int handles only (the lane is off elsewhere).
 */
#include "_core.h"

typedef int (*isend_t)(const void *, int, int, int, int, int, int *);
typedef int (*test_t)(int *, int *, void *);
typedef int (*improbe_t)(int, int, int, int *, int *, void *);
typedef int (*mrecv_t)(void *, int, int, int *, void *);
typedef int (*count_t)(const void *, int, int *);

typedef struct { long long w[8]; } MpiStatus;   /* MPI_Status: 20 bytes in MPICH */

typedef struct Entry {         /* a receive the lane waits for */
    int src, tag;
    char *header;              /* the exact header expected (PyMem_Raw) */
    Py_ssize_t hsize, nbytes;
    char *dest;                /* where the bytes go */
    PyObject *done, *buffer, *ctx;   /* the recv op's Done, the buffer (kept alive), Python's context */
    char *msg;                 /* a message Python must look at (PyMem_Raw), or NULL: complete with done() */
    Py_ssize_t msize;
    struct Entry *next;
} Entry;

typedef struct Early {         /* a message matched before its receive was registered */
    int src, tag, message, count;
    struct Early *next;
} Early;

typedef struct Sent {          /* a send in flight and its message */
    int request;
    char *msg;
    struct Sent *next;
} Sent;

typedef struct {
    PyObject_HEAD
    Core *core;                /* strong */
    pthread_mutex_t mu;
    isend_t isend;
    test_t test;
    improbe_t improbe;
    mrecv_t mrecv;
    count_t count;
    int comm, byte, any_source, any_tag, off_source, off_tag;
    Entry *waiting, *ready, *graves;   /* registered; matched, for Python; completed in C, refs to drop */
    Entry *forward;            /* receives in Python: any message of theirs goes to Python (not polled) */
    Early *early;
    Sent *sent;
    long long completed_in_c, handed, sends;
    int broken;                /* a call into MPI failed: the lane stops looking (Python raises once) */
    int reported;
} LaneObject;

#define LANE_LIMIT (176 + 4096 + (1 << 20))   /* the largest message taken: header, bytes, a failure */

static void
append_entry(Entry **list, Entry *e)   /* at the tail: the first registered is the first matched */
{
    e->next = NULL;
    while (*list)
        list = &(*list)->next;
    *list = e;
}

static Entry **
find_entry(Entry **link, int src, int tag)
{
    for (; *link; link = &(*link)->next)
        if ((*link)->src == src && (*link)->tag == tag)
            return link;
    return NULL;
}

static void
test_sends(LaneObject *l)   /* mu */
{
    Sent **link = &l->sent;
    while (*link) {
        Sent *s = *link;
        int flag = 0;
        MpiStatus st;
        if (l->test(&s->request, &flag, &st) != 0 || flag) {   /* an error: nothing more to wait for */
            *link = s->next;
            PyMem_RawFree(s->msg);
            PyMem_RawFree(s);
        }
        else
            link = &s->next;
    }
}

/* Receive message into e (mu held); 1 when clean and copied, 0 when Python must look at it, -1 error. */
static int
take_message(LaneObject *l, Entry *e, int *message, int count)
{
    MpiStatus st;
    if (count < 0 || count > LANE_LIMIT) {   /* not a transfer: dropped unread (MPI truncates it) */
        char none;
        l->mrecv(&none, 0, l->byte, message, &st);
        e->msg = NULL;
        e->msize = count < 0 ? -1 : count;
        return 0;
    }
    char *buf = PyMem_RawMalloc(count > 0 ? (size_t)count : 1);
    if (buf == NULL)
        return -1;
    if (l->mrecv(buf, count, l->byte, message, &st) != 0) {
        PyMem_RawFree(buf);
        return -1;
    }
    if (e->hsize >= 0 && count == e->hsize + e->nbytes && memcmp(buf, e->header, e->hsize) == 0) {
        memcpy(e->dest, buf + e->hsize, e->nbytes);
        PyMem_RawFree(buf);
        return 1;
    }
    e->msg = buf;
    e->msize = count;
    return 0;
}

/* Complete e's recv op (no GIL needed): 1 done, 0 it needs the GIL (then nothing changed). */
static int
complete_nogil(LaneObject *l, Entry *e)
{
    Core *c = l->core;
    OpObject *op = ((DoneObject *)e->done)->op;
    pthread_mutex_lock(&c->mu);
    int first = done_claim(e->done);
    pthread_mutex_unlock(&c->mu);
    if (!first)
        return 1;   /* (already completed: nothing to do) */
    int r = core_complete_external(c, op);
    if (r != 1) {
        pthread_mutex_lock(&c->mu);
        ((DoneObject *)e->done)->called = 0;
        pthread_mutex_unlock(&c->mu);
    }
    return r == 1;
}

/* Match what arrived and test the sends.  Matched receives go to l->ready (Python completes them)
 * unless complete_in_c completes them here.  mu not held.  Returns how many need Python, or -1. */
static int
lane_work(LaneObject *l, int complete_in_c)
{
    int python = 0, rc = 0;
    pthread_mutex_lock(&l->mu);
    if (l->sent)
        test_sends(l);
    Entry *clean = NULL;
    for (;;) {
        int flag = 0, message = 0, count = 0;
        MpiStatus st;
        if (l->improbe(l->any_source, l->any_tag, l->comm, &flag, &message, &st) != 0) {
            rc = -1;
            break;
        }
        if (!flag)
            break;
        int src = *(int *)((char *)&st + l->off_source), tag = *(int *)((char *)&st + l->off_tag);
        l->count(&st, l->byte, &count);
        Entry **link = find_entry(&l->waiting, src, tag);
        if (link == NULL)
            link = find_entry(&l->forward, src, tag);
        if (link == NULL) {
            Early *early = PyMem_RawMalloc(sizeof(Early));
            if (early == NULL) {
                rc = -1;
                break;
            }
            *early = (Early){src, tag, message, count, NULL};
            Early **tail = &l->early;   /* at the tail: the first to come is the first taken */
            while (*tail)
                tail = &(*tail)->next;
            *tail = early;
            continue;
        }
        Entry *e = *link;
        *link = e->next;
        int got = take_message(l, e, &message, count);
        if (got < 0) {
            rc = -1;
            Entry **list = e->hsize < 0 ? &l->forward : &l->waiting;
            e->next = *list;   /* (back where it was: at the head) */
            *list = e;
            break;
        }
        e->next = got ? clean : l->ready;
        if (got)
            clean = e;
        else {
            l->ready = e;
            python++;
        }
    }
    if (rc < 0)
        l->broken = 1;
    pthread_mutex_unlock(&l->mu);
    while (clean) {
        Entry *e = clean;
        clean = e->next;
        int done = complete_in_c && complete_nogil(l, e);
        pthread_mutex_lock(&l->mu);
        if (done) {
            e->next = l->graves;
            l->graves = e;
            l->completed_in_c++;
        }
        else {
            e->next = l->ready;
            l->ready = e;
            python++;
        }
        pthread_mutex_unlock(&l->mu);
    }
    return rc < 0 ? -1 : python;
}

/* The progress thread's look, without the GIL (core_wait_message): 1 when Python has work. */
int
lane_poll_nogil(PyObject *lane)
{
    LaneObject *l = (LaneObject *)lane;
    if (__atomic_load_n(&l->broken, __ATOMIC_RELAXED))
        return 0;
    if (__atomic_load_n(&l->waiting, __ATOMIC_RELAXED) == NULL && __atomic_load_n(&l->sent, __ATOMIC_RELAXED)
            == NULL && __atomic_load_n(&l->ready, __ATOMIC_RELAXED) == NULL)
        return 0;
    int r = lane_work(l, 1);
    return r != 0 || __atomic_load_n(&l->ready, __ATOMIC_RELAXED) != NULL;
}

static void
entry_free(Entry *e)   /* GIL */
{
    Py_XDECREF(e->done);
    Py_XDECREF(e->buffer);
    Py_XDECREF(e->ctx);
    PyMem_RawFree(e->header);
    PyMem_RawFree(e->msg);
    PyMem_RawFree(e);
}

/* GIL: drop the completed entries' references; a list of (ctx, done, message or None) for Python. */
static PyObject *
collect(LaneObject *l)
{
    pthread_mutex_lock(&l->mu);
    Entry *graves = l->graves, *ready = l->ready;
    l->graves = l->ready = NULL;
    pthread_mutex_unlock(&l->mu);
    while (graves) {
        Entry *e = graves;
        graves = e->next;
        entry_free(e);
    }
    PyObject *out = PyList_New(0);
    for (Entry *e = ready; e; e = e->next) {
        PyObject *msg = e->msg ? PyBytes_FromStringAndSize(e->msg, e->msize)
                               : e->msize ? PyLong_FromSsize_t(e->msize) : Py_NewRef(Py_None);
        PyObject *item = msg == NULL ? NULL : PyTuple_Pack(3, e->ctx, e->done, msg);
        Py_XDECREF(msg);
        if (out != NULL && (item == NULL || PyList_Append(out, item) < 0))
            Py_CLEAR(out);
        Py_XDECREF(item);
    }
    while (ready) {
        Entry *e = ready;
        ready = e->next;
        entry_free(e);
    }
    l->handed += out == NULL ? 0 : PyList_GET_SIZE(out);
    return out;
}

/* MpiLane.poll(): match, test sends; the receives Python completes: [(ctx, done, message or None)]. */
static PyObject *
lane_poll(LaneObject *l, PyObject *unused)
{
    if (!l->broken)
        lane_work(l, 0);
    if (l->broken && !l->reported) {   /* said once; the receives still waiting stay until close */
        l->reported = 1;
        PyErr_SetString(PyExc_RuntimeError, "the MPI lane: a call into MPI failed; the lane stopped");
        return NULL;
    }
    return collect(l);
}

/* MpiLane.send(dst, tag, header, gen_offset, gen, raw): post header (gen patched) + raw's bytes. */
static PyObject *
lane_send(LaneObject *l, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer head, raw;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "send(dst, tag, header, gen_offset, gen, raw)");
        return NULL;
    }
    int dst = PyLong_AsLong(args[0]), tag = PyLong_AsLong(args[1]);
    Py_ssize_t at = PyLong_AsSsize_t(args[3]);
    long long gen = PyLong_AsLongLong(args[4]);
    if (PyErr_Occurred())
        return NULL;
    if (PyObject_GetBuffer(args[2], &head, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[5], &raw, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&head);
        return NULL;
    }
    Py_ssize_t size = head.len + raw.len;
    Sent *s = NULL;
    char *msg = NULL;
    if (at < 0 || at + 8 > head.len || size > INT32_MAX)
        PyErr_SetString(PyExc_ValueError, "send(): a bad header or size");
    else if ((msg = PyMem_RawMalloc(size ? size : 1)) == NULL || (s = PyMem_RawMalloc(sizeof(Sent))) == NULL)
        PyErr_NoMemory();
    else {
        memcpy(msg, head.buf, head.len);
        memcpy(msg + at, &gen, 8);   /* little-endian hosts only (the lane is off elsewhere) */
        memcpy(msg + head.len, raw.buf, raw.len);
    }
    PyBuffer_Release(&head);
    PyBuffer_Release(&raw);
    if (s == NULL) {
        PyMem_RawFree(msg);
        return NULL;
    }
    pthread_mutex_lock(&l->mu);
    s->msg = msg;
    int rc = l->isend(msg, (int)size, l->byte, dst, tag, l->comm, &s->request), flag = 0;
    MpiStatus st;
    if (rc == 0 && l->test(&s->request, &flag, &st) == 0 && !flag) {
        s->next = l->sent;
        l->sent = s;
        s = NULL;
    }
    l->sends++;
    pthread_mutex_unlock(&l->mu);
    if (s != NULL) {
        PyMem_RawFree(s->msg);
        PyMem_RawFree(s);
    }
    if (rc != 0) {
        PyErr_Format(PyExc_RuntimeError, "MPI_Isend to rank %d failed (error %d)", dst, rc);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* MpiLane.expect(src, tag, header, raw, done, ctx): receive a version into raw (a buffer of exactly its
 * bytes) when a message with exactly this header comes; done() then.  header None: hand any message of
 * this key to Python (a transfer Python receives, whose sender may have taken the lane).  A message that came already is
 * taken at once.  Returns what MpiLane.poll returns (this receive among them when Python must finish it). */
static PyObject *
lane_expect(LaneObject *l, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "expect(src, tag, header, raw, done, ctx)");
        return NULL;
    }
    if (Py_TYPE(args[4]) != &DoneType) {
        PyErr_SetString(PyExc_TypeError, "expect(): done must be an async op's done");
        return NULL;
    }
    int src = PyLong_AsLong(args[0]), tag = PyLong_AsLong(args[1]);
    if (PyErr_Occurred())
        return NULL;
    Py_buffer head = {0}, raw;
    int forward = args[2] == Py_None;   /* every message for this key goes to Python */
    if (!forward && PyObject_GetBuffer(args[2], &head, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[3], &raw, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        if (!forward)
            PyBuffer_Release(&head);
        return NULL;
    }
    Entry *e = PyMem_RawCalloc(1, sizeof(Entry));
    char *header = PyMem_RawMalloc(head.len ? head.len : 1);
    if (e == NULL || header == NULL) {
        PyMem_RawFree(e);
        PyMem_RawFree(header);
        if (!forward)
            PyBuffer_Release(&head);
        PyBuffer_Release(&raw);
        return PyErr_NoMemory();
    }
    if (head.len)
        memcpy(header, head.buf, head.len);
    *e = (Entry){src, tag, header, forward ? -1 : head.len, raw.len, raw.buf, Py_NewRef(args[4]),
                 Py_NewRef(args[3]), Py_NewRef(args[5]), NULL, 0, NULL};
    if (!forward)
        PyBuffer_Release(&head);
    PyBuffer_Release(&raw);   /* (the entry keeps the array, hence its memory, alive) */
    int got = -2;
    pthread_mutex_lock(&l->mu);
    Early **link = &l->early;
    while (*link && !((*link)->src == src && (*link)->tag == tag))
        link = &(*link)->next;
    if (*link) {
        Early *early = *link;
        *link = early->next;
        got = take_message(l, e, &early->message, early->count);
        PyMem_RawFree(early);
    }
    if (got == 0 || got == 1) {   /* finished here, with the GIL: Python calls done() */
        e->next = l->ready;
        l->ready = e;
    }
    else if (got == -2)
        append_entry(forward ? &l->forward : &l->waiting, e);
    pthread_mutex_unlock(&l->mu);
    if (got == -1) {
        entry_free(e);
        PyErr_SetString(PyExc_RuntimeError, "the MPI lane: MPI_Mrecv failed");
        return NULL;
    }
    if (!l->broken)
        lane_work(l, 0);   /* (registered: nothing raises past this point but running out of memory) */
    return collect(l);
}

/* MpiLane.take(src): the receives still waiting on rank src (all: -1), taken out: [(ctx, done)]. */
static PyObject *
lane_take(LaneObject *l, PyObject *arg)
{
    int src = PyLong_AsLong(arg);
    if (src == -1 && PyErr_Occurred())
        return NULL;
    Entry *taken = NULL;
    pthread_mutex_lock(&l->mu);
    for (int k = 0; k < 2; k++)
        for (Entry **link = k ? &l->forward : &l->waiting; *link;) {
            Entry *e = *link;
            if (src < 0 || e->src == src) {
                *link = e->next;
                e->next = taken;
                taken = e;
            }
            else
                link = &e->next;
        }
    pthread_mutex_unlock(&l->mu);
    PyObject *out = PyList_New(0);
    while (taken) {
        Entry *e = taken;
        taken = e->next;
        PyObject *item = PyTuple_Pack(2, e->ctx, e->done);
        if (out != NULL && (item == NULL || PyList_Append(out, item) < 0))
            Py_CLEAR(out);
        Py_XDECREF(item);
        entry_free(e);
    }
    return out;
}

/* MpiLane.take_key(src, tag): the receive waiting for this key, taken out, as (ctx, done); or None. */
static PyObject *
lane_take_key(LaneObject *l, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "take_key(src, tag)");
        return NULL;
    }
    int src = PyLong_AsLong(args[0]), tag = PyLong_AsLong(args[1]);
    if (PyErr_Occurred())
        return NULL;
    pthread_mutex_lock(&l->mu);
    Entry **link = find_entry(&l->waiting, src, tag), *e = NULL;
    if (link == NULL)
        link = find_entry(&l->forward, src, tag);
    if (link != NULL) {
        e = *link;
        *link = e->next;
    }
    pthread_mutex_unlock(&l->mu);
    if (e == NULL)
        Py_RETURN_NONE;
    PyObject *out = PyTuple_Pack(2, e->ctx, e->done);
    entry_free(e);
    return out;
}

/* MpiLane.sources(): the ranks whose messages the lane waits for. */
static PyObject *
lane_sources(LaneObject *l, PyObject *unused)
{
    PyObject *out = PySet_New(NULL);
    pthread_mutex_lock(&l->mu);
    for (Entry *e = l->waiting; e && out; e = e->next) {
        PyObject *r = PyLong_FromLong(e->src);
        if (r == NULL || PySet_Add(out, r) < 0)
            Py_CLEAR(out);
        Py_XDECREF(r);
    }
    pthread_mutex_unlock(&l->mu);
    return out;
}

/* MpiLane.counts(): (receives waiting (the lane's own, not forward entries), sends in flight, messages held early, completed in C, handed to
 * Python, sends posted). */
static PyObject *
lane_counts(LaneObject *l, PyObject *unused)
{
    long long n[3] = {0, 0, 0};
    pthread_mutex_lock(&l->mu);
    for (Entry *e = l->waiting; e; e = e->next)
        n[0]++;
    for (Sent *s = l->sent; s; s = s->next)
        n[1]++;
    for (Early *e = l->early; e; e = e->next)
        n[2]++;
    pthread_mutex_unlock(&l->mu);
    return Py_BuildValue("LLLLLL", n[0], n[1], n[2], l->completed_in_c, l->handed, l->sends);
}

/* MpiLane(core, (isend, test, improbe, mrecv, get_count), comm, byte, any_source, any_tag,
 * source_offset, tag_offset): MPICH handles (ints). */
static PyObject *
lane_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    PyObject *core;
    unsigned long long f[5];
    int comm, byte, any_source, any_tag, off_source, off_tag;
    if (!PyArg_ParseTuple(args, "O!(KKKKK)iiiiii:MpiLane", &CoreType, &core, &f[0], &f[1], &f[2], &f[3],
                          &f[4], &comm, &byte, &any_source, &any_tag, &off_source, &off_tag))
        return NULL;
    for (int i = 0; i < 5; i++)
        if (f[i] == 0) {
            PyErr_SetString(PyExc_ValueError, "MpiLane: a NULL MPI function");
            return NULL;
        }
    if (off_source < 0 || off_tag < 0 || off_source > (int)sizeof(MpiStatus) - 4 ||
        off_tag > (int)sizeof(MpiStatus) - 4) {
        PyErr_SetString(PyExc_ValueError, "MpiLane: status offsets outside MPI_Status");
        return NULL;
    }
    LaneObject *l = (LaneObject *)type->tp_alloc(type, 0);
    if (l == NULL)
        return NULL;
    l->core = (Core *)Py_NewRef(core);
    core_mutex_init(&l->mu);
    l->isend = (isend_t)(uintptr_t)f[0];
    l->test = (test_t)(uintptr_t)f[1];
    l->improbe = (improbe_t)(uintptr_t)f[2];
    l->mrecv = (mrecv_t)(uintptr_t)f[3];
    l->count = (count_t)(uintptr_t)f[4];
    l->comm = comm;
    l->byte = byte;
    l->any_source = any_source;
    l->any_tag = any_tag;
    l->off_source = off_source;
    l->off_tag = off_tag;
    return (PyObject *)l;
}

static int
lane_traverse(LaneObject *l, visitproc visit, void *arg)
{
    Py_VISIT(l->core);   /* (the core holds its lane while set_after_op holds: a cycle the GC can break) */
    return 0;
}

static int
lane_clear(LaneObject *l)
{
    Py_CLEAR(l->core);
    return 0;
}

static void
lane_dealloc(LaneObject *l)
{
    PyObject_GC_UnTrack(l);
    PyObject *gone = collect(l);   /* (no thread uses a lane that is being freed) */
    Py_XDECREF(gone);
    PyObject *all = PyLong_FromLong(-1), *left = all == NULL ? NULL : lane_take(l, all);
    Py_XDECREF(all);
    Py_XDECREF(left);
    while (l->early) {   /* matched but never received: MPI frees them with the communicator */
        Early *e = l->early;
        l->early = e->next;
        PyMem_RawFree(e);
    }
    while (l->sent) {    /* posted sends keep their message: freed only once MPI is done with it */
        Sent *s = l->sent;
        l->sent = s->next;
        PyMem_RawFree(s);
    }
    pthread_mutex_destroy(&l->mu);
    Py_XDECREF(l->core);
    Py_TYPE(l)->tp_free((PyObject *)l);
}

static PyMethodDef lane_methods[] = {
    {"poll", (PyCFunction)lane_poll, METH_NOARGS, "Match and test; the receives Python must finish."},
    {"send", (PyCFunction)(void (*)(void))lane_send, METH_FASTCALL, "Post a transfer."},
    {"expect", (PyCFunction)(void (*)(void))lane_expect, METH_FASTCALL, "Register a receive."},
    {"take", (PyCFunction)lane_take, METH_O, "Take out the receives waiting on a rank."},
    {"counts", (PyCFunction)lane_counts, METH_NOARGS, "What the lane holds and has done."},
    {"sources", (PyCFunction)lane_sources, METH_NOARGS, "The ranks the lane waits for."},
    {"take_key", (PyCFunction)(void (*)(void))lane_take_key, METH_FASTCALL, "Take out one receive."},
    {NULL},
};

PyTypeObject MpiLaneType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "depengine._core.MpiLane",
    .tp_basicsize = sizeof(LaneObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The mpi engine's small transfers in C (depengine/mpi/lane.py).",
    .tp_new = lane_new,
    .tp_traverse = (traverseproc)lane_traverse,
    .tp_clear = (inquiry)lane_clear,
    .tp_dealloc = (destructor)lane_dealloc,
    .tp_methods = lane_methods,
};

int
mpi_lane_ready(PyObject *m)
{
    if (PyType_Ready(&MpiLaneType) < 0)
        return -1;
    return PyModule_AddObjectRef(m, "MpiLane", (PyObject *)&MpiLaneType);
}
