"""bench/gpu_check.py, dry-run on the simulated runtime so that it cannot rot without a GPU."""

from __future__ import annotations

from bench import gpu_check


def test_gpu_check_passes_on_the_simulator(monkeypatch, capsys):
    monkeypatch.setenv("DEPENGINE_GPU", "sim")
    assert gpu_check.main(["--sim", "--no-pytest"]) == 0
    out = capsys.readouterr().out
    n = len(gpu_check._CHECKS) + 1
    assert f"{n}/{n} passed" in out and "FAIL" not in out
    for fn in gpu_check._CHECKS:
        assert f"PASS {fn.__name__}" in out


def test_gpu_check_reports_a_failing_check(monkeypatch, capsys):
    monkeypatch.setenv("DEPENGINE_GPU", "sim")

    def broken(de, nd, eng):
        raise RuntimeError("kernel gave 41, expected 42")

    monkeypatch.setattr(gpu_check, "_CHECKS", [gpu_check._CHECKS[0], broken])
    assert gpu_check.main(["--sim", "--no-pytest"]) == 1
    out = capsys.readouterr().out
    assert "FAIL broken" in out and "kernel gave 41, expected 42" in out and "2/3 passed" in out


def test_gpu_check_without_a_gpu_names_the_reason(monkeypatch, capsys):
    monkeypatch.delenv("DEPENGINE_GPU", raising=False)
    monkeypatch.setattr("depengine.gpu", _no_gpu)
    assert gpu_check.main(["--no-pytest"]) == 2
    assert "no usable GPU: no NVIDIA driver here" in capsys.readouterr().out


def _no_gpu(index=0):
    import depengine as de

    raise de.DeviceUnavailableError("no NVIDIA driver here")
