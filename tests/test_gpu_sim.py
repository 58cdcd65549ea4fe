"""GPU scheduling on the simulated runtime: stream/event rules, hazards, the per-device engine."""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest

import depengine as de
from scheduler.runtime import CudaError, HazardError, KernelSource, get_runtime
from scheduler.sim_runtime import SimRuntime
from tests.programs import MASK, Step, mix, run_serial


@pytest.fixture
def sim(monkeypatch):
    monkeypatch.setenv("DEPENGINE_GPU", "sim")
    return get_runtime("sim")


def _launch1(rt, kernel, buf, stream) -> None:
    """Launch a one-thread kernel on ``buf`` viewed as one float64."""
    rt.launch(kernel, (1,), (1,), [rt.kernel_arg(buf, np.float64, (1,))], stream)


def _kernel(name: str, access: tuple[str, ...], fn) -> KernelSource:
    params = ", ".join(f"double* a{i}" if m else f"long a{i}" for i, m in enumerate(access))
    src = f'extern "C" __global__ void {name}({params}) {{ }}'
    return KernelSource(name, src, fn, access)


def _gate_kernel(gate: threading.Event, log: list, tag: str):
    def fn(out):
        log.append(f"{tag}:start")
        gate.wait(20)
        out[0] += 1
        log.append(f"{tag}:end")
    return fn


# ------------------------------------------------------------ runtime rules
def test_waiting_on_a_never_recorded_event_is_a_no_op():
    rt = SimRuntime(1)
    s = rt.create_stream(0, "s")
    e = rt.create_event(0)
    rt.stream_wait(s, e)  # no deadlock: nothing recorded
    assert rt.query(e)
    rt.synchronize(e)
    rt.synchronize_stream(s)
    rt.close_stream(s)


def test_stream_wait_captures_the_latest_record_at_call_time():
    rt = SimRuntime(1)
    s1, s2 = rt.create_stream(0, "s1"), rt.create_stream(0, "s2")
    a, b = rt.alloc(0, 8, s1), rt.alloc(0, 8, s1)
    first, second = threading.Event(), threading.Event()
    log: list = []
    mod = rt.compile([_kernel("k1", ("rw",), _gate_kernel(first, log, "k1")),
                      _kernel("k2", ("rw",), _gate_kernel(second, log, "k2")),
                      _kernel("k3", ("r",), lambda x: log.append("k3"))])
    try:
        e = rt.create_event(0)
        _launch1(rt, mod["k1"], a, s1)
        rt.record(e, s1)
        rt.stream_wait(s2, e)  # captures the first record only
        _launch1(rt, mod["k2"], b, s1)
        rt.record(e, s1)       # a later record must not delay s2
        _launch1(rt, mod["k3"], a, s2)
        assert not rt.query(e)
        first.set()
        s2_done = rt.create_event(0)
        rt.record(s2_done, s2)
        rt.synchronize(s2_done)  # k3 finished although k2 is still blocked
        assert "k3" in log and "k2:end" not in log
        with pytest.raises(HazardError):  # and s2 is not ordered after k2
            _launch1(rt, mod["k3"], b, s2)
        second.set()
        rt.synchronize(e)
        assert log[-1] == "k2:end" and rt.query(e)
    finally:
        first.set()
        second.set()
        for s in (s1, s2):
            rt.close_stream(s)


def test_two_streams_really_overlap():
    rt = SimRuntime(1)
    s1, s2 = rt.create_stream(0, "a"), rt.create_stream(0, "b")
    barrier = threading.Barrier(2, timeout=20)
    mod = rt.compile([_kernel("meet", ("w",), lambda out: barrier.wait())])
    b1, b2 = rt.alloc(0, 8, s1), rt.alloc(0, 8, s2)
    _launch1(rt, mod["meet"], b1, s1)
    _launch1(rt, mod["meet"], b2, s2)
    rt.synchronize_stream(s1)  # raises (BrokenBarrierError) unless both kernels ran at once
    rt.synchronize_stream(s2)
    rt.close_stream(s1)
    rt.close_stream(s2)


