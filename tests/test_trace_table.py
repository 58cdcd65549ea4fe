"""The columnar trace: the vectorised walker, edges, critical path and statistics against plain Python."""

from __future__ import annotations

import statistics
from collections import defaultdict

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from depengine._edges import HAZARDS, dependency_edge_arrays, dependency_edges
from depengine.trace import Trace
from tests.traces import iterations_trace, mixed_trace, op

# an access: (var, version); programs: per op its reads and writes
ACCESS = st.tuples(st.integers(0, 3), st.integers(0, 4))
PROGRAM = st.lists(st.tuples(st.lists(ACCESS, max_size=3), st.lists(ACCESS, max_size=2)), max_size=25)


def _columns(program):
    rows = [(i, var, ver, write) for i, (reads, writes) in enumerate(program)
            for write, accesses in ((False, reads), (True, writes)) for var, ver in accesses]
    return [list(c) for c in zip(*rows, strict=True)] if rows else [[], [], [], []]


@settings(max_examples=300, deadline=None)
@given(PROGRAM)
def test_the_vectorised_walker_gives_the_edges_of_the_python_walker(program):
    # versions with gaps, repeated writes of one version, ops reading what they write: all allowed
    want = sorted(dependency_edges((i, reads, writes) for i, (reads, writes) in enumerate(program)))
    src, dst, var, ver, hazard = dependency_edge_arrays(*_columns(program))
    got = sorted(zip(src.tolist(), dst.tolist(), var.tolist(), ver.tolist(),
                     [HAZARDS[h] for h in hazard.tolist()], strict=True))
    assert got == want


TRACE_OP = st.tuples(st.sampled_from("abc"), st.integers(0, 50), st.integers(0, 30), st.booleans(),
                     st.lists(ACCESS, max_size=3), st.lists(ACCESS, max_size=2),
                     st.sampled_from(["w0", "w1"]))


def _trace(spec) -> Trace:
    ops = []
    for i, (name, start, length, skipped, reads, writes, lane) in enumerate(spec):
        ops.append(op(i, name, lane, start, start + length, [(v, f"v{v}", k) for v, k in reads],
                      [(v, f"v{v}", k) for v, k in writes], state="skipped" if skipped else "done",
                      ready=max(0, start - 3)))
    return Trace(ops)


def _reference_critical_path(trace: Trace):
    """The definition, walked as dicts: the chain of dependencies with the largest total duration."""
    preds = defaultdict(list)
    for e in trace.edges():
        preds[e.dst].append(e.src)
    best, via = {}, {}
    for r in trace.ops:
        p_best, p_key = 0, None
        for p in preds.get(r.key, ()):
            if best.get(p, 0) > p_best:
                p_best, p_key = best[p], p
        best[r.key], via[r.key] = p_best + r.duration, p_key
    if not best:
        return []
    key, path = max(best, key=best.__getitem__), []
    while key is not None:
        path.append(key)
        key = via[key]
    return path[::-1]


@settings(max_examples=150, deadline=None)
@given(st.lists(TRACE_OP, max_size=20))
def test_edges_critical_path_and_stats_match_plain_python(spec):
    trace = _trace(spec)
    assert trace.edges() == sorted(trace.edges(), key=lambda e: (e.dst, e.src, e.var))
    assert trace.critical_path() == _reference_critical_path(trace)
    stats = trace.stats()
    live = [r for r in trace.ops if r.state != "skipped"]
    names = defaultdict(list)
    for r in live:
        names[r.name].append(r.duration)
    assert list(stats.per_name) == list(names)  # in order of first appearance
    for name, ds in names.items():
        s = stats.per_name[name]
        assert (s["count"], s["total"], s["min"], s["max"]) == (len(ds), sum(ds), min(ds), max(ds))
        assert s["mean"] == statistics.fmean(ds)
    for lane in {r.lane for r in live}:
        covered = set()
        for r in live:
            if r.lane == lane:
                covered.update(range(r.start, r.end))
        assert stats.per_lane[lane]["busy"] == len(covered)  # integer times: the union, counted
    delays = sorted(max(0, r.start - r.ready) for r in live)
    assert stats.queue_delay.get("max", 0) == (delays[-1] if delays else 0)
    assert stats.parallelism == (sum(r.duration for r in live) / stats.wall_ns if stats.wall_ns else 0.0)


def test_a_table_is_built_once_and_shared():
    trace = mixed_trace()
    t = trace.table()
    assert trace.table() is t
    assert t.names[t.name[5]] == trace.ops[5].name and t.lanes[t.lane[2]] == "gpu0-h2d"
    assert t.stop[2] == trace.ops[2].gpu_end and t.stop[0] == trace.ops[0].end
    reads_and_writes = [(int(s), t.var_names[n], int(v), bool(w)) for s, n, v, w
                        in zip(t.acc_serial, t.acc_name, t.acc_ver, t.acc_write, strict=True)]
    assert reads_and_writes[t.acc_off[5]:t.acc_off[6]] == [(4, "z", 1, False), (1, "y", 1, False),
                                                           (0, "x", 2, True)]
    assert "ops=8" in repr(t)


def test_topological_order_and_longest_path_survive_a_cycle():
    # hand-made: op 0 reads a version op 1 writes (an edge backwards in push order), op 1 reads op 0's
    ops = [op(0, "a", "w0", 0, 10, [(0, "p", 1)], [(1, "q", 1)]),
           op(1, "b", "w0", 10, 30, [(1, "q", 1)], [(0, "p", 1)])]
    t = Trace(ops).table()
    assert not t.in_push_order()
    assert sorted(t.topo_order()) == [0, 1]
    best, _ = t.longest_path(np.array([1, 1]))
    assert best == [1, 2]
    assert t.longest_path(np.array([1, 1]), chain=True) == ([1, 2], [-1, 0])


def test_chains_are_counted_or_refused():
    t = iterations_trace(steps=3).table()
    step = (t.name == t.names.index("step")).astype(np.int64)
    best, _ = t.longest_path(step, chain=True)
    assert best[:9] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    work = (t.name == t.names.index("work")).astype(np.int64)  # two per step, side by side: no chain
    assert t.longest_path(work, chain=True) is None
