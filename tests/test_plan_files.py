"""Hostile plan files: loading one fails with a clear PlanError and does nothing else.

A corpus of malicious or broken files, built here from a valid one: pickle payloads (a whole pickle, a
pickled object array, a pickle member), unknown operations, wrong versions, dtypes and shapes that do not
match, declared sizes that do not match the file, truncations, deep nesting, path tricks inside the
archive, duplicate and dangling ids, views outside their buffer.  Each must raise PlanError, push
nothing, allocate nothing large (tracemalloc's peak is measured) and run nothing (a payload that would
create a file must not).  Hypothesis then fuzzes the reader's bytes and its JSON for a bounded number of
examples: PlanError is the only exception it may raise.
"""

from __future__ import annotations

import copy
import io
import json
import pickle
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ops as nd
from ops import PlanError

SMALL = 16 * 2**20  # bytes: the most a rejected file may make the loader allocate


@pytest.fixture
def eng(nd_engine):
    return nd_engine


@pytest.fixture
def valid(eng, tmp_path):
    """A valid plan file (a small training step) and its graph and members."""
    w = nd.array(np.linspace(-1, 1, 12).reshape(3, 4))
    w.attach_grad()

    def step(x):
        with nd.autograd.record():
            loss = nd.relu(x @ w).sum()
        loss.backward()
        w[...] = w - 0.1 * w.grad
        return loss
    path = tmp_path / "valid.plan"
    nd.hybridize(step, nd.array(np.ones((2, 3)))).save(path)
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    return path, json.loads(members["plan.json"]), members


def _zip(path, members: dict, extra=()):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in [*members.items(), *extra]:
            z.writestr(name, data)
    return path


def _with_graph(tmp_path, members, doc, name="bad.plan"):
    return _zip(tmp_path / name, {**members, "plan.json": json.dumps(doc).encode()})


def _npy(array, allow_pickle=False) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


