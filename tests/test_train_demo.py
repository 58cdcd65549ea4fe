"""depengine demo --train, on a small problem: every system trains the same network to the same place."""

from __future__ import annotations

import numpy as np
import pytest

from bench import train_demo


@pytest.mark.timeout(120)  # jax imports and compiles its step (a few seconds), every system trains twice
def test_every_system_of_the_training_demo_agrees(tmp_path, capsys, nd_engine):
    svg = tmp_path / "loss.svg"
    results = train_demo.train_demo(epochs=3, per_class=256, hidden=16, svg=str(svg),
                                    systems=("imperative", "hybridized", "numpy", "jax"))
    out = capsys.readouterr().out
    assert "hybridized parameters equal the imperative ones bit for bit: True" in out
    assert {"imperative", "hybridized", "numpy"} <= set(results)
    curves = {k: r["curve"] for k, r in results.items()}
    np.testing.assert_allclose(curves["hybridized"], curves["numpy"], rtol=1e-4)
    if "jax" in results:
        np.testing.assert_allclose(curves["jax"], curves["numpy"], rtol=1e-3)
    assert curves["numpy"][-1] < curves["numpy"][0]
    for r in results.values():
        assert r["epoch_s"] > 0 and 0 <= r["accuracy"] <= 1 and len(r["epoch_times"]) == 3
    text = svg.read_text()
    assert text.startswith("<svg") and text.count("<polyline") == len(results)
    assert "ops hybridized" in text and "target" in out


def test_the_spirals_are_two_balanced_classes():
    x, y = train_demo.two_spirals(100)
    assert x.shape == (200, 2) and x.dtype == np.float32
    assert (y == 0).sum() == (y == 1).sum() == 100
    np.testing.assert_allclose(x.std(0), 1.0, rtol=1e-5)
