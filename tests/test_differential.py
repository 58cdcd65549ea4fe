"""Random programs give exactly the serial result on every engine kind."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import depengine as de
from depengine import _compiled
from tests.conftest import ENGINE_CONFIGS, config_id
from tests.programs import Step, random_program, run_on_engine, run_serial


@st.composite
def programs(draw, max_vars=30, max_ops=300):
    nvars = draw(st.integers(2, max_vars))
    var = st.integers(0, nvars - 1)
    nops = draw(st.integers(1, max_ops))
    fail_rate = draw(st.sampled_from([0.0, 0.0, 0.02, 0.1]))
    steps = []
    for i in range(nops):
        reads = tuple(draw(st.lists(var, max_size=4)))
        writes = tuple(draw(st.lists(var, min_size=1, max_size=2)))
        r = draw(st.floats(0, 1))
        steps.append(Step(i, reads, writes, fails=r < fail_rate, always_run=r > 1 - fail_rate / 2,
                          priority=draw(st.sampled_from([0, 0, 0, 2, -1]))))
    return nvars, steps


@pytest.mark.parametrize("config", ENGINE_CONFIGS, ids=config_id)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(program=programs())
def test_random_programs_match_serial(config, program):
    nvars, steps = program
    kind, workers = config
    with de.Engine(kind, workers=workers) as eng:
        got = run_on_engine(eng, steps, nvars)
    want = run_serial(steps, nvars)
    assert got.states == want.states
    assert got.versions == want.versions
    assert got.failed == want.failed
    assert got.values == want.values


@pytest.mark.parametrize("config", ENGINE_CONFIGS, ids=config_id)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_large_fixed_program(config, seed):
    """100 vars, 10,000 ops; the seed is in the test id so a failure can be replayed."""
    kind, workers = config
    rng = random.Random(seed)
    steps = random_program(rng, nvars=100, nops=10_000, fail_rate=0.001 * seed)
    with de.Engine(kind, workers=workers) as eng:
        got = run_on_engine(eng, steps, 100)
    want = run_serial(steps, 100)
    assert got.states == want.states, f"seed={seed}"
    assert got.versions == want.versions, f"seed={seed}"
    assert got.values == want.values, f"seed={seed}"
    assert got.failed == want.failed, f"seed={seed}"


@pytest.mark.skipif(not _compiled.COMPILED_AVAILABLE, reason="depengine._core is not built")
@pytest.mark.parametrize("config", ENGINE_CONFIGS, ids=config_id)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(program=programs(max_ops=150))
def test_the_compiled_core_and_the_python_reference_agree(config, program):
    """The same random program (failures, always_run, priorities) on both implementations: the same
    op states, versions, failed vars and values, op by op."""
    nvars, steps = program
    kind, workers = config
    results = {}
    for core in ("compiled", "python"):
        with de.Engine(kind, workers=workers, core=core) as eng:
            results[core] = run_on_engine(eng, steps, nvars)
    a, b = results["compiled"], results["python"]
    assert (a.states, a.versions, a.failed, a.values) == (b.states, b.versions, b.failed, b.values)
