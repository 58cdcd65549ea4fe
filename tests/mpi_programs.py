"""Programs that every rank runs under ``mpiexec`` (and the test process runs as a world of one).

``python -m tests.mpi_programs SCENARIO [ARG]`` runs a scenario on every
rank and writes each rank's result as JSON to ``$MPIRESULT_DIR/rank{r}.json``
(or prints ``MPIRESULT {json}``), which tests/test_mpi_ranks.py reads.  The same
functions run in the test process itself, where the world has one rank.

Random programs (``random``): vars with random owners and int64 buffers,
steps that read and write random vars (a written var becomes a mix of its
old value, the values read and the step's index, as in tests/programs.py),
some failing, some ``always_run``, some with ``execute_on``.  Their outcome
(every var's value or failure, every step's state) must equal the
single-process engine's.
"""

from __future__ import annotations

import json
import os
import random
import sys
from dataclasses import dataclass

import numpy as np

import depengine as de
from tests.programs import StepFailed, mix


@dataclass(frozen=True)
class MStep:
    index: int
    reads: tuple[int, ...]
    writes: tuple[int, ...]
    fails: bool
    always_run: bool
    execute_on: int | None  # None: on the owner of the writes
    priority: int


@dataclass(frozen=True)
class MProgram:
    seed: int
    owners: tuple[int, ...]
    steps: tuple[MStep, ...]


def random_mpi_program(seed: int, size: int, nvars: int | None = None, nops: int | None = None) -> MProgram:
    """A random program for ``size`` ranks; the same seed gives the same program on every rank."""
    rng = random.Random(seed)
    nvars = nvars or rng.randint(2, 12)
    nops = nops or rng.randint(1, 60)
    owners = tuple(rng.randrange(size) for _ in range(nvars))
    fail_rate = rng.choice((0.0, 0.05, 0.15))
    steps = []
    for i in range(nops):
        reads = tuple(rng.sample(range(nvars), rng.randint(0, min(3, nvars))))
        writes = tuple(rng.sample(range(nvars), rng.randint(0 if rng.random() < 0.1 else 1, min(2, nvars))))
        mixed = len({owners[w] for w in writes}) != 1
        execute_on = rng.randrange(size) if mixed or rng.random() < 0.2 else None
        fails, always_run = rng.random() < fail_rate, rng.random() < fail_rate / 2
        steps.append(MStep(i, reads, writes, fails, always_run, execute_on, rng.choice((0, 0, 1, -1))))
    return MProgram(seed, owners, tuple(steps))


def _body(step: MStep, bufs: list[np.ndarray]):
    writes = sorted(set(step.writes))
    reads = [r for r in step.reads if r not in step.writes]

    def fn(ctx):
        if step.fails:
            raise StepFailed(step.index)
        inputs = [int(bufs[r][0]) for r in reads]
        for w in writes:
            bufs[w][0] = mix(int(bufs[w][0]), inputs, step.index)
    return fn


def run_program(eng, prog: MProgram) -> dict:
    """Push ``prog`` on ``eng`` (an mpi engine, or any local one); its outcome on this rank."""
    is_mpi = eng.type == "mpi"
    bufs = [np.zeros(1, dtype=np.int64) for _ in prog.owners]
    if is_mpi:
        vs = [eng.new_var(f"x{i}", owner=o, buffer=bufs[i]) for i, o in enumerate(prog.owners)]
    else:
        vs = [eng.new_var(f"x{i}") for i in range(len(prog.owners))]
    ops = []
    for s in prog.steps:
        extra = {"execute_on": s.execute_on} if is_mpi else {}  # a step without writes always has one
        ops.append(eng.push(_body(s, bufs), reads=[vs[r] for r in s.reads], writes=[vs[w] for w in s.writes],
                            always_run=s.always_run, priority=s.priority, name=f"step{s.index}", **extra))
    outcome = []
    for i, v in enumerate(vs):
        try:
            value = eng.fetch(v, timeout=60)[0] if is_mpi else _local_value(eng, v, bufs[i])
            outcome.append(["value", int(value)])
        except StepFailed as exc:
            outcome.append(["failed", type(exc).__name__, str(exc)])
    for _ in range(2):
        try:
            eng.wait_all(timeout=60)
        except StepFailed:
            pass
    states = {s.index: op.state for s, op in zip(prog.steps, ops, strict=True) if op.state != "remote"}
    return {"vars": outcome, "states": states}


