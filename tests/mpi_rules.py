"""The rules of Engine("mpi"), checked on every rank of a world of any size.

Each ``rule_*`` function builds its own engines (``make(**options)``), asserts
on every rank and closes them.  ``run_all`` runs them one after another and
returns ``{rule: "ok" | the failure}`` for this rank; tests/test_mpi_ranks.py
runs it under ``mpiexec -n 2`` and ``-n 3``, tests/test_mpi.py in a world of
one.
"""

from __future__ import annotations

import threading
import time
import traceback
from contextlib import contextmanager

import numba
import numpy as np
from numba import types

import depengine as de
from depengine.mpi import ProgramMismatchError, RemoteError, RemoteOp, RemoteTraceback
from tests.cfuncs import to_ptr

TIMEOUT = 60


class Custom(Exception):
    """A user exception: rebuilt with its own type on every rank."""


@contextmanager
def engine(**options):
    eng = de.Engine("mpi", **{"workers": 2, **options})
    try:
        yield eng
    finally:
        eng.close()


def _set(buf, value):
    def fn(ctx):
        buf[...] = value
    return fn


def rule_owner_computes():
    with engine() as eng:
        bufs = [np.full(1, -1, dtype=np.int64) for _ in range(eng.size)]
        vs = [eng.new_var(f"r{r}", owner=r, buffer=bufs[r]) for r in range(eng.size)]
        for r in range(eng.size):
            def fn(ctx, r=r):
                bufs[r][0] = eng.rank  # the rank that runs it
            op = eng.push(fn, writes=[vs[r]], name=f"where{r}")
            assert isinstance(op, de.Op if r == eng.rank else RemoteOp), op
            assert op.name == f"where{r}"
        assert [int(eng.fetch(v, TIMEOUT)[0]) for v in vs] == list(range(eng.size))
        eng.wait_all(TIMEOUT)


def rule_execute_on_and_writeback():
    with engine() as eng:
        last = eng.size - 1
        a, b = np.zeros(1), np.zeros(1)
        va, vb = eng.new_var("a", owner=0, buffer=a), eng.new_var("b", owner=last, buffer=b)
        eng.push(_set(a, 1.0), writes=[va])
        eng.push(_set(b, 2.0), writes=[vb])
        seen = []

        def both(ctx):
            seen.append((a[0], b[0]))
            a[0] += 10
            b[0] += 20
        if eng.size > 1:
            try:
                eng.push(both, writes=[va, vb])
                raise AssertionError("writes of two owners without execute_on were accepted")
            except ValueError as exc:
                assert "execute_on" in str(exc), exc
        op = eng.push(both, writes=[va, vb], execute_on=last)
        assert isinstance(op, de.Op) == (eng.rank == last)
        got = []
        eng.push(lambda ctx: got.append(a[0] + b[0]), reads=[va, vb], execute_on=min(1, last), name="peek")
        assert float(eng.fetch(va, TIMEOUT)[0]) == 11.0 and float(eng.fetch(vb, TIMEOUT)[0]) == 22.0
        eng.wait_all(TIMEOUT)
        if eng.rank == last:
            assert seen == [(1.0, 2.0)], seen
        if eng.rank == min(1, last):
            assert got == [33.0], got


def rule_replica_cache():
    with engine() as eng:
        n = 1000
        v_buf = np.zeros(n)
        v = eng.new_var("v", owner=0, buffer=v_buf)
        outs = [np.zeros(n) for _ in range(eng.size)]
        ws = [eng.new_var(f"w{r}", owner=r, buffer=outs[r]) for r in range(eng.size)]
        eng.push(_set(v_buf, 1.0), writes=[v])
        before = eng.traffic()
        for version in range(2):
            for _ in range(5):
                for r in range(eng.size):
                    def acc(ctx, r=r):
                        outs[r] += v_buf
                    eng.push(acc, reads=[v], writes=[ws[r]])
            if version == 0:
                eng.push(_set(v_buf, 2.0), writes=[v])
        t = eng.traffic()
        want = 2 * (eng.size - 1) if eng.rank == 0 else 0
        assert t["sends"] - before["sends"] == want, (t, before)
        assert t["bytes_sent"] - before["bytes_sent"] == want * n * 8
        assert t["receives"] - before["receives"] == (0 if eng.rank == 0 else 2), t
        for w in ws:
            assert np.all(eng.fetch(w, TIMEOUT) == 15.0)
        eng.wait_all(TIMEOUT)


