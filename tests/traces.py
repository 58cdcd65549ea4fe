"""Hand-made traces with known structure, times and names, for the viz and trace-reader tests."""

from __future__ import annotations

from depengine.trace import OpRecord, Trace, WaitRecord

US = 1000  # ns

# Names that would run or inject markup if any renderer forgot to escape them.
HOSTILE = ("</script><script>alert(1)</script>", '"><image href=x onerror=alert(2)>',
           "<img src=x onerror=alert(3)>", "a\\b \\N \\G {}&amp;'\"")


def op(i, name, lane, start, end, reads=(), writes=(), *, device="cpu(0)", kind="normal", state="done",
       engine=0, ready=None, gpu_end=None, error=None) -> OpRecord:
    """An op record; ``reads``/``writes`` are (var serial, var name, version) triples."""
    return OpRecord(id=i, name=name, engine=engine, device=device, kind=kind, priority=0, lane=lane,
                    reads=list(reads), writes=list(writes), push=0, ready=start if ready is None else ready,
                    start=start, end=end, state=state, error=error, gpu_end=gpu_end)


def iterations_trace(steps: int = 3) -> Trace:
    """``steps`` iterations of: one ``step`` (a chain through var s) then two ``work`` ops reading s.

    step k: 10 us, work k a: 5 us, work k b: 7 us; one bookkeeping ``delete wa`` at the end.
    """
    ops, t, n = [], 0, 0
    for k in range(1, steps + 1):
        ops.append(op(n, "step", "w0", t, t + 10 * US, [(0, "s", k - 1)], [(0, "s", k)]))
        t += 10 * US
        ops.append(op(n + 1, "work", "w0", t, t + 5 * US, [(0, "s", k)], [(1, "wa", k)]))
        ops.append(op(n + 2, "work", "w1", t, t + 7 * US, [(0, "s", k)], [(2, "wb", k)]))
        t += 7 * US
        n += 3
    ops.append(op(n, "delete wa", "w1", t, t + 1 * US, [], [(1, "wa", steps + 1)]))
    return Trace(ops, [WaitRecord("MainThread", "wait_all()", 0, t + 2 * US, "ok")])


def mixed_trace(names=("load", "compute", "store")) -> Trace:
    """CPU workers, a GPU stream and copy streams: h2d copy, GPU kernel, d2h copy, CPU consumer.

    Every op lasts at least 20 us in a run of about 200 us, so each is wide on any screen.
    """
    a, b, c = names
    ops = [
        op(0, a, "depengine-cpu-0", 0, 30 * US, [], [(0, "x", 1)]),
        op(1, a, "depengine-cpu-1", 5 * US, 40 * US, [], [(1, "y", 1)]),
        op(2, "h2d cpu(0)->gpu(0)", "gpu0-h2d", 40 * US, 42 * US, [(0, "x", 1)], [(2, "xg", 1)],
           device="gpu(0)", kind="copy", gpu_end=60 * US),
        op(3, b, "gpu0-s0", 60 * US, 62 * US, [(2, "xg", 1)], [(3, "zg", 1)], device="gpu(0)",
           gpu_end=110 * US),
        op(4, "d2h gpu(0)->cpu(0)", "gpu0-d2h", 110 * US, 112 * US, [(3, "zg", 1)], [(4, "z", 1)],
           kind="copy", gpu_end=130 * US),
        op(5, c, "depengine-cpu-0", 130 * US, 170 * US, [(4, "z", 1), (1, "y", 1)], [(0, "x", 2)]),
        op(6, c, "depengine-cpu-1", 140 * US, 190 * US, [(1, "y", 1)], [(5, "out", 1)]),
        op(7, "delete z", "depengine-cpu-1", 190 * US, 191 * US, [], [(4, "z", 2)]),
    ]
    return Trace(ops, [WaitRecord("MainThread", "wait_all()", 0, 192 * US, "ok")])


def failing_trace() -> Trace:
    """:func:`mixed_trace` plus a failed op with an error and a skipped op after it (ops 8 and 9)."""
    trace = mixed_trace()
    extra = [op(8, "boom", "depengine-cpu-0", 200 * US, 210 * US, [(5, "out", 1)], [(6, "w", 1)],
                state="failed", error="ValueError: boom \u00e9"),
             op(9, "after", "(skipped)", 211 * US, 211 * US, [(6, "w", 1)], [], state="skipped")]
    return Trace(trace.ops + extra, trace.waits)
