/* Part of _core_engine.c: push (Engine.push in C), new_var, and the ids of composite members. */

enum { A_FN, A_READS, A_WRITES, A_NAME, A_PRIORITY, A_ALWAYS, A_DEVICE, A_KIND, A_PURE, A_ASYNC, A_DELETING,
       A_WCOUNTS, NARGS };
static const char *const arg_names[NARGS] = {
    "fn", "reads", "writes", "name", "priority", "always_run", "device", "kind", "pure", "_async", "_deleting",
    "_wcounts"};
static PyObject *arg_strs[NARGS];
static PyObject *s_normal, *s_async, *kinds[4];

int
push_ready(void)
{
    for (int i = 0; i < NARGS; i++)
        if ((arg_strs[i] = PyUnicode_InternFromString(arg_names[i])) == NULL)
            return -1;
    const char *names[4] = {"normal", "prioritized", "copy", "async"};
    for (int i = 0; i < 4; i++)
        if ((kinds[i] = PyUnicode_InternFromString(names[i])) == NULL)
            return -1;
    s_normal = kinds[0];
    s_async = kinds[3];
    return 0;
}

/* The index of kind in kinds (the interned names first: a push almost always passes one). */
static char
kind_index(PyObject *kind)
{
    for (int i = 0; i < 4; i++)
        if (kind == kinds[i])
            return (char)i;
    for (int i = 0; PyUnicode_Check(kind) && i < 4; i++)
        if (PyUnicode_Compare(kind, kinds[i]) == 0)
            return (char)i;
    return 0;
}

/* push's arguments into a[NARGS] (borrowed; NULL where omitted). */
static int
parse_push(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, PyObject **a)
{
    for (int i = 0; i < NARGS; i++)
        a[i] = NULL;
    if (nargs > NARGS) {
        PyErr_Format(PyExc_TypeError, "push() takes at most %d positional arguments (%zd given)", NARGS, nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++)
        a[i] = args[i];
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        int found = -1;
        for (int i = 0; i < NARGS && found < 0; i++)
            if (key == arg_strs[i])
                found = i;
        for (int i = 0; i < NARGS && found < 0; i++)
            if (PyUnicode_Compare(key, arg_strs[i]) == 0)
                found = i;
        if (found < 0) {
            PyErr_Format(PyExc_TypeError, "push() got an unexpected keyword argument %R", key);
            return -1;
        }
        if (a[found] != NULL) {
            PyErr_Format(PyExc_TypeError, "push() got multiple values for argument %R", key);
            return -1;
        }
        a[found] = args[nargs + k];
    }
    if (a[A_FN] == NULL) {
        PyErr_SetString(PyExc_TypeError, "push() missing required argument 'fn'");
        return -1;
    }
    return 0;
}

/* reads or writes as a tuple of vars of this core (new reference), checked. */
static PyObject *
as_vars(Core *c, PyObject *vs, const char *role)
{
    PyObject *t;
    if (vs == NULL)
        return PyTuple_New(0);
    if (PyTuple_CheckExact(vs))
        t = Py_NewRef(vs);
    else if (PyList_CheckExact(vs) && PyList_GET_SIZE(vs) == 1 && Py_IS_TYPE(PyList_GET_ITEM(vs, 0), &VarType)) {
        VarObject *v = (VarObject *)PyList_GET_ITEM(vs, 0);
        if (v->solo == NULL && (v->solo = PyTuple_Pack(1, (PyObject *)v)) == NULL)
            return NULL;
        t = Py_NewRef(v->solo);
    }
    else if (PyList_CheckExact(vs))
        t = PyList_AsTuple(vs);
    else if (Py_IS_TYPE(vs, &VarType))
        t = PyTuple_Pack(1, vs);
    else if (PyList_Check(vs) || PyTuple_Check(vs) || PyAnySet_Check(vs))
        t = PySequence_Tuple(vs);
    else {
        PyErr_Format(PyExc_TypeError, "%s=%R must be a list or tuple of Var", role, vs);
        return NULL;
    }
    if (t == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(t); i++) {
        PyObject *v = PyTuple_GET_ITEM(t, i);
        if (!Py_IS_TYPE(v, &VarType)) {
            PyErr_Format(PyExc_TypeError, "%s: %R is not a Var (create vars with Engine.new_var)", role, v);
            Py_DECREF(t);
            return NULL;
        }
        if (((VarObject *)v)->core != c) {
            PyErr_Format(PyExc_ValueError, "%s: var %R belongs to another engine (%R)", role,
                         ((VarObject *)v)->name, ((VarObject *)v)->engine);
            Py_DECREF(t);
            return NULL;
        }
    }
    return t;
}

