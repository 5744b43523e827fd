"""One FLOP count for every figure: torch's ``FlopCounterMode`` plus the attention kernels it misses.

``FlopCounterMode`` counts matmuls, convolutions and the GPU attention kernels (flash, memory-efficient,
cuDNN, FlexAttention); it does not count the CPU flash-attention kernels, which SDPA uses on CPU, so a
CPU run would miss every attention FLOP. :func:`count_flops` adds them with the formulas of the GPU
kernels. Elementwise work (norms, activations, RoPE, the optimizer) is not counted: model FLOPs, as
MFU means them. The count is of the work done: the block-causal 'blocks' attention computes only the
visible key ranges, so only those count.

The benchmark (benchmarks/bench_next_clip.py), the training log's MFU (tools/train/loop.py) and the memory
plan's time estimate (tools/train/memory_plan.py, through :func:`missing_formulas`) use it;
the peak an MFU is a share of is the matmul throughput measured in the same run
(:meth:`tools.backends.base.Backend.matmul_peak_gflops`).
"""
from __future__ import annotations

from collections.abc import Callable

import torch


def missing_formulas() -> dict:
    """FlopCounterMode formulas for the CPU flash-attention forward / backward (those of the GPU kernels)."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    if not hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        return {}

    def fwd(query, key, value, *args, out_shape=None, **kwargs):
        return fc.sdpa_flop_count(query, key, value)  # FlopCounterMode passes shapes

    def bwd(grad_out, query, key, value, *args, out_shape=None, **kwargs):
        return fc.sdpa_backward_flop_count(grad_out, query, key, value)

    return {aten._scaled_dot_product_flash_attention_for_cpu: fwd,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: bwd}


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn()`` (it runs once, eagerly: compiled regions run uncompiled, so the
    counter sees every op). Forward and backward are counted if ``fn`` does both."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.compiler.set_stance("force_eager"), \
            FlopCounterMode(display=False, custom_mapping=missing_formulas()) as counter:
        fn()
    return int(counter.get_total_flops())


def mfu(flops: float, seconds: float, peak_gflops: float) -> float:
    """Model FLOP utilisation: ``flops`` done in ``seconds`` as a share of ``peak_gflops`` (GFLOP/s)."""
    return flops / seconds / 1e9 / peak_gflops
