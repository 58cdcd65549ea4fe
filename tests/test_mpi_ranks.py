"""Engine("mpi") on 1, 2 and 3 ranks: each run is a bounded ``mpiexec`` subprocess.

The rules (tests/mpi_rules.py) and the random programs run on a world of
one (no mpiexec) and under ``mpiexec -n 2`` and ``-n 3``; one run per world
size serves every rule.  Random programs must give, on every rank, exactly
the values, failures and op states of the single-process threaded engine.
Hostile peers (issue 21): mismatched buffers, forged messages, a killed rank.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests import mpi_rules
from tests.mpi_programs import random_mpi_program, reference
from tests.mpirun import ROOT, run_ranks

SIZES = [1, 2, 3]
SEEDS = (0, 40)  # first seed, number of programs per world size


def _launch(size: int, scenario: str, arg: str = "", **kw):
    return run_ranks(0 if size == 1 else size, scenario, arg, **kw)


@pytest.fixture(scope="module", params=SIZES, ids=lambda n: f"{n}rank")
def rules_run(request):
    run = _launch(request.param, "rules")
    assert sorted(run.results) == list(range(request.param)), run.output[-4000:]
    return request.param, run


@pytest.mark.timeout(180)
@pytest.mark.parametrize("rule", sorted(mpi_rules.RULES))
def test_rule(rules_run, rule):
    size, run = rules_run
    for rank in range(size):
        outcome = run.results[rank][rule]
        assert outcome == "ok", f"rule {rule} on rank {rank} of {size}:\n{outcome}"


@pytest.mark.timeout(240)
@pytest.mark.parametrize("size", SIZES, ids=lambda n: f"{n}rank")
def test_random_programs_match_the_single_process_engine(size):
    first, count = SEEDS
    run = _launch(size, "random", f"{first}:{count}")
    assert sorted(run.results) == list(range(size)), run.output[-4000:]
    exercised = {"failed": 0, "skipped": 0, "moved": 0}
    for seed in range(first, first + count):
        prog = random_mpi_program(seed, size)
        want = reference(prog)
        states = {}
        for rank in range(size):
            got = run.results[rank][str(seed)]
            assert got["vars"] == want["vars"], f"seed={seed} rank={rank}: vars differ"
            states.update(got["states"])
        assert {int(k): v for k, v in states.items()} == want["states"], f"seed={seed}: op states differ"
        exercised["failed"] += sum(s == "failed" for s in states.values())
        exercised["skipped"] += sum(s == "skipped" for s in states.values())
        exercised["moved"] += any(s.execute_on is not None for s in prog.steps)
    # the programs did exercise failures, skips and ops placed away from owners
    assert exercised["failed"] and exercised["skipped"] and exercised["moved"], exercised


@pytest.mark.timeout(120)
@pytest.mark.parametrize("size", [2, 3], ids=lambda n: f"{n}rank")
def test_merged_trace_has_a_process_per_rank_and_transfer_arrows(size, tmp_path):
    run = _launch(size, "trace")
    assert sorted(run.results) == list(range(size)), run.output[-4000:]
    merged = os.path.join(run.directory, "merged.json")
    with open(merged) as f:
        chrome = json.load(f)
    events = chrome["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e.get("name") == "process_name"}
    assert {f"rank {r} cpu(0)" for r in range(size)} <= set(names.values())
    ends = {e["id"]: e for e in events if e["ph"] == "f"}
    across = [e for e in events if e["ph"] == "s" and ends[e["id"]]["pid"] != e["pid"]]
    transfers = run.results[0]["transfers"]
    sent = sum(run.results[r]["traffic"]["sends"] for r in range(size))
    assert len(transfers) == sent and len(across) == sent > 0
    for e in across:  # each arrow leaves a send on one rank's process and enters a receive on another's
        assert names[e["pid"]].startswith("rank ") and names[ends[e["id"]]["pid"]].startswith("rank ")
        assert "→" in e["name"]
    graph, timeline = tmp_path / "graph.svg", tmp_path / "timeline.svg"
    script = os.path.join(os.path.dirname(sys.executable), "depengine")
    command = [script] if os.path.exists(script) else [sys.executable, "-m", "bench.cli"]
    viz = subprocess.run([*command, "viz", merged, "--graph", str(graph), "--timeline", str(timeline)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert viz.returncode == 0, viz.stderr
    assert "<svg" in graph.read_text() and "rank 1" in timeline.read_text()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("size", SIZES, ids=lambda n: f"{n}rank")
def test_an_engine_left_open_closes_at_exit(size):
    run = _launch(size, "unclosed")
    assert run.results == {r: {"value": 3.0} for r in range(size)}, run.output[-3000:]
    assert "Traceback" not in run.output and "failed" not in run.output, run.output[-3000:]


# ---------------------------------------------------------------- issue 21: hostile peers
@pytest.mark.timeout(120)
def test_mismatched_buffers_fail_the_var_and_write_nothing():
    run = run_ranks(2, "mismatch")
    r0 = run.results[0]
    for i, what in enumerate(("float32 (8,)", "float64 (8,)", "float64 (131072,)")):
        error = r0[f"x{i}"]
        assert error.startswith("TransferError:") and f"var 'x{i}'" in error, error
        assert "rank 1" in error and "rank 0" in error and what in error and "float64 (4,)" in error, error
        assert r0[f"x{i} canaries"] is True
    for rank in (0, 1):  # the buffers' shapes entered the op-sequence hash: both ranks learn it at close
        assert run.results[rank]["close"].startswith("ProgramMismatchError:")


FORGED = {
    "garbage": "not a transfer header",
    "oversized": "holds 100000 bytes: it is not a transfer header",
    "lying size": "[1000000000000 bytes] but the buffer here is float64 (4,)",
    "wrong payload": "holds 4096 bytes where its header announced 32",
    "bad json": "cannot read",
    "unimported type": "RemoteError: antigravity.Boom: imported?",
    "not an exception": "RemoteError: os.system: m",
}
# on the lane a message is a whole transfer: the first two fail the header's checks, the fourth its own
FORGED_LANE = {**FORGED, "garbage": "too short for a transfer header",
               "oversized": "not a depengine transfer",
               "wrong payload": "a message of the lane must hold the whole transfer"}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("where", ["python", "lane"])
def test_forged_messages_are_rejected_without_writing_or_importing(where):
    # forged on the communicator the transfers take: Python's with the lane off (its small transfers
    # would take the lane's, where MPI does not order them after the forgeries), else the lane's
    run = run_ranks(2, "forged", where, env={"DEPENGINE_MPI_LANE": "0"} if where == "python" else None)
    r0 = run.results[0]
    if where == "lane" and r0.get("lane") is False:
        assert os.environ.get("DEPENGINE_PURE_PYTHON"), "the compiled core runs the lane"
        pytest.skip("no lane on the pure-Python engine")
    expected = FORGED_LANE if where == "lane" else FORGED
    for case, fragment in expected.items():
        assert fragment in r0[case], (case, r0[case])
        if r0[case].startswith("TransferError:"):  # names the var and both ranks
            assert "var 'x" in r0[case] and "rank 1" in r0[case] and "rank 0" in r0[case], r0[case]
        assert r0[f"{case} canaries"] is True, case
    assert r0["antigravity imported"] is False
    assert run.results[1]["close"] == "no error" and r0["close"] == "no error"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("size", [2, 3], ids=lambda n: f"{n}rank")
def test_a_rank_that_stops_answering_fails_the_others_in_bounded_time(size):
    """SIGSTOP: the launcher sees a live process, the other ranks an unanswered wait."""
    run = run_ranks(size, "stopped", env={"DEPENGINE_MPI_TIMEOUT": "2"}, timeout=90)
    survivors = list(range(size - 1))
    assert sorted(run.results) == survivors, run.output[-4000:]
    for rank in survivors:
        r = run.results[rank]
        assert r["wait_all"].startswith("RankFailedError:"), r
        assert f"rank {size - 1} (process" in r["wait_all"] and "answered nothing" in r["wait_all"], r
        # the 2 s run from when the stopped rank was last heard, a moment before this rank's wait began
        assert 1.5 <= r["seconds"] < 15 and r["close"] == "no error", r


@pytest.mark.timeout(120)
@pytest.mark.parametrize("size", [2, 3], ids=lambda n: f"{n}rank")
def test_a_killed_rank_ends_the_run_in_bounded_time(size):
    """SIGKILL under ``mpiexec -disable-auto-cleanup``: hydra signals the survivors (SIGUSR1), the engine
    checks its peers at once and fails their waits, and hydra kills them soon after; whatever a
    survivor managed to report names the dead rank."""
    run = run_ranks(size, "killed", flags=("-disable-auto-cleanup",), timeout=90)
    assert "Killed (signal 9)" in run.output, run.output[-4000:]
    assert set(run.results) <= set(range(size - 1)), run.output[-4000:]
    for r in run.results.values():
        assert r["wait_all"].startswith("RankFailedError:") and f"rank {size - 1} died" in r["wait_all"], r
        assert r["seconds"] < 20, r


@pytest.mark.timeout(120)
def test_waiting_on_a_peer_costs_little_cpu():
    """While rank 1 runs a 1 s op that rank 0 waits on, no rank spends more than a fifth of a core."""
    run = run_ranks(2, "idle")
    for rank, r in run.results.items():
        assert r["wall"] >= 0.9, r
        assert r["cpu"] < 0.2 * r["wall"], (rank, r)