static int
contains(PyObject *t, PyObject *v)
{
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(t); i++)
        if (PyTuple_GET_ITEM(t, i) == v)
            return 1;
    return 0;
}

/* Duplicates collapse; a var both read and written counts as a write (new references in *r, *w). */
static int
fold(PyObject **r, PyObject **w)
{
    PyObject *reads = *r, *writes = *w;
    Py_ssize_t nr = PyTuple_GET_SIZE(reads), nw = PyTuple_GET_SIZE(writes);
    int dup = 0;
    for (Py_ssize_t i = 0; i < nw && !dup; i++)
        for (Py_ssize_t j = 0; j < i && !dup; j++)
            dup = PyTuple_GET_ITEM(writes, i) == PyTuple_GET_ITEM(writes, j);
    for (Py_ssize_t i = 0; i < nr && !dup; i++) {
        PyObject *v = PyTuple_GET_ITEM(reads, i);
        dup = contains(writes, v);
        for (Py_ssize_t j = 0; j < i && !dup; j++)
            dup = PyTuple_GET_ITEM(reads, j) == v;
    }
    if (!dup)
        return 0;
    PyObject *nwt = PyList_New(0), *nrt = PyList_New(0);
    for (Py_ssize_t i = 0; nwt && nrt && i < nw; i++) {
        PyObject *v = PyTuple_GET_ITEM(writes, i);
        int seen = PySequence_Contains(nwt, v);
        if (seen < 0 || (!seen && PyList_Append(nwt, v) < 0))
            Py_CLEAR(nwt);
    }
    for (Py_ssize_t i = 0; nwt && nrt && i < nr; i++) {
        PyObject *v = PyTuple_GET_ITEM(reads, i);
        int seen = contains(writes, v) || PySequence_Contains(nrt, v);
        if (seen < 0 || (!seen && PyList_Append(nrt, v) < 0))
            Py_CLEAR(nrt);
    }
    if (nwt == NULL || nrt == NULL) {
        Py_XDECREF(nwt);
        Py_XDECREF(nrt);
        return -1;
    }
    Py_SETREF(*w, PyList_AsTuple(nwt));
    Py_SETREF(*r, PyList_AsTuple(nrt));
    Py_DECREF(nwt);
    Py_DECREF(nrt);
    return *w && *r ? 0 : -1;
}

static int
check_accepting(Core *c)   /* mu: 0, or -1 with EngineClosedError */
{
    if (c->forked) {
        PyErr_SetString(engine_closed_error, "this engine belongs to the parent process; create a new one after fork");
        return -1;
    }
    if (c->closed || (c->closing && !core_in_op(c))) {
        PyErr_SetString(engine_closed_error, "push after close(): the engine is closed");
        return -1;
    }
    return 0;
}

static int
check_not_deleted(PyObject *t)   /* mu */
{
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(t); i++) {
        VarObject *v = (VarObject *)PyTuple_GET_ITEM(t, i);
        if (v->deleted_at >= 0) {
            PyErr_Format(var_deleted_error, "var %R was deleted at push #%lld", v->name, v->deleted_at);
            return -1;
        }
    }
    return 0;
}

/* A pusher far ahead of the workers (thousands of pending ops hold their memory, and make every
 * garbage collection slow) waits, without the GIL, until they have caught up by half or 2 ms have
 * passed: the workers running Python bodies need the GIL, and giving it up for a moment (a yield)
 * does not hand it to them.  Ops that cannot progress (waiting on something this thread does
 * later) cost at most one such wait: without progress, the next 256 pushes do not wait. */
