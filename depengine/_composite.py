"""Ops made of several ops: bulks and plan runs.

A composite is registered with the engine as one op that reads what its
members read and writes what they write, counting each member's write (so
versions come out as if every member had been pushed).  Inside, members run
in push order (or a topological order of it) under the same failure rules as
pushed ops: a member that raises fails its writes; a member naming a failed
var is skipped (unless ``always_run``) and its writes inherit the failure.
When it ends, the composite leaves an :class:`Outcome` on its op
(``op._outcome``) that tells the engine, var by var, which failure each
written var carries; without one the composite simply succeeded.
"""

from __future__ import annotations

from . import _op, profiler

__all__ = ["Outcome", "record_shell", "run_members", "seed_failures"]


class Outcome:
    """How a composite op ended: per-var failures and the exceptions its members raised.

    ``members_recorded``: a profile recorded each member on its own, so the
    composite's own record must not claim the versions they made.
    """

    __slots__ = ("failures", "members_recorded", "origins")

    def __init__(self, members_recorded: bool = False) -> None:
        self.failures: dict = {}   # var -> exception it carries after the composite
        self.origins: list = []    # exceptions raised by members, in the order they happened
        self.members_recorded = members_recorded

    def worth_reporting(self) -> bool:
        """Whether the engine must read this outcome (else the composite simply succeeded)."""
        return bool(self.failures or self.origins or self.members_recorded)


class _Shell:
    """What the profiler records of a composite whose members recorded themselves."""

    __slots__ = ("_name", "_p_engine", "_p_lane", "_p_push", "_p_start", "_p_thread", "device", "id", "kind",
                 "priority", "reads", "writes")


def record_shell(op):
    """``op`` as a record without vars: its members' records carry its reads and writes."""
    shell = _Shell()
    for field in _Shell.__slots__:
        if field not in ("reads", "writes") and hasattr(op, field):
            setattr(shell, field, getattr(op, field))
    shell.reads = shell.writes = ()
    return shell


def seed_failures(parent, vars_) -> dict:
    """Failures visible to ``parent`` (a registered op) on ``vars_``: what members start from."""
    seq = parent.id
    return {v: v._failure for v in vars_ if v._failure is not None and seq < v._clear_seq}


def run_members(members, failures: dict, outcome: Outcome, prof=None, versions: dict | None = None,
                raised: BaseException | None = None) -> None:
    """Run ``members`` (Op objects) in order; ``failures`` maps vars to the failure they carry.

    ``raised``: what the first member raised already, when something else ran it.
    """
    if raised is not None:
        _run_careful(members, failures, outcome, prof, versions, raised)
        return
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
