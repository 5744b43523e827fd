"""benchmarks/bench_next_clip.py: the device selection (a GPU simulated present / absent on this CPU machine),
the CUDA backend it builds, and the interleaved rounds with shares of the same round's peak."""
import pytest
import torch

from benchmarks import bench_next_clip as bench


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture
def fake_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)


def test_device_selection_without_a_gpu(no_gpu):
    assert bench.pick_device("auto") == "cpu" and bench.pick_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="--device cuda: no CUDA device is visible.*use --device cpu"):
        bench.pick_device("cuda")
    with pytest.raises(ValueError, match="'tpu' is not a benchmark device; choose one of cpu, cuda, auto"):
        bench.pick_device("tpu")


def test_device_selection_with_a_gpu_builds_the_cuda_backend_with_sdpa(fake_gpu):
    """On a GPU: the CUDA backend, bf16, the blocks of dense SDPA calls (flash kernels in bf16), eager by
    default (the compiled rows compile their own copies)."""
    from tools.backends.attention import sdpa_dense
    from tools.backends.cuda import CUDABackend

    assert bench.pick_device("auto") == "cuda" and bench.pick_device("cuda") == "cuda"
    be = bench.make_backend("auto")
    assert isinstance(be, CUDABackend) and be.device == torch.device("cuda", 0)
    assert be.precision == "bf16" and be.autocast_dtype == torch.bfloat16 and be.compile == "off"
    assert be.attention_kernel(training=True) == ("blocks", sdpa_dense)


def test_make_backend_on_cpu(no_gpu):
    from tools.backends.cpu import CPUBackend, native_bf16

    be = bench.make_backend("auto")
    assert isinstance(be, CPUBackend) and be.precision == ("bf16" if native_bf16() else "fp32")


class FakeBackend:
    autocast_dtype = torch.bfloat16

    def __init__(self, peaks, calls):
        self.peaks, self.calls = iter(peaks), calls

    def matmul_peak_gflops(self, dtype):
        self.calls.append("peak")
        return next(self.peaks)

    def synchronize(self):
        pass


def test_rounds_interleave_rows_and_take_shares_of_the_same_rounds_peak():
    """Round r measures its peak, then every row once; a share is per round (FLOPs / time / that round's peak),
    then the median: times 1, 1, 4 s at peaks 100, 400, 200 GFLOP/s give shares 1, 0.25, 0.125 -> 0.25
    (the median time over the median peak would say 0.5)."""
    calls = []
    times = {"a": iter([1.0, 1.0, 4.0]), "b": iter([0.1, 0.2, 0.3])}

    def row(name):
        def fn():
            calls.append(name)
            return next(times[name])
        return fn

    rows = {"a": (row("a"), 100e9), "b": (row("b"), None)}
    out = bench.run_rounds(FakeBackend([100.0, 400.0, 200.0], calls), rows, 3)
    assert calls == ["peak", "a", "b"] * 3
    a = out["rows"]["a"]
    assert a["ms"] == 1000.0 and a["peak_share_rounds"] == [1.0, 0.25, 0.125]
    assert a["peak_share"] == 0.25 and a["flop_limit_multiple"] == 4.0 and a["gflop"] == 100.0
    assert out["rows"]["b"]["ms"] == pytest.approx(200.0) and "peak_share" not in out["rows"]["b"]
    assert out["peak_gflops"]["median"] == 200.0 and "bfloat16" in out["peak_gflops"]["definition"]
    assert len(out["load_avg"]) == 3
