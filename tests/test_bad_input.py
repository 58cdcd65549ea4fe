"""Bad input raises a clear error and pushes nothing; what was pushed before is kept."""

from __future__ import annotations

import pytest

import depengine as de


def _bad_pushes(engine, other_var):
    v = engine.new_var("v")
    fn = lambda ctx: None  # noqa: E731
    return [
        (TypeError, r"fn=42 is not callable", lambda: engine.push(42, writes=[v])),
        (TypeError, r"not a Var", lambda: engine.push(fn, reads=["v"])),
        (TypeError, r"not a Var", lambda: engine.push(fn, writes=[v, object()])),
        (TypeError, r"reads=3 must be a list or tuple of Var", lambda: engine.push(fn, reads=3)),
        (ValueError, r"belongs to another engine", lambda: engine.push(fn, reads=[other_var])),
        (TypeError, r"priority=7.5 must be an int", lambda: engine.push(fn, priority=7.5)),
        (TypeError, r"priority=True must be an int", lambda: engine.push(fn, priority=True)),
        (TypeError, r"priority='1' must be an int", lambda: engine.push(fn, priority="1")),
        (TypeError, r"name=5 must be a str", lambda: engine.push(fn, name=5)),
        (ValueError, r"kind='gpu' must be one of", lambda: engine.push(fn, kind="gpu")),
        (TypeError, r"on_delete=3 must be callable", lambda: engine.delete_var(v, on_delete=3)),
        (TypeError, r"not a Var", lambda: engine.wait_for_var("v")),
        (TypeError, r"var name=3 must be a str", lambda: engine.new_var(3)),
    ], v


def test_bad_input_pushes_nothing_and_keeps_earlier_ops(engine):
    with de.Engine("naive") as other:
        foreign = other.new_var("foreign")
        kept = engine.new_var("kept")
        results = []
        engine.push(lambda ctx: results.append("before"), writes=[kept])
        cases, v = _bad_pushes(engine, foreign)
        seq_before = engine._seq
        for exc_type, pattern, call in cases:
            with pytest.raises(exc_type, match=pattern):
                call()
        assert engine._seq == seq_before  # no op was registered
        assert v._state() == {"nread": 0, "writing": False, "queue": [], "pending_writes": 0, "version": 0}
        assert not v.deleted
        engine.push(lambda ctx: results.append("after"), reads=[kept])
        engine.wait_all()
        assert results == ["before", "after"]


@pytest.mark.parametrize(
    "kwargs, exc_type, pattern",
    [
        ({"type": "fast"}, ValueError, r"type='fast' is not an engine type"),
        ({"type": "threaded", "workers": 0}, ValueError, r"workers=0 must be >= 1"),
        ({"type": "threaded", "workers": -2}, ValueError, r"workers=-2 must be >= 1"),
        ({"type": "threaded", "workers": 1.5}, TypeError, r"workers=1.5 must be an int"),
        ({"type": "threaded", "workers": True}, TypeError, r"workers=True must be an int"),
        ({"type": "threaded", "gpu_streams": 2}, TypeError, r"only applies to Engine\('perdevice'\)"),
        ({"type": "naive", "wrokers": 2}, TypeError, r"unknown option 'wrokers'"),
    ],
)
def test_bad_engine_options(kwargs, exc_type, pattern):
    with pytest.raises(exc_type, match=pattern):
        de.Engine(**kwargs)


def test_push_after_close(engine):
    v = engine.new_var("v")
    engine.close()
    with pytest.raises(de.EngineClosedError, match="push after close"):
        engine.push(lambda ctx: None, writes=[v])
    with pytest.raises(de.EngineClosedError):
        engine.new_var()
    with pytest.raises(de.EngineClosedError):
        engine.delete_var(v)
    engine.close()  # closing twice is harmless


def test_var_and_op_cannot_be_built_directly():
    with pytest.raises(TypeError, match=r"use Engine\.new_var"):
        de.Var("x")
    with pytest.raises(TypeError, match=r"use Engine\.push"):
        de.Op()


def test_validation_survives_python_O():
    """Input checks are real exceptions, not asserts: run them under -O."""
    import subprocess
    import sys

    code = (
        "import depengine as de\n"
        "e = de.Engine('naive')\n"
        "try:\n"
        "    e.push(1)\n"
        "except TypeError as exc:\n"
        "    print('ok', exc)\n"
        "e.close()\n"
    )
    out = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("ok fn=1 is not callable")
