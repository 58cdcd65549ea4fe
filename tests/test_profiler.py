"""Recording: what a profile captures, the Chrome trace JSON, loading back, bad files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import depengine as de
from depengine import _compiled, profiler
from depengine.trace import OpRecord, Trace, TraceError

CORES = ["python"] + (["compiled"] if _compiled.COMPILED_AVAILABLE else [])


@pytest.fixture(autouse=True, params=CORES)
def core(request, monkeypatch):
    """Every test here runs on each implementation there is: the compiled core (when built) and Python."""
    if request.param == "python":
        monkeypatch.setenv("DEPENGINE_PURE_PYTHON", "1")
    else:
        monkeypatch.delenv("DEPENGINE_PURE_PYTHON", raising=False)
    return request.param


def diamond(eng):
    a, b, c = eng.new_var("a"), eng.new_var("b"), eng.new_var("c")
    eng.push(lambda ctx: None, writes=[a], name="fill_a")
    eng.push(lambda ctx: None, reads=[a], writes=[b], name="b=a+1")
    eng.push(lambda ctx: None, reads=[a], writes=[c], name="c=a+2")
    eng.push(lambda ctx: None, reads=[b, c], writes=[a], name="a=b*c")
    eng.wait_for_var(a)
    return a, b, c


@pytest.mark.parametrize("kind", ["naive", "threaded"])
def test_profile_records_every_op_with_vars_versions_and_times(kind):
    with de.profile() as prof, de.Engine(kind, workers=2) as eng:
        diamond(eng)
        eng.wait_all()
    trace = prof.trace()
    assert [r.name for r in trace.ops] == ["fill_a", "b=a+1", "c=a+2", "a=b*c"]
    by_name = {r.name: r for r in trace.ops}
    assert by_name["fill_a"].writes == [(0, "a", 1)]
    assert by_name["b=a+1"].reads == [(0, "a", 1)] and by_name["b=a+1"].writes == [(1, "b", 1)]
    assert by_name["a=b*c"].reads == [(1, "b", 1), (2, "c", 1)]
    assert by_name["a=b*c"].writes == [(0, "a", 2)]
    for r in trace.ops:
        assert 0 <= r.push <= r.ready <= r.start <= r.end, r
        assert r.device == "cpu(0)" and r.state == "done" and r.kind == "normal"
        if kind == "threaded":
            assert r.lane.startswith("depengine-cpu-")
        else:
            assert r.lane == threading.current_thread().name
    waits = [w.what for w in trace.waits]
    assert waits == ["wait_for_var('a')", "wait_all()"]
    assert all(w.outcome == "ok" and w.end >= w.start for w in trace.waits)


def test_profile_off_costs_one_check_and_records_nothing():
    with de.Engine("threaded", workers=1) as eng:
        assert eng._prof is None
        with de.profile() as prof:
            assert eng._prof is not None  # existing engines start recording
            with de.Engine("naive") as other:
                assert other._prof is eng._prof  # and new ones too
        assert eng._prof is None
        eng.push(lambda ctx: None)
        eng.wait_all()
    assert len(prof.trace()) == 0


def test_recording_keeps_no_op_alive():
    # The recorder copies plain values; finished ops (and what they reference) can go.
    with de.profile() as prof, de.Engine("threaded", workers=2) as eng:
        diamond(eng)
        eng.wait_all()
    flat = prof._recorder.flat()
    assert flat and not any(isinstance(x, de.Op) for x in flat)
    assert len(prof.trace()) == 4


def test_ops_pushed_before_recording_began_are_left_out():
    gate = threading.Event()
    with de.Engine("threaded", workers=2) as eng:
        v = eng.new_var("v")
        eng.push(lambda ctx: gate.wait(), writes=[v], name="early")
        with eng.bulk(8):
            eng.push(lambda ctx: None, writes=[v], name="early-in-bulk")
            prof = de.profile().start()
            eng.push(lambda ctx: None, writes=[v], name="late-in-bulk")
        eng.push(lambda ctx: None, reads=[v], name="late")
        gate.set()
        eng.wait_all()
        prof.stop()
    names = [r.name for r in prof.trace().ops]
    assert "early" not in names and "early-in-bulk" not in names
    assert {"late-in-bulk", "late"} <= set(names)
    late = next(r for r in prof.trace().ops if r.name == "late-in-bulk")
    assert late.writes == [(0, "v", 3)]  # the third write of v, the first two unrecorded


def test_failed_and_skipped_ops_are_recorded():
    with de.profile() as prof, de.Engine("threaded", workers=2) as eng:
        v, w = eng.new_var("v"), eng.new_var("w")
        eng.push(lambda ctx: 1 / 0, writes=[v], name="bad")
        eng.push(lambda ctx: None, reads=[v], writes=[w], name="victim")
        with pytest.raises(ZeroDivisionError):
            eng.wait_all()
    states = {r.name: (r.state, r.error) for r in prof.trace().ops}
    assert states["bad"][0] == "failed" and "ZeroDivisionError" in states["bad"][1]
    assert states["victim"][0] == "skipped"
    waits = prof.trace().waits
    assert waits[-1].outcome == "raised"


def test_only_one_profile_at_a_time():
    with de.profile(), pytest.raises(RuntimeError, match="already recording"):
        de.profile().start()
    prof = de.profile()
    with pytest.raises(RuntimeError, match="nothing recorded"):
        prof.trace()


def test_chrome_trace_json(tmp_path):
    with de.profile() as prof, de.Engine("threaded", workers=2) as eng:
        diamond(eng)
    path = prof.save(tmp_path / "trace.json")
    data = json.loads(Path(path).read_text())
    events = data["traceEvents"]
    complete = [e for e in events if e["ph"] == "X" and e.get("cat") != "wait"]
    assert sorted(e["name"] for e in complete) == sorted(["fill_a", "b=a+1", "c=a+2", "a=b*c"])
    for e in complete:
        assert {"pid", "tid", "ts", "dur", "args"} <= set(e)
        assert e["dur"] >= 0 and isinstance(e["args"]["reads"], list)
    meta = [e for e in events if e["ph"] == "M"]
    assert {"name": "cpu(0)"} in [e["args"] for e in meta if e["name"] == "process_name"]
    lanes = {e["args"]["name"] for e in meta if e["name"] == "thread_name"}
    assert lanes >= {e_lane for e_lane in lanes if e_lane.startswith("depengine-cpu-")}
    starts = {e["id"]: e for e in events if e["ph"] == "s"}
    finishes = {e["id"]: e for e in events if e["ph"] == "f"}
    assert starts.keys() == finishes.keys() and len(starts) == len(prof.trace().edges()) == 6
    for fid, f in finishes.items():
        assert f["bp"] == "e" and f["ts"] >= starts[fid]["ts"]
    b_args = next(e["args"] for e in complete if e["name"] == "a=b*c")
    assert b_args["reads"] == ["b@v1", "c@v1"] and b_args["writes"] == ["a@v2"]


def test_saved_trace_loads_back_exactly(tmp_path):
    with de.profile() as prof, de.Engine("threaded", workers=2) as eng:
        diamond(eng)
    path = prof.save(tmp_path / "t.json")
    loaded = Trace.load(path)
    assert loaded.ops == prof.trace().ops
    assert loaded.waits == prof.trace().waits
    assert loaded.edges() == prof.trace().edges()


@pytest.mark.parametrize("content, message", [
    ("", "is empty"),
    ('{"traceEvents": [{"ph": "X"', r"not valid JSON \(the file looks truncated\)"),
    ("[1, 2, 3]", "not a depengine trace"),
    ('{"traceEvents": []}', "not a depengine trace"),
    ('{"depengine": {"format": 99}}', "unsupported depengine trace format 99"),
    ('{"depengine": {"format": 1, "ops": [{"id": 1}]}}', "missing required field `name`"),
])
def test_bad_trace_files_give_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(TraceError, match=message) as info:
        Trace.load(path)
    assert str(path) in str(info.value)


def test_truncated_real_trace(tmp_path):
    with de.profile() as prof, de.Engine("naive") as eng:
        diamond(eng)
    path = prof.save(tmp_path / "t.json")
    text = Path(path).read_text()
    with open(path, "w") as f:
        f.write(text[: len(text) // 2])
    with pytest.raises(TraceError, match="truncated"):
        Trace.load(path)
    with pytest.raises(TraceError, match="cannot read"):
        Trace.load(tmp_path / "missing.json")


def test_environment_variable_writes_a_trace_at_exit(tmp_path):
    out = tmp_path / "env.json"
    code = ("import depengine as de\n"
            "eng = de.Engine('threaded', workers=2)\n"
            "v = eng.new_var('v')\n"
            "for i in range(10):\n"
            "    eng.push(lambda ctx: None, writes=[v], name=f'step{i}')\n")
    env = dict(os.environ, DEPENGINE_PROFILE=str(out))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    trace = Trace.load(out)
    assert [r.name for r in trace.ops] == [f"step{i}" for i in range(10)]
    assert [r.writes[0][2] for r in trace.ops] == list(range(1, 11))


def _rec(i, name, start, end, reads=(), writes=(), lane="w0", device="cpu(0)", state="done"):
    return OpRecord(id=i, name=name, engine=0, device=device, kind="normal", priority=0, lane=lane,
                    reads=list(reads), writes=list(writes), push=0, ready=start, start=start, end=end,
                    state=state)


def test_critical_path_and_parallelism_on_a_known_program():
    # a(0-10) -> b(10-40) and c(10-20) -> d(40-50); c also -> e(20-25)
    ops = [
        _rec(0, "a", 0, 10, writes=[(0, "x", 1)]),
        _rec(1, "b", 10, 40, reads=[(0, "x", 1)], writes=[(1, "y", 1)], lane="w0"),
        _rec(2, "c", 10, 20, reads=[(0, "x", 1)], writes=[(2, "z", 1)], lane="w1"),
        _rec(3, "d", 40, 50, reads=[(1, "y", 1), (2, "z", 1)], writes=[(3, "out", 1)], lane="w0"),
        _rec(4, "e", 20, 25, reads=[(2, "z", 1)], lane="w1"),
    ]
    trace = Trace(ops)
    assert trace.critical_path() == [(0, 0), (0, 1), (0, 3)]
    assert trace.critical_path_ns() == 50
    s = trace.stats()
    assert s.wall_ns == 50
    assert s.parallelism == pytest.approx((10 + 30 + 10 + 10 + 5) / 50)
    assert s.per_lane["w0"]["busy"] == 50 and s.per_lane["w1"]["busy"] == 15
    assert s.per_lane["w1"]["utilisation"] == pytest.approx(0.3)
    assert s.per_name["b"]["total"] == 30 and s.per_name["b"]["count"] == 1
    kinds = {(e.src[1], e.dst[1], e.var): e.hazard for e in trace.edges()}
    assert kinds == {(0, 1, "x"): "RAW", (0, 2, "x"): "RAW", (1, 3, "y"): "RAW",
                     (2, 3, "z"): "RAW", (2, 4, "z"): "RAW"}
    text = str(s)
    assert "critical path 0.000 ms" in text and "achieved parallelism 1.30" in text


def test_write_after_read_and_write_after_write_edges():
    ops = [
        _rec(0, "w1", 0, 1, writes=[(0, "v", 1)]),
        _rec(1, "w2", 1, 2, writes=[(0, "v", 2)]),        # nobody read v1: WAW
        _rec(2, "r", 2, 3, reads=[(0, "v", 2)]),
        _rec(3, "w3", 3, 4, writes=[(0, "v", 3)]),        # r read v2: WAR r -> w3
    ]
    edges = {(e.src[1], e.dst[1]): (e.hazard, e.version) for e in Trace(ops).edges()}
    assert edges == {(0, 1): ("WAW", 2), (1, 2): ("RAW", 2), (2, 3): ("WAR", 3)}


def test_stats_queueing_delay_and_percentiles():
    ops = [_rec(i, "op", 100 * i, 100 * i + 10 * (i + 1)) for i in range(100)]
    for r in ops:
        r.ready = r.start - 5
    s = Trace(ops).stats()
    assert s.queue_delay["mean"] == 5 and s.queue_delay["max"] == 5
    assert s.per_name["op"]["min"] == 10 and s.per_name["op"]["max"] == 1000
    assert s.per_name["op"]["p50"] in (500, 510) and s.per_name["op"]["p99"] in (990, 1000)


# ---------------------------------------------------------------- the two implementations
def test_the_compiled_core_is_built_where_a_compiler_is():
    import shutil

    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: the install builds only the pure-Python engine")
    assert _compiled.COMPILED_AVAILABLE, f"depengine._core was not built ({_compiled.WHY_NOT_COMPILED})"


def _program_records(core: str) -> list:
    """One program of ops of every outcome and shape, recorded on one implementation."""
    with de.profile() as prof, de.Engine("threaded", workers=1, core=core) as eng:
        a, b, c = eng.new_var("a"), eng.new_var("b"), eng.new_var("c")
        many = [eng.new_var(f"m{k}") for k in range(40)]  # a record longer than the C store's stack buffer
        eng.push(lambda ctx: None, writes=[a, b], name="two writes")
        eng.push(lambda ctx: None, reads=[a, b], writes=[c], name="two reads", priority=3)
        eng.push(lambda ctx: None, reads=many[:25], writes=many[25:], name="40 vars")
        eng.push(lambda ctx: None, name="no vars")
        eng.push(lambda ctx: 1 / 0, writes=[c], name="raises")
        eng.push(lambda ctx: None, reads=[c], writes=[a], name="skipped")
        with pytest.raises(ZeroDivisionError):
            eng.wait_all()
    return [(r.id, r.name, r.device, r.kind, r.priority, r.state, r.error, r.reads, r.writes)
            for r in prof.trace().ops]


def test_both_implementations_record_the_same_program_alike():
    if not _compiled.COMPILED_AVAILABLE:
        pytest.skip("depengine._core is not built")
    compiled, python = _program_records("compiled"), _program_records("python")
    assert [r[1] for r in python] == ["two writes", "two reads", "40 vars", "no vars", "raises", "skipped"]
    assert [r[5] for r in python] == ["done"] * 4 + ["failed", "skipped"]
    assert python[1][4] == 3 and len(python[2][7]) == 25 and len(python[2][8]) == 15
    assert compiled == python


def _parse(store) -> list:
    recorder = profiler.Recorder()
    recorder.ops = store
    return recorder.records()


def test_records_of_ops_ending_on_two_threads_at_once_never_interleave(core):
    # The Python hooks: the GIL may pass between any two bytecodes; switch it as often as CPython allows.
    with de.profile(), de.Engine("threaded", workers=1, core="python") as eng:
        a, b, c = eng.new_var("a"), eng.new_var("b"), eng.new_var("c")
        ops = [eng.push(lambda ctx: None, writes=[a, b], name="two writes"),
               eng.push(lambda ctx: None, reads=[a, b], writes=[c], name="two reads")]
        eng.wait_all()
    flat = profiler._new_store()
    record_ended = profiler.record_ended
    start = threading.Barrier(2)

    def end_many(op):
        start.wait()
        for _ in range(20_000):
            record_ended(flat, op, None, False)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=end_many, args=(op,)) for op in ops]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    records = _parse(flat)
    assert len(records) == 40_000
    assert sorted({r[2] for r in records}) == sorted(op.name for op in ops)
    for r in records:
        op = ops[0] if r[2] == ops[0].name else ops[1]
        assert [v for v, _ in r[13]] == list(op.reads) and [v for v, _ in r[14]] == list(op.writes)


def test_the_collector_skips_the_records_while_recording():
    import gc

    with de.profile() as prof:
        assert gc.is_tracked(prof._recorder.ops) == (profiler._set_gc_tracked is None)
    assert gc.is_tracked(prof._recorder.ops)  # afterwards a container like any other


def test_the_packed_store_round_trips_records_and_rejects_others():
    if not _compiled.COMPILED_AVAILABLE:
        pytest.skip("depengine._core is not built")
    import gc
    import weakref

    store = _compiled.core_module.Records()
    big = 2**63 + 5  # a thread ident above the signed range
    record = ["engine", 7, "name", "cpu(0)", "normal", -3, None, 10, 11, big, 12, "failed", ValueError("x"),
              2, 1, "r1", "r2", "w", 4, 5, 6]
    skipped = ["engine", 8, "n2", "cpu(0)", "normal", 0, "lane", 13, 14, None, 14, "skipped", None, 0, 0]
    store.append(record)
    store.append(tuple(skipped))
    assert len(store) == 2 and store.tolist() == record + skipped
    for bad, match in [(record[:-1], "layout"), ([*record[:11], "lost", *record[12:]], "not done"),
                       ([*record[:1], "7", *record[2:]], "integer"), (42, "list or tuple")]:
        with pytest.raises((ValueError, TypeError), match=match):
            store.append(bad)
    assert len(store) == 2  # nothing half-added

    class Holder:  # a cycle through the store: the collector must see into it
        pass

    holder = Holder()
    holder.store = _compiled.core_module.Records()
    holder.store.append(["engine", 1, "n", "cpu(0)", "normal", 0, None, 1, 1, None, 1, "done", holder, 0, 0])
    alive = weakref.ref(holder)
    del holder
    gc.collect()
    assert alive() is None


def test_a_dropped_profile_lets_go_of_what_its_records_held():
    import gc
    import weakref

    with de.profile() as prof, de.Engine("threaded", workers=2) as eng:
        vs = [eng.new_var(f"v{k}") for k in range(4)]
        for k in range(500):
            eng.push(lambda ctx: None, reads=[vs[(k + 1) % 4]], writes=[vs[k % 4]])
        eng.push(lambda ctx: 1 / 0, writes=[vs[0]], name="raises")
        with pytest.raises(ZeroDivisionError):
            eng.wait_all()
    assert len(prof.trace()) == 501
    gone = [weakref.ref(x) for x in (eng, *vs)]
    del eng, vs
    gc.collect()
    assert any(r() is not None for r in gone)  # the records still hold them
    del prof
    gc.collect()
    assert all(r() is None for r in gone)


@pytest.mark.parametrize("composite", ["bulk", "plan"])
def test_a_composite_records_its_members_and_claims_none_of_their_versions(composite):
    """Members record the versions they saw and made; the bulk or plan run around them names no
    var, so every dependency edge joins members and points forward in push order."""
    with de.Engine("threaded", workers=2) as eng:
        v, w = eng.new_var("v"), eng.new_var("w")

        def program():
            for i in range(6):
                if i % 2:
                    eng.push(lambda ctx: None, reads=[v], writes=[w], name=f"m{i}")
                else:
                    eng.push(lambda ctx: None, writes=[v], name=f"m{i}")

        plan = None
        if composite == "plan":
            with eng.record(execute=False) as g:
                program()
            plan = g.compile(fuse=False)
        with de.profile() as prof:
            if plan is None:
                with eng.bulk(3):
                    program()
            else:
                plan.run()
            eng.wait_all()
    trace = prof.trace()
    members = [r for r in trace.ops if r.name.startswith("m")]
    shells = [r for r in trace.ops if not r.name.startswith("m")]
    assert [r.name for r in members] == [f"m{i}" for i in range(6)]
    writers = [r.writes for r in members if r.name in ("m0", "m2", "m4")]
    assert writers == [[(v.serial, "v", k)] for k in (1, 2, 3)]
    shelled = composite == "plan" or eng.options.core == "python"  # the compiled core's bulk gathers nothing
    assert bool(shells) == shelled and all(r.reads == [] and r.writes == [] for r in shells)
    edges = trace.edges()
    assert edges and all(e.src[1] < e.dst[1] for e in edges)
    assert {(trace.op(e.src).name, trace.op(e.dst).name, e.hazard) for e in edges} >= {
        ("m0", "m1", "RAW"), ("m1", "m2", "WAR"), ("m1", "m3", "WAW")}
