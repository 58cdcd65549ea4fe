"""What profiling costs, on each implementation of the engine and with native op bodies.

    python -m bench.profiler_overhead [--rounds 9] [--steps 2000] [--workers 2]
    python -m bench.profiler_overhead --instructions

Variants, run in interleaved rounds so that machine noise hits them alike
(figures are medians; the cost of profiling is also the median of the
per-round differences): the compiled core with empty Python bodies, the
compiled core with empty native bodies (``de.native``), and the pure-Python
reference, each with profiling off and on; and, for the reference, "a build
without the hooks": depengine/_engine.py with every profiler statement removed
by an AST transform (``if ... _prof is not None:`` blocks, ``prof =
self._prof`` and the profile branches of the waits), compiled into a separate
module.  ``--instructions`` counts instructions per op under callgrind
instead, on the naive engine (every op runs on the pushing thread):
deterministic where wall time on a shared VM is not.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import statistics
import time

import depengine as de
from depengine import _engine as engine_module
from depengine._naive import NaiveEngine
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


def _empty_native():
    from .throughput import _empty_cfunc

    return de.native(_empty_cfunc())


# name -> (engine factory(workers), native bodies?, profiling on?)
def _variants(workers: int, kind: str = "threaded") -> dict:
    bare = engine_without_hooks(NaiveEngine if kind == "naive" else ThreadedEngine)
    compiled = lambda: de.Engine(kind, workers=workers)  # noqa: E731
    python = lambda: de.Engine(kind, workers=workers, core="python")  # noqa: E731
    return {
        "compiled, off": (compiled, False, False),
        "compiled, on": (compiled, False, True),
        "compiled native, off": (compiled, True, False),
        "compiled native, on": (compiled, True, True),
        "python, without hooks": (lambda: bare(workers=workers, core="python"), False, False),
        "python, off": (python, False, False),
        "python, on": (python, False, True),
    }


def _measure(variant, width: int, steps: int) -> float:
    make, native, on = variant
    body = _empty_native() if native else None
    if not on:
        return stencil_us_per_op(make, width, steps, body)
    with de.profile():
        return stencil_us_per_op(make, width, steps, body)


def _child(name: str, steps: int) -> None:
    _measure(_variants(1, "naive")[name], 16, steps)


def instructions_per_op(name: str) -> float:
    """Instructions per op under callgrind, on the naive engine.

    The naive engine runs every op on the pushing thread, so the count is
    deterministic: with worker threads that run without the GIL, how often a
    worker sleeps and is woken depends on how valgrind interleaves the threads,
    and the counts of one program varied by more than the per-op cost itself.
    """
    return callgrind.instructions_per_op("bench.profiler_overhead", ["--child", name], 100, 600, 16)


def stencil_us_per_op(make_engine, width: int, steps: int, body=None) -> float:
    with make_engine() as eng:
        vs = [eng.new_var() for _ in range(width)]
        row = [([vs[j] for j in (i - 1, i + 1) if 0 <= j < width], [vs[i]]) for i in range(width)]
        push = eng.push

        def empty(ctx):
            pass

        if body is not None:
            empty = body

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
        counts = {n: instructions_per_op(n) for n in _variants(1, "naive")}
        print("stencil_1d 16 wide, naive engine (every op on the pushing thread): instructions per op "
              "(callgrind)")
        for n, c in counts.items():
            print(f"  {n:24s} {c:9.0f}")
        _report_pairs(counts, "instructions")
        return 0
    variants = _variants(args.workers)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, variant in variants.items():
            times[name].append(_measure(variant, args.width, args.steps))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"stencil_1d {args.width}x{args.steps} empty ops, {args.workers} workers, "
          f"median of {args.rounds} interleaved rounds (us/op end-to-end)")
    for name, v in times.items():
        print(f"  {name:24s} {med[name]:7.2f}   [{min(v):.2f}-{max(v):.2f}]")
    _report_pairs(med, "us/op", times)
    return 0


def _report_pairs(values: dict, unit: str, rounds: dict | None = None) -> None:
    """Profiling on minus off for each implementation (and, per round, when given)."""
    print(f"  python off / without hooks: {values['python, off'] / values['python, without hooks']:.4f}")
    for base in ("compiled", "compiled native", "python"):
        on, off = values[f"{base}, on"], values[f"{base}, off"]
        line = f"  {base}: profiling adds {on - off:.2f} {unit} ({on / off:.3f} x off)"
        if rounds is not None:
            paired = statistics.median(a - b for a, b in zip(rounds[f"{base}, on"], rounds[f"{base}, off"],
                                                             strict=True))
            line += f"; median of the per-round differences {paired:.2f}"
        print(line)


if __name__ == "__main__":
    raise SystemExit(main())