static int
backlog_wait(Core *c)
{
    if (c->backlog_skip > 0) {
        c->backlog_skip--;
        return 0;
    }
    i64 before, after;
    Py_BEGIN_ALLOW_THREADS
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_nsec += 2000000;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&c->mu);
    before = c->epoch->count;
    c->pressing++;
    while (c->epoch->count > BACKLOG / 2)
        if (pthread_cond_timedwait(&c->cv, &c->mu, &until) == ETIMEDOUT)
            break;
    c->pressing--;
    after = c->epoch->count;
    pthread_mutex_unlock(&c->mu);
    Py_END_ALLOW_THREADS
    if (after >= before)
        c->backlog_skip = 256;
    return PyErr_CheckSignals();
}

/* Engine.push, see depengine/_engine.py.  GIL. */
static PyObject *
core_push(Core *c, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *a[NARGS];
    if (parse_push(args, nargs, kwnames, a) < 0)
        return NULL;
    PyObject *fn = a[A_FN], *name = a[A_NAME], *prio = a[A_PRIORITY], *device = a[A_DEVICE], *kind = a[A_KIND];
    PyObject *deleting = a[A_DELETING], *wcounts = a[A_WCOUNTS];
    int is_async = a[A_ASYNC] != NULL && PyObject_IsTrue(a[A_ASYNC]) > 0;
    if (!PyCallable_Check(fn))
        return PyErr_Format(PyExc_TypeError, "fn=%R is not callable", fn);
    i64 priority = 0;
    if (prio != NULL) {
        if (!PyLong_CheckExact(prio))
            return PyErr_Format(PyExc_TypeError, "priority=%R must be an int", prio);
        if ((priority = PyLong_AsLongLong(prio)) == -1 && PyErr_Occurred())
            return NULL;
    }
    if (name == Py_None)
        name = NULL;
    if (name != NULL && !PyUnicode_CheckExact(name))
        return PyErr_Format(PyExc_TypeError, "name=%R must be a str or None", name);
    if (deleting == Py_None)
        deleting = NULL;
    if (wcounts == Py_None)
        wcounts = NULL;
    PyObject *reads = as_vars(c, a[A_READS], "reads"), *writes = NULL;
    if (reads == NULL || (writes = as_vars(c, a[A_WRITES], "writes")) == NULL || fold(&reads, &writes) < 0)
        goto fail;
    PyObject *want = is_async ? s_async : s_normal;
    if (device == NULL || device == Py_None) {
        if (kind == NULL || kind == want || PyUnicode_Compare(kind, want) == 0)
            device = c->cpu, kind = want;
        else
            device = Py_None;
    }
    PyObject *placed = NULL;
    if (device != c->cpu || (kind != want && (kind == NULL || PyUnicode_Compare(kind, want) != 0))) {
        if (kind == NULL)
            kind = s_normal;
        placed = PyObject_CallFunctionObjArgs(hook(c, H_PLACE), device, kind, is_async ? Py_True : Py_False,
                                              NULL);
        if (placed == NULL)
            goto fail;
        if (!PyTuple_Check(placed) || PyTuple_GET_SIZE(placed) != 2) {
            Py_DECREF(placed);
            PyErr_SetString(PyExc_TypeError, "the engine's _place must return (device, kind)");
            goto fail;
        }
        device = PyTuple_GET_ITEM(placed, 0);
        kind = PyTuple_GET_ITEM(placed, 1);
    }
    OpObject *op = op_alloc();
    if (op == NULL) {
        Py_XDECREF(placed);
        goto fail;
    }
    op->fn = Py_NewRef(fn);
    op->name = name ? Py_NewRef(name) : NULL;
    op->reads = reads;
    op->writes = writes;
    op->device = Py_NewRef(device);
    op->kind = Py_NewRef(kind);
    Py_XDECREF(placed);
    op->stream = Py_NewRef(Py_None);
    op->error = NULL;
    op->wcounts = wcounts ? Py_NewRef(wcounts) : NULL;
    op->priority = priority;
    op->always_run = a[A_ALWAYS] != NULL && PyObject_IsTrue(a[A_ALWAYS]) > 0;
    op->is_async = (char)is_async;
    op->state = PENDING;
    op->kind_ix = kind_index(kind);
    op->on_cpu = device == c->cpu || PyObject_RichCompareBool(device, c->cpu, Py_EQ) > 0;
    PyErr_Clear();
    if (Py_IS_TYPE(fn, &NativeType) && !is_async) {
        op->cfn = ((NativeObject *)fn)->fn;
        op->carg = ((NativeObject *)fn)->arg;
        op->native = 1;
        op->inline_ok = ((NativeObject *)fn)->inline_ok;
        if (op->name == NULL)
            op->name = Py_NewRef(((NativeObject *)fn)->name);
    }
    else if ((PyObject *)Py_TYPE(fn) == native_type && !is_async) {
        PyObject *addr = PyObject_GetAttr(fn, s_address), *arg = addr ? PyObject_GetAttr(fn, s_arg_address) : NULL;
        op->cfn = addr ? (native_fn)PyLong_AsVoidPtr(addr) : NULL;
        op->carg = arg && arg != Py_None ? PyLong_AsVoidPtr(arg) : NULL;
        Py_XDECREF(addr);
        Py_XDECREF(arg);
        if (PyErr_Occurred() || op->cfn == NULL) {
            Py_DECREF(op);
            return NULL;
        }
        op->native = 1;
        if (op->name == NULL && (op->name = PyObject_GetAttr(fn, s_name)) == NULL) {
            Py_DECREF(op);
            return NULL;
        }
    }
    reads = writes = NULL;   /* the op owns them */
    if (c->capturing && deleting == NULL) {   /* taken by a bulk or a recording of this thread? */
        PyObject *taken = PyObject_CallFunctionObjArgs(hook(c, H_CAPTURE), (PyObject *)op,
                                                       a[A_PURE] ? a[A_PURE] : Py_False, NULL);
        if (taken == NULL) {
            Py_DECREF(op);
            return NULL;
        }
        int t = PyObject_IsTrue(taken);
        Py_DECREF(taken);
        if (t)
            return (PyObject *)op;
    }
    Py_ssize_t nr = PyTuple_GET_SIZE(op->reads), nw = PyTuple_GET_SIZE(op->writes);
    i64 *counts = NULL;
    if (op->wcounts != NULL) {
        if ((counts = PyMem_Malloc((nw + 1) * sizeof(i64))) == NULL) {
            Py_DECREF(op);
            return PyErr_NoMemory();
        }
        for (Py_ssize_t i = 0; i < nw; i++) {
            PyObject *k = PyDict_GetItemWithError(op->wcounts, PyTuple_GET_ITEM(op->writes, i));
            counts[i] = k ? PyLong_AsLongLong(k) : 1;
            if (PyErr_Occurred()) {
                PyMem_Free(counts);
                Py_DECREF(op);
                return NULL;
            }
        }
    }
    if (c->prof != NULL) {   /* the op carries its own record while profiling */
        op->p_engine = Py_NewRef(c->engine);
        op->p_lane = Py_NewRef(Py_None);
        op->p_push = now_ns();
        op->stamped = 1;
    }
    pthread_mutex_lock(&c->mu);
    if ((c->closing && check_accepting(c) < 0) ||
        (c->any_deleted && (check_not_deleted(op->reads) < 0 || check_not_deleted(op->writes) < 0))) {
        pthread_mutex_unlock(&c->mu);
        PyMem_Free(counts);
        Py_DECREF(op);
        return NULL;
    }
    /* Register: queue the op behind each var's earlier users. */
    i64 seq = c->seq++;
    op->id = seq;
    Epoch *epoch = c->epoch;
    epoch->count++;
    op->epoch = epoch;
    int wait = (int)(nr + nw), oom = 0;
    for (Py_ssize_t i = 0; i < nr; i++) {
        int g = append_read((VarObject *)PyTuple_GET_ITEM(op->reads, i), op);
        oom |= g < 0;
        wait -= g > 0;
    }
    for (Py_ssize_t i = 0; i < nw; i++) {
        int g = append_write((VarObject *)PyTuple_GET_ITEM(op->writes, i), op, counts ? counts[i] : 1);
        oom |= g < 0;
        wait -= g > 0;
    }
    op->wait = wait;   /* the +1 of registration, already dropped */
    op->registered = 1;
    op->core = c;
    Py_INCREF(op);     /* the core's, until the op is complete */
    PyObject_GC_UnTrack(op);   /* the core holds it meanwhile: no collection need look at it */
    if (deleting != NULL) {
        ((VarObject *)deleting)->deleted_at = seq;
        c->any_deleted = 1;
    }
    i64 backlog = epoch->count;
    int route = wait == 0 ? core_route(c, op) : -3;
    /* A cheap native op found ready runs here, now: handing it to a worker would cost more than
     * the call (the op, its vars and the core's lock would move between cores).  Not one that must
     * first wait for GPU work on the host (host_hook: a worker runs the engine's prepare hook). */
    int here = route >= 0 && op->inline_ok && !op->host_hook && c->type != T_NAIVE;
    if (route >= 0 && !here)   /* ready at once, for a C pool: queued under the same lock */
        oom |= pool_put(&c->pools[route], (PyObject *)op, op->priority) < 0;
    pthread_mutex_unlock(&c->mu);
    PyMem_Free(counts);
    if (oom) {
        fprintf(stderr, "depengine._core: out of memory registering op #%lld\n", seq);
        abort();   /* the var queues are half updated: nothing sane remains */
    }
    if (route != -3 && route < 0 && core_dispatch_gil(c, &op, 1) < 0)
        goto after_error;
    if (here) {   /* as the naive engine runs an op: its completion hands on what it made ready */
        OpObject **ready = NULL;
        int nready = 0;
        int rc = core_execute_py(c, op, &ready, &nready);
        if (rc == 0)
            rc = core_dispatch_gil(c, ready, nready);
        PyMem_RawFree(ready);
        if (rc < 0)
            goto after_error;
    }
    if (c->type == T_NAIVE && naive_run(c) < 0)
        goto after_error;
    if (c->done_ops != NULL && c->ndone >= DRAIN_EVERY)   /* (a racy read: only a hint) */
        core_drain(c);
    if (backlog > BACKLOG && !core_in_op(c) && backlog_wait(c) < 0)
        goto after_error;
    return (PyObject *)op;
after_error:
    Py_DECREF(op);
    return NULL;
fail:
    Py_XDECREF(reads);
    Py_XDECREF(writes);
    return NULL;
}

static PyObject *
core_new_var(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *name = nargs > 0 ? args[0] : Py_None;
    if (nargs > 1)
        return PyErr_Format(PyExc_TypeError, "new_var() takes at most one argument");
    if (name != Py_None && !PyUnicode_Check(name))
        return PyErr_Format(PyExc_TypeError, "var name=%R must be a str or None", name);
    if (c->closed)
        return PyErr_Format(engine_closed_error, "new_var(%R) on a closed engine", name);
    pthread_mutex_lock(&c->mu);
    i64 n = c->nvars++;
    pthread_mutex_unlock(&c->mu);
    PyObject *tag = name == Py_None ? PyUnicode_FromFormat("v%lld", n) : Py_NewRef(name);
    if (tag == NULL)
        return NULL;
    PyObject *v = (PyObject *)var_new(c, c->engine, tag, n);
    Py_DECREF(tag);
    return v;
}

static PyObject *
core_take_ids(Core *c, PyObject *arg)
{
    i64 n = PyLong_AsLongLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    pthread_mutex_lock(&c->mu);
    i64 first = c->seq;
    c->seq += n;
    pthread_mutex_unlock(&c->mu);
    return PyLong_FromLongLong(first);
}
