"""What profiling costs: hooks off against a build without them, and hooks on.

    python -m bench.profiler_overhead [--rounds 9] [--steps 2000] [--workers 2]

"A build without the hooks" is depengine/engine.py with every profiler
statement removed by an AST transform (``if ... _prof is not None:`` blocks,
``prof = self._prof`` and the profile branches of the waits), compiled into a
separate module: the same engine minus the hooks.  The variants (profiling
on once per set of hooks there is: C and Python) run the empty-op stencil_1d
of ``bench.throughput`` in interleaved rounds, so that machine noise hits them
alike; the figures are medians, and the cost of profiling is also given as
the median of the differences within each round.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import statistics
import time

import depengine as de
from depengine import _engine as engine_module
from depengine import profiler
from depengine._threaded import ThreadedEngine

from . import callgrind


class _StripHooks(ast.NodeTransformer):
    """Drops ``prof = self._prof`` and every ``if <...>prof<...> is not None`` block."""

    @staticmethod
    def _mentions_prof(node) -> bool:
        return any(isinstance(n, (ast.Name, ast.Attribute)) and
                   (getattr(n, "id", None) == "prof" or getattr(n, "attr", None) == "_prof")
                   for n in ast.walk(node))

    def visit_If(self, node):
        self.generic_visit(node)
        if self._mentions_prof(node.test):
            # `if prof is None: return fast(...)` keeps its body; `if prof is not None:` goes
            if isinstance(node.test, ast.Compare) and isinstance(node.test.ops[0], ast.Is):
                return node.body
            return node.orelse or None
        return node

    def visit_Assign(self, node):
        if self._mentions_prof(node.value) and any(getattr(t, "id", None) == "prof" for t in node.targets):
            return None
        return node


def engine_without_hooks(kind: type = ThreadedEngine) -> type:
    """``kind`` (an engine class) rebuilt on an Engine base without profiler hooks."""
    tree = _StripHooks().visit(ast.parse(inspect.getsource(engine_module)))
    ast.fix_missing_locations(tree)
    namespace = {"__name__": "depengine._engine_without_hooks", "__package__": "depengine"}
    exec(compile(tree, "<depengine._engine without profiler hooks>", "exec"), namespace)
    base = namespace["Engine"]
    methods = {k: v for k, v in vars(kind).items() if not k.startswith("__")}
    return type(f"{kind.__name__}WithoutHooks", (base,), methods)


def _variant(name: str):
    """An engine factory and the profiler hooks to record with (None: no profile), by variant name."""
    if name == "without-hooks":
        bare = engine_without_hooks()
        return (lambda: bare(workers=1)), None
    hooks = {"profiling-on": profiler.IMPLEMENTATION, "profiling-on-python": "Python"}.get(name)
    return (lambda: de.Engine("threaded", workers=1)), hooks


def _child(name: str, steps: int) -> None:
    make, hooks = _variant(name)
    if hooks is None:
        stencil_us_per_op(make, 16, steps)
        return
    profiler.use_implementation(hooks)
    with de.profile():
        stencil_us_per_op(make, 16, steps)


def instructions_per_op(name: str) -> float:
    """Instructions per op under callgrind (deterministic, unlike wall time here)."""
    return callgrind.instructions_per_op("bench.profiler_overhead", ["--child", name], 100, 600, 16)


def stencil_us_per_op(make_engine, width: int, steps: int) -> float:
    with make_engine() as eng:
        vs = [eng.new_var() for _ in range(width)]
        row = [([vs[j] for j in (i - 1, i + 1) if 0 <= j < width], [vs[i]]) for i in range(width)]
        push = eng.push

        def empty(ctx):
            pass

        start = time.perf_counter()
        for _ in range(steps):
            for reads, writes in row:
                push(empty, reads=reads, writes=writes)
        eng.wait_all()
        return (time.perf_counter() - start) / (width * steps) * 1e6


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--instructions", action="store_true",
                   help="count instructions per op with valgrind (1 worker) instead of timing")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args.child, args.steps)
        return 0
    if args.instructions:
        if not callgrind.available():
            p.error("--instructions needs valgrind (Debian: apt-get install valgrind)")
        names = ["without-hooks", "profiling-off", "profiling-on"]
        if profiler.IMPLEMENTATION != "Python":
            names.append("profiling-on-python")
        counts = {n: instructions_per_op(n) for n in names}
        print("stencil_1d 16 wide, threaded engine, 1 worker: instructions per op "
              f"(callgrind, 600 - 100 steps; profiling-on uses the {profiler.IMPLEMENTATION} hooks)")
        for n, c in counts.items():
            print(f"  {n:19s} {c:9.0f}")
        print(f"  profiling off / without hooks: {counts['profiling-off'] / counts['without-hooks']:.4f}")
        for n in names[2:]:
            print(f"  {n} adds {counts[n] - counts['profiling-off']:.0f} "
                  f"({counts[n] / counts['profiling-off']:.3f} x off)")
        return 0
    bare = engine_without_hooks()
    variants = {
        "without hooks": lambda: bare(workers=args.workers),
        "hooks, profiling off": lambda: de.Engine("threaded", workers=args.workers),
    }
    hooks = sorted(profiler.IMPLEMENTATIONS, key=lambda h: h != profiler.IMPLEMENTATION)  # the default first
    profiled = {f"profiling on, {h} hooks": h for h in hooks}
    times: dict[str, list[float]] = {name: [] for name in [*variants, *profiled]}
    for _ in range(args.rounds):
        for name, make in variants.items():
            times[name].append(stencil_us_per_op(make, args.width, args.steps))
        for name, h in profiled.items():
            previous = profiler.use_implementation(h)
            with de.profile():
                times[name].append(stencil_us_per_op(
                    lambda: de.Engine("threaded", workers=args.workers), args.width, args.steps))
            profiler.use_implementation(previous)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"stencil_1d {args.width}x{args.steps} empty ops, {args.workers} workers, "
          f"median of {args.rounds} interleaved rounds (us/op end-to-end)")
    for name, v in times.items():
        print(f"  {name:26s} {med[name]:7.2f}   [{min(v):.2f}-{max(v):.2f}]")
    off = med["hooks, profiling off"] / med["without hooks"]
    print(f"  profiling off / without hooks: {off:.3f} ({(off - 1) * 100:+.1f}%)")
    off_times = times["hooks, profiling off"]
    for name in profiled:
        paired = statistics.median(on - off for on, off in zip(times[name], off_times, strict=True))
        print(f"  {name} adds {med[name] - med['hooks, profiling off']:.2f} us/op "
              f"(median of the per-round differences: {paired:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
