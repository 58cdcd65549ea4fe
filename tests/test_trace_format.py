"""Trace file format 2 (one list per field): round trips, format 1 still read, and broken files rejected."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import viz
from depengine.trace import FORMAT_VERSION, Trace, TraceError
from tests.traces import US, mixed_trace, op


def _trace() -> Trace:
    """The mixed CPU/GPU trace plus a failed op with an error and a skipped one."""
    trace = mixed_trace()
    extra = [op(8, "boom", "depengine-cpu-0", 200 * US, 210 * US, [(5, "out", 1)], [(6, "w", 1)],
                state="failed", error="ValueError: boom \u00e9"),
             op(9, "after", "(skipped)", 211 * US, 211 * US, [(6, "w", 1)], [], state="skipped")]
    return Trace(trace.ops + extra, trace.waits)


def test_save_writes_format_2_and_it_loads_back_exactly(tmp_path):
    trace = _trace()
    path = trace.save(tmp_path / "t.json")
    with open(path, encoding="utf-8") as f:
        section = json.load(f)["depengine"]
    assert FORMAT_VERSION == 2 and section["format"] == 2
    assert section["ops"]["id"] == list(range(10)) and section["text"]["error"] == ["ValueError: boom \u00e9"]
    assert sum(section["ops"]["reads"]) + sum(section["ops"]["writes"]) == len(section["accesses"]["serial"])
    loaded = Trace.load(path)
    assert len(loaded) == 10 and loaded.op_at(8) == trace.ops[8]  # one record, made on its own
    assert loaded.ops == trace.ops and loaded.waits == trace.waits
    assert loaded.edges() == trace.edges() and loaded.critical_path() == trace.critical_path()
    assert loaded.stats() == trace.stats()


@pytest.mark.parametrize("version", [1, 2])
def test_both_formats_load_from_to_chrome(tmp_path, version):
    trace = _trace()
    path = tmp_path / "t.json"
    path.write_text(json.dumps(trace.to_chrome(version)))
    loaded = Trace.load(path)
    assert loaded.ops == trace.ops and loaded.edges() == trace.edges()
    with pytest.raises(ValueError, match="version=3 must be 1 or 2"):
        trace.to_chrome(3)


def _valid() -> dict:
    return _trace().to_chrome(2)


def _edit(fn) -> str:
    d = _valid()
    fn(d["depengine"])
    return json.dumps(d)


def _set(part, field, k, value):
    return lambda s: s[part][field].__setitem__(k, value)


def _swap_ids(s):
    s["ops"]["id"][3], s["ops"]["id"][4] = s["ops"]["id"][4], s["ops"]["id"][3]


CORPUS = {
    "short column": (_edit(lambda s: s["ops"]["start"].pop()), "ops.start has 9 entries, ops.id 10"),
    "negative count": (_edit(_set("ops", "reads", 0, -1)), "a negative count in ops.reads"),
    "counts that do not add up": (_edit(lambda s: s["accesses"]["serial"].pop()),
                                  "accesses.serial has 16 entries, ops.reads and ops.writes count 17"),
    "name index": (_edit(_set("ops", "name", 1, 99)), "ops.name[1] = 99 is not an index into the"),
    "repeated text": (_edit(lambda s: s["text"]["lane"].append(s["text"]["lane"][0])),
                      "text.lane holds 'depengine-cpu-0' twice"),
    "error index": (_edit(_set("ops", "error", 2, -2)), "ops.error[2] = -2 is not an index"),
    "var index": (_edit(_set("accesses", "var", 0, 1000)), "accesses.var[0] = 1000 is not an index"),
    "negative duration": (_edit(_set("ops", "end", 1, 1)), "negative duration"),
    "negative gpu duration": (_edit(_set("ops", "gpu_end", 2, 0)), "negative GPU duration"),
    "unknown state": (_edit(lambda s: s["text"]["state"].__setitem__(0, "exploded")),
                      "unknown state 'exploded'"),
    "huge time": (_edit(_set("ops", "push", 1, 2**70)), "push=1180591620717411303424 is out of range"),
    "time past 2**62": (_edit(_set("ops", "start", 9, 2**62 + 5)), "is out of range"),
    "huge version": (_edit(_set("accesses", "version", 3, 2**64)), "var version=18446744073709551616 is out"),
    "negative version": (_edit(_set("accesses", "version", 3, -3)), "var version=-3 is out of range"),
    "duplicate id": (_edit(_set("ops", "id", 1, 0)), "a second op with id 0"),
    "out of order": (_edit(_swap_ids), "not in (engine, id) order"),
    "string column": (_edit(lambda s: s["ops"].__setitem__("id", "0123")), "Expected `array`, got `str`"),
    "missing column": (_edit(lambda s: s["ops"].pop("kind")), "missing required field `kind`"),
    "bool time": (_edit(_set("ops", "start", 0, True)), "Expected `int`, got `bool`"),
    "format 3": (_edit(lambda s: s.__setitem__("format", 3)), "unsupported depengine trace format 3"),
    "slice count": (json.dumps(dict(_valid(), traceEvents=_valid()["traceEvents"][:-1])),
                    "inconsistent trace"),
}


@pytest.mark.parametrize("case", CORPUS, ids=list(CORPUS))
def test_broken_format_2_files_give_a_clear_error(case, tmp_path):
    text, message = CORPUS[case]
    path = tmp_path / "t.json"
    path.write_text(text, encoding="utf-8")
    tracemalloc.start()
    try:
        with pytest.raises(TraceError) as info:
            Trace.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(info.value) and message in str(info.value), str(info.value)
    assert peak < 16 * 2**20 + 4 * len(text)  # nothing large allocated for a small file


def test_the_cli_reports_a_format_2_trace_and_refuses_a_broken_one(tmp_path):
    good = _trace().save(tmp_path / "good.json")
    bad = tmp_path / "bad.json"
    bad.write_text(CORPUS["counts that do not add up"][0])
    out = tmp_path / "r.html"
    run = [sys.executable, "-m", "depengine", "report"]
    r = subprocess.run([*run, good, "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "wrote" in r.stdout and out.read_text().startswith("<!DOCTYPE html>")
    r = subprocess.run([*run, str(bad), "-o", str(tmp_path / "r2.html")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "bad.json" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "r2.html").exists()


# ------------------------------------------------------------------ fuzzing
BASE = _valid()
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                    | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
FIELDS = [(part, field, k) for part in ("ops", "accesses", "text")
          for field, values in BASE["depengine"][part].items() for k in (None, 0, len(values) - 1)]


def _accepts_or_rejects_cleanly(text: str, tmp_path) -> None:
    path = tmp_path / "f.json"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        trace = Trace.load(path)
    except TraceError:
        return
    trace.stats()  # whatever the reader accepts, every picture can draw
    viz.timeline(trace)
    if len(trace):
        viz.report(trace)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(FIELDS), JSON)
def test_fuzz_replacing_any_column_or_entry(tmp_path, where, value):
    doc = json.loads(json.dumps(BASE))
    part, field, k = where
    if k is None:
        doc["depengine"][part][field] = value
    else:
        doc["depengine"][part][field][k] = value
    _accepts_or_rejects_cleanly(json.dumps(doc), tmp_path)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, len(json.dumps(BASE))), st.binary(max_size=6))
def test_fuzz_corrupting_bytes(tmp_path, where, junk):
    text = json.dumps(BASE)
    _accepts_or_rejects_cleanly(text[:where] + junk.decode("latin-1") + text[where + len(junk):], tmp_path)