def test_missing_cross_stream_wait_is_a_hazard_at_enqueue():
    rt = SimRuntime(1)
    s1, s2 = rt.create_stream(0, "producer"), rt.create_stream(0, "consumer")
    mod = rt.compile([_kernel("w", ("w",), lambda a: None), _kernel("r", ("r",), lambda a: None)])
    buf = rt.alloc(0, 8, s1)
    view = rt.kernel_arg(buf, np.float64, (1,))
    rt.launch(mod["w"], (1,), (1,), [view], s1)
    with pytest.raises(HazardError, match="missing stream wait"):
        rt.launch(mod["r"], (1,), (1,), [view], s2)   # read-after-write, no wait
    e = rt.create_event(0)
    rt.record(e, s1)
    rt.stream_wait(s2, e)
    rt.launch(mod["r"], (1,), (1,), [view], s2)       # now ordered
    with pytest.raises(HazardError, match="still being read"):
        rt.launch(mod["w"], (1,), (1,), [view], s1)   # write-after-read, no wait
    e2 = rt.create_event(0)
    rt.record(e2, s2)
    rt.synchronize(e2)                                # the host saw s2 finish ...
    rt.launch(mod["w"], (1,), (1,), [view], s1)       # ... so later work is ordered after it
    with pytest.raises(HazardError, match="without synchronising"):
        rt.check_host_access(buf, "r")                # host read before syncing s1
    rt.synchronize_stream(s1)
    rt.check_host_access(buf, "r")
    for s in (s1, s2):
        rt.close_stream(s)


def test_a_failing_kernel_is_sticky_and_reported_on_synchronize():
    rt = SimRuntime(1)
    s = rt.create_stream(0, "s")
    mod = rt.compile([_kernel("bad", ("w",), lambda a: 1 / 0)])
    buf = rt.alloc(0, 8, s)
    _launch1(rt, mod["bad"], buf, s)
    e = rt.create_event(0)
    rt.record(e, s)
    with pytest.raises(CudaError, match=r"CUDA_ERROR_LAUNCH_FAILED.*ZeroDivisionError"):
        rt.synchronize(e)
    rt.close_stream(s)


def test_graph_capture_records_work_and_launches_replay_it():
    rt = SimRuntime(1)
    s1, s2 = rt.create_stream(0, "s1"), rt.create_stream(0, "s2")
    mod = rt.compile([_kernel("inc", ("rw",), lambda a: a.__setitem__(0, a[0] + 1)),
                      _kernel("r", ("r",), lambda a: None)])
    buf = rt.alloc(0, 8, s1)
    view = rt.kernel_arg(buf, np.float64, (1,))
    host = np.zeros(1)
    rt.begin_capture(s1)
    scratch = rt.alloc(0, 8, s1)                     # graph-owned scratch, freed in the graph
    rt.launch(mod["inc"], (1,), (1,), [view], s1)
    _launch1(rt, mod["inc"], scratch, s1)
    rt.free(scratch, s1)
    with pytest.raises(CudaError, match="STREAM_CAPTURE_UNSUPPORTED"):
        rt.record(rt.create_event(0), s1)
    graph = rt.end_capture(s1)
    rt.synchronize_stream(s1)
    rt.copy_dtoh(host, buf, s1)
    rt.synchronize_stream(s1)
    assert host[0] == 0                              # capturing ran nothing
    for k in range(1, 4):
        rt.launch_graph(graph, s1)
        rt.copy_dtoh(host, buf, s1)
        rt.synchronize_stream(s1)
        assert host[0] == k
    rt.launch_graph(graph, s1)
    with pytest.raises(HazardError, match="missing stream wait"):
        rt.launch_graph(graph, s2)                   # on another stream without waiting for s1
    rt.begin_capture(s2)
    rt.alloc(0, 8, s2)
    with pytest.raises(CudaError, match="not freed"):
        rt.end_capture(s2)                           # memory would outlive the graph
    rt.begin_capture(s2)
    rt.launch(mod["r"], (1,), (1,), [view], s2)      # no hazard check until launch
    rt.abort_capture(s2)
    rt.launch_graph(graph, s1)                       # the aborted capture left nothing behind
    rt.copy_dtoh(host, buf, s1)
    rt.synchronize_stream(s1)
    assert host[0] == 5
    for s in (s1, s2):
        rt.close_stream(s)


