/* depengine._core: the compiled engine core.
 *
 * The same engine as depengine/_engine.py (the pure-Python reference), with
 * vars, ops, the four var transitions, registration, completion, ready
 * queues and the worker loop in C.  Scheduling state lives in C memory under
 * one mutex (core->mu), so a worker running a native op body (a C function,
 * see depengine/_native.py) never takes the GIL: it runs the body, completes
 * the op and grants its successors in C.  Python op bodies take the GIL to
 * run.  Anything that touches Python objects' reference counts (failures,
 * releasing a finished op) happens with the GIL; a native op that finished
 * cleanly leaves its op on a list that the next thread holding the GIL
 * releases (core_drain).
 *
 * Lock order: the GIL before core->mu.  A thread holding core->mu never
 * waits for the GIL.
 *
 * Files: _core_var.c, _core_op.c, _core_native.c (the Python-visible objects
 * Var, Op and Done, Native), _core_engine.c (the Core object, completion,
 * failures; it includes _core_transitions.c.h, _core_push.c.h and
 * _core_waits.c.h), _core_queue.c (ready queues, routing), _core_pool.c
 * (workers, the naive engine's drain), _core_plan.c (plans of native
 * bodies), _core_records.c (the profiler's records), _core_module.c (the
 * module); for Engine("mpi"): _core_mpi.c (probes of MPI, the look after each
 * op), _core_mpi_push.c (MpiPusher: its push), _core_lane.c (MpiLane: small
 * transfers).
 */
#ifndef DEPENGINE_CORE_H
#define DEPENGINE_CORE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#if PY_VERSION_HEX < 0x030D0000
#define PyObject_GetOptionalAttr _PyObject_LookupAttr
#endif

typedef long long i64;

/* The core's one mutex: adaptive where glibc has it (a thread finding it held spins briefly before
 * sleeping: the holder keeps it for a few hundred ns, a futex sleep and wake-up cost microseconds). */
static inline void
core_mutex_init(pthread_mutex_t *mu)
{
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
#ifdef PTHREAD_ADAPTIVE_MUTEX_INITIALIZER_NP
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ADAPTIVE_NP);
#endif
    pthread_mutex_init(mu, &attr);
    pthread_mutexattr_destroy(&attr);
}
typedef int32_t (*native_fn)(void *);

enum { PENDING, RUNNING, DONE, FAILED, SKIPPED };        /* _op.PENDING ... */
enum { T_NAIVE, T_THREADED, T_PERDEVICE };               /* engine types */
enum { POOL_CPU, POOL_PRIO, POOL_COPY, NPOOLS };         /* perdevice pools (threaded: POOL_CPU only) */
#define NEVER_CLEARED LLONG_MAX

typedef struct Core Core;
typedef struct OpObject OpObject;
typedef struct VarObject VarObject;

typedef struct Waiter {        /* a wait_for_var blocked on a var */
    i64 target;                /* the version that ends the wait */
    int fired;
    PyObject *failure;         /* new reference, set when fired with a failure */
    struct Waiter *next;
} Waiter;

typedef struct Epoch {         /* ops pushed between two wait_all calls, not yet finished */
    i64 id, count;
    int closed;
    struct Epoch *next;        /* the list of closed epochs */
} Epoch;

struct VarObject {
    PyObject_HEAD
    PyObject *name;            /* str */
    PyObject *engine;          /* the engine (strong) */
    Core *core;                /* its core (the engine keeps it alive) */
    PyObject *gpu;             /* the per-device engine's GPU state of the var, or NULL */
    PyObject *failure;         /* what its last write carries, or NULL */
    PyObject *solo;            /* (self,) once made */
    PyObject *weakrefs;
    i64 serial, version;
    i64 pending_writes;        /* invariant: == writing + writes queued (composites count each member) */
    i64 clear_seq;             /* ops with id >= clear_seq do not see the failure */
    i64 deleted_at;            /* id of the delete op, or -1 */
    OpObject **q;              /* ops waiting for the var, in push order (a ring) */
    Py_ssize_t qhead, qlen, qcap;
    long nread;                /* invariant: nread > 0 implies !writing */
    int writing;
    Waiter *waiters;
    VarObject *fprev, *fnext;  /* the core's list of failed vars */
    int listed;                /* in that list */
};

