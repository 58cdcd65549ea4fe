"""bench/: Task Bench dependency sets, validation, METG arithmetic, replay spans and --quick runs."""

from __future__ import annotations

import json

import pytest

from bench import suite
from bench.kernels import Kernel
from bench.metg import Measurement, efficiencies, metg
from bench.systems import Run, System, _last_outputs, available_systems, replay_span, validate
from bench.taskbench import PATTERNS, Graph, ValidationError, expected_outputs, task_output

WIDTHS = (1, 2, 7, 16)


def _all_deps(g: Graph) -> dict[tuple[int, int], tuple[int, ...]]:
    return {(t, i): g.deps(t, i) for t in range(g.steps) for i in g.points(t)}


# ------------------------------------------------------ dependency sets
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("width", WIDTHS)
def test_one_step_has_no_dependencies(pattern, width):
    g = Graph(pattern, width, 1)
    deps = _all_deps(g)
    assert set(deps.values()) == {()}
    assert g.ntasks() == (1 if pattern in ("dom", "tree") else width)  # a tip, a root


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("width", WIDTHS)
def test_deps_are_sorted_subsets_of_the_previous_step(pattern, width):
    g = Graph(pattern, width, 9)
    for (t, i), deps in _all_deps(g).items():
        assert list(deps) == sorted(set(deps))
        if t:
            assert set(deps) <= set(g.points(t - 1)), (t, i)


@pytest.mark.parametrize("width", WIDTHS)
def test_simple_patterns_by_hand(width):
    last = width - 1
    for t in (1, 4):
        assert all(Graph("trivial", width, 5).deps(t, i) == () for i in range(width))
        assert all(Graph("no_comm", width, 5).deps(t, i) == (i,) for i in range(width))
        assert all(Graph("all_to_all", width, 5).deps(t, i) == tuple(range(width)) for i in range(width))
        stencil = Graph("stencil_1d", width, 5)
        periodic = Graph("stencil_1d_periodic", width, 5)
        assert stencil.deps(t, 0) == tuple(range(min(2, width)))
        assert stencil.deps(t, last) == tuple(range(max(0, last - 1), width))
        assert periodic.deps(t, 0) == tuple(sorted({last, 0, 1 % width}))


def test_stencils_width_7():
    s, p = Graph("stencil_1d", 7, 3), Graph("stencil_1d_periodic", 7, 3)
    assert [s.deps(2, i) for i in (0, 3, 6)] == [(0, 1), (2, 3, 4), (5, 6)]
    assert [p.deps(2, i) for i in (0, 3, 6)] == [(0, 1, 6), (2, 3, 4), (0, 5, 6)]


def test_dom_width_7_steps_10():
    g = Graph("dom", 7, 10)
    assert [list(g.points(t)) for t in (0, 1, 3, 4, 5, 9)] == [
        [0], [0, 1], [0, 1, 2, 3], [1, 2, 3, 4, 5], [2, 3, 4, 5, 6], [6]]
    assert g.deps(1, 0) == (0,) and g.deps(1, 1) == (0,)
    assert g.deps(5, 2) == (1, 2) and g.deps(5, 6) == (5,)
    assert g.deps(9, 6) == (5, 6)


def test_tree_width_16():
    g = Graph("tree", 16, 6)
    assert [len(g.points(t)) for t in range(6)] == [1, 2, 4, 8, 16, 16]
    assert g.deps(1, 1) == (0,) and g.deps(4, 13) == (6,) and g.deps(5, 15) == (7,)
    assert [len(Graph("tree", w, 4).points(3)) for w in (1, 2, 7)] == [1, 2, 7]


def test_fft_butterflies():
    g16 = Graph("fft", 16, 9)  # n = 4: strides 1, 2, 4, 8, 1, ...
    assert [g16.deps(t, 5) for t in (1, 2, 3, 4, 5)] == [(4, 5, 6), (3, 5, 7), (1, 5, 9), (5, 13), (4, 5, 6)]
    assert g16.deps(4, 12) == (4, 12)
    g7 = Graph("fft", 7, 5)  # n = 3: strides 1, 2, 4
    assert g7.deps(3, 2) == (2, 6) and g7.deps(3, 5) == (1, 5) and g7.deps(1, 6) == (5, 6)
    assert Graph("fft", 2, 4).deps(3, 0) == (0, 1)
    assert Graph("fft", 1, 4).deps(3, 0) == (0,)


def test_nearest_radix():
    assert Graph("nearest", 7, 3, radix=3).deps(1, 3) == (2, 3, 4)
    assert Graph("nearest", 7, 3, radix=4).deps(1, 3) == (1, 2, 3, 4)
    assert Graph("nearest", 7, 3, radix=4).deps(1, 0) == (0, 1)
    assert Graph("nearest", 16, 3, radix=1).deps(2, 9) == (9,)


