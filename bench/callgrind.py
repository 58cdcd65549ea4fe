"""Instructions per op under callgrind: deterministic where wall time on a shared VM is not.

``instructions_per_op(module, child_args, small, large, ops_per_unit)`` runs
``python -m <module> --child ... --steps N`` under valgrind's callgrind at
two sizes and returns the difference per op, so interpreter start-up and
imports cancel out.  The compiled core's idle workers spin before they sleep
(``DEPENGINE_SPIN_US``); spinning executes instructions in proportion to wall
time, not to work, so the children run with it off.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

__all__ = ["available", "instructions_per_op"]


def available() -> bool:
    return shutil.which("valgrind") is not None


def instructions_per_op(module: str, child_args: list[str], small: int, large: int,
                        ops_per_unit: int) -> float:
    """Instructions per op between ``--steps small`` and ``--steps large`` runs of the child."""
    counts = []
    for steps in (small, large):
        out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                              sys.executable, "-m", module, *child_args, "--steps", str(steps)],
                             capture_output=True, text=True, check=True,
                             env={**os.environ, "DEPENGINE_SPIN_US": "0", "OPENBLAS_NUM_THREADS": "1"})
        line = next(ln for ln in out.stderr.splitlines() if "Collected" in ln)
        counts.append(int(line.split()[-1]))
    return (counts[1] - counts[0]) / ((large - small) * ops_per_unit)
