"""The public API is small and pinned."""

import depengine as de


def test_exported_names_are_pinned():
    assert sorted(de.__all__) == sorted([
        "DeadlockError", "DepengineError", "Device", "DeviceUnavailableError", "Engine",
        "EngineClosedError", "Op", "RunContext", "Trace", "TraceError", "Var", "VarDeletedError", "cpu",
        "default_engine", "devices", "gpu", "profile",
    ])
    for name in de.__all__:
        assert getattr(de, name) is not None


def test_engine_factory_returns_engines():
    for kind in ("naive", "threaded", "perdevice"):
        with de.Engine(kind, workers=1) as eng:
            assert isinstance(eng, de.Engine) and eng.kind == kind
