"""Seeing a message at once while the rank's engine has nothing to run.

The progress thread (transport.py) of a rank whose engine is idle and that
expects a message calls ``Core.wait_message`` (depengine/_core_queue.c): a C
loop that calls ``MPI_Iprobe`` without the GIL until a message is there, the
engine has an op to run (or a worker runs one), the thread is kicked, or the
window ends.  So an idle rank sees a message within a microsecond, as a
blocking receive would, and:

- it never spins while its engine works: a worker takes arrived messages
  itself after each op (``poll_after_op``), and the thread sleeps;
- it holds no GIL while it spins, so a worker woken by a completed receive
  takes the GIL at once (a Python polling loop made it wait 50-90 µs);
- it spins at most ``DEPENGINE_MPI_SPIN_US`` microseconds (default 2000)
  after the last message or new transfer, then falls back to sleeping polls;
  ``0`` never spins.

``MPI_Iprobe`` is found by address in the MPI library mpi4py loaded, and
checked once on ``MPI_PROC_NULL`` (a probe that must find its empty message
at once).  Where that fails (another MPI's handle layout, the pure-Python
engine, a local engine without a compiled core), the thread polls as before.
"""

from __future__ import annotations

import ctypes
import logging
import os

import numpy as np

__all__ = ["Spinner", "spin_window"]

_log = logging.getLogger("depengine")


def spin_window() -> float:
    """Seconds a rank may spin after its last message: ``DEPENGINE_MPI_SPIN_US``, default 2000 µs."""
    text = os.environ.get("DEPENGINE_MPI_SPIN_US", "").strip()
    try:
        us = float(text) if text else 2000.0
    except ValueError:
        raise ValueError(f"DEPENGINE_MPI_SPIN_US={text!r} must be a number of microseconds") from None
    if not us >= 0:
        raise ValueError(f"DEPENGINE_MPI_SPIN_US={text!r} must be at least 0")
    return us * 1e-6


def _mpi_libraries() -> list[str]:
    """Paths of the loaded shared libraries named libmpi*, most likely first."""
    found = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rsplit(None, 1)[-1] if "/" in line else ""
                name = os.path.basename(path)
                if name.startswith("libmpi") and ".so" in name and path not in found:
                    found.append(path)
    except OSError:
        pass
    found.sort(key=lambda p: not os.path.basename(p).startswith("libmpi.so"))
    return found


def _iprobe(MPI, comm):
    """(address of MPI_Iprobe, handle size) once a probe on MPI_PROC_NULL through it worked, or None."""
    size = MPI._sizeof(MPI.Comm)
    if size not in (4, 8) or MPI._sizeof(MPI.Status) > 64:
        return None
    handle_type = ctypes.c_int if size == 4 else ctypes.c_void_p
    for lib in [*_mpi_libraries(), None]:
        try:
            fn = ctypes.CDLL(lib).MPI_Iprobe
        except (OSError, AttributeError):
            continue
        fn.argtypes = [ctypes.c_int, ctypes.c_int, handle_type, ctypes.POINTER(ctypes.c_int), ctypes.c_void_p]
        fn.restype = ctypes.c_int
        flag, status = ctypes.c_int(0), ctypes.create_string_buffer(64)
        try:
            rc = fn(MPI.PROC_NULL, MPI.ANY_TAG, MPI._handleof(comm), ctypes.byref(flag), status)
        except (ctypes.ArgumentError, OverflowError):
            continue
        if rc == 0 and flag.value == 1:
            return ctypes.cast(fn, ctypes.c_void_p).value, size
    return None


class Spinner:
    """``wait(max_s)``: spin on ``comm`` without the GIL while ``core`` is idle (see the module)."""

    def __init__(self, MPI, comm, core) -> None:
        self.window = spin_window()
        self.kick = np.zeros(1, np.int32)  # set by Transport.kick: stop spinning, there is work
        self.pushes = np.zeros(1, np.int64)  # the engine's push count: while it moves, a thread pushes
        self._args = None
        if core is None or self.window <= 0 or not hasattr(core, "wait_message"):
            return
        probe = _iprobe(MPI, comm)
        if probe is None:
            _log.info("depengine: MPI_Iprobe not found by address; the MPI progress thread only polls")
            return
        self._core = core
        handle = (ctypes.c_int32 if probe[1] == 4 else ctypes.c_int64)(MPI._handleof(comm)).value  # signed
        self._args = (probe[0], handle, probe[1], MPI.ANY_SOURCE, MPI.ANY_TAG,
                      self.kick.ctypes.data, self.pushes.ctypes.data)

    def disable(self) -> None:
        self._args = None

    @property
    def usable(self) -> bool:
        return self._args is not None

    def has_message(self) -> bool:
        """One probe with the GIL held: is a data message waiting?  (True when the probe is unusable.)"""
        if self._args is None:
            return True
        return self._core.has_message(*self._args[:5]) != 0

    def wait(self, spin_s: float, max_s: float) -> tuple[int, float]:
        """Wait at most ``max_s``, spinning at most ``spin_s`` of it; (why, seconds spun).  why: 1 a
        message is there; 2 kicked; 3 ``max_s`` passed; 4 ``spin_s`` spent; <0 an MPI error."""
        why, spun = self._core.wait_message(*self._args, int(spin_s * 1e9), int(max_s * 1e9))
        return why, spun * 1e-9
