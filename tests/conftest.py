"""Shared fixtures: every engine kind, invariant checks on, no thread left behind."""

from __future__ import annotations

import os
import threading

import pytest

# Every engine built by the tests checks var invariants after each completion.
os.environ.setdefault("DEPENGINE_DEBUG", "1")

import depengine as de

# GPU tests run on the simulated runtime; DEPENGINE_TEST_GPU=real runs them on a
# real GPU instead (bench/gpu_check.py does that).
REAL_GPU = os.environ.get("DEPENGINE_TEST_GPU") == "real"


def use_gpu_runtime(monkeypatch) -> None:
    """Back ``de.gpu(i)`` with the runtime the test run asked for."""
    if REAL_GPU:
        monkeypatch.delenv("DEPENGINE_GPU", raising=False)
    else:
        monkeypatch.setenv("DEPENGINE_GPU", "sim")


@pytest.fixture
def nd_engine(monkeypatch):
    """A 2-worker per-device engine that ``ops`` arrays use, with GPUs per ``use_gpu_runtime``."""
    import ops

    use_gpu_runtime(monkeypatch)
    eng = de.Engine("perdevice", workers=2)
    ops.set_engine(eng)
    yield eng
    ops.set_engine(None)
    eng.close()


# (kind, workers) for the conformance suite
ENGINE_CONFIGS = [("naive", 1), ("threaded", 1), ("threaded", 2), ("threaded", 4),
                  ("perdevice", 1), ("perdevice", 2)]
THREADED_CONFIGS = [c for c in ENGINE_CONFIGS if c[0] != "naive"]


def config_id(config) -> str:
    return f"{config[0]}-{config[1]}"


@pytest.fixture(params=ENGINE_CONFIGS, ids=config_id)
def engine(request):
    kind, workers = request.param
    eng = de.Engine(kind, workers=workers)
    yield eng
    eng.close()


@pytest.fixture(params=THREADED_CONFIGS, ids=config_id)
def threaded_engine(request):
    kind, workers = request.param
    eng = de.Engine(kind, workers=workers)
    yield eng
    eng.close()


@pytest.fixture(autouse=True)
def no_thread_left_behind():
    """Engines closed by a test must have joined every thread they started."""
    before = set(threading.enumerate())
    yield
    leaked = [
        t for t in threading.enumerate()
        if t not in before and t.name.startswith("depengine") and t.is_alive()
    ]
    assert not leaked, f"threads left running after the test: {leaked}"


@pytest.fixture
def dask_bridge(monkeypatch):
    """depengine.dask for a test: its own engines threaded whatever DEPENGINE_ENGINE says,
    and closed after the test (their threads must not outlive it)."""
    bridge = pytest.importorskip("depengine.dask")
    monkeypatch.delenv("DEPENGINE_ENGINE", raising=False)
    yield bridge
    bridge.shutdown()


class Gate:
    """An op body that reports it started, then blocks until opened."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.opened = threading.Event()

    def __call__(self, ctx) -> None:
        self.started.set()
        if not self.opened.wait(30):
            raise TimeoutError("gate never opened")

    def open(self) -> None:
        self.opened.set()


@pytest.fixture
def gate():
    g = Gate()
    yield g
    g.open()  # never leave an op blocked, even when the test failed
