"""Random read/write programs and their serial meaning, for differential tests.

A program is a list of :class:`Step`.  Each step reads some vars and writes
one or two; a written var becomes a deterministic mix of its old value, the
values read and the step's index.  Some steps raise.  ``run_serial`` is the
reference: plain Python, in push order, with the failure rules of
docs/SEMANTICS.md.  ``run_on_engine`` pushes the same steps to an engine.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

MASK = (1 << 61) - 1


@dataclass(frozen=True)
class Step:
    index: int
    reads: tuple[int, ...]
    writes: tuple[int, ...]
    fails: bool = False
    always_run: bool = False
    priority: int = 0


class StepFailed(Exception):
    pass


def mix(old: int, inputs: list[int], index: int) -> int:
    acc = (old * 1_000_003 + index) & MASK
    for x in inputs:
        acc = (acc * 31 + x * 7 + 1) & MASK
    return acc


def random_program(rng: random.Random, nvars: int, nops: int, fail_rate: float = 0.0) -> list[Step]:
    steps = []
    for i in range(nops):
        reads = tuple(rng.sample(range(nvars), rng.randint(0, min(4, nvars))))
        writes = tuple(rng.sample(range(nvars), rng.randint(1, min(2, nvars))))
        steps.append(Step(
            i, reads, writes,
            fails=rng.random() < fail_rate,
            always_run=rng.random() < fail_rate / 2,
            priority=rng.choice((0, 0, 0, 1, -1)),
        ))
    return steps


@dataclass
class Outcome:
    values: list[int]
    versions: list[int]
    failed: list[bool]      # var's last write failed or was skipped
    states: list[str]       # per step: done / failed / skipped


def run_serial(steps: list[Step], nvars: int) -> Outcome:
    values = [0] * nvars
    versions = [0] * nvars
    failed = [False] * nvars
    states = []
    for s in steps:
        named = set(s.reads) | set(s.writes)
        writes = set(s.writes)
        reads = [r for r in s.reads if r not in writes]
        if any(failed[v] for v in named) and not s.always_run:
            states.append("skipped")
            bad = True
        elif s.fails:
            states.append("failed")
            bad = True
        else:
            states.append("done")
            bad = False
            inputs = [values[r] for r in reads]
            for w in sorted(writes):
                values[w] = mix(values[w], inputs, s.index)
        for w in writes:
            versions[w] += 1
            failed[w] = bad
    return Outcome(values, versions, failed, states)


def run_on_engine(engine, steps: list[Step], nvars: int) -> Outcome:
    vs = [engine.new_var(f"x{i}") for i in range(nvars)]
    values = [0] * nvars

    def body(step: Step):
        writes = set(step.writes)
        reads = [r for r in step.reads if r not in writes]

        def fn(ctx):
            if step.fails:
                raise StepFailed(step.index)
            inputs = [values[r] for r in reads]
            for w in sorted(writes):
                values[w] = mix(values[w], inputs, step.index)
        return fn

    ops = [
        engine.push(body(s), reads=[vs[r] for r in s.reads], writes=[vs[w] for w in s.writes],
                    always_run=s.always_run, priority=s.priority, name=f"step{s.index}")
        for s in steps
    ]
    try:
        engine.wait_all(timeout=120)
    except StepFailed:
        pass
    engine.wait_all(timeout=120)  # everything reported: returns normally
    return Outcome(
        values,
        [v.version for v in vs],
        [op_failed(v) for v in vs],
        [op.state for op in ops],
    )


def op_failed(v) -> bool:
    # failed for ops pushed before the wait_all that cleared it
    return v._failure is not None
