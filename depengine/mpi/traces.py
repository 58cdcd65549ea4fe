"""One trace of every rank: ``eng.gather_trace(prof)``.

Each rank sends rank 0 its part of the profile as JSON (never a pickle):
the op records of its local engine, its waits, the perf-counter time of its
trace's origin, and, for every op the mpi engine pushed while the profile
recorded, the push it belongs to and, for a transfer, its two ranks, var,
version and size.  Rank 0 merges them:

- one process per rank in the Chrome trace (the device is ``rank r cpu(0)``),
  on one time axis (ranks on rank 0's host share its monotonic clock; others
  are shifted by the offset measured at the sync before the gather);
- op ids in the global push order (within a push: sends of the inputs, their
  receives, the op, write-back sends, write-back receives), so that every
  dependency points forward, as the critical path computation expects;
- var serials made unique per rank; and each transfer becomes a dependency
  from its send to its receive: a message var ``x@v3 0→1`` that the send
  writes and the receive reads.  ``depengine viz`` and Perfetto draw these
  as arrows between the ranks' processes.
"""

from __future__ import annotations

import json
from dataclasses import asdict

from ..trace import OpRecord, Trace, WaitRecord

__all__ = ["gather_trace", "merge"]


def _local_engine_index(trace: Trace, log: dict) -> int | None:
    """The engine index of this rank's local engine in its trace: the one whose ops the log names."""
    votes: dict[int, int] = {}
    for r in trace.ops:
        entry = log.get(r.id)
        if entry is not None and entry[2] == r.name:
            votes[r.engine] = votes.get(r.engine, 0) + 1
    return max(votes, key=votes.__getitem__) if votes else None


def gather_trace(engine, prof, timeout):
    """See :meth:`MpiEngine.gather_trace` (the sync has been done)."""
    trace = prof.trace()
    with engine._lock:
        log = dict(engine._log or {})
    local = _local_engine_index(trace, log)
    ops = [asdict(r) for r in trace.ops if r.engine == local]
    part = {"rank": engine.rank, "origin": trace.origin_ns, "clock": 0, "ops": ops,
            "waits": [asdict(w) for w in trace.waits],
            "log": [[op_id, *entry] for op_id, entry in log.items()]}
    transport = engine._transport
    if transport is None:
        return merge([part])
    if not transport.peers.same_host[0]:
        part["clock"] = transport.clock_offset()
    parts = transport.gather(json.dumps(part).encode("utf-8"), timeout)
    if parts is None:
        return None
    return merge([part] + [json.loads(p) for p in parts[1:]])


def merge(parts: list[dict]) -> Trace:
    """The merged Trace of every rank's part (see the module docstring)."""
    size = len(parts)
    shift = {p["rank"]: p["origin"] - p["clock"] for p in parts}
    t0 = min(shift.values())
    keyed = []   # (order key, rank, record dict)
    where = {}   # (rank, local op id) -> record dict
    moves = {}   # (src, dst, serial, gen) -> {"send": record, "recv": record, ...}
    for p in parts:
        r = p["rank"]
        log = {e[0]: e[1:] for e in p["log"]}
        dt = shift[r] - t0
        push, stage = -1, 5
        for d in sorted(p["ops"], key=lambda d: d["id"]):
            entry = log.get(d["id"])
            if entry is not None:
                push, stage, _, move = entry
            else:
                stage, move = 5, None  # an op of its own (a delete): after the last push it followed
            d = dict(d)
            for k in ("push", "ready", "start", "end"):
                d[k] += dt
            if d.get("gpu_end") is not None:
                d["gpu_end"] += dt
            d["device"] = f"rank {r} {d['device']}"
            d["lane"] = f"rank {r} {d['lane']}"
            d["reads"] = [(serial * size + r, name, ver) for serial, name, ver in d["reads"]]
            d["writes"] = [(serial * size + r, name, ver) for serial, name, ver in d["writes"]]
            keyed.append(((push, stage, r, d["id"]), r, d))
            where[(r, d["id"])] = d
            if move is not None:
                kind, src, dst, serial, name, gen, nbytes = move
                m = moves.setdefault((src, dst, serial, gen), {"var": name, "gen": gen, "bytes": nbytes,
                                                               "src": src, "dst": dst})
                m[kind] = d
    keyed.sort(key=lambda k: k[0])
    for new_id, (_, _, d) in enumerate(keyed):
        d["engine"] = 0
        d["id"] = new_id
    transfers = []
    # message vars take serials after every real var's, so a trace reader sees ordinary vars
    base = 1 + max((s for _, _, d in keyed for s, _, _ in (*d["reads"], *d["writes"])), default=-1)
    for n, m in enumerate(moves.values()):
        send, recv = m.get("send"), m.get("recv")
        label = f"{m['var']}@v{m['gen']} {m['src']}→{m['dst']}"
        if send is not None and recv is not None:  # a message var: the send writes it, the receive reads it
            send["writes"] = [*send["writes"], (base + n, label, 1)]
            recv["reads"] = [*recv["reads"], (base + n, label, 1)]
        transfers.append({"var": m["var"], "version": m["gen"], "src": m["src"], "dst": m["dst"],
                          "bytes": m["bytes"], "send": None if send is None else (0, send["id"]),
                          "recv": None if recv is None else (0, recv["id"])})
    waits = []
    for p in parts:
        dt = shift[p["rank"]] - t0
        for w in p["waits"]:
            waits.append(WaitRecord(f"rank {p['rank']} {w['thread']}", w["what"], w["start"] + dt,
                                    w["end"] + dt, w["outcome"]))
    ops = [OpRecord(**{**d, "reads": [tuple(x) for x in d["reads"]],
                       "writes": [tuple(x) for x in d["writes"]]}) for _, _, d in keyed]
    trace = Trace(ops, waits, source=f"<{size} MPI rank{'s' if size > 1 else ''}>")
    trace.transfers = transfers
    return trace
