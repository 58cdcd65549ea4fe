"""Trace file format 2 (one list per field): round trips, format 1 still read, and broken files rejected."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from depengine.trace import FORMAT_VERSION, Trace
from tests.test_trace_reader import CORPUS
from tests.traces import failing_trace


def test_save_writes_format_2_and_it_loads_back_exactly(tmp_path):
    trace = failing_trace()
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
    trace = failing_trace()
    path = tmp_path / "t.json"
    path.write_text(json.dumps(trace.to_chrome(version)))
    loaded = Trace.load(path)
    assert loaded.ops == trace.ops and loaded.edges() == trace.edges()
    with pytest.raises(ValueError, match="version=3 must be 1 or 2"):
        trace.to_chrome(3)


def test_the_cli_reports_a_format_2_trace_and_refuses_a_broken_one(tmp_path):
    good = failing_trace().save(tmp_path / "good.json")
    bad = tmp_path / "bad.json"
    bad.write_text(CORPUS["format 2: counts that do not add up"][0])
    out = tmp_path / "r.html"
    run = [sys.executable, "-m", "depengine", "report"]
    r = subprocess.run([*run, good, "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "wrote" in r.stdout and out.read_text().startswith("<!DOCTYPE html>")
    r = subprocess.run([*run, str(bad), "-o", str(tmp_path / "r2.html")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "bad.json" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "r2.html").exists()
