"""``depengine demo --train``: an MLP trained the MXNet way, imperative and hybridized, with its peers.

    python -m bench.train_demo [--epochs 20] [--points 4096] [--batch 256] [--hidden 256]
                               [--device cpu|gpu] [--svg train-loss.svg] [--json results.json]

A two-spirals dataset made with NumPy (``--points`` per class), a network
2 -> 256 -> 256 -> 2 (ReLU, softmax cross-entropy) trained with SGD and
momentum, batch 256, the same initial weights and the same batches for
every system of the run:

- ``ops imperative``: ``ops.autograd`` pushing every op of every step;
- ``ops hybridized``: the same step recorded once by ``ops.hybridize`` and
  replayed (checked bit for bit against the imperative run's parameters);
- ``numpy``: the same forward and backward written by hand, with NumPy's
  BLAS on one thread and on its default threads;
- ``jax.jit``: the same step with ``jax.value_and_grad``, jitted, on the CPU
  (when jax is installed).

It prints each system's time per epoch (median after the first, which
compiles), the final loss and accuracy on the whole dataset, the ratios
the issue targets, and writes the loss curves as an SVG.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

import depengine as de
import ops as nd

__all__ = ["main", "train_demo", "two_spirals"]

LR, MOMENTUM = 0.05, 0.9


def two_spirals(per_class: int, turns: float = 1.5, noise: float = 0.15, seed: int = 0):
    """``(x, y)``: two interleaved noisy spirals, standardised float32 points and int64 labels."""
    rng = np.random.default_rng(seed)
    t = np.sqrt(rng.uniform(0.02, 1, per_class)) * turns * 2 * np.pi
    arm = np.stack([t * np.cos(t), t * np.sin(t)], 1) / (turns * 2 * np.pi)
    x = np.concatenate([arm, -arm]) + rng.normal(0, noise / 4, (2 * per_class, 2))
    y = np.concatenate([np.zeros(per_class, np.int64), np.ones(per_class, np.int64)])
    return (x / x.std(0)).astype(np.float32), y


def initial_params(hidden: int, seed: int = 1) -> list[np.ndarray]:
    r = np.random.default_rng(seed)
    def he(rows, cols):
        return (r.standard_normal((rows, cols)) * np.sqrt(2 / rows)).astype(np.float32)
    return [he(2, hidden), np.zeros(hidden, np.float32), he(hidden, hidden), np.zeros(hidden, np.float32),
            he(hidden, 2), np.zeros(2, np.float32)]


def forward_numpy(p, x):
    w1, b1, w2, b2, w3, b3 = p
    return np.maximum(np.maximum(x @ w1 + b1, 0) @ w2 + b2, 0) @ w3 + b3


def evaluate(params, x, y) -> tuple[float, float]:
    """Loss and accuracy of the network with ``params`` (NumPy, float64) on the whole dataset."""
    z = forward_numpy([p.astype(np.float64) for p in params], x.astype(np.float64))
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean()), float((z.argmax(1) == y).mean())


# ------------------------------------------------------------------ systems
def ops_step(params, velocity):
    """The training step of the issue, with momentum: recorded by autograd, update rule imperative."""
    w1, b1, w2, b2, w3, b3 = params

    def step(x, y):
        with nd.autograd.record():
            h = nd.relu(x @ w1 + b1)
            h = nd.relu(h @ w2 + b2)
            loss = nd.softmax_cross_entropy(h @ w3 + b3, y).mean()
        loss.backward()
        for p, v in zip(params, velocity, strict=True):
            nd.add(v * MOMENTUM, p.grad, out=v)
            p -= LR * v
        return loss
    return step


def _ops_params(init, device):
    params = [nd.array(p, device=device) for p in init]
    for p in params:
        p.attach_grad()
    return params, [nd.zeros(p.shape, np.float32, device) for p in init]


def ops_system(init, device, hybrid: bool):
    """``(epoch(xs, ys) -> losses, params() -> arrays, facts)`` of ops/ imperative or hybridized."""
    params, velocity = _ops_params(init, device)
    step = ops_step(params, velocity)
    labels = np.float32 if device.type == "gpu" else np.int64
    facts = {}
    if hybrid:
        t0 = time.perf_counter()
        plan = nd.hybridize(step, nd.zeros((BATCH, 2), np.float32, device), nd.zeros(BATCH, labels, device))
        facts = {"hybridize_s": time.perf_counter() - t0, "plan": repr(plan.plan)}

    def epoch(xb, yb):
        if hybrid:
            losses = [plan(x, y) for x, y in zip(xb, yb, strict=True)]
        else:
            losses = [step(nd.array(x, device=device), nd.array(y.astype(labels), device=device))
                      for x, y in zip(xb, yb, strict=True)]
        return [float(v) for v in losses]  # reading them waits for the epoch
    return epoch, lambda: [p.asnumpy() for p in params], facts


def numpy_step(p, v, x, y):
    w1, b1, w2, b2, w3, b3 = p
    n = len(y)
    z1 = x @ w1 + b1
    h1 = np.maximum(z1, 0)
    z2 = h1 @ w2 + b2
    h2 = np.maximum(z2, 0)
    z3 = h2 @ w3 + b3
    m = z3.max(axis=1, keepdims=True)
    e = np.exp(z3 - m)
    s = e.sum(axis=1, keepdims=True)
    loss = -(z3 - m - np.log(s))[np.arange(n), y].mean()
    g3 = e / s
    g3[np.arange(n), y] -= 1
    g3 /= n
    gz2 = (g3 @ w3.T) * (z2 > 0)
    gz1 = (gz2 @ w2.T) * (z1 > 0)
    for a, vel, g in zip(p, v, (x.T @ gz1, gz1.sum(0), h1.T @ gz2, gz2.sum(0), h2.T @ g3, g3.sum(0)),
                         strict=True):
        vel *= MOMENTUM
        vel += g
        a -= LR * vel
    return loss


def numpy_system(init, blas_threads):
    p = [a.copy() for a in init]
    v = [np.zeros_like(a) for a in init]

    def epoch(xb, yb):
        with threadpool_limits(blas_threads, user_api="blas"):
            return [float(numpy_step(p, v, x, y)) for x, y in zip(xb, yb, strict=True)]
    return epoch, lambda: p, {}


def jax_system(init):
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_platforms", "cpu")

    def loss_fn(p, x, y):
        w1, b1, w2, b2, w3, b3 = p
        h = jax.nn.relu(jax.nn.relu(x @ w1 + b1) @ w2 + b2)
        logp = jax.nn.log_softmax(h @ w3 + b3)
        return -jnp.take_along_axis(logp, y[:, None], axis=1).mean()

    @jax.jit
    def step(p, v, x, y):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        v = [vel * MOMENTUM + gi for vel, gi in zip(v, g, strict=True)]
        return [a - LR * vel for a, vel in zip(p, v, strict=True)], v, loss

    state = {"p": [jnp.asarray(a) for a in init], "v": [jnp.zeros_like(jnp.asarray(a)) for a in init]}

    def epoch(xb, yb):
        losses = []
        for x, y in zip(xb, yb, strict=True):
            state["p"], state["v"], loss = step(state["p"], state["v"], x, y)
            losses.append(loss)
        return [float(v) for v in losses]
    return epoch, lambda: [np.asarray(a) for a in state["p"]], {"jax": jax.__version__}


# ---------------------------------------------------------------- harness
BATCH = 256
SETTLE_S = 0.02  # between two systems' epochs: thread pools that spin after their work (BLAS, XLA) go idle


def _batches(x, y, epochs, seed=3):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(epochs):
        perm = rng.permutation(len(y))
        xp, yp = x[perm], y[perm]
        n = len(y) // BATCH * BATCH
        starts = range(0, n, BATCH)
        out.append(([xp[i:i + BATCH] for i in starts], [yp[i:i + BATCH] for i in starts]))
    return out


def train_demo(epochs: int = 20, per_class: int = 4096, hidden: int = 256, device: str = "cpu",
               svg: str | None = "train-loss.svg", systems: tuple = ("imperative", "hybridized", "numpy",
                                                                     "numpy-mt", "jax")) -> dict:
    """Train every system in ``systems``, epoch by epoch in turn (the order rotating), so that the
    machine's drift falls on all of them alike; ``numpy-mt`` (NumPy's own BLAS threads, which spin while
    they wait) runs alone afterwards, three epochs."""
    x, y = two_spirals(per_class)
    batches = _batches(x, y, epochs)
    init = initial_params(hidden)
    dev = de.cpu() if device == "cpu" else de.gpu(0)
    default_threads = max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"), default=1)
    makers = {"imperative": ("ops imperative", lambda: ops_system(init, dev, False)),
              "hybridized": ("ops hybridized", lambda: ops_system(init, dev, True)),
              "numpy": ("numpy (1 BLAS thread)", lambda: numpy_system(init, 1)),
              "numpy-mt": (f"numpy ({default_threads} BLAS thr., {min(epochs, 3)} ep.)",
                           lambda: numpy_system(init, None)),
              "jax": ("jax.jit (CPU)", lambda: jax_system(init))}
    steps = len(batches[0][0])
    print(f"train: two spirals, {2 * per_class} points, MLP 2-{hidden}-{hidden}-2 (ReLU), batch {BATCH}, "
          f"{steps} steps per epoch, {epochs} epochs, SGD lr {LR} momentum {MOMENTUM}, ops/ on {dev}")
    made, times, curves = {}, {}, {}
    for key in systems:
        try:
            made[key] = makers[key][1]()
        except ImportError as exc:
            print(f"  {makers[key][0]:26s} skipped: {exc}")
    together = [k for k in made if k != "numpy-mt"]
    for e in range(epochs):
        for k in together[e % len(together):] + together[:e % len(together)] if together else []:
            _epoch(made[k][0], batches[e], times.setdefault(k, []), curves.setdefault(k, []))
    if "numpy-mt" in made:
        for e in range(min(epochs, 3)):
            _epoch(made["numpy-mt"][0], batches[e], times.setdefault("numpy-mt", []),
                   curves.setdefault("numpy-mt", []))
    results = {}
    if "imperative" in made and "hybridized" in made:
        same = all(np.array_equal(a, b) for a, b in zip(made["imperative"][1](), made["hybridized"][1](),
                                                         strict=True))
        print(f"  hybridized parameters equal the imperative ones bit for bit: {same}")
    for key, (_, params, facts) in made.items():
        loss, acc = evaluate(params(), x, y)
        t = times[key]
        per_epoch = statistics.median(t[1:]) if len(t) > 1 else t[0]
        label = makers[key][0]
        results[key] = {"label": label, "epoch_s": per_epoch, "first_epoch_s": t[0], "epoch_times": t,
                        "curve": curves[key], "loss": loss, "accuracy": acc, "params": params(), **facts}
        print(f"  {label:26s} {per_epoch * 1e3:8.1f} ms/epoch ({per_epoch / steps * 1e3:6.2f} ms/step; "
              f"first epoch {t[0] * 1e3:7.1f} ms)   final loss {loss:.4f}   accuracy {acc:.2%}")
    if device == "cpu":  # the targets are for the CPU
        _report(results)
    if svg and results:
        loss_svg(results, svg)
        print(f"  wrote {svg}")
    for r in results.values():
        r.pop("params")
    return results


def _epoch(epoch, batch, times: list, curve: list) -> None:
    time.sleep(SETTLE_S)
    t0 = time.perf_counter()
    losses = epoch(*batch)
    times.append(time.perf_counter() - t0)
    curve.append(float(np.mean(losses)))


def _report(results: dict) -> None:
    imp, hyb = results.get("imperative"), results.get("hybridized")
    if imp and hyb:
        _target("hybridized vs imperative", imp["epoch_s"] / hyb["epoch_s"], 1.5, "at least")
    numpys = [results[k] for k in ("numpy", "numpy-mt") if k in results]
    if hyb and numpys:
        best = min(numpys, key=lambda r: r["epoch_s"])
        _target(f"hybridized vs {best['label']}", best["epoch_s"] / hyb["epoch_s"], 1.0, "at least")
    if hyb and "jax" in results:
        _target("hybridized vs jax.jit", results["jax"]["epoch_s"] / hyb["epoch_s"], 1 / 1.5, "at least")


def _target(what: str, speedup: float, goal: float, how: str) -> None:
    verdict = "met" if speedup >= goal else "NOT met"
    print(f"  {what:44s} {speedup:5.2f}x faster (target: {how} {goal:.2f}x): {verdict}")


def loss_svg(results: dict, path: str) -> str:
    """The loss curves (log scale, one line per system) as an SVG, written to ``path``; returns its text."""
    from viz.style import color_for
    from viz.svg import Svg

    width, height, left, right, top, bottom = 760, 420, 70, 230, 40, 50
    pw, ph = width - left - right, height - top - bottom
    curves = {r["label"]: r["curve"] for r in results.values()}
    values = [v for c in curves.values() for v in c if v > 0]
    lo, hi = np.log10(min(values)), np.log10(max(values))
    hi = hi if hi > lo else lo + 1
    epochs = max(len(c) for c in curves.values())

    def px(i):
        return left + (i / max(epochs - 1, 1)) * pw

    def py(v):
        return top + (1 - (np.log10(max(v, 1e-12)) - lo) / (hi - lo)) * ph

    svg = Svg(width, height)
    svg.text(left, 24, "Two spirals: mean training loss per epoch", 15, font_weight="bold")
    svg.line(left, top + ph, left + pw, top + ph, stroke="black")
    svg.line(left, top, left, top + ph, stroke="black")
    for e in range(int(np.floor(lo)), int(np.ceil(hi)) + 1):
        if lo <= e <= hi:
            svg.line(left, py(10.0 ** e), left + pw, py(10.0 ** e), stroke="#ddd")
            svg.text(left - 8, py(10.0 ** e) + 4, f"1e{e}", 11, text_anchor="end")
    for i in range(0, epochs, max(1, epochs // 10)):
        svg.text(px(i), top + ph + 18, str(i + 1), 11, text_anchor="middle")
    svg.text(left + pw / 2, height - 10, "epoch", 12, text_anchor="middle")
    for k, (label, curve) in enumerate(curves.items()):
        color = color_for(k)
        svg.polyline([(px(i), py(v)) for i, v in enumerate(curve)], stroke=color, stroke_width=2,
                     stroke_dasharray="6,3" if k % 2 else None)
        ly = top + 10 + 20 * k
        svg.line(left + pw + 15, ly, left + pw + 35, ly, stroke=color, stroke_width=3)
        svg.text(left + pw + 40, top + 14 + 20 * k, label, 11)
    text = str(svg)
    with open(path, "w") as f:
        f.write(text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.train_demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--points", type=int, default=4096, help="points per class")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--svg", default="train-loss.svg")
    p.add_argument("--json", default=None, help="write the measurements here")
    p.add_argument("--systems", nargs="+", default=["imperative", "hybridized", "numpy", "numpy-mt", "jax"],
                   choices=["imperative", "hybridized", "numpy", "numpy-mt", "jax"])
    args = p.parse_args(argv)
    if args.epochs < 1 or args.points * 2 < BATCH:
        p.error(f"--epochs must be >= 1 and --points >= {BATCH // 2}")
    results = train_demo(args.epochs, args.points, args.hidden, args.device, args.svg, tuple(args.systems))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