# ----------------------------------------------------------- device choice
def test_gpu_devices_and_errors(monkeypatch, sim):
    assert de.devices() == [de.cpu(), de.gpu(0), de.gpu(1)]
    with pytest.raises(de.DeviceUnavailableError, match=r"gpu\(2\) does not exist: the sim runtime has 2"):
        de.gpu(2)
    with pytest.raises(ValueError, match="gpu index=-1"):
        de.gpu(-1)
    monkeypatch.setenv("DEPENGINE_GPU", "bogus")
    with pytest.raises(de.DeviceUnavailableError, match="DEPENGINE_GPU='bogus'"):
        de.gpu(0)


def test_real_gpu_without_a_driver_gives_a_clear_reason(monkeypatch):
    monkeypatch.delenv("DEPENGINE_GPU", raising=False)
    try:
        get_runtime("cuda")
    except Exception as exc:  # this machine has no GPU: check the message
        with pytest.raises(de.DeviceUnavailableError) as info:
            de.gpu(0)
        text = str(info.value)
        assert text.startswith("gpu(0) is not available: ")
        assert any(w in text for w in ("driver", "cuda-python", "device")), text
        assert type(exc).__name__ == "RuntimeUnavailable"
    else:  # pragma: no cover - a machine with a GPU
        assert de.gpu(0) == de.Device("gpu", 0)


# --------------------------------------------------------- engine on a GPU
class Dev:
    """Values of vars kept in 8-byte device buffers on simulated gpu0."""

    def __init__(self, eng, nvars):
        self.eng = eng
        rt = eng.gpu_runtime(de.gpu(0))
        self.rt = rt
        self.vars = [eng.new_var(f"x{i}") for i in range(nvars)]
        stream = rt.create_stream(0, "setup")
        self.bufs = [rt.alloc(0, 8, stream) for _ in range(nvars)]
        rt.synchronize_stream(stream)
        rt.close_stream(stream)
        self.kernels: dict = {}

    def value(self, i) -> int:
        self.rt.check_host_access(self.bufs[i], "r")
        return int(self.bufs[i].view(np.uint64, (1,))[0])

    def kernel(self, nin: int, nout: int):
        key = (nin, nout)
        if key not in self.kernels:
            def fn(*arrays, nin=nin, nout=nout):
                outs, ins, index = arrays[:nout], arrays[nout:nout + nin], arrays[-1]
                inputs = [int(a[0]) for a in ins]
                for o in outs:
                    o[0] = np.uint64(mix(int(o[0]), inputs, int(index)))
            k = _kernel(f"mix_{nin}_{nout}", ("rw",) * nout + ("r",) * nin + ("",), fn)
            self.kernels[key] = self.rt.compile([k])[k.name]
        return self.kernels[key]


def _push_step(d: Dev, s: Step, where: str):
    writes = sorted(set(s.writes))
    reads = [r for r in s.reads if r not in s.writes]

    def gpu_body(ctx):
        if s.fails:
            raise RuntimeError(f"step {s.index} fails")
        rt = d.rt
        args = [rt.kernel_arg(d.bufs[i], np.uint64, (1,)) for i in writes + reads] + [s.index]
        rt.launch(d.kernel(len(reads), len(writes)), (1,), (1,), args, ctx.stream)

    def cpu_body(ctx):
        if s.fails:
            raise RuntimeError(f"step {s.index} fails")
        inputs = [d.value(r) for r in reads]
        for w in writes:
            d.rt.check_host_access(d.bufs[w], "w")
            d.bufs[w].view(np.uint64, (1,))[0] = np.uint64(mix(d.value(w), inputs, s.index))

    device = de.gpu(0) if where != "cpu" else None
    kind = "copy" if where == "h2d" else "normal"
    return d.eng.push(gpu_body if device else cpu_body, reads=[d.vars[r] for r in s.reads],
                      writes=[d.vars[w] for w in s.writes], device=device, kind=kind,
                      always_run=s.always_run, name=f"{where}{s.index}")


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("streams", [1, 3])
def test_random_cpu_gpu_programs_match_serial(sim, seed, streams):
    rng = random.Random(seed)
    nvars = 12
    steps = []
    for i in range(400):
        reads = tuple(rng.sample(range(nvars), rng.randint(0, 3)))
        writes = tuple(rng.sample(range(nvars), rng.randint(1, 2)))
        steps.append(Step(i, reads, writes, fails=rng.random() < 0.01, always_run=rng.random() < 0.01))
    places = [rng.choice(["cpu", "gpu", "gpu", "h2d"]) for _ in steps]
    with de.Engine("perdevice", workers=2, gpu_streams=streams) as eng:
        eng.push(lambda ctx: None, device=de.gpu(0))  # start gpu0's streams
        eng.wait_all()
        d = Dev(eng, nvars)
        ops = [_push_step(d, s, where) for s, where in zip(steps, places, strict=True)]
        try:
            eng.wait_all(timeout=120)
        except RuntimeError:
            pass
        eng.wait_all()
        want = run_serial(steps, nvars)
        assert [op.state for op in ops] == want.states, f"seed={seed}"
        assert [d.value(i) for i in range(nvars)] == [v & MASK for v in want.values], f"seed={seed}"
        assert [v.version for v in d.vars] == want.versions