def test_spread():
    g16 = Graph("spread", 16, 5, radix=3, period=3)  # offsets 0, 5 + d, 10 + d; d = t mod 3
    assert g16.deps(1, 0) == (0, 6, 11)
    assert g16.deps(3, 14) == (3, 8, 14)
    assert Graph("spread", 7, 5, radix=3, period=3).deps(2, 6) == (3, 5, 6)
    assert Graph("spread", 2, 5, radix=2, period=2).deps(1, 0) == (0,)  # (0 + 1 + 1) mod 2 == 0


@pytest.mark.parametrize("width", WIDTHS)
def test_random_nearest(width):
    none = Graph("random_nearest", width, 8, radix=5, fraction=0.0)
    every = Graph("random_nearest", width, 8, radix=5, fraction=1.0)
    near = Graph("nearest", width, 8, radix=5)
    for t in range(1, 8):
        for i in range(width):
            assert none.deps(t, i) == (i,)
            assert every.deps(t, i) == near.deps(t, i)
    half = Graph("random_nearest", width, 12, radix=5, period=4, fraction=0.5)
    for t in range(1, 8):  # the choice repeats with the period, and depends on the graph
        assert [half.deps(t, i) for i in range(width)] == [half.deps(t + 4, i) for i in range(width)]
    if width == 16:
        other = Graph("random_nearest", width, 12, radix=5, period=4, fraction=0.5, index=1)
        assert _all_deps(half) != _all_deps(other)


# ------------------------------------------------------------ validation
def _serial(graphs, order):
    """Run every task in ``order(g)`` (a list of (t, i)) serially; a Run of the outputs."""
    outputs = {}
    for g in graphs:
        done: dict[tuple[int, int], tuple] = {}
        for t, i in order(g):
            deps = g.deps(t, i)
            done[t, i] = task_output(g, t, i, deps, [done.get((t - 1, j)) for j in deps])
        outputs[g.index] = _last_outputs(g, lambda t, i, done=done: done[t, i])
    return Run(0.0, outputs, sum(g.ntasks() for g in graphs))


def _step_major(g):
    return [(t, i) for t in range(g.steps) for i in g.points(t)]


def test_a_correct_schedule_validates():
    graphs = [Graph("stencil_1d", 5, 6), Graph("fft", 8, 6, index=1)]
    validate(graphs, _serial(graphs, _step_major))


def test_validation_catches_a_wrong_schedule():
    g = Graph("stencil_1d", 5, 6)
    column_major = lambda g: [(t, i) for i in range(g.width) for t in range(g.steps)]  # noqa: E731
    with pytest.raises(ValidationError, match=r"task \(1, 0\).*input from column 1 is None"):
        _serial([g], column_major)
    stale = lambda g: [(t, i) for t in range(g.steps) for i in g.points(t)]  # noqa: E731
    run = _serial([g], stale)
    run.outputs[0][3] = task_output(g, 0, 3, (), [])  # a column whose last steps never ran
    with pytest.raises(ValidationError, match=r"graph 0 \(stencil_1d\): 1 column\(s\).*first column 3"):
        validate([g], run)
    with pytest.raises(ValidationError, match="expected the output of task"):
        task_output(g, 2, 1, (0, 1, 2), [(1, 0, 5), (0, 1, 5), (1, 2, 5)])  # one input from step 0


def test_outputs_depend_on_the_seed_of_each_graph():
    a, b = Graph("no_comm", 3, 4), Graph("no_comm", 3, 4, index=1)
    assert expected_outputs(a) != expected_outputs(b)


# ------------------------------------------------------------ replay span
@pytest.mark.parametrize("pattern", PATTERNS)
def test_replay_span_repeats_exactly(pattern):
    graphs = [Graph(pattern, 7, 200), Graph(pattern, 7, 200, index=1)]
    span = replay_span(graphs)
    if pattern == "dom":  # its steps never repeat
        assert span is None
        return
    first, length, runs = span
    assert length % 2 == 0 and length >= 32 and runs >= 2 and first + runs * length <= 200
    for g in graphs:
        for t in range(first, 200 - length):
            assert list(g.points(t)) == list(g.points(t + length))
            assert [g.deps(t, i) for i in g.points(t)] == [g.deps(t + length, i) for i in g.points(t)]


def test_replay_span_edge_cases():
    assert replay_span([Graph("stencil_1d", 4, 3)]) is None  # one repeat at most
    assert replay_span([Graph("stencil_1d", 4, 5)]) == (1, 2, 2)
    assert replay_span([Graph("stencil_1d", 4, 41)]) == (1, 20, 2)
    assert replay_span([Graph("stencil_1d", 4, 50), Graph("stencil_1d", 4, 60, index=1)]) is None
    assert replay_span([Graph("tree", 16, 41)])[0] == 4  # tree holds all 16 columns from step 4 on


# ------------------------------------------------------------------ METG
def _m(system, iterations, seconds, ntasks=100, workers=2):
    return Measurement(system, "stencil_1d", "busy_wait", iterations, 4, 25, 1, workers, ntasks, seconds)