def rule_ordering_across_ranks():
    with engine() as eng:
        other = eng.size - 1
        v_buf, w_buf = np.zeros(1, np.int64), np.zeros(1, np.int64)
        v = eng.new_var("v", owner=0, buffer=v_buf)
        w = eng.new_var("w", owner=other, buffer=w_buf)
        want = 0
        for k in range(200):
            eng.push(_set(v_buf, k), writes=[v], name="write v")   # WAW on v, and WAR after the read below

            def fold(ctx):
                w_buf[0] = (w_buf[0] * 31 + v_buf[0]) % 1_000_003  # RAW on v, across ranks
            eng.push(fold, reads=[v], writes=[w], name="fold")
            want = (want * 31 + k) % 1_000_003
        assert int(eng.fetch(w, TIMEOUT)[0]) == want
        assert int(eng.fetch(v, TIMEOUT)[0]) == 199
        eng.wait_all(TIMEOUT)


def _raise_custom(ctx):
    raise Custom("boom 7")


def rule_failure_crosses_ranks():
    with engine() as eng:
        last, mid = eng.size - 1, min(1, eng.size - 1)
        bufs = [np.zeros(4) for _ in range(3)]
        a = eng.new_var("a", owner=0, buffer=bufs[0])
        b = eng.new_var("b", owner=last, buffer=bufs[1])
        c = eng.new_var("c", owner=mid, buffer=bufs[2])
        eng.push(_raise_custom, writes=[a], name="raiser")
        op_b = eng.push(lambda ctx: None, reads=[a], writes=[b], name="a->b")
        op_c = eng.push(lambda ctx: None, reads=[b], writes=[c], name="b->c")
        for var in (c, b, a):
            try:
                eng.fetch(var, TIMEOUT)
                raise AssertionError(f"fetch({var.name}) did not raise")
            except Custom as exc:
                assert str(exc) == "boom 7"
                if eng.size > 1 and not (var is a and eng.rank == 0):
                    assert isinstance(exc.__cause__, RemoteTraceback), repr(exc.__cause__)
                    assert "_raise_custom" in exc.__cause__.text and "boom 7" in exc.__cause__.text
                    assert exc.__cause__.rank == 0 and exc.__cause__.op == "raiser"
        for op in (op_b, op_c):
            if not isinstance(op, RemoteOp):
                assert op.state == "skipped" and isinstance(op.error, Custom), (op, op.error)
        try:
            eng.wait_all(TIMEOUT)
        except Custom:
            pass
        eng.wait_all(TIMEOUT)  # everything reported: returns normally
        eng.push(_set(bufs[0], 5.0), writes=[a], always_run=True)
        assert float(eng.fetch(a, TIMEOUT)[0]) == 5.0
        eng.wait_all(TIMEOUT)


def rule_unknown_exception_type():
    class Local(Exception):  # its qualified name holds <locals>: no other rank can look it up
        pass

    def raiser(ctx):
        raise Local("from a local class")
    with engine() as eng:
        a = eng.new_var("a", owner=0, buffer=np.zeros(1))
        eng.push(raiser, writes=[a])
        try:
            eng.fetch(a, TIMEOUT)
            raise AssertionError("fetch did not raise")
        except Local:
            assert eng.rank == 0
        except RemoteError as exc:
            assert eng.rank != 0 and exc.type_name.endswith("Local") and exc.message == "from a local class"
        eng.wait_all(TIMEOUT)


