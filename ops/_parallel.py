"""One op, several workers: an op body that splits its work into parts.

A large op (or a fused kernel of a recorded plan) is still one op: it holds
its vars, writes its output once and fails at most once.  While it runs, it
pushes helper ops that name no var (so they start as soon as a worker is
free) and then runs parts itself; each participant takes the next part not
yet taken, so the op never waits for a part nobody started, and a helper
that starts after every part was taken returns at once.  The op ends when
every part has ended; a part that raised makes the op raise that exception
(with a note naming the part), so the user sees one failure.

In a profile the helpers are ops named ``"<op> part"`` that read and write
nothing and run while their op runs.
"""

from __future__ import annotations

import itertools
import threading

__all__ = ["HELPER_PRIORITY", "run_parts", "workers_for"]

HELPER_PRIORITY = 1 << 20  # helpers start before queued work: they only speed up a running op


class _Split:
    __slots__ = ("errors", "event", "finished", "n", "run", "taken")

    def __init__(self, n: int, run) -> None:
        self.n = n
        self.run = run
        self.taken = itertools.count()      # next() is atomic under the GIL
        self.finished = itertools.count(1)
        self.errors: list = []
        self.event = threading.Event()

    def work(self) -> None:
        n = self.n
        run = self.run
        while True:
            i = next(self.taken)
            if i >= n:
                return
            try:
                run(i)
            except BaseException as exc:
                exc.add_note(f"ops: raised by part {i + 1} of {n}")
                self.errors.append(exc)
            if next(self.finished) == n:
                self.event.set()

    def helper(self, ctx) -> None:
        self.work()


def workers_for(eng) -> int:
    """How many threads may run parts of one op on ``eng`` (1: run it whole)."""
    return 1 if eng.type == "naive" else eng.options.workers


def run_parts(eng, name: str, n: int, run) -> None:
    """Run ``run(i)`` for each ``i < n`` here and on idle workers of ``eng``; raise the first failure."""
    if n == 1:
        run(0)
        return
    split = _Split(n, run)
    for _ in range(min(workers_for(eng), n) - 1):
        eng.push(split.helper, (), (), f"{name} part", HELPER_PRIORITY)
    split.work()
    split.event.wait()
    if split.errors:
        raise split.errors[0]
