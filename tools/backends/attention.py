"""Attention kernels and their availability checks.

Every kernel here is *dense and unmasked*: ``fn(q, k, v) -> out`` with q (B, H, Lq, D),
k / v (B, H, Lk, D) and scale 1/sqrt(D). The block-causal pattern of next-clip diffusion
is built on top of them (tools/models/block_causal.py), either as a per-block
decomposition (``impl="blocks"``), with FlexAttention block masks (``impl="flex"``), or with
a dense mask (``impl="math"``, the test reference).

A backend asks :func:`select_attention` for ``auto|sdpa|flex|xformers|npu_fused|math``.
"""
from __future__ import annotations

import importlib
import logging
from collections.abc import Callable

import torch.nn.functional as F

logger = logging.getLogger("nextclip")

ATTENTION_CHOICES = ("auto", "sdpa", "flex", "xformers", "npu_fused", "math")


def sdpa_dense(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def xformers_dense(q, k, v):
    import xformers.ops as xops  # CUDA only; availability checked before selection

    out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def npu_fused_dense(q, k, v):
    import torch_npu  # Ascend only; availability checked before selection

    heads = q.shape[1]
    return torch_npu.npu_fusion_attention(q, k, v, heads, input_layout="BNSD",
                                          scale=q.shape[-1] ** -0.5)[0]


def _importable(name: str) -> tuple[bool, str]:
    try:
        importlib.import_module(name)
        return True, ""
    except Exception as e:  # any import failure means "not available"; the reason is reported
        return False, f"{name} cannot be imported ({type(e).__name__}: {e})"


def check_available(name: str, device_type: str, training: bool = False) -> tuple[bool, str]:
    """(available, reason-if-not) of attention ``name`` on a ``device_type`` device
    (``training``: the backward pass is needed too)."""
    if name in ("sdpa", "math"):
        return True, ""
    if name == "flex":
        ok, why = _importable("torch.nn.attention.flex_attention")
        if not ok:
            return False, why
        if device_type not in ("cpu", "cuda"):
            return False, f"FlexAttention has no compiled kernels for device type '{device_type}'"
        if training and device_type == "cpu":
            return False, "FlexAttention has no backward pass on CPU (inference only there)"
        return True, ""
    if name == "xformers":
        if device_type != "cuda":
            return False, f"xformers has no kernels for device type '{device_type}' (CUDA only)"
        return _importable("xformers.ops")
    if name == "npu_fused":
        if device_type != "npu":
            return False, f"npu_fused needs an Ascend NPU device, this backend's device type is '{device_type}'"
        ok, why = _importable("torch_npu")
        if not ok:
            return False, why + "; install requirements-npu.txt on an Ascend machine"
        return True, ""
    raise ValueError(f"unknown attention {name!r}; choose one of {', '.join(ATTENTION_CHOICES)}")


#: name -> (impl used by the block-causal module, dense kernel)
KERNELS: dict[str, tuple[str, Callable | None]] = {
    "sdpa": ("blocks", sdpa_dense),
    "flex": ("flex", None),
    "xformers": ("blocks", xformers_dense),
    "npu_fused": ("blocks", npu_fused_dense),
    "math": ("math", None),
}

#: preference of ``auto`` per device type, best first
AUTO_ORDER = {
    "cpu": ("flex", "sdpa"),
    "cuda": ("flex", "xformers", "sdpa"),
    "npu": ("npu_fused", "sdpa"),
}


def available(device_type: str, training: bool = False) -> list[str]:
    return [n for n in KERNELS if check_available(n, device_type, training)[0]]


def select_attention(name: str, device_type: str, training: bool = False) -> tuple[str, str, Callable | None]:
    """Resolve ``name`` on ``device_type`` -> (chosen name, block impl, dense fn)."""
    if name not in ATTENTION_CHOICES:
        raise ValueError(
            f"backend.attention={name!r} is not a known attention kernel; choose one of "
            f"{', '.join(ATTENTION_CHOICES)}."
        )
    if name == "auto":
        for cand in AUTO_ORDER.get(device_type, ("sdpa",)):
            if check_available(cand, device_type, training)[0]:
                logger.info("attention=auto picked '%s' on %s (available: %s)", cand, device_type,
                            ", ".join(available(device_type, training)))
                impl, fn = KERNELS[cand]
                return cand, impl, fn
        name = "sdpa"
    ok, why = check_available(name, device_type, training)
    if not ok:
        raise RuntimeError(
            f"attention '{name}' is not available: {why}. Available here{' for training' if training else ''}: "
            f"{', '.join(available(device_type, training))}. Set backend.attention to one of them or to 'auto'."
        )
    impl, fn = KERNELS[name]
    return name, impl, fn
