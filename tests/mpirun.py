"""Running a scenario of tests/mpi_programs.py on N ranks, bounded in time, and reading its results."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def mpiexec() -> str | None:
    """The mpiexec of this environment (the mpi extra installs MPICH's next to python)."""
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


def need_mpi() -> str:
    exe = mpiexec()
    if exe is None:
        pytest.skip("mpiexec is not installed: pip install -e '.[mpi]' (make test installs it)")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip("mpi4py is not installed: pip install -e '.[mpi]' (make test installs it)")
    return exe


class Run:
    """The results of one run: ``results[rank]``, the output, and the files the ranks wrote."""

    def __init__(self, results: dict[int, object], output: str, directory: str, seconds: float) -> None:
        self.results = results
        self.output = output
        self.directory = directory
        self.seconds = seconds


def _wait_exit(pids: list[int], deadline: float) -> bool:
    """Wait until every process of ``pids`` has exited; False at the deadline."""
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                return False
        finally:
            os.close(fd)
    return True


def run_ranks(n: int, scenario: str, arg: str = "", timeout: float = 120.0, flags: tuple = (),
              env: dict | None = None) -> Run:
    """``mpiexec -n n python -m tests.mpi_programs scenario arg``; fails the test past ``timeout`` s.

    With ``n == 0`` the program runs without mpiexec: a world of one.
    Every rank process is waited for (hydra may exit before the survivors
    of a dead rank) and killed at the deadline.
    """
    directory = tempfile.mkdtemp(prefix=f"mpi-{scenario}-")
    program = [sys.executable, "-m", "tests.mpi_programs", scenario, arg]
    cmd = program if n == 0 else [need_mpi(), *flags, "-n", str(n), *program]
    full_env = dict(os.environ, MPIRESULT_DIR=directory, **(env or {}))
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        _kill_ranks(directory)
        pytest.fail(f"mpiexec -n {n} {scenario} {arg} ran past {timeout} s:\n{output[-6000:]}")
    if not _wait_exit(_pids(directory), start + timeout):  # ranks may outlive mpiexec after a rank died
        _kill_ranks(directory)
        pytest.fail(f"ranks of {scenario} still ran {timeout} s after the start:\n{output[-6000:]}")
    results = {}
    for name in os.listdir(directory):
        if name.startswith("rank") and name.endswith(".json"):
            with open(os.path.join(directory, name)) as f:
                results[int(name[4:-5])] = json.load(f)
    return Run(results, output, directory, time.monotonic() - start)


def _pids(directory: str) -> list[int]:
    out = []
    for name in os.listdir(directory):
        if name.startswith("pid"):
            with open(os.path.join(directory, name)) as f:
                out.append(int(f.read()))
    return out


def _kill_ranks(directory: str) -> None:
    for pid in _pids(directory):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
