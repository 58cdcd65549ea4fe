"""Seeing a message at once while the rank has nothing else to do.

The progress thread (transport.py) waits in ``Core.wait_message``
(depengine/_core_mpi.c), without the GIL:

- while the engine is idle (no op queued, no worker running one) and no
  thread pushes (the engine's push count stands still), it calls
  ``MPI_Iprobe`` in a loop: a message is seen within a microsecond, as a
  blocking receive would see it, and a worker woken by the receive takes the
  GIL at once (the Python polling loop this replaces made it wait 50-90 µs);
- while a worker runs an op it sleeps until a worker runs out of ops: a
  worker takes the messages that arrived itself after each op
  (``poll_after_op``, which probes through ``has_message``, one call in C);
- while a thread pushes it looks again every 200 µs, leaving the core to the
  pusher;
- it spins at most ``DEPENGINE_MPI_SPIN_US`` microseconds (default 2000)
  after the last message, new receive or wake-up, then falls back to
  sleeping polls (an eighth of the time waited); ``0`` never spins;
- a kick (``Transport.kick``: new work to watch) wakes it at once.

``has_message`` holds the GIL for its one ``MPI_Iprobe`` (short: MPICH's
global lock is rarely contended for long).

So a rank busy-polls only when it has nothing else to run, for a bounded
time, as MPI's own blocking calls would.  ``MPI_Iprobe`` is found by address
through mpi4py's own extension (else in the MPI library mapped into the
process) and checked once on ``MPI_PROC_NULL`` (a probe that must find its
empty message at once).  Where that fails (another handle layout), on the
Python engine and over a naive local engine (whose ops run on the pushing
thread, which the C loop cannot see), the thread only polls.
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


def _library(MPI, comm):
    """(the MPI library mpi4py loaded, handle size) once a probe on MPI_PROC_NULL through its
    MPI_Iprobe worked (the handle layout is the one the C calls assume), or None."""
    size = MPI._sizeof(MPI.Comm)
    if size not in (4, 8) or MPI._sizeof(MPI.Status) > 64:
        return None
    handle_type = ctypes.c_int if size == 4 else ctypes.c_void_p
    # mpi4py's own extension first (its symbols resolve to the library it loaded, and to a PMPI tool
    # preloaded before it), then the libmpi* mapped into the process
    first = [MPI.__file__] if getattr(MPI, "__file__", None) else []
    for path in [*first, *_mpi_libraries(), None]:
        try:
            lib = ctypes.CDLL(path)
            fn = lib.MPI_Iprobe
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
            return lib, size
    return None


def _signed(handle: int, size: int) -> int:
    return (ctypes.c_int32 if size == 4 else ctypes.c_int64)(handle).value


class Spinner:
    """The progress thread's wait in C (``wait``, see the module), and a worker's look after
    each op (``has_message``: one probe in C, GIL held)."""

    def __init__(self, MPI, comm, core) -> None:
        self.window = spin_window()
        self.kick = np.zeros(1, np.int32)  # set by Transport.kick: stop spinning, there is work
        self.pushes = np.zeros(1, np.int64)  # the engine's push count: while it moves, a thread pushes
        self._args = None
        self.lane = None     # the transport's MpiLane (lane.py), polled while waiting
        self.library = None  # the MPI library mpi4py loaded, once a probe through it worked
        if core is None or not hasattr(core, "wait_message"):
            return
        found = _library(MPI, comm)
        if found is None:
            _log.info("depengine: MPI_Iprobe not found by address; the MPI progress thread only polls")
            return
        lib, size = found
        self.library = lib
        if self.window <= 0:
            return
        self._core = core
        probe = ctypes.cast(lib.MPI_Iprobe, ctypes.c_void_p).value
        self._args = (probe, _signed(MPI._handleof(comm), size), size, MPI.ANY_SOURCE, MPI.ANY_TAG,
                      self.kick.ctypes.data, self.pushes.ctypes.data)

    def disable(self) -> None:
        self._args = None

    @property
    def usable(self) -> bool:
        return self._args is not None

    def has_message(self) -> bool:
        """One probe with the GIL held: is a data message waiting?  (True when it cannot tell.)"""
        args = self._args
        if args is None:
            return True
        return self._core.has_message(*args[:5]) != 0

    def wake(self) -> None:
        """Wake the thread asleep in ``wait`` (its kick word set first)."""
        if self._args is not None:
            self._core.wake_waiter()

    def wait(self, spin_s: float, max_s: float) -> tuple[int, float]:
        """Wait at most ``max_s``, spinning at most ``spin_s`` of it; (why, seconds spun).  why: 1 a
        message is there; 2 kicked; 3 ``max_s`` passed; 4 ``spin_s`` spent; <0 an MPI error."""
        why, spun = self._core.wait_message(*self._args, int(spin_s * 1e9), int(max_s * 1e9), self.lane)
        return why, spun * 1e-9