def _local_value(eng, v, buf) -> int:
    eng.wait_for_var(v, timeout=60)
    return buf[0]


def reference(prog: MProgram) -> dict:
    """The outcome of ``prog`` on the single-process threaded engine."""
    with de.Engine("threaded", workers=2) as eng:
        return run_program(eng, prog)


def scenario_random(arg: str) -> tuple[int, dict]:
    """Random programs from seeds ``first:count``; every rank returns its outcomes."""
    first, count = (int(x) for x in arg.split(":"))
    with de.Engine("mpi", workers=2) as eng:
        return eng.rank, {seed: run_program(eng, random_mpi_program(seed, eng.size))
                          for seed in range(first, first + count)}


def scenario_rules(arg: str) -> tuple[int, dict]:
    from mpi4py import MPI

    from tests import mpi_rules

    return MPI.COMM_WORLD.Get_rank(), mpi_rules.run_all(arg or None)


def scenario_trace(arg: str) -> tuple[int, dict]:
    """A profiled ring stencil; rank 0 merges every rank's profile and saves it in $MPIRESULT_DIR."""
    with de.Engine("mpi", workers=2) as eng:
        n = 4 * eng.size
        cols = [np.full(64, float(i)) for i in range(n)]
        vs = [eng.new_var(f"c{i}", owner=i % eng.size, buffer=cols[i]) for i in range(n)]
        with de.profile() as prof:
            for _ in range(3):
                for i in range(n):
                    def smooth(ctx, i=i):
                        cols[i][:] = (cols[i - 1] + cols[i] + cols[(i + 1) % n]) / 3
                    eng.push(smooth, reads=[vs[i - 1], vs[(i + 1) % n]], writes=[vs[i]], name="smooth")
            eng.wait_all(60)
        merged = eng.gather_trace(prof, timeout=60)
        result = {"traffic": eng.traffic()}
        if eng.rank == 0:
            result["transfers"] = merged.transfers
            result["ops"] = len(merged.ops)
            merged.save(os.path.join(os.environ.get("MPIRESULT_DIR", "."), "merged.json"))
        return eng.rank, result


def scenario_unclosed(arg: str) -> tuple[int, dict]:
    """An engine the program never closes: closed at exit, before MPI is finalized."""
    eng = de.Engine("mpi", workers=2)
    buf = np.zeros(2)
    v = eng.new_var("v", owner=eng.size - 1, buffer=buf)
    eng.push(lambda ctx: buf.fill(3.0), writes=[v])
    return eng.rank, {"value": float(eng.fetch(v)[0])}


SCENARIOS = {"random": scenario_random, "rules": scenario_rules, "trace": scenario_trace,
             "unclosed": scenario_unclosed}


def main(argv: list[str]) -> int:
    name, arg = argv[0], (argv[1] if len(argv) > 1 else "")
    out = os.environ.get("MPIRESULT_DIR")
    if out:  # the test waits for every rank process, even one that outlives mpiexec
        from mpi4py import MPI

        with open(os.path.join(out, f"pid{MPI.COMM_WORLD.Get_rank()}"), "w") as f:
            f.write(str(os.getpid()))
    if name in SCENARIOS:
        rank, result = SCENARIOS[name](arg)
    else:
        from tests import mpi_hostile

        rank, result = mpi_hostile.SCENARIOS[name](arg)
    if out:  # one file per rank: lines of several ranks may interleave on a shared stdout
        from tests.mpi_hostile import write_result

        write_result(out, rank, result)
    else:
        print("MPIRESULT " + json.dumps({"rank": rank, "result": result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
