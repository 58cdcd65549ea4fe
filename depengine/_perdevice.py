"""The per-device engine: CPU pools, copy workers and GPU streams under one dependency engine.

Pools (each a :class:`scheduler.WorkerPool` with its own priority queue):

- CPU ``normal`` (and ``async``) ops: ``workers`` threads;
- CPU ``prioritized`` ops: ``prioritized_workers`` threads (0: they share the
  normal pool, ranked by priority);
- CPU ``copy`` ops: ``copy_workers`` threads; a copy that reads GPU data gets
  that GPU's device-to-host stream as ``ctx.stream``;
- per GPU, the lanes of ``_gpu_lanes.GpuLanes`` (which also documents how
  GPU work is ordered across streams and with the host).
"""

from __future__ import annotations

import threading

from scheduler import WorkerPool

from ._device import Device, cpu, placement
from ._engine import Engine
from ._gpu_lanes import GpuLanes
from ._op import Op
from ._options import OP_KINDS

__all__ = ["PerDeviceEngine"]

_CPU = cpu()


class PerDeviceEngine(Engine):
    """CPU worker pools and GPU streams, scheduled by one dependency engine."""

    type = "perdevice"

    def _start(self) -> None:
        self._pool_lock = threading.Lock()
        self._worker_ids: frozenset[int] = frozenset()
        self._cpu = self._new_pool(self.options.workers, "depengine-cpu")
        self._prio: WorkerPool | None = None
        self._copy: WorkerPool | None = None
        self._gpus = GpuLanes(self._run_in, self.options.gpu_streams, self._add_pool_threads,
                              lambda: self._prof)

    def _new_pool(self, size: int, name: str) -> WorkerPool:
        pool = WorkerPool(self._run_in, size, name=name)
        self._add_pool_threads(pool)
        return pool

    def _add_pool_threads(self, pool: WorkerPool) -> None:
        self._worker_ids = self._worker_ids | pool.thread_ids

    def _plan_submit(self):
        return self._cpu.submit

    def threads(self) -> list[threading.Thread]:
        pools = [p for p in (self._cpu, self._prio, self._copy) if p is not None] + self._gpus.pools()
        return [t for pool in pools for t in pool.threads]

    def gpu_runtime(self, device):
        if not isinstance(device, Device) or device.type != "gpu":
            raise TypeError(f"device={device!r} must be de.gpu(i)")
        self._gpus.ensure(device.index)
        return self._gpus.rt

    # ------------------------------------------------------------- placement
    def _place(self, device, kind, is_async):
        device, kind = placement(device, kind, OP_KINDS)
        if device.type == "gpu":
            self._gpus.ensure(device.index)
        return device, kind

    def _cpu_pool(self, kind: str) -> WorkerPool:
        if kind == "prioritized" and self.options.prioritized_workers:
            return self._prio or self._lazy_pool("_prio", self.options.prioritized_workers, "depengine-prio")
        if kind == "copy":
            return self._copy or self._lazy_pool("_copy", self.options.copy_workers, "depengine-copy")
        return self._cpu

    def _lazy_pool(self, attr: str, size: int, name: str) -> WorkerPool:
        with self._pool_lock:
            pool = getattr(self, attr)
            if pool is None:
                pool = self._new_pool(size, name)
                setattr(self, attr, pool)
        return pool

    def _route(self, op: Op) -> WorkerPool:
        """The pool that runs ``op``; for stream ops, also choose ``op.stream``."""
        device = op.device
        if device is _CPU or device.type == "cpu":
            if op.kind == "copy" and self._gpus.used:
                self._gpus.assign_d2h(op)
            return self._cpu_pool(op.kind)
        return self._gpus.route(op)

    def _dispatch(self, op: Op) -> None:
        self._route(op).submit(op)

    def _run_in(self, op: Op, pool: WorkerPool) -> list:
        """What every pool of this engine runs: GPU ordering, the op, then routing of its successors."""
        ready = None
        if self._gpus.used:
            error = self._gpus.before(op)
            if error is not None:
                ready = self._complete(op, error, True)
        if ready is None:
            ready = self._execute(op)
        if not ready:
            return ready
        mine = []
        for nxt in ready:
            target = self._route(nxt)
            if target is pool:
                mine.append(nxt)
            else:
                target.submit(nxt)
        return mine

    def _stream_done(self, op: Op) -> None:
        self._gpus.record(op)

    # ------------------------------------------------------------------ waits
    def _wait_gpu_for_var(self, var) -> None:
        self._gpus.wait_var(var)

    def _wait_gpu_all(self) -> None:
        self._gpus.wait_all()

    def _in_op(self) -> bool:
        return threading.get_ident() in self._worker_ids

    def _stop(self) -> None:
        for pool in (self._cpu, self._prio, self._copy):
            if pool is not None:
                pool.close()
        self._gpus.stop()

    def __repr__(self) -> str:
        base = super().__repr__()[:-1]
        gpus = self._gpus.describe()
        return f"{base} {gpus}>" if gpus else base + ">"