def _expect(exc_type, fragment, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except exc_type as exc:
        assert fragment in str(exc), f"{exc_type.__name__} without {fragment!r}: {exc}"
        return
    raise AssertionError(f"{fn.__name__}{args} did not raise {exc_type.__name__}")


def rule_bad_input():
    with engine() as eng, de.Engine("threaded", workers=1) as other:
        last = eng.size - 1
        a = eng.new_var("a", owner=0, buffer=np.zeros(2))
        b = eng.new_var("b", owner=last, buffer=np.zeros(2))
        tag = eng.new_var("tag", owner=0)
        before = eng.traffic()["pushes"]
        _expect(ValueError, "owner", eng.new_var, "x", owner=eng.size, buffer=np.zeros(1))
        _expect(ValueError, "owner", eng.new_var, "x", owner=-1)
        _expect(ValueError, "contiguous", eng.new_var, "x", buffer=np.zeros((4, 4))[:, 1])
        _expect(ValueError, "objects", eng.new_var, "x", buffer=np.empty(2, dtype=object))
        _expect(TypeError, "NumPy array", eng.new_var, "x", buffer=[1.0, 2.0])
        ro = np.zeros(2)
        ro.flags.writeable = False
        _expect(ValueError, "writeable", eng.new_var, "x", buffer=ro)
        if eng.size > 1:
            _expect(ValueError, "execute_on", eng.push, lambda ctx: None, writes=[a, b])
            _expect(ValueError, "no buffer", eng.push, lambda ctx: None, reads=[tag], writes=[b])
        _expect(ValueError, "writes no var", eng.push, lambda ctx: None, reads=[a])
        _expect(ValueError, "execute_on", eng.push, lambda ctx: None, reads=[a], execute_on=eng.size)
        _expect(TypeError, "priority", eng.push, lambda ctx: None, writes=[a], priority="high")
        _expect(ValueError, "kind", eng.push, lambda ctx: None, writes=[a], kind="bogus")
        _expect(TypeError, "not callable", eng.push, 42, writes=[a])
        _expect(ValueError, "another engine", eng.push, lambda ctx: None, writes=[other.new_var("o")])
        _expect(ValueError, "no buffer", eng.fetch, tag)
        assert eng.traffic()["pushes"] == before
        eng.wait_all(TIMEOUT)  # every rank rejected the same calls: the op sequences still agree


def rule_fetch_and_local_waits():
    with engine() as eng:
        last = eng.size - 1
        buf = np.zeros(3)
        v = eng.new_var("v", owner=last, buffer=buf)
        eng.push(_set(buf, 4.0), writes=[v])
        eng.wait_for_var(v, TIMEOUT)  # per rank: waits only for this rank's writes to its copy
        assert np.all(buf == (4.0 if eng.rank == last else 0.0)), buf
        before = eng.traffic()
        got = eng.fetch(v, TIMEOUT)
        assert np.all(got == 4.0) and np.all(buf == 4.0)
        got[:] = -1.0
        assert np.all(buf == 4.0), "fetch returned the buffer itself, not a copy"
        assert np.all(eng.fetch(v, TIMEOUT) == 4.0)
        t = eng.traffic()
        moved = t["sends"] + t["receives"] - before["sends"] - before["receives"]
        assert moved == (eng.size - 1 if eng.rank == last else 1) or eng.size == 1, (t, before)
        eng.wait_all(TIMEOUT)


def rule_delete_var_and_async():
    with engine() as eng:
        last = eng.size - 1
        buf = np.zeros(1)
        v = eng.new_var("v", owner=last, buffer=buf)

        def later(ctx, done):
            def finish():
                buf[0] = 9.0
                done()
            threading.Thread(target=finish).start()
        eng.push_async(later, writes=[v])
        assert float(eng.fetch(v, TIMEOUT)[0]) == 9.0
        eng.delete_var(v)
        _expect(de.VarDeletedError, "deleted", eng.push, lambda ctx: None, writes=[v])
        eng.wait_all(TIMEOUT)


def rule_no_deadlock_large_ring():
    for options in ({"workers": 1}, {"workers": 1, "local": "naive"}, {"workers": 2}):
        with engine(**options) as eng:
            size, n = eng.size, 1 << 17  # 1 MiB per var: rendezvous transfers
            bufs = [np.zeros(n) for _ in range(size)]
            vs = [eng.new_var(f"x{r}", owner=r, buffer=bufs[r]) for r in range(size)]
            for r in range(size):
                eng.push(_set(bufs[r], float(r)), writes=[vs[r]])
            want = [float(r) for r in range(size)]
            for _ in range(8):
                for r in range(size):
                    left, right = vs[r - 1], vs[(r + 1) % size]

                    def step(ctx, r=r, bufs=bufs, size=size):
                        bufs[r] += bufs[r - 1][0] + bufs[(r + 1) % size][0]
                    eng.push(step, reads=[left, right], writes=[vs[r]])
                    want[r] += want[r - 1] + want[(r + 1) % size]
            for r in range(size):
                assert float(eng.fetch(vs[r], TIMEOUT)[-1]) == want[r]
            eng.wait_all(TIMEOUT)


def rule_ops_another_rank_reads_run_first():
    """An op at priority 0 whose result another rank reads (or writes next) is raised to 1 while it
    waits (it heads its rank's ready queue); one read only where it ran, or pushed with a priority,
    keeps it."""
    with engine(workers=1) as eng:
        last = eng.size - 1
        bufs = [np.zeros(1) for _ in range(5)]
        gate, a, b, c, d = (eng.new_var(n, owner=0, buffer=bufs[i]) for i, n in enumerate("gabcd"))
        out = np.zeros(1)
        o = eng.new_var("out", owner=last, buffer=out)
        release = threading.Event()
        eng.push(lambda ctx: release.wait(TIMEOUT), writes=[gate], name="gate")  # rank 0's ops wait
        oa = eng.push(_set(bufs[1], 1.0), reads=[gate], writes=[a], name="a")
        ob = eng.push(_set(bufs[2], 2.0), reads=[gate], writes=[b], name="b")
        oc = eng.push(_set(bufs[3], 3.0), reads=[gate], writes=[c], name="c", priority=5)
        od = eng.push(_set(bufs[4], 4.0), reads=[gate], writes=[d], name="d")

        def add_one(ctx):
            bufs[4][0] += 1.0
        eng.push(add_one, writes=[d], name="d+1", execute_on=last)  # d moves to the last rank and back

        def total(ctx):
            out[0] = bufs[1][0] + bufs[3][0]
        eng.push(total, reads=[a, c], writes=[o], name="total")
        eng.push(_set(bufs[0], 0.0), reads=[b], writes=[gate], name="reads b")
        if eng.rank == 0:
            assert (oa.priority, ob.priority, oc.priority, od.priority) == (1 if last else 0, 0, 5,
                                                                            1 if last else 0)
        release.set()
        assert float(eng.fetch(o, TIMEOUT)[0]) == 4.0
        assert float(eng.fetch(d, TIMEOUT)[0]) == 5.0
        eng.wait_all(TIMEOUT)


def rule_ops_arrays_and_distributed_cholesky():
    import ops as nd

    with engine() as eng:
        nd.set_engine(eng)
        try:
            last = eng.size - 1
            a = nd.array(np.arange(6.0).reshape(2, 3), owner=last)
            b = nd.ones((2, 3), owner=0)
            assert (a.owner, b.owner) == (last, 0)
            a += b  # runs on a's owner, reading b from rank 0
            c = nd.zeros((2, 3), owner=last)
            nd.add(a, a, out=c)
            want = (np.arange(6.0).reshape(2, 3) + 1) * 2
            assert np.array_equal(c.asnumpy(), want)  # gathers on every rank
            n, tile = 300, 64
            x = np.random.default_rng(3).random((n, n))
            s = (x + x.T) / 2 + n * np.eye(n)
            grid = (eng.size, 1)
            factor = nd.linalg.cholesky(nd.array(s), tile=tile, grid=grid)
            assert np.allclose(factor.asnumpy(), np.linalg.cholesky(s), rtol=0, atol=1e-10)
            # 128 KiB tiles go by rendezvous: their sends stay in flight while workers and the
            # progress thread both complete requests
            n = 1024
            x = np.random.default_rng(4).random((n, n))
            s = (x + x.T) / 2 + n * np.eye(n)
            factor = nd.linalg.cholesky(nd.array(s), tile=128)
            assert np.allclose(factor.asnumpy(), np.linalg.cholesky(s), rtol=0, atol=1e-10)
            if eng.size > 1:
                _expect(ValueError, "grid", nd.linalg.cholesky, nd.array(s), tile=tile, grid=(eng.size, 2))
                assert eng.traffic()["sends"] + eng.traffic()["receives"] > 0
            del factor, a, b, c
            eng.wait_all(TIMEOUT)
        finally:
            nd.set_engine(None)


def _mix(bufs, w, rd, k):
    def fn(ctx):
        bufs[w][0] = bufs[w][0] * 0.5 + sum(float(bufs[j][0]) for j in rd) + k
    return fn


def _push_variety(eng, push, vs, bufs):
    """60 pushes of every shape MpiEngine.push takes; what each returned, as (type, name)."""
    rng = np.random.default_rng(7)
    out = []
    for k in range(60):
        w = int(rng.integers(len(vs)))
        rd = [int(j) for j in rng.integers(len(vs), size=int(rng.integers(0, 3)))]
        form = k % 6
        reads = [vs[j] for j in rd]
        if form == 0:
            op = push(_mix(bufs, w, rd, k), reads, [vs[w]])  # unnamed: the function's name
        elif form == 1:
            op = push(_mix(bufs, w, rd, k), tuple(reads), (vs[w],), f"op{k % 4}")
        elif form == 2:
            op = push(_mix(bufs, w, rd, k), reads=reads, writes=[vs[w]], name="kw", priority=2)
        elif form == 3:  # a var named twice, and the written var among the reads
            op = push(_mix(bufs, w, rd, k), [*reads, *reads, vs[w]], [vs[w], vs[w]], "dup")
        elif form == 4:  # options the C path leaves to Python
            op = push(_mix(bufs, w, rd, k), reads, [vs[w]], "opts", 0, True)
        else:
            op = push(_mix(bufs, w, rd, k), reads, [vs[w]], "run_on", execute_on=k % eng.size)
        out.append((type(op).__name__, op.name))
    return out


def rule_push_in_c_matches_the_python_path():
    """On the compiled core with 2+ ranks the common push runs in C: it leaves exactly the state the
    Python path leaves (the op sequence's count and hash, each var's version, holders and writer),
    returns the same ops and values, and hands the rest (transfers, duplicates, options) to Python."""
    results = []
    for forced in (False, True):
        with engine() as eng:
            bufs = [np.zeros(1) for _ in range(6)]
            vs = [eng.new_var(f"v{i}", owner=i % eng.size, buffer=bufs[i]) for i in range(6)]
            push = type(eng).push.__get__(eng) if forced else eng.push
            ops = _push_variety(eng, push, vs, bufs)
            eng.wait_all(TIMEOUT)
            state = [(mv.gen, mv.holders, mv.writer) for mv in eng._vars.values()]
            values = [float(eng.fetch(v, TIMEOUT)[0]) for v in vs]
            seq = eng._seq
            results.append(((seq.count, seq.hash, ops, state, values), getattr(seq, "taken", None)))
            compiled = hasattr(eng._local, "_core") and eng.size > 1
    (c, taken), (py, untouched) = results
    assert c == py
    if compiled:  # some pushes in C, the ones with transfers or options in Python
        assert 0 < taken < 60 and untouched == 0, (taken, untouched)
    else:
        assert taken is None and untouched is None


def _fill(buf, k):
    def fn(ctx):
        buf[...] = k
    return fn


def rule_small_transfers_take_the_lane():
    """On the compiled core with 2+ ranks, versions of at most LANE_MAX bytes move through the lane (in
    C), larger ones through Python; both arrive whole, and a failed small version carries its failure."""
    from depengine.mpi.lane import LANE_MAX

    with engine() as eng:
        last = eng.size - 1
        small, big, out = np.zeros(LANE_MAX // 8), np.zeros(LANE_MAX // 8 + 1), np.zeros(2)
        s = eng.new_var("small", owner=0, buffer=small)
        b = eng.new_var("big", owner=0, buffer=big)
        o = eng.new_var("out", owner=last, buffer=out)
        for k in range(1, 6):
            eng.push(_fill(small, k), writes=[s], name="fill small")
            eng.push(_fill(big, 10 * k), writes=[b], name="fill big")
            eng.push(lambda ctx: out.__setitem__(slice(None), (small.sum(), big.sum())), reads=[s, b],
                     writes=[o], name="sum")
            if eng.rank == last:
                eng.wait_for_var(o, TIMEOUT)
                assert list(out) == [k * small.size, 10 * k * big.size], (k, list(out))
        eng.wait_all(TIMEOUT)
        transport = eng._transport
        lane = None if transport is None else transport.lane
        if lane is None:  # a world of one, or the pure-Python engine
            assert eng.size == 1 or not hasattr(eng._local, "_core")
        else:
            waiting, _, _, in_c, handed, sends = lane.counts()  # (rank 0 may already send what follows)
            moved = 5 if last != 0 else 0
            assert waiting == 0, lane.counts()
            assert sends == (moved if eng.rank == 0 else 0), lane.counts()
            assert in_c + handed == (moved if eng.rank == last else 0), lane.counts()
        eng.push(_raise_custom, writes=[s], name="raiser")
        eng.push(lambda ctx: None, reads=[s], writes=[o], name="reader")
        try:
            eng.fetch(o, TIMEOUT)
            raise AssertionError("fetch(out) did not raise")
        except Custom as exc:
            assert str(exc) == "boom 7"
        try:
            eng.wait_all(TIMEOUT)
        except Custom:
            pass


@numba.cfunc(types.int32(types.voidptr), nogil=True)
def _incr(p):
    """*dst = *src + 1, for the int64 addresses [src, dst] at p."""
    a = numba.carray(p, (2,), dtype=np.int64)
    src = numba.carray(to_ptr(a[0]), (1,), dtype=np.int64)
    dst = numba.carray(to_ptr(a[1]), (1,), dtype=np.int64)
    dst[0] = src[0] + 1
    return 0


def rule_native_bodies_cross_ranks():
    """Native bodies (de.native) on the mpi engine: a chain that moves between the first and last rank
    at every op, run without the GIL where the core allows (the look at MPI after each op in C)."""
    with engine() as eng:
        last = eng.size - 1
        bufs = [np.zeros(1, np.int64), np.zeros(1, np.int64)]
        vs = [eng.new_var("n0", owner=0, buffer=bufs[0]), eng.new_var("n1", owner=last, buffer=bufs[1])]
        blocks = [np.array([bufs[0].ctypes.data, bufs[1].ctypes.data], np.int64),
                  np.array([bufs[1].ctypes.data, bufs[0].ctypes.data], np.int64)]
        for k in range(40):
            src = k % 2
            eng.push(de.native(_incr, blocks[src]), reads=[vs[src]], writes=[vs[1 - src]], name="incr")
        assert int(eng.fetch(vs[0], TIMEOUT)[0]) == 40 and int(eng.fetch(vs[1], TIMEOUT)[0]) == 39
        eng.wait_all(TIMEOUT)


def _registered(eng, n_python: int, n_lane: int) -> bool:
    transport = eng._transport
    with transport._lock:
        python = len(transport._expected)
    lane = 0 if transport.lane is None else transport.lane.counts()[0]
    return python >= n_python and lane >= n_lane


def rule_goodbye_while_transfers_wait():
    """A goodbye from a rank (what _on_bye does with it) while the others wait for its large and small
    transfers: those receives stay registered, arrive, and every rank closes."""
    from mpi4py import MPI

    from depengine.mpi.lane import LANE_MAX

    with engine() as eng:
        if eng.size == 1:
            return
        comm = MPI.COMM_WORLD.Dup()  # the rule's own signals
        big, small = np.zeros(LANE_MAX // 8 + 16), np.zeros(2)
        b = eng.new_var("big", owner=0, buffer=big)
        s = eng.new_var("small", owner=0, buffer=small)
        outs = [eng.new_var(f"o{r}", owner=r, buffer=np.zeros(2)) for r in range(eng.size)]

        def write(ctx):  # on rank 0, once every other rank has handled the goodbye
            for r in range(1, eng.size):
                comm.recv(source=r, tag=7)
            big[:] = 3.0
            small[:] = 4.0
        eng.push(write, writes=[b, s], name="late write")
        for r in range(1, eng.size):
            out = eng._mvar(outs[r], "o").buffer
            eng.push(lambda ctx, out=out: out.__setitem__(slice(None), (big.sum(), small.sum())),
                     reads=[b, s], writes=[outs[r]], name=f"read{r}")
        if eng.rank != 0:
            want = (1, 0 if eng._transport.lane is None else 1)  # big in Python, small in the lane
            try:
                deadline = time.monotonic() + TIMEOUT
                while not _registered(eng, *want) and time.monotonic() < deadline:
                    time.sleep(0.001)  # (until its receives are registered: a condition, not an order)
                assert _registered(eng, *want), "the receives never registered"
                bye = {"count": 0, "hash": 0, "sent": 10 ** 6, "recvd": 10 ** 6, "last": "test"}
                eng._transport._peer_gone(0, lambda item: eng._transport._beyond_bye(item, 0, bye))
            finally:
                comm.send(None, dest=0, tag=7)  # (rank 0's write waits for it)
            eng.wait_for_var(outs[eng.rank], TIMEOUT)
            assert list(eng._mvar(outs[eng.rank], "o").buffer) == [3.0 * big.size, 8.0], "wrong values"
        eng.wait_all(TIMEOUT)
        comm.Free()


def _diverging_engine():
    """An engine whose ranks are about to push different ops (None in a world of one)."""
    eng = de.Engine("mpi", workers=2)
    if eng.size == 1:
        eng.close()
        return None, None
    return eng, eng.new_var("v", owner=0, buffer=np.zeros(1))


def rule_mismatch_wait_all():
    eng, v = _diverging_engine()
    if eng is None:
        return
    if eng.rank == 0:
        eng.push(lambda ctx: None, writes=[v], name="only on rank 0")
    _expect(ProgramMismatchError, "different op sequences", eng.wait_all, TIMEOUT)
    _expect(ProgramMismatchError, "stopped", eng.push, lambda ctx: None, writes=[v])
    _expect(ProgramMismatchError, "different op sequences", eng.close)


def rule_mismatch_collectives():
    eng, v = _diverging_engine()
    if eng is None:
        return
    call = (lambda: eng.fetch(v, TIMEOUT)) if eng.rank == 0 else (lambda: eng.wait_all(TIMEOUT))
    try:
        call()
        raise AssertionError("different collective calls were not detected")
    except ProgramMismatchError as exc:
        assert "fetch('v')" in str(exc) and "wait_all()" in str(exc), exc
    eng.close()


def rule_mismatch_at_close():
    eng, v = _diverging_engine()
    if eng is None:
        return
    w = eng.new_var("w", owner=eng.size - 1, buffer=np.zeros(1))
    if eng.rank == eng.size - 1:  # waits for v from rank 0, which never sends it
        eng.push(lambda ctx: None, reads=[v], writes=[w], name="orphan")
    _expect(ProgramMismatchError, "different op sequences", eng.close)


RULES = {name[5:]: fn for name, fn in globals().items() if name.startswith("rule_")}


def run_all(only: str | None = None) -> dict[str, str]:
    out = {}
    for name, fn in RULES.items():
        if only and name not in only.split(","):
            continue
        try:
            fn()
            out[name] = "ok"
        except BaseException as exc:  # report every rule, whatever broke
            out[name] = "".join(traceback.format_exception(exc))
    return out