def test_engine_without_stream_waits_is_caught_as_a_hazard(sim, monkeypatch):
    with de.Engine("perdevice", workers=1, gpu_streams=2) as eng:
        eng.push(lambda ctx: None, device=de.gpu(0))
        eng.wait_all()
        d = Dev(eng, 3)
        from depengine._gpu_lanes import GpuLanes

        monkeypatch.setattr(GpuLanes, "stream_waits", lambda self, op, stream: None)
        # two producers on two different streams, then a consumer of both
        gates = [threading.Event(), threading.Event()]
        k = d.rt.compile([_kernel("slow", ("w",), lambda a, g=gates[0]: g.wait(20))])["slow"]

        def producer(i):
            def body(ctx):
                d.rt.launch(k, (1,), (1,), [d.rt.kernel_arg(d.bufs[i], np.uint64, (1,))], ctx.stream)
            return body

        p0 = eng.push(producer(0), writes=[d.vars[0]], device=de.gpu(0), name="p0")
        p1 = eng.push(producer(1), writes=[d.vars[1]], device=de.gpu(0), name="p1")
        _push_step(d, Step(99, (0, 1), (2,)), "gpu")  # no host sync in between
        try:
            with pytest.raises(HazardError, match="missing stream wait"):
                eng.wait_for_var(d.vars[2])
            assert p0.stream is not p1.stream
        finally:
            gates[0].set()
        eng.wait_all()


def test_ops_with_inputs_from_one_stream_stay_on_it(sim):
    with de.Engine("perdevice", workers=1, gpu_streams=3) as eng:
        v, w, x = eng.new_var("v"), eng.new_var("w"), eng.new_var("x")
        a = eng.push(lambda ctx: None, writes=[v], device=de.gpu(0))
        b = eng.push(lambda ctx: None, reads=[v], writes=[w], device=de.gpu(0))
        c = eng.push(lambda ctx: None, reads=[w], writes=[x], device=de.gpu(0))
        eng.wait_all()
        assert a.stream is b.stream is c.stream
        # independent producers spread over the streams
        ops = [eng.push(lambda ctx: None, writes=[eng.new_var()], device=de.gpu(0)) for _ in range(30)]
        eng.wait_all()
        assert len({id(op.stream) for op in ops}) == 3


