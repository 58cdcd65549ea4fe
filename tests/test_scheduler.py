"""scheduler/: the ready queue and the worker pool, without any engine."""

from __future__ import annotations

import queue
import threading

import pytest

from scheduler import ReadyQueue, WorkerPool


class Item:
    def __init__(self, name, priority=0):
        self.name = name
        self.priority = priority

    def __repr__(self):
        return f"Item({self.name}, {self.priority})"


def test_ready_queue_orders_by_priority_then_fifo():
    q = ReadyQueue()
    items = [Item(i, p) for i, p in enumerate([0, 3, -2, 3, 0, 7, -2, 1])]
    for it in items:
        q.put_item(it)
    assert len(q) == len(items)
    assert q.best_priority() == 7
    out = [q.get().name for _ in items]
    assert out == sorted(range(len(items)), key=lambda i: (-items[i].priority, i))
    assert q.empty() and q.best_priority() is None
    with pytest.raises(queue.Empty):
        q.get(timeout=0.01)
    with pytest.raises(queue.Empty):
        q.get_nowait()


def test_ready_queue_many_consumers_lose_nothing():
    q = ReadyQueue()
    n = 20_000
    got = []
    lock = threading.Lock()

    def consume():
        while True:
            it = q.get()
            if it is None:
                return
            with lock:
                got.append(it.name)

    ts = [threading.Thread(target=consume) for _ in range(4)]
    for t in ts:
        t.start()
    for i in range(n):
        q.put_item(Item(i, i % 3 - 1))
    for _ in ts:
        q.put(None, -10**9)
    for t in ts:
        t.join()
    assert sorted(got) == list(range(n))


def test_worker_pool_runs_successors_inline_and_in_priority_order():
    ran = []
    lock = threading.Lock()
    gate = threading.Event()
    all_ran = threading.Event()

    def run(item, pool):
        if item.name == "gate":
            gate.wait(10)
        with lock:
            ran.append(item.name)
            if len(ran) == 4:
                all_ran.set()
        return list(getattr(item, "next", []))

    pool = WorkerPool(run, 1, name="depengine-test")
    try:
        head = Item("gate")
        head.next = [Item("low", -1), Item("high", 5), Item("mid", 0)]
        pool.submit(head)
        gate.set()
        assert all_ran.wait(10)
        assert ran == ["gate", "high", "mid", "low"]
    finally:
        pool.close()
    assert all(not t.is_alive() for t in pool.threads)


def test_worker_pool_survives_an_exception_in_run(caplog):
    done = threading.Event()

    def run(item, pool):
        if item.name == "bad":
            raise RuntimeError("engine bug")
        done.set()
        return []

    pool = WorkerPool(run, 1, name="depengine-test")
    try:
        pool.submit(Item("bad"))
        pool.submit(Item("good"))
        assert done.wait(10)
    finally:
        pool.close()
    assert "internal error" in caplog.text


@pytest.mark.parametrize("size", [0, -1, 1.5, True])
def test_worker_pool_rejects_bad_sizes(size):
    with pytest.raises(ValueError, match="size"):
        WorkerPool(lambda item, pool: [], size)


def test_both_gpu_runtimes_satisfy_the_runtime_protocol():
    """Every call of scheduler.runtime.Runtime exists on both runtimes with the same parameters."""
    import inspect

    from scheduler.cuda_runtime import CudaRuntime
    from scheduler.runtime import Runtime
    from scheduler.sim_runtime import SimRuntime

    calls = [n for n, f in vars(Runtime).items() if inspect.isfunction(f) and not n.startswith("_")]
    assert len(calls) == 24
    for cls in (SimRuntime, CudaRuntime):
        assert cls.name in ("sim", "cuda")
        for name in calls:
            impl = inspect.getattr_static(cls, name, None)
            assert impl is not None, f"{cls.__name__} lacks {name}()"
            want = list(inspect.signature(getattr(Runtime, name)).parameters)[1:]  # without self
            fn = impl.__func__ if isinstance(impl, staticmethod) else impl
            got = list(inspect.signature(fn).parameters)
            if not isinstance(impl, staticmethod):
                got = got[1:]
            assert got == want, f"{cls.__name__}.{name}{tuple(got)} != Runtime.{name}{tuple(want)}"
    sim = SimRuntime()
    assert isinstance(sim, Runtime)
    assert not isinstance(object(), Runtime)
