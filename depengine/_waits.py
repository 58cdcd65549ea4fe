"""Waiting: ``Engine.wait_for_var()``, ``Engine.wait_all()`` and ``Engine.close()``.

A mixin of :class:`~depengine._engine.Engine`.  ``wait_for_var`` parks a
:class:`~depengine._op.Waiter` on the var, woken by ``_wake_waiters`` when
the var's version reaches the target; ``wait_all`` closes the current epoch
(the count of ops pushed so far) and waits for every closed epoch's event.
Both flush this thread's bulk first, report failures as docs/SEMANTICS.md says,
and record themselves when profiling.
"""

from __future__ import annotations

import logging
import threading
import time

from ._errors import DeadlockError, VarDeletedError
from ._op import Epoch, Waiter
from ._var import NEVER_CLEARED, Var

__all__ = ["Waits", "check_timeout", "raise_failures"]

_log = logging.getLogger("depengine")


class Waits:
    """``wait_for_var``, ``wait_all`` and ``close``, and the wake-up of var waiters."""

    def wait_for_var(self, var: Var, timeout: float | None = None) -> None:
        """Return once every write to ``var`` pushed before this call has completed.

        Raises the write's exception if it failed (and clears the failure for
        ops pushed after this call), ``TimeoutError`` if ``timeout`` seconds
        pass first, ``DeadlockError`` if called from inside an op while a
        write is pending.
        """
        if self._capturing:
            self._flush_bulk()
        prof = self._prof
        if prof is None:
            return self._wait_for_var(var, timeout)
        start = time.perf_counter_ns()
        outcome = "raised"
        try:
            self._wait_for_var(var, timeout)
            outcome = "ok"
        finally:
            prof.waited(f"wait_for_var({getattr(var, 'name', var)!r})", start, outcome)

    def _wait_for_var(self, var: Var, timeout: float | None) -> None:
        self._check_var(var, "var")
        check_timeout(timeout)
        with self._guard:
            if var._deleted_at is not None:
                raise VarDeletedError(f"wait_for_var on var {var.name!r}, deleted at push #{var._deleted_at}")
            if var._pending_writes:
                if self._in_op():
                    raise DeadlockError(
                        f"wait_for_var({var.name!r}) inside an op: {var._pending_writes} write(s) "
                        "to it are pending and could wait for this very op"
                    )
                waiter = Waiter(var.version + var._pending_writes)
                if var._waiters is None:
                    var._waiters = [waiter]
                else:
                    var._waiters.append(waiter)
                failure = None
            else:
                waiter = None
                failure = var._failure if self._seq < var._clear_seq else None
        if waiter is not None:
            try:
                fired = waiter.event.wait(timeout)
            except BaseException:  # Ctrl-C: the waiter goes with the wait
                self._forget_waiter(var, waiter)
                raise
            if not fired and self._forget_waiter(var, waiter):
                raise TimeoutError(f"wait_for_var({var.name!r}) timed out after {timeout}s")
            failure = waiter.failure
        if failure is not None:
            self._report_var_failure(var, failure)
            raise failure
        self._wait_gpu_for_var(var)

    def wait_all(self, timeout: float | None = None) -> None:
        """Return once every op pushed before this call has completed.

        Raises the oldest failure no wait has raised yet (with a note listing
        any others), then clears every failed var so that a second call
        returns normally.  ``TimeoutError`` changes nothing.
        """
        if self._capturing:
            self._flush_bulk()
        prof = self._prof
        if prof is None:
            return self._wait_all(timeout)
        start = time.perf_counter_ns()
        outcome = "raised"
        try:
            self._wait_all(timeout)
            outcome = "ok"
        finally:
            prof.waited("wait_all()", start, outcome)

    def _wait_all(self, timeout: float | None) -> None:
        check_timeout(timeout)
        with self._guard:
            if self._epoch.count:
                self._close_epoch()
            pending = list(self._closed_epochs)
            if pending and self._in_op():
                raise DeadlockError("wait_all() inside an op: it would wait for that op itself")
        deadline = None if timeout is None else time.monotonic() + timeout
        for ep in pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not ep.event.wait(left):
                raise TimeoutError(f"wait_all() timed out after {timeout}s; ops are still pending")
        self._wait_gpu_all()
        with self._guard:
            failures = self._unreported
            self._unreported = []
            seq = self._seq
            for v in self._failed_vars:
                if v._clear_seq > seq:
                    v._clear_seq = seq
        raise_failures(failures)

    def close(self) -> None:
        """Finish every pending op, join every thread, log unreported failures."""
        if self._capturing:
            self._flush_bulk()
        with self._guard:
            if self._closing:
                return
            if self._in_op():
                raise DeadlockError("close() inside an op: the engine cannot join its own thread")
            self._closing = True
        while True:  # ops may push more ops while the engine drains
            with self._guard:
                epoch = self._epoch
                if not epoch.count and not self._closed_epochs:
                    self._closed = True
                    break
                if epoch.count:
                    self._close_epoch()
                pending = list(self._closed_epochs)
            for ep in pending:
                ep.event.wait()
        self._stop()
        for exc in self._unreported:
            _log.error("depengine: a failure no wait reported, at close of %r", self,
                       exc_info=(type(exc), exc, exc.__traceback__))
        self._unreported = []

    def _forget_waiter(self, var: Var, waiter: Waiter) -> bool:
        """Take an unfired waiter off its var; False if it fired meanwhile."""
        with self._guard:
            if waiter.event.is_set():
                return False
            var._waiters.remove(waiter)
            if not var._waiters:
                var._waiters = None
            return True

    def _close_epoch(self) -> None:
        """Start a new epoch; the current one fires its event once its ops finish (lock held)."""
        epoch = self._epoch
        epoch.event = threading.Event()
        self._epoch = Epoch()
        self._closed_epochs.append(epoch)

    def _report_var_failure(self, var: Var, exc: BaseException) -> None:
        """``exc`` is being raised to a waiter of ``var``: mark it reported, clear it."""
        with self._guard:
            try:
                self._unreported.remove(exc)
            except ValueError:
                pass
            if var._failure is exc and var._clear_seq == NEVER_CLEARED:
                var._clear_seq = self._seq

    def _wake_waiters(self, v: Var) -> None:
        """Fire the ``wait_for_var`` calls whose target write just completed (lock held)."""
        keep = []
        for w in v._waiters:
            if v.version >= w.target:
                w.failure = v._failure
                w.event.set()
            else:
                keep.append(w)
        v._waiters = keep or None


def raise_failures(failures: list) -> None:
    """What wait_all raises: the oldest failure, with a note naming the others (none: return)."""
    if failures:
        first = failures[0]
        if len(failures) > 1:
            more = "; ".join(f"{type(e).__name__}: {e}" for e in failures[1:6])
            first.add_note(f"depengine: {len(failures) - 1} more failure(s) in this wait_all: {more}")
        raise first


def check_timeout(timeout) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout={timeout!r} must be a number of seconds or None")
    if timeout < 0:
        raise ValueError(f"timeout={timeout!r} must be >= 0")
