"""utils/flops.py: one FLOP count (FlopCounterMode + the CPU flash-attention kernels it misses)."""
import torch
import torch.nn.functional as F

from utils.flops import count_flops, mfu


def test_matmul_and_linear_flops_are_exact():
    a, b = torch.randn(8, 16), torch.randn(16, 32)
    assert count_flops(lambda: a @ b) == 2 * 8 * 16 * 32
    lin = torch.nn.Linear(16, 32)
    x = torch.randn(4, 8, 16, requires_grad=True)
    assert count_flops(lambda: lin(x)) == 2 * 32 * 16 * 32
    # forward + backward: the input and the weight gradient are one matmul each more
    assert count_flops(lambda: lin(x).sum().backward()) == 3 * 2 * 32 * 16 * 32


def test_cpu_attention_is_counted_forward_and_backward():
    """torch's counter alone returns 0 for CPU SDPA (the CPU flash kernel has no formula): QK^T and PV are
    2 * 2 * B * H * Lq * Lk * D; the backward 2.5x that."""
    from torch.utils.flop_counter import FlopCounterMode

    B, H, Lq, Lk, D = 2, 3, 5, 7, 8
    q = torch.randn(B, H, Lq, D, requires_grad=True)
    k, v = (torch.randn(B, H, Lk, D, requires_grad=True) for _ in range(2))
    with FlopCounterMode(display=False) as plain:
        F.scaled_dot_product_attention(q, k, v)
    fwd = 4 * B * H * Lq * Lk * D
    assert plain.get_total_flops() < fwd  # what this module adds
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v)) == fwd
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward()) == fwd + 5 * fwd // 2


def test_compiled_functions_are_counted_as_eager():
    lin = torch.nn.Linear(16, 16)
    lin.compile()  # counted eagerly (force_eager): never compiled here, so this stays fast
    x = torch.randn(3, 16)
    assert count_flops(lambda: lin(x)) == 2 * 3 * 16 * 16


def test_mfu_is_a_share_of_the_given_peak():
    assert mfu(50e9, 0.5, 200.0) == 0.5
