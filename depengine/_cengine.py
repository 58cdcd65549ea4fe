"""The engine on the compiled core: the same API, with the hot path in C.

``depengine/_core.h`` describes the core.  This class starts its worker
threads (Python threads that spend their life in ``Core.work``), hands it the
hooks it calls back into Python for (capture by ``record()``/``bulk()``,
placement, and for the per-device type the GPU lanes of ``_gpu_lanes.py``),
and builds the rest of the API on it: ``push`` and ``new_var`` are the core's
own methods, the waits block in C with the GIL released.  One class serves
the three engine types; the core dispatches by type (naive: on the pushing
thread; threaded: one pool; perdevice: CPU, prioritized and copy pools, GPU
lanes).
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager

from scheduler.locks import YieldingLock

from . import _core, profiler
from ._capture import PerThread, check_bulk_size
from ._device import Device, cpu, placement
from ._engine import Engine, _live_engines
from ._gpu_lanes import GpuLanes
from ._native import configure_core
from ._op import Op, RunContext
from ._options import OP_KINDS, EngineOptions, resolve_type
from ._var import Var
from ._waits import check_timeout, raise_failures

__all__ = ["CompiledEngine"]

configure_core(_core)  # (again: under DEPENGINE_PURE_PYTHON depengine.native does not load the core)
RunContext.register(_core.Op)
Op.register(_core.Op)
Var.register(_core.Var)
_log = logging.getLogger("depengine")
_CPU = cpu()
_CODES = {"naive": _core.NAIVE, "threaded": _core.THREADED, "perdevice": _core.PERDEVICE}


class CompiledEngine(Engine):
    """An engine of any type whose dependency tracking, queues and workers are the compiled core's."""

    def __init__(self, type: str | None = None, **options) -> None:
        self.type = resolve_type(type)
        self.options = EngineOptions.create(self.type, **options)
        perdevice = self.type == "perdevice"
        hooks = (self._capture, self._place, self._route_gpu if perdevice else None,
                 self._prepare if perdevice else None, self._stream_done if perdevice else None)
        core = self._core = _core.Core(self, _CODES[self.type], hooks, _CPU, self._debug_from_env())
        self.push = core.push         # the hot path goes straight into C
        self.new_var = core.new_var
        self._take_ids = core.take_ids
        self._reset(forked=False)
        self._threads: list[threading.Thread] = []
        self._lanes = GpuLanes(self._run_lane, self.options.gpu_streams, lambda pool: None,
                               lambda: core.prof, thread_init=core.mark_worker) if perdevice else None
        if self.type != "naive":
            self._start_pool(0, self.options.workers, "depengine-cpu")
        if perdevice:
            if self.options.prioritized_workers:
                self._start_pool(1, self.options.prioritized_workers, "depengine-prio")
            else:
                core.set_prio_pool(False)
            self._start_pool(2, self.options.copy_workers, "depengine-copy")
        core.prof = profiler.active_recorder()
        _live_engines.add(self)

    def _start_pool(self, index: int, size: int, name: str) -> None:
        for i in range(size):
            t = threading.Thread(target=self._core.work, args=(index,), name=f"{name}-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    @staticmethod
    def _debug_from_env() -> bool:
        import os

        return bool(os.environ.get("DEPENGINE_DEBUG"))

    def _reset(self, forked: bool) -> None:
        self._guard = YieldingLock()
        self._graph = None
        self._bulks = PerThread()
        if forked:
            self._core.after_fork()

    @contextmanager
    def bulk(self, size: int = 64):
        """Accepted for the same programs as the reference engine's ``bulk``; ops pass straight to the core.

        Here a push costs less than gathering it in Python and running it in a
        Python loop would (bench.replay: about 1.0 against 1.9 us per empty op),
        so the block changes nothing but the cost: each op is pushed, ordered and
        recorded on its own, as the contract of ``bulk`` already promises.
        """
        check_bulk_size(size)
        yield

    # ------------------------------------------------ state the shared code reads
    @property
    def _capturing(self) -> int:
        return self._core.capturing

    @_capturing.setter
    def _capturing(self, value: int) -> None:
        self._core.capturing = value

    @property
    def _prof(self):
        return self._core.prof

    @_prof.setter
    def _prof(self, recorder) -> None:
        if recorder is None:
            self._core.drain()  # records of native ops that finished without the GIL
        self._core.prof = recorder

    @property
    def _failed_vars(self) -> list:
        return self._core.failed_vars() if self._core.nfailed else []

    @property
    def _unreported(self) -> list:
        return self._core.unreported

    @property
    def _seq(self) -> int:
        return self._core.seq

    def _backlog(self) -> int:
        return self._core.current

    def _drain_records(self, wait: float = 0.0) -> bool | None:
        return self._core.drain(wait)

    @property
    def closed(self) -> bool:
        return self._core.closed

    # --------------------------------------------------------------- hooks
    def _in_op(self) -> bool:
        return self._core.in_op()

    def _place(self, device, kind, is_async):
        if self.type != "perdevice":
            return super()._place(device, kind, is_async)
        device, kind = placement(device, kind, OP_KINDS)
        if device.type == "gpu":
            self._lanes.ensure(device.index)
            self._core.gpu_used = 1
        return device, kind

    def _plan_submit(self):
        return None if self.type == "naive" else self._core.submit

    def threads(self) -> list[threading.Thread]:
        lanes = [t for pool in self._lanes.pools() for t in pool.threads] if self._lanes else []
        return self._threads + lanes

    def gpu_runtime(self, device):
        if self._lanes is None:
            return super().gpu_runtime(device)
        if not isinstance(device, Device) or device.type != "gpu":
            raise TypeError(f"device={device!r} must be de.gpu(i)")
        self._lanes.ensure(device.index)
        self._core.gpu_used = 1
        return self._lanes.rt

    # -------------------------------------------------- GPU (perdevice only)
    def _route_gpu(self, op) -> None:
        self._lanes.route(op).submit(op)

    def _run_lane(self, op, pool) -> list:
        """A GPU lane's thread: stream waits, the op (in C), then its successors to their pools."""
        self._lanes.stream_waits(op, op.stream)
        self._core.dispatch(self._core.execute(op))
        return []

    def _prepare(self, op):
        """Before a CPU op that touches GPU work (the core asks): stream or host waits; an error fails it."""
        if op.kind == "copy":
            self._lanes.assign_d2h(op)
        return self._lanes.before(op)

    def _stream_done(self, op) -> None:
        self._lanes.record(op)

    def _wait_gpu_for_var(self, var) -> None:
        if self._lanes is not None and self._lanes.used:
            self._lanes.wait_var(var)

    def _wait_gpu_all(self) -> None:
        if self._lanes is not None and self._lanes.used:
            self._lanes.wait_all()

    # --------------------------------------------------------------- waits
    def _check_var(self, v, role: str) -> None:
        if v.__class__ is not _core.Var:
            raise TypeError(f"{role}: {v!r} is not a Var (create vars with Engine.new_var)")
        if v._engine is not self:
            raise ValueError(f"{role}: var {v.name!r} belongs to another engine ({v._engine!r})")

    def _wait_for_var(self, var, timeout: float | None) -> None:
        self._check_var(var, "var")
        check_timeout(timeout)
        timed_out, failure = self._core.wait_var(var, timeout)
        if timed_out:
            raise TimeoutError(f"wait_for_var({var.name!r}) timed out after {timeout}s")
        if failure is not None:
            raise failure
        self._wait_gpu_for_var(var)

    def _wait_all(self, timeout: float | None) -> None:
        check_timeout(timeout)
        if not self._core.wait_all(timeout):
            raise TimeoutError(f"wait_all() timed out after {timeout}s; ops are still pending")
        self._wait_gpu_all()
        raise_failures(self._core.take_failures())

    def close(self) -> None:
        """Finish every pending op, join every thread, log unreported failures."""
        if self._capturing:
            self._flush_bulk()
        core = self._core
        if not core.begin_close():
            return
        core.finish()
        core.stop()
        me = threading.get_ident()
        for t in self._threads:
            if t.ident != me:
                t.join()
        if self._lanes is not None:
            self._lanes.stop()
        for exc in core.take_failures():
            _log.error("depengine: a failure no wait reported, at close of %r", self,
                       exc_info=(type(exc), exc, exc.__traceback__))

    def __repr__(self) -> str:
        core = self._core
        state = "closed" if core.closed else "closing" if core.closing else "open"
        gpus = f" {self._lanes.describe()}" if self._lanes is not None and self._lanes.gpus else ""
        return (f"<CompiledEngine type={self.type!r} workers={self.options.workers} pending={core.pending} "
                f"failed_vars={core.nfailed} {state}{gpus}>")
