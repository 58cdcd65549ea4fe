"""Hostile and broken trace files: a clear TraceError, nothing executed, no half-written output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import viz
from depengine.trace import Trace, TraceError, atomic_write
from tests.traces import failing_trace, mixed_trace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _valid() -> dict:
    return mixed_trace().to_chrome()


def _edit(fn):
    d = _valid()
    fn(d)
    return json.dumps(d)


def _set_op(field, value):
    return lambda d: d["depengine"]["ops"][1].__setitem__(field, value)


def _event(ph):
    return next(e for e in _valid()["traceEvents"] if e["ph"] == ph)


def _drop_flow_end(d):
    d["traceEvents"] = [e for e in d["traceEvents"] if not (e["ph"] == "f" and e["id"] == 0)]


def _move_flow_end(d):
    next(e for e in d["traceEvents"] if e["ph"] == "f" and e["id"] == 0)["ts"] = 10_000.0


CORPUS = {
    "empty": ("", "the trace file is empty"),
    "truncated": (json.dumps(_valid())[:700], "truncated"),
    "not json": ("this is not json", "not valid JSON"),
    "binary": ("\x00\x01\x02 PK\x03\x04", "not valid JSON"),
    "json list": ("[1, 2, 3]", "not a depengine trace"),
    "foreign chrome trace": (json.dumps({"traceEvents": [{"ph": "X", "name": "a", "ts": 0, "dur": 1,
                                                           "pid": 1, "tid": 1}]}), "no 'depengine' section"),
    "other format": (_edit(lambda d: d["depengine"].__setitem__("format", 99)), "format 99"),
    "string id": (_edit(_set_op("id", "7")), "Expected `int`, got `str`"),
    "bool time": (_edit(_set_op("start", True)), "Expected `int`, got `bool`"),
    "missing field": (_edit(lambda d: d["depengine"]["ops"][1].pop("name")), "missing required field `name`"),
    "unknown state": (_edit(_set_op("state", "exploded")), "unknown state 'exploded'"),
    "negative duration": (_edit(_set_op("end", 1)), "negative duration"),
    "negative gpu duration": (_edit(lambda d: d["depengine"]["ops"][2].__setitem__("gpu_end", 0)),
                              "negative GPU duration"),
    "huge int": (_edit(_set_op("push", 2**70)), "out of range"),
    "negative version": (_edit(_set_op("writes", [[1, "y", -3]])), "var version=-3 is out of range"),
    "duplicate id": (_edit(_set_op("id", 0)), "a second op with id 0"),
    "unknown phase": (_edit(lambda d: d["traceEvents"].append({"ph": "Q", "pid": 1, "tid": 1})),
                      "unknown phase 'Q'"),
    "negative slice": (_edit(lambda d: next(e for e in d["traceEvents"] if e["ph"] == "X")
                             .__setitem__("dur", -5.0)), "slice with negative duration"),
    "lone flow start": (_edit(_drop_flow_end), "flow 0 has a start only"),
    "flow to missing op": (_edit(_move_flow_end), "a flow to a missing op"),
    "slice count": (_edit(lambda d: d["traceEvents"].append(dict(_event("X"), ts=5000.0))),
                    "inconsistent trace"),
    "deep nesting": ('{"junk": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested deeper"),
    "deep nesting in ops": ('{"depengine": {"format": 1, "ops": ' + "[" * 50_000 + "]" * 50_000 + "}}",
                            "got `array` - at `$.depengine.ops[0]`"),
    "lone surrogate": ('{"depengine": {"format": 1, "ops": [], "x": "\\ud800"}}', "not valid JSON"),
    "nan": ('{"depengine": {"format": NaN}}', "not valid JSON"),
}


# format 2 (one list per field, what save writes): the same faults, and its own
def _valid_2() -> dict:
    return failing_trace().to_chrome(2)


def _edit_2(fn) -> str:
    d = _valid_2()
    fn(d["depengine"])
    return json.dumps(d)


def _set(part, field, k, value):
    return lambda s: s[part][field].__setitem__(k, value)


def _swap_ids(s):
    s["ops"]["id"][3], s["ops"]["id"][4] = s["ops"]["id"][4], s["ops"]["id"][3]


CORPUS.update({f"format 2: {case}": entry for case, entry in {
    "short column": (_edit_2(lambda s: s["ops"]["start"].pop()), "ops.start has 9 entries, ops.id 10"),
    "negative count": (_edit_2(_set("ops", "reads", 0, -1)), "a negative count in ops.reads"),
    "counts that do not add up": (_edit_2(lambda s: s["accesses"]["serial"].pop()),
                                  "accesses.serial has 16 entries, ops.reads and ops.writes count 17"),
    "name index": (_edit_2(_set("ops", "name", 1, 99)), "ops.name[1] = 99 is not an index into the"),
    "repeated text": (_edit_2(lambda s: s["text"]["lane"].append(s["text"]["lane"][0])),
                      "text.lane holds 'depengine-cpu-0' twice"),
    "error index": (_edit_2(_set("ops", "error", 2, -2)), "ops.error[2] = -2 is not an index"),
    "var index": (_edit_2(_set("accesses", "var", 0, 1000)), "accesses.var[0] = 1000 is not an index"),
    "negative duration": (_edit_2(_set("ops", "end", 1, 1)), "negative duration"),
    "negative gpu duration": (_edit_2(_set("ops", "gpu_end", 2, 0)), "negative GPU duration"),
    "unknown state": (_edit_2(lambda s: s["text"]["state"].__setitem__(0, "exploded")),
                      "unknown state 'exploded'"),
    "huge time": (_edit_2(_set("ops", "push", 1, 2**70)), "push=1180591620717411303424 is out of range"),
    "time past 2**62": (_edit_2(_set("ops", "start", 9, 2**62 + 5)), "is out of range"),
    "huge version": (_edit_2(_set("accesses", "version", 3, 2**64)),
                     "var version=18446744073709551616 is out"),
    "negative version": (_edit_2(_set("accesses", "version", 3, -3)), "var version=-3 is out of range"),
    "duplicate id": (_edit_2(_set("ops", "id", 1, 0)), "a second op with id 0"),
    "out of order": (_edit_2(_swap_ids), "not in (engine, id) order"),
    "string column": (_edit_2(lambda s: s["ops"].__setitem__("id", "0123")), "Expected `array`, got `str`"),
    "missing column": (_edit_2(lambda s: s["ops"].pop("kind")), "missing required field `kind`"),
    "bool time": (_edit_2(_set("ops", "start", 0, True)), "Expected `int`, got `bool`"),
    "format 3": (_edit_2(lambda s: s.__setitem__("format", 3)), "unsupported depengine trace format 3"),
    "slice count": (json.dumps(dict(_valid_2(), traceEvents=_valid_2()["traceEvents"][:-1])),
                    "inconsistent trace"),
}.items()})


@pytest.mark.parametrize("case", CORPUS, ids=list(CORPUS))
def test_broken_and_hostile_traces_give_a_clear_error(case, tmp_path):
    text, message = CORPUS[case]
    path = tmp_path / "t.json"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    tracemalloc.start()
    try:
        with pytest.raises(TraceError) as info:
            Trace.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(info.value) and message in str(info.value), str(info.value)
    assert peak < 16 * 2**20 + 4 * len(text)  # nothing large allocated for a small file


def test_the_valid_original_loads_and_round_trips(tmp_path):
    trace = mixed_trace()
    path = trace.save(tmp_path / "t.json")
    again = Trace.load(path)
    assert again.ops == trace.ops and again.waits == trace.waits
    assert [e for e in again.edges()] == trace.edges()


def test_a_missing_file_is_a_trace_error(tmp_path):
    with pytest.raises(TraceError, match="cannot read trace file"):
        Trace.load(tmp_path / "nope.json")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "depengine", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_cli_leaves_no_half_written_output(tmp_path):
    out = tmp_path / "report.html"
    out.write_text("the previous report")
    for case in ("truncated", "flow to missing op", "deep nesting"):
        bad = tmp_path / "bad.json"
        bad.write_text(CORPUS[case][0])
        r = _cli("report", str(bad), "-o", str(out))
        assert r.returncode == 2 and "bad.json" in r.stderr and "Traceback" not in r.stderr, r.stderr
        r = _cli("viz", str(bad), "--timeline", str(tmp_path / "t.svg"), "--dot", str(tmp_path / "g.dot"))
        assert r.returncode == 2
    empty = Trace([]).save(tmp_path / "empty.json")
    r = _cli("report", empty, "-o", str(out))
    assert r.returncode == 2 and "no ops" in r.stderr
    assert out.read_text() == "the previous report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "empty.json", "report.html"]


def test_a_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "r.html"
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write("<html>half a page")
        raise RuntimeError("the disk filled up half way")
    assert list(tmp_path.iterdir()) == []
    with atomic_write(target) as f:
        f.write("whole")
    assert target.read_text() == "whole" and oct(target.stat().st_mode & 0o777) != "0o600"


def test_names_never_run_as_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = f"__import__('os').system('touch {marker}') $(touch {marker}) `touch {marker}`"
    trace = mixed_trace(names=(payload, payload + "2", "{{7*7}}"))
    path = trace.save(tmp_path / "t.json")
    assert _cli("report", path, "-o", str(tmp_path / "r.html")).returncode == 0
    assert _cli("stats", path).returncode == 0
    assert not marker.exists()


# ------------------------------------------------------------------ fuzzing
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                    | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for k, v in enumerate(value[:3]):
            yield from _paths(v, (*prefix, k))


BASE = _valid()
PATHS = [p for p in _paths(BASE) if p]


def _replace(doc, path, value):
    doc = json.loads(json.dumps(doc))
    target = doc
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = value
    return doc


def _accepts_or_rejects_cleanly(text: str, tmp_path) -> None:
    path = tmp_path / "f.json"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        trace = Trace.load(path)
    except TraceError:
        return
    # whatever the reader accepts, every picture can draw
    trace.stats()
    viz.timeline(trace)
    if trace.ops:
        viz.dependency_graph(trace)
        viz.report(trace)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(PATHS), JSON)
def test_fuzz_replacing_any_field(tmp_path, path, value):
    _accepts_or_rejects_cleanly(json.dumps(_replace(BASE, path, value)), tmp_path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, len(json.dumps(BASE))), st.binary(max_size=6))
def test_fuzz_corrupting_bytes(tmp_path, where, junk):
    text = json.dumps(BASE)
    _accepts_or_rejects_cleanly(text[:where] + junk.decode("latin-1") + text[where + len(junk):], tmp_path)


BASE_2 = _valid_2()
COLUMNS = [(part, field, k) for part in ("ops", "accesses", "text")
           for field, values in BASE_2["depengine"][part].items() for k in (None, 0, len(values) - 1)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(COLUMNS), JSON)
def test_fuzz_format_2_replacing_any_list_or_entry(tmp_path, where, value):
    doc = json.loads(json.dumps(BASE_2))
    part, field, k = where
    if k is None:
        doc["depengine"][part][field] = value
    else:
        doc["depengine"][part][field][k] = value
    _accepts_or_rejects_cleanly(json.dumps(doc), tmp_path)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, len(json.dumps(BASE_2))), st.binary(max_size=6))
def test_fuzz_format_2_corrupting_bytes(tmp_path, where, junk):
    text = json.dumps(BASE_2)
    _accepts_or_rejects_cleanly(text[:where] + junk.decode("latin-1") + text[where + len(junk):], tmp_path)
