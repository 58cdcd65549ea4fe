"""The public API is small and pinned; modules stay readable in one sitting."""

import inspect
import pathlib
import subprocess
import sys

import pytest

import depengine as de

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_exported_names_are_pinned():
    assert sorted(de.__all__) == sorted([
        "DeadlockError", "DepengineError", "Device", "DeviceUnavailableError", "Engine",
        "EngineClosedError", "NativeError", "Op", "RunContext", "Trace", "TraceError", "Var",
        "VarDeletedError", "cpu", "default_engine", "devices", "gpu", "native", "plan", "profile", "profiler",
        "trace",
    ])
    for name in de.__all__:
        assert getattr(de, name) is not None


def test_the_public_names_of_the_package_are_those_of_all():
    # Every module the test run imported is loaded: the private ones become attributes
    # of the package, and must be private by name.
    public = {name for name in dir(de) if not name.startswith("_")}
    assert public == set(de.__all__)
    code = "import depengine as de, ops, viz; print(sorted(n for n in dir(de) if not n.startswith('_')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == str(sorted(de.__all__))


def test_engine_factory_returns_engines():
    for kind in ("naive", "threaded", "perdevice"):
        with de.Engine(kind, workers=1) as eng:
            assert isinstance(eng, de.Engine) and eng.type == kind


PACKAGES = ("depengine", "scheduler", "ops", "viz")


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT).as_posix() for pkg in PACKAGES
                                        for p in (ROOT / pkg).glob("*.py")))
def test_every_module_is_readable_in_one_sitting(path):
    lines = (ROOT / path).read_text().count("\n")
    assert lines <= 500, f"{path} has {lines} lines; split it by responsibility (the budget is 500)"


def test_engine_types_override_only_the_declared_hooks():
    from depengine._naive import NaiveEngine
    from depengine._perdevice import PerDeviceEngine
    from depengine._threaded import ThreadedEngine

    base = de.Engine
    hooks = {"_start", "_dispatch", "_settle", "_stop", "_in_op", "_place", "_stream_done", "_async_started",
             "_plan_submit", "_wait_gpu_for_var", "_wait_gpu_all", "threads", "gpu_runtime", "type",
             "__repr__"}
    for kind in (NaiveEngine, ThreadedEngine, PerDeviceEngine):
        overridden = {name for name in vars(kind)
                      if hasattr(base, name) and name not in ("__doc__", "__module__", "__qualname__")}
        assert overridden <= hooks, f"{kind.__name__} overrides {sorted(overridden - hooks)}"
    for name in hooks - {"type", "__repr__", "_settle"}:
        assert inspect.getdoc(getattr(base, name)), f"Engine.{name} is not documented"