def test_efficiency_and_metg_interpolation():
    # work rate = iterations * ntasks / seconds; the peak is 1000 * 100 / 0.1 = 1e6
    ms = [_m("a", 1000, [0.1]), _m("a", 100, [0.0125]), _m("a", 10, [0.004]),
          _m("b", 1000, [0.2]), _m("b", 100, [0.2])]
    eff = efficiencies(ms)
    assert [round(eff[id(m)], 3) for m in ms] == [1.0, 0.8, 0.25, 0.5, 0.05]
    got = metg("a", ms, eff)
    # between granularity 250 us (0.8) and 80 us (0.25): 0.5 is 30/55 of the way in log space
    g_hi, g_lo = 0.0125 * 2 / 100 * 1e6, 0.004 * 2 / 100 * 1e6
    want = g_hi * (g_lo / g_hi) ** (0.3 / 0.55)
    assert got.bound == "interpolated" and got.value_us == pytest.approx(want)
    assert metg("b", ms, eff).bound == "interpolated"  # exactly 50% at 4000 us, 5% below
    assert metg("a", ms[:2], eff).describe() == "<= 250.0 us"
    assert metg("c", ms, eff).describe() == "n/a"
    slow = [_m("d", 1000, [1.0])]
    assert metg("d", ms + slow, efficiencies(ms + slow)).bound == "above"


def test_measurement_figures():
    m = _m("a", 10, [0.3, 0.1, 0.2])
    assert m.median == 0.2 and m.us_per_task == pytest.approx(2000) and m.tasks_per_second == 500
    assert m.granularity_us == pytest.approx(4000)
    d = m.to_json()
    assert d["min_s"] == 0.1 and d["max_s"] == 0.3


def test_kernel_bad_input():
    with pytest.raises(ValueError, match="kernel='spin'"):
        Kernel("spin", 1)
    with pytest.raises(ValueError, match="iterations=-1"):
        Kernel("busy_wait", -1)
    with pytest.raises(ValueError, match="width=0"):
        Graph("stencil_1d", 0, 3)
    with pytest.raises(ValueError, match="pattern='ring'"):
        Graph("ring", 3, 3)
    with pytest.raises(ValueError, match=r"fraction=1\.5"):
        Graph("random_nearest", 3, 3, fraction=1.5)


# ------------------------------------------------------------- the suite
@pytest.mark.parametrize("system", [s.name for s in available_systems()])
def test_quick_suite_runs_every_installed_system(system, tmp_path, capsys):
    out = tmp_path / "out.json"
    assert suite.main(["--quick", "--systems", system, "--no-progress", "--json", str(out),
                       "--pattern", "stencil_1d", "--sweep", "--kernel", "busy_wait"]) == 0
    result = json.loads(out.read_text())
    (row,) = result["throughput"]
    assert row["system"] == system and row["ntasks"] == 4 * 20 and len(row["seconds"]) >= 1
    assert result["sweep"] and all(m["system"] == system for m in result["sweep"])
    (found,) = result["metg"]
    assert found["system"] == system
    assert result["machine"]["cores"] >= 1
    assert system in capsys.readouterr().out


def test_quick_suite_several_graphs_and_patterns(tmp_path):
    for pattern in PATTERNS:
        assert suite.main(["--quick", "--no-sweep", "--systems", "depengine-threaded", "depengine-replay",
                           "static-threads", "--no-progress", "--pattern", pattern, "--graphs", "2",
                           "--steps", "9"]) == 0


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("workers", [1, 2, 3, 40])
def test_static_threads_waits_for_what_each_task_reads_and_overwrites(pattern, workers):
    # graphs of other widths and lengths side by side; more threads than columns too
    from bench.static_threads import run_static_threads

    graphs = [Graph(pattern, 7, 23), Graph(pattern, 16, 9, index=1), Graph(pattern, 1, 5, index=2)]
    run = run_static_threads(graphs, Kernel("busy_wait", 50), workers)
    validate(graphs, run)  # raises on any output from a wrong step or column
    assert run.ntasks == sum(g.ntasks() for g in graphs)


def test_suite_bad_arguments():
    with pytest.raises(SystemExit, match="--repeats must be >= 3"):
        suite.main(["--repeats", "2", "--no-progress"])
    with pytest.raises(SystemExit):
        suite.main(["--systems", "nope", "--quick", "--no-progress"])


def test_the_suite_rejects_a_system_that_loses_an_update():
    def wrong(graphs, kernel, workers):
        run = _serial(graphs, _step_major)
        g = graphs[0]
        run.outputs[g.index][2] = task_output(g, g.steps - 2, 2, g.deps(g.steps - 2, 2),
                                              [expected_outputs(Graph(g.pattern, g.width, g.steps - 2))[j]
                                               for j in g.deps(g.steps - 2, 2)])
        return run

    with pytest.raises(ValidationError, match="first column 2"):
        suite.measure(System("wrong", wrong), [Graph("stencil_1d", 4, 6)], Kernel(), 2, 1)
