"""The pictures' model on columns against plain Python: waits, lanes, gaps, graph edges through hidden ops."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from depengine.trace import Trace
from tests.traces import op
from viz.graph import build_graph
from viz.model import RunModel

VARS = st.lists(st.integers(0, 2), max_size=2, unique=True)  # few vars: many dependencies
OP = st.tuples(st.sampled_from(["a", "b", "delete v1"]), st.integers(0, 60), st.integers(0, 20), VARS, VARS,
               st.sampled_from(["w0", "w1", "gpu0-s0"]), st.booleans(), st.integers(0, 30))


def _trace(spec) -> Trace:
    """Ops pushed in order: a read sees a var's current version, a write makes the next one (as an
    engine records them); ``delete v1`` writes v1 alone and is hidden as bookkeeping."""
    ops, version = [], [0, 0, 0]
    for i, (name, start, length, reads, writes, lane, gpu, queued) in enumerate(spec):
        if name == "delete v1":
            reads, writes = [], [1]
        reads = [v for v in reads if v not in writes]
        seen = [(v, f"v{v}", version[v]) for v in reads]
        for v in writes:
            version[v] += 1
        on_gpu = lane.startswith("gpu")
        ops.append(op(i, name, lane, start, start + length, seen, [(v, f"v{v}", version[v]) for v in writes],
                      device="gpu(0)" if on_gpu else "cpu(0)",
                      gpu_end=start + length + 5 if gpu and on_gpu else None))
        ops[-1].push = max(0, start - queued)
    return Trace(ops)


def _preds(trace: Trace) -> dict[int, list[tuple[int, int]]]:
    """op index -> [(source index, edge number)], self edges left out, in edge order."""
    index = {r.key: i for i, r in enumerate(trace.ops)}
    preds: dict[int, list] = {}
    for n, e in enumerate(e for e in trace.edges() if e.src != e.dst):
        preds.setdefault(index[e.dst], []).append((index[e.src], n))
    return preds


def random_traces(test):
    """Run ``test(trace, model)`` on random small traces."""
    return settings(max_examples=120, deadline=None)(given(st.lists(OP, max_size=16).map(_trace))(
        lambda trace: test(trace, RunModel(trace))))


@random_traces
def test_waits_lanes_and_gaps_match_plain_python(trace, model):
    ops, preds = trace.ops, _preds(trace)
    for i, r in enumerate(ops):  # what each op waited for: the dependency that ended last, if after its push
        best, best_end = -1, None
        for s, n in preds.get(i, ()):
            q = ops[s]
            end = q.gpu_end if q.gpu_end is not None and r.device.startswith("cpu") else q.end
            if best_end is None or end > best_end:
                best, best_end = n, end
        assert model.waited_for[i] == (-1 if best_end is None or best_end < r.push else best)
    for lane in model.lanes:
        assert [ops[i].lane for i in lane.ops] == [lane.name] * len(lane.ops)
        assert [(ops[i].start, i) for i in lane.ops] == sorted((ops[i].start, i) for i in lane.ops)
    gaps = []
    for n, lane in enumerate(model.lanes):
        busy = None
        for i in lane.ops.tolist():
            if busy is not None and ops[i].start - busy > 1:
                edge = model.waited_for[i]
                gaps.append((n, busy, ops[i].start, i, None if edge < 0 else int(model.src[edge])))
            busy = max(busy if busy is not None else ops[i].start, int(model.end[i]))
    assert [(g.lane, g.start, g.end, g.next_op, g.waited_for) for g in model.gaps(min_ns=1)] == gaps


def _reference_edges(trace: Trace, hidden: list[bool]) -> set[tuple[int, int]]:
    """Edges between shown ops; a hidden op passes on what it depended on (at most 16 of them)."""
    preds, through, out = _preds(trace), {}, set()
    for d in range(len(trace.ops)):  # push order: every recorded trace's edges point forwards
        for s, _ in preds.get(d, ()):
            sources = list(through.get(s, ()))[:16] if hidden[s] else [s]
            if hidden[d]:
                through.setdefault(d, set()).update(sources)
            else:
                out.update((a, d) for a in (through.get(s, ()) if hidden[s] else [s]) if a != d)
    return out


@random_traces
def test_graph_edges_through_hidden_ops_match_plain_python(trace, model):
    assert model.table.in_push_order()
    picture = build_graph(model, group="ops", max_ops=100)
    drawn = {(int(a), int(b)) for a, b in re.findall(r"\bop(\d+) -> op(\d+)", picture.dot.source)}
    assert drawn == _reference_edges(trace, picture.hidden)