def test_cpu_consumer_and_wait_for_var_wait_for_gpu_work(sim):
    with de.Engine("perdevice", workers=2) as eng:
        gate = threading.Event()
        log = []
        v, out = eng.new_var("v"), eng.new_var("out")
        lazily = not any(t.name.startswith("depengine-gpu") for t in eng.threads())
        eng.push(lambda ctx: None, device=de.gpu(0))
        eng.wait_all()
        rt = eng.gpu_runtime(de.gpu(0))
        s0 = rt.create_stream(0, "tmp")
        buf = rt.alloc(0, 8, s0)
        rt.synchronize_stream(s0)
        rt.close_stream(s0)
        slow = _kernel("slow", ("w",), lambda a: (gate.wait(20), log.append("kernel done")))
        kern = rt.compile([slow])["slow"]
        eng.push(lambda ctx: rt.launch(kern, (1,), (1,), [rt.kernel_arg(buf, np.float64, (1,))], ctx.stream),
                 writes=[v], device=de.gpu(0), name="gpu")
        eng.push(lambda ctx: log.append("cpu reads"), reads=[v], writes=[out], name="cpu")
        threading.Timer(0.05, gate.set).start()
        eng.wait_for_var(out)
        assert log == ["kernel done", "cpu reads"]
        assert lazily  # the GPU's streams started with the first GPU push
        gate.clear()
        eng.push(lambda ctx: rt.launch(kern, (1,), (1,), [rt.kernel_arg(buf, np.float64, (1,))], ctx.stream),
                 writes=[v], device=de.gpu(0), name="gpu2")
        threading.Timer(0.05, gate.set).start()
        eng.wait_for_var(v)  # returns only once the kernel has run
        assert log[-1] == "kernel done"
        rt.check_host_access(buf, "r")


def test_kernel_failure_reaches_wait_for_var(sim):
    with de.Engine("perdevice", workers=1) as eng:
        v = eng.new_var("v")
        eng.push(lambda ctx: None, device=de.gpu(0))
        eng.wait_all()
        rt = eng.gpu_runtime(de.gpu(0))
        s0 = rt.create_stream(0, "tmp")
        buf = rt.alloc(0, 8, s0)
        rt.synchronize_stream(s0)
        rt.close_stream(s0)
        bad = rt.compile([_kernel("bad", ("w",), lambda a: 1 / 0)])["bad"]
        eng.push(lambda ctx: rt.launch(bad, (1,), (1,), [rt.kernel_arg(buf, np.float64, (1,))], ctx.stream),
                 writes=[v], device=de.gpu(0))
        with pytest.raises(CudaError, match="ZeroDivisionError"):
            eng.wait_for_var(v)


def test_bad_device_and_kind(sim):
    with de.Engine("perdevice", workers=1) as eng:
        with pytest.raises(TypeError, match=r"device='gpu' must be de\.cpu"):
            eng.push(lambda ctx: None, device="gpu")
        with pytest.raises(ValueError, match="kind='fast'"):
            eng.push(lambda ctx: None, kind="fast")
        with pytest.raises(de.DeviceUnavailableError, match="does not exist"):
            eng.push(lambda ctx: None, device=de.Device("gpu", 7))
    with de.Engine("threaded", workers=1) as eng, pytest.raises(ValueError, match="perdevice"):
        eng.push(lambda ctx: None, device=de.gpu(0))


def test_gpu_sizes_from_environment(sim, monkeypatch):
    monkeypatch.setenv("DEPENGINE_GPU_STREAMS", "3")
    monkeypatch.setenv("DEPENGINE_COPY_WORKERS", "2")
    with de.Engine("perdevice", workers=1) as eng:
        assert eng.options.gpu_streams == 3 and eng.options.copy_workers == 2
        eng.push(lambda ctx: None, device=de.gpu(1))
        eng.push(lambda ctx: None, kind="copy")
        eng.wait_all()
        names = [t.name for t in eng.threads()]
        assert len([n for n in names if n.startswith("depengine-gpu1-s")]) == 3
        assert len([n for n in names if n.startswith("depengine-copy")]) == 2
    monkeypatch.setenv("DEPENGINE_GPU_STREAMS", "0")
    with pytest.raises(ValueError, match="DEPENGINE_GPU_STREAMS=0 must be >= 1"):
        de.Engine("perdevice")


def test_profile_records_gpu_lanes_and_finish_times(sim):
    with de.profile() as prof, de.Engine("perdevice", workers=1) as eng:
        v = eng.new_var("v")
        eng.push(lambda ctx: None, writes=[v], device=de.gpu(0), name="gpu-op")
        eng.push(lambda ctx: None, reads=[v], name="cpu-op")
        eng.wait_all()
    recs = {r.name: r for r in prof.trace().ops}
    assert recs["gpu-op"].lane.startswith("gpu0-s") and recs["gpu-op"].device == "gpu(0)"
    assert recs["gpu-op"].gpu_end is not None and recs["gpu-op"].gpu_end >= recs["gpu-op"].start
    assert recs["cpu-op"].lane.startswith("depengine-cpu")