class _Payload:
    """Unpickling this creates a file: proof that something ran."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _expect(eng, path, match, marker=None):
    eng.wait_all()
    seq = eng._seq
    tracemalloc.start()
    try:
        with pytest.raises(PlanError, match=match):
            nd.load_plan(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < SMALL, f"loading {path} allocated {peak} bytes before it failed"
    assert eng._seq == seq, "a rejected file pushed ops"
    if marker is not None:
        assert not marker.exists(), "the payload ran"


def _first_stored(doc):
    return next(b for b in doc["buffers"] if "data" in b)


# ---------------------------------------------------------------------- corpus
def test_the_valid_file_loads(valid):
    path, doc, _ = valid
    assert nd.load_plan(path).name == "step"
    assert any("data" in b for b in doc["buffers"])


def test_pickle_payloads_never_run(eng, valid, tmp_path):
    _, doc, members = valid
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(_Payload(proof)))
    assert proof.exists()  # the payload is live: unpickling it creates its file
    marker = tmp_path / "pwned"
    whole = tmp_path / "pickle.plan"
    whole.write_bytes(pickle.dumps(_Payload(marker)))
    _expect(eng, whole, "not a zip archive", marker)
    b = _first_stored(doc)
    objects = np.empty(np.prod(b["shape"]), dtype=object)
    objects[:] = [_Payload(marker)] * objects.size
    in_npy = _zip(tmp_path / "npy.plan", {**members, b["data"]: _npy(objects.reshape(b["shape"]), True)})
    _expect(eng, in_npy, "holds object", marker)
    member = _zip(tmp_path / "member.plan", members, [("payload.pkl", pickle.dumps(_Payload(marker)))])
    _expect(eng, member, "unexpected member 'payload.pkl'", marker)
    assert not marker.exists()


def test_unknown_operations_versions_and_formats(eng, valid, tmp_path):
    _, doc, members = valid
    bad = copy.deepcopy(doc)
    bad["ops"][0]["op"] = "__import__('os').system('touch pwned')"
    _expect(eng, _with_graph(tmp_path, members, bad), "unknown operation")
    for field, value, match in (("version", 2, "format version 2; this depengine reads version 1"),
                                ("format", "depengine-trace", "format 'depengine-trace'"),
                                ("device", "tpu", r"Expected `str` matching|tpu"),
                                ("surprise", 1, "unknown field")):
        bad = {**doc, field: value}
        _expect(eng, _with_graph(tmp_path, members, bad), match)
    foreign = tmp_path / "foreign.plan"
    foreign.write_text(json.dumps({"traceEvents": []}))
    _expect(eng, foreign, "not a zip archive")
    _expect(eng, _zip(tmp_path / "trace.plan", {"plan.json": b'{"traceEvents": []}'}), "not a plan graph")
    empty = tmp_path / "empty.plan"
    empty.write_bytes(b"")
    _expect(eng, empty, "not a zip archive")


def test_dtypes_and_shapes_that_do_not_match(eng, valid, tmp_path):
    _, doc, members = valid
    b = _first_stored(doc)
    data = members[b["data"]]
    for change, match in ((lambda e: e.update(dtype="float32"), "holds float64"),
                          (lambda e: e.update(shape=[*e["shape"], 1]), "holds float64"),
                          (lambda e: e.update(dtype="object"), "has dtype 'object'"),
                          (lambda e: e.update(dtype="complex128"), "has dtype 'complex128'")):
        bad = copy.deepcopy(doc)
        change(_first_stored(bad))
        _expect(eng, _with_graph(tmp_path, {**members, b["data"]: data}, bad), match)
    bad = copy.deepcopy(doc)
    first_op = bad["ops"][0]
    bad["arrays"].append({"id": 999, "buffer": _first_stored(bad)["id"], "shape": [1], "strides": [1]})
    first_op["out"] = 999  # a product written into an array of the wrong shape
    _expect(eng, _with_graph(tmp_path, members, bad), "does not fit|has shape")


def test_lying_sizes_allocate_nothing(eng, valid, tmp_path):
    _, doc, members = valid
    b = _first_stored(doc)
    huge = [10**12]
    bad = copy.deepcopy(doc)
    _first_stored(bad)["shape"] = huge  # the .npy still holds the small array
    _expect(eng, _with_graph(tmp_path, members, bad), "holds float64")
    header_only = io.BytesIO()
    np.lib.format.write_array_header_1_0(header_only,
                                         {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
    lying = _with_graph(tmp_path, {**members, b["data"]: header_only.getvalue() + b"\0" * 64}, bad)
    _expect(eng, lying, "sizes do not match")
    bad = copy.deepcopy(doc)
    bad["buffers"].append({"id": 77, "dtype": "float64", "shape": huge})  # no data: it would be allocated
    _expect(eng, _with_graph(tmp_path, members, bad), "more than max_bytes")


def test_truncated_and_corrupted_files(eng, valid, tmp_path):
    path, doc, members = valid
    raw = path.read_bytes()
    for k in range(1, 8):
        cut = tmp_path / f"cut{k}.plan"
        cut.write_bytes(raw[: len(raw) * k // 8])
        _expect(eng, cut, "not a zip archive|cannot be read|truncated|holds")
    with zipfile.ZipFile(path) as z:  # a byte of an array's data changed in the file: its CRC no longer holds
        info = z.getinfo(_first_stored(doc)["data"])
    flipped = bytearray(raw)
    flipped[info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size - 1] ^= 0xFF
    crc = tmp_path / "crc.plan"
    crc.write_bytes(bytes(flipped))
    _expect(eng, crc, "Bad CRC")
    _expect(eng, _zip(tmp_path / "half.plan", {**members, "plan.json": members["plan.json"][:40]}),
            "not a plan graph")


def test_deep_nesting(eng, valid, tmp_path):
    _, doc, members = valid
    deep = b'{"format": "depengine-plan", "version": 1, "ops": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    _expect(eng, _zip(tmp_path / "deep.plan", {**members, "plan.json": deep}), "plan.json")
    b = _first_stored(doc)
    header = b"{'descr': " + b"(" * 3000 + b")" * 3000 + b", 'fortran_order': False, 'shape': (2,), }"
    npy = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header
    _expect(eng, _zip(tmp_path / "deepnpy.plan", {**members, b["data"]: npy}), "not a plain .npy array")


@pytest.mark.parametrize("name", ["../evil.npy", "/abs/plan.json", "arrays/../../x.npy", "C:\\x.npy",
                                  "arrays\\0.npy"])
def test_path_tricks_inside_the_archive(eng, valid, tmp_path, name):
    _, _, members = valid
    trick = _zip(tmp_path / "trick.plan", members, [(name, b"x")])
    _expect(eng, trick, "unsafe member name|unexpected member")


def test_a_data_field_cannot_name_another_file(eng, valid, tmp_path):
    _, doc, members = valid
    bad = copy.deepcopy(doc)
    _first_stored(bad)["data"] = "../../etc/passwd"
    _expect(eng, _with_graph(tmp_path, members, bad), "its data can only be arrays/")


def test_duplicate_and_dangling_ids(eng, valid, tmp_path):
    _, doc, members = valid
    cases = []
    bad = copy.deepcopy(doc)
    bad["buffers"].append(copy.deepcopy(bad["buffers"][0]))
    cases.append((bad, "buffer id 0 is declared twice"))
    bad = copy.deepcopy(doc)
    bad["arrays"].append(copy.deepcopy(bad["arrays"][0]))
    cases.append((bad, "array id 0 is declared twice"))
    bad = copy.deepcopy(doc)
    bad["arrays"][0]["buffer"] = 4242
    cases.append((bad, "buffer 4242, which is not declared"))
    bad = copy.deepcopy(doc)
    bad["ops"][0]["args"][0] = {"array": 4242}
    cases.append((bad, "reads array 4242, which is not declared"))
    bad = copy.deepcopy(doc)
    bad["inputs"] = [4242]
    cases.append((bad, "inputs names array 4242"))
    bad = copy.deepcopy(doc)
    bad["ops"][0]["args"] = bad["ops"][0]["args"][:1]
    cases.append((bad, "takes 2 operands, the file gives 1"))
    for k, (bad, match) in enumerate(cases):
        _expect(eng, _with_graph(tmp_path, members, bad, f"ids{k}.plan"), match)
    twice = tmp_path / "twice.plan"
    with pytest.warns(UserWarning, match="Duplicate name"):
        _zip(twice, members, [("plan.json", members["plan.json"])])
    _expect(eng, twice, "present twice")


def test_views_outside_their_buffer(eng, valid, tmp_path):
    _, doc, members = valid
    for k, (field, value, match) in enumerate((("offset", 10**9, "reaches elements"),
                                               ("strides", [10**15, 1], "reaches elements"),
                                               ("strides", [-1, 1], "reaches elements"),
                                               ("strides", [0, 1], "more than once|reaches"),
                                               ("shape", [1, 2, 3], "do not describe a view"))):
        bad = copy.deepcopy(doc)
        view = next(a for a in bad["arrays"] if len(a["shape"]) == 2 and a["shape"][0] > 1)
        view[field] = value
        _expect(eng, _with_graph(tmp_path, members, bad, f"view{k}.plan"), match)


def test_a_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        nd.load_plan(tmp_path / "nothing.plan")


# ----------------------------------------------------------------------- fuzz
def _load_or_plan_error(path):
    try:
        nd.load_plan(path)
    except PlanError:
        pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255),
                                st.sampled_from(["flip", "cut", "insert"])), min_size=1, max_size=4))
def test_fuzzed_bytes_raise_only_plan_errors(valid, tmp_path, edits):
    path, _, _ = valid
    raw = bytearray(path.read_bytes())
    for where, byte, how in edits:
        k = min(int(where * len(raw)), max(len(raw) - 1, 0))
        if how == "flip" and raw:
            raw[k] ^= byte or 1
        elif how == "cut":
            del raw[k:]
        else:
            raw[k:k] = bytes([byte])
    fuzzed = tmp_path / "fuzzed.plan"
    fuzzed.write_bytes(bytes(raw))
    _load_or_plan_error(fuzzed)


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                     | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                  max_size=4), max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_graphs_raise_only_plan_errors(valid, tmp_path, data):
    _, doc, members = valid
    bad = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(1, 3))):
        node, key = bad, None
        while True:  # walk down to a random place of the graph and replace what is there
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            if not keys:
                break
            key = data.draw(st.sampled_from(keys))
            if not isinstance(node[key], (dict, list)) or data.draw(st.booleans()):
                break
            node, key = node[key], None
        if key is not None:
            node[key] = data.draw(_JSON)
    _load_or_plan_error(_with_graph(tmp_path, members, bad, "fuzzed.plan"))