struct OpObject {
    PyObject_HEAD
    PyObject *fn;              /* the body; NULL once finished */
    PyObject *name;            /* str, or NULL until named */
    PyObject *reads, *writes;  /* tuples of VarObject */
    PyObject *device, *kind, *stream, *error, *meta, *wcounts, *outcome;
    PyObject *p_engine, *p_lane;   /* profiler stamps (NULL: not stamped) */
    PyObject *dict;            /* anything else Python code attaches */
    Core *core;                /* the core it was pushed to, or NULL */
    i64 id, priority, p_push, p_start, p_end;
    unsigned long p_thread;
    int wait;                  /* vars not granted yet (the +1 of registration included until it ends) */
    char state, always_run, is_async, native, stamped, started, host_hook, registered, inline_ok;
    char kind_ix, on_cpu;      /* kind: normal, prioritized, copy, async = 0..3; on the CPU device */
    native_fn cfn;
    void *carg;
    Epoch *epoch;
    i64 *versions;             /* profiling, native ops: versions seen, recorded later under the GIL */
    OpObject *next_done;       /* the core's list of ops to release under the GIL */
};

typedef struct {               /* depengine.native's op body, in C form */
    PyObject_HEAD
    native_fn fn;
    void *arg;
    PyObject *name;            /* str */
    PyObject *keep;            /* the argument's owner and buffer export, kept alive; or None */
    char inline_ok;            /* cheap: a push that finds it ready runs it at once (see core_push) */
} NativeObject;

typedef struct {               /* an entry of a ready queue's heap */
    i64 key, tie;              /* -priority, then push order */
    PyObject *item;
} HeapEntry;

typedef struct Pool {
    PyObject **fifo;           /* priority-0 items, a ring */
    Py_ssize_t fhead, flen, fcap;
    HeapEntry *heap;
    Py_ssize_t hlen, hcap;
    i64 tie;
    pthread_cond_t cv;
    int idle, spinning, stop, threads, exited;   /* idle: asleep on cv; spinning: watching the queue */
} Pool;

struct Core {
    PyObject_HEAD
    PyObject *engine;          /* borrowed: the engine owns its core */
    PyObject *weakrefs;
    pthread_mutex_t mu;
    pthread_cond_t cv;         /* var waiters, epochs, async done, the naive lock */
    int type, debug, closing, closed, forked, any_deleted, gpu_used;
    int idle_watch;            /* threads waiting (wait_message) for a worker to run out of ops */
    i64 spin_ns;               /* how long an idle worker watches its queue before it sleeps */
    int capturing;             /* record() and bulk() blocks active (Python sets it) */
    int pressing, backlog_skip;  /* pushers waiting for the backlog to shrink; pushes that won't wait */
    PyObject *prof;            /* the Recorder, or NULL */
    PyObject *store;           /* its store of records */
    PyObject *cpu;             /* de.cpu() */
    PyObject *hooks;           /* the engine's Python hooks: a tuple, see _core_engine.c */
    PyObject *unreported;      /* list: failures no wait raised, oldest first */
    i64 seq, nvars, next_epoch;
    Epoch *epoch, *closed_epochs;
    VarObject *failed;         /* list of failed vars */
    Py_ssize_t nfailed;
    Pool pools[NPOOLS];
    int pool_of_kind[4];       /* normal, prioritized, copy, async -> pool */
    OpObject *done_ops;        /* finished native ops to release (and record) under the GIL */
    Py_ssize_t ndone;
    i64 completed;             /* ops finished (any body): drain(wait) waits for it to move */
    int done_watch;            /* threads in drain(wait): a finishing op broadcasts cv */
    Py_tss_t *depth;           /* per thread: > 0 while running this engine's ops */
    PyObject **naive;          /* naive engine: the ready ops, a ring */
    Py_ssize_t nhead, nlen, ncap;
    unsigned long naive_owner; /* the thread draining (the naive engine runs one op at a time) */
    long naive_count;
    /* the mpi engine's look at MPI after each op a worker runs (Core.set_after_op, _core_mpi.c) */
    PyObject *lane;            /* its MpiLane, or NULL */
    PyObject *poll_fn;         /* Python's look (Transport.poll_after_op), called when *poll_flag */
    int *poll_flag, *kick;     /* set while Python has transfers to watch; the progress thread's kick */
};

typedef struct {               /* the done() of an async op */
    PyObject_HEAD
    Core *core;        /* borrowed: the op holds the core's engine through its vars */
    OpObject *op;
    PyObject *engine;
    int called;
} DoneObject;

/* _core_var.c, _core_op.c, _core_native.c */
extern PyTypeObject VarType, OpType, DoneType, NativeType;
VarObject *var_new(Core *core, PyObject *engine, PyObject *name, i64 serial);
PyObject *native_new(native_fn fn, void *arg, PyObject *name, PyObject *keep, int inline_ok);
OpObject *op_alloc(void);
PyObject *op_name(OpObject *op);   /* new reference */
PyObject *done_new(Core *core, OpObject *op);
int done_claim(PyObject *done);    /* mu held */

