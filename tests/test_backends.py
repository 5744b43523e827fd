"""Backend and attention-kernel selection on a CPU machine, with torch_npu / xformers simulated."""
import sys
import types

import pytest
import torch

from tools.backends import attention as att
from tools.backends.auto import detect_device_type
from utils.registry import BACKEND


@pytest.fixture
def no_npu(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_npu", None)  # "import torch_npu" raises ImportError


@pytest.fixture
def fake_npu(monkeypatch):
    mod = types.ModuleType("torch_npu")
    mod.npu_fusion_attention = lambda q, k, v, heads, input_layout, scale: (
        torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale),)
    monkeypatch.setitem(sys.modules, "torch_npu", mod)
    npu = types.SimpleNamespace(is_available=lambda: True, device_count=lambda: 2)
    monkeypatch.setattr(torch, "npu", npu, raising=False)


@pytest.fixture
def fake_xformers(monkeypatch):
    pkg = types.ModuleType("xformers")
    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    pkg.ops = ops
    monkeypatch.setitem(sys.modules, "xformers", pkg)
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)


def test_cpu_backend_basics(no_npu):
    from tools import load_components

    load_components()
    be = BACKEND.build({"type": "cpu", "precision": "bf16", "attention": "sdpa"})
    assert be.device.type == "cpu" and be.dist_backend == "gloo"
    with be.autocast():
        y = torch.randn(4, 8) @ torch.randn(8, 4)
    assert y.dtype == torch.bfloat16
    assert be.attention_kernel()[0] == "blocks"
    assert "max_rss_mib" in be.memory_stats()
    be.seed_everything(3)
    a = torch.rand(3)
    be.seed_everything(3)
    assert torch.equal(a, torch.rand(3))
    with pytest.raises(Exception, match="precision='fp16' is not supported"):
        BACKEND.build({"type": "cpu", "precision": "fp16"})


def test_auto_picks_cpu_without_devices(no_npu):
    assert detect_device_type() == "cpu"
    be = BACKEND.build({"type": "auto", "precision": "fp32"})
    assert be.device_type == "cpu"
    assert be.autocast_dtype is None


def test_auto_prefers_npu_when_present(fake_npu):
    assert detect_device_type() == "npu"


def test_npu_backend_missing_torch_npu_is_clear(no_npu):
    with pytest.raises(Exception, match="torch_npu cannot be imported"):
        BACKEND.build({"type": "npu"})


def test_cuda_backend_without_gpu_is_clear():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(Exception, match="no CUDA device"):
        BACKEND.build({"type": "cuda"})


def test_attention_auto_on_cpu(no_npu):
    name, impl, fn = att.select_attention("auto", "cpu")
    assert name == "flex" and impl == "flex"
    assert set(att.available("cpu")) == {"sdpa", "flex", "math"}


def test_flex_has_no_cpu_backward_so_training_avoids_it(no_npu):
    assert att.select_attention("auto", "cpu", training=True)[0] == "sdpa"
    with pytest.raises(RuntimeError, match="no backward pass on CPU.*for training: sdpa, math"):
        att.select_attention("flex", "cpu", training=True)
    assert att.select_attention("flex", "cuda", training=True)[0] == "flex"


def test_xformers_unavailable_on_cpu_even_if_installed(fake_xformers):
    with pytest.raises(RuntimeError) as e:
        att.select_attention("xformers", "cpu")
    msg = str(e.value)
    assert "no kernels for device type 'cpu'" in msg and "Available here: sdpa, flex, math" in msg


def test_xformers_selected_on_cuda_when_present(fake_xformers):
    name, impl, fn = att.select_attention("xformers", "cuda")
    assert (name, impl) == ("xformers", "blocks")
    q, k, v = torch.randn(3, 1, 2, 5, 8).unbind(0)
    torch.testing.assert_close(fn(q, k, v), att.sdpa_dense(q, k, v))


def test_xformers_missing_on_cuda_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "xformers", None)
    monkeypatch.setitem(sys.modules, "xformers.ops", None)
    with pytest.raises(RuntimeError, match="xformers.ops cannot be imported"):
        att.select_attention("xformers", "cuda")
    assert att.select_attention("auto", "cuda")[0] == "flex"


def test_npu_fused(no_npu):
    with pytest.raises(RuntimeError, match="torch_npu cannot be imported"):
        att.select_attention("npu_fused", "npu")
    with pytest.raises(RuntimeError, match="needs an Ascend NPU device"):
        att.select_attention("npu_fused", "cpu")


def test_npu_fused_present(fake_npu):
    name, impl, fn = att.select_attention("auto", "npu")
    assert name == "npu_fused" and impl == "blocks"
    q, k, v = torch.randn(3, 1, 2, 5, 8).unbind(0)
    torch.testing.assert_close(fn(q, k, v), att.sdpa_dense(q, k, v))


def test_unknown_attention_name():
    with pytest.raises(ValueError, match="choose one of auto, sdpa, flex"):
        att.select_attention("flash9", "cpu")


def test_device_calls_only_in_backends():
    """`.cuda()`, torch.cuda.*, 'nccl' and torch_npu appear only in tools/backends/."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1]
    pat = re.compile(r"\.cuda\(|torch\.cuda\.|['\"]nccl['\"]|import torch_npu|torch\.npu\.")
    offenders = []
    for p in root.rglob("*.py"):
        rel = p.relative_to(root).as_posix()
        if rel.startswith(("tools/backends/", "tests/", ".venv/", "workspace/")):
            continue
        if pat.search(p.read_text(encoding="utf-8")):
            offenders.append(rel)
    assert not offenders, f"device-specific code outside tools/backends: {offenders}"


@pytest.mark.parametrize("native", [True, False])
def test_cpu_precision_auto_follows_native_bf16_and_slow_bf16_warns(native, monkeypatch, caplog):
    """precision: auto is bf16 only where the CPU has bf16 kernels (emulated bf16 is ~600x slower
    than fp32 on an AVX2 machine); an explicit bf16 there runs but warns."""
    import logging

    import tools.backends.cpu as cpu

    monkeypatch.setattr(cpu, "native_bf16", lambda: native)
    assert BACKEND.build({"type": "cpu", "precision": "auto"}).precision == ("bf16" if native else "fp32")
    log = logging.getLogger("nextclip")
    monkeypatch.setattr(log, "propagate", True)
    with caplog.at_level(logging.WARNING, logger="nextclip"):
        assert BACKEND.build({"type": "cpu", "precision": "bf16"}).precision == "bf16"
    assert ("no native bf16 kernels" in caplog.text) is (not native)
