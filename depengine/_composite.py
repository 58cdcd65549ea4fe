"""Ops made of several ops: bulks and plan runs.

A composite is registered with the engine as one op that reads what its
members read and writes what they write, counting each member's write (so
versions come out as if every member had been pushed).  Inside, members run
in push order (or a topological order of it) under the same failure rules as
pushed ops: a member that raises fails its writes; a member naming a failed
var is skipped (unless ``always_run``) and its writes inherit the failure.
The composite ends with a :class:`Composite` outcome that tells the engine,
var by var, which failure each written var carries.
"""

from __future__ import annotations

from . import _op, profiler

__all__ = ["Composite", "run_members", "seed_failures"]


class Composite(Exception):
    """The outcome of a composite op: per-var failures and the exceptions members raised."""

    def __init__(self) -> None:
        super().__init__("composite outcome")
        self.failures: dict = {}   # var -> exception it carries after the composite
        self.origins: list = []    # exceptions raised by members, in the order they happened


def seed_failures(parent, vars_) -> dict:
    """Failures visible to ``parent`` (a registered op) on ``vars_``: what members start from."""
    seq = parent.id
    return {v: v._failure for v in vars_ if v._failure is not None and seq < v._clear_seq}


def run_members(members, failures: dict, outcome: Composite, prof=None, versions: dict | None = None) -> None:
    """Run ``members`` (Op objects) in order; ``failures`` maps vars to the failure they carry."""
    if not failures and prof is None:  # the common case: nothing failed, nothing recorded
        done = _op.DONE
        m = None
        try:
            for m in members:
                m.fn(m)
                m._state = done
        except BaseException as exc:  # m raised (once: it is not run again); the rest run carefully
            _run_careful(members[members.index(m):], failures, outcome, None, None, exc)
        return
    _run_careful(members, failures, outcome, prof, versions)


def _run_careful(members, failures, outcome, prof, versions, raised=None) -> None:
    """Run ``members`` one by one; ``raised`` is what the first of them already raised."""
    for m in members:
        err = None
        origin = False
        if failures and not m.always_run and raised is None:
            for v in m.reads + m.writes:
                err = failures.get(v)
                if err is not None:
                    break
        if prof is not None:
            profiler.stamp_started(m)
        if err is None:
            exc, raised = raised, None
            if exc is None:
                m._state = _op.RUNNING
                try:
                    m.fn(m)
                except BaseException as e:
                    exc = e
            if exc is not None:
                exc.add_note(f"depengine: raised by op {m.name!r} (#{m.id})")
                outcome.origins.append(exc)
                err, origin = exc, True
        if err is None:
            m._state = _op.DONE
            for v in m.writes:
                failures.pop(v, None)
        else:
            m.error = err
            m._state = _op.FAILED if origin else _op.SKIPPED
            for v in m.writes:
                failures[v] = err
        if prof is not None:
            reads = [versions.get(v, v.version) for v in m.reads]
            writes = []
            for v in m.writes:
                before = versions.get(v, v.version)
                writes.append(before)
                versions[v] = before + 1
            prof.member_ended(m, reads, writes)