/* _core_engine.c (with _core_transitions.c.h, _core_push.c.h, _core_waits.c.h) */
extern PyTypeObject CoreType;
PyObject *core_complete(Core *c, OpObject *op, PyObject *error, int origin, int *nready, OpObject ***ready);
int complete_native_clean(Core *c, OpObject *op, int mine, PyObject **next, OpObject ***ready,
                          int *nready);   /* no GIL */
void core_drain(Core *c);          /* GIL held, mu not held */
void op_release(OpObject *op);     /* GIL: drop the core's reference to a finished op */
int core_execute_py(Core *c, OpObject *op, OpObject ***ready, int *nready);   /* GIL held */
int core_in_op(Core *c);
int push_ready(void);              /* interned names for push's arguments */
int core_wait_until(Core *c, int (*done)(Core *, void *), int (*seen)(void *), void *arg,
                    double timeout);   /* GIL */
void depth_add(Core *c, long delta);
int input_failure_visible(Core *c, OpObject *op, PyObject **failure);   /* mu held */

/* _core_queue.c */
int pool_init(Pool *p);
void pool_free(Pool *p);
int pool_put(Pool *p, PyObject *item, i64 priority);   /* mu held; -1: out of memory */
PyObject *pool_take(Pool *p);                            /* mu held; NULL when empty */
int pool_empty(Pool *p);
int core_route(Core *c, OpObject *op);                   /* pool index, or -1: the Python route hook */
int core_dispatch_gil(Core *c, OpObject **ops, Py_ssize_t n);   /* GIL held, mu not held */
int core_idle(Core *c);   /* no op queued, no worker running one (exact under mu, else a hint) */

/* _core_mpi.c: the mpi engine's probes (depengine/mpi/spin.py) */
PyObject *core_wait_message(Core *c, PyObject *const *args, Py_ssize_t nargs);
PyObject *core_has_message(Core *c, PyObject *const *args, Py_ssize_t nargs);
PyObject *core_wake_waiter(Core *c, PyObject *unused);
PyObject *core_set_after_op(Core *c, PyObject *const *args, Py_ssize_t nargs);
int core_after_op(Core *c, int gil);   /* a worker, after each op: 1 when it needs the GIL to finish */
int mpi_push_ready(PyObject *m);   /* _core_mpi_push.c: MpiPusher */
int mpi_lane_ready(PyObject *m);   /* _core_lane.c: MpiLane */
int lane_poll_nogil(PyObject *lane);   /* no GIL: 1 when Python has work */
int core_complete_external(Core *c, OpObject *op);   /* no GIL: 1 done, 0 needs the GIL, -1 oom */

/* _core_pool.c */
PyObject *core_work(Core *c, PyObject *args);            /* a worker thread's body */
int naive_run(Core *c);                                  /* GIL held: drain ready ops inline */
PyObject *core_execute_meth(Core *c, PyObject *item);
PyObject *core_dispatch_meth(Core *c, PyObject *ops);
PyObject *core_submit_meth(Core *c, PyObject *item);

/* _core_plan.c: recorded plans of native bodies */
extern PyTypeObject NativePlanType, PlanChunkType;
int plan_chunk_run(PyObject *chunk, Py_ssize_t *at, int32_t *code);   /* no GIL; 0 ok, 1 failed, 2 careful */
int plan_chunk_python(PyObject *chunk, int status, Py_ssize_t at, int32_t code);   /* GIL */
PyObject *plan_chunk_done(Core *c, PyObject *chunk, int pool, PyObject **last_run);   /* no GIL, no mu */
int plan_finish(PyObject *run);                                        /* GIL; steals run */

/* _core_records.c */
extern PyTypeObject RecordsType;
int records_add_op(PyObject *store, OpObject *op, PyObject *error, int origin, i64 end,
                   const i64 *versions, int novars);   /* GIL held */
int records_module_init(PyObject *m);

/* _core_module.c */
PyObject *native_error(i64 code, OpObject *op);  /* a new NativeError, or NULL */
i64 now_ns(void);
/* Watch seen(arg) for up to spin_ns without the GIL or mu: 1 once it holds, 0 when the time is up.
 * (A futex sleep and wake-up cost more than the short waits a worker or a waiter usually sees.) */
int core_spin(Core *c, int (*seen)(void *), void *arg);
int route_ready(Core *c, int mine, OpObject **ready, int n, PyObject **next);   /* mu */
int add_note(PyObject *exc, const char *format, ...);   /* GIL held; 0 or -1 */
PyObject *fetch_exception(void);   /* the raised exception with its traceback set (new reference) */
extern PyObject *engine_closed_error, *var_deleted_error, *deadlock_error, *native_error_type;
extern PyObject *s_priority, *s_execute, *s_address, *s_arg_address, *s_name, *s_qualname, *s_func,
    *s_failures, *s_origins, *s_members_recorded, *s_add_note, *native_type;

#endif
