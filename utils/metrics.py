"""Frame metrics: PSNR and SSIM on videos in [-1, 1], per frame."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _to01(x: torch.Tensor) -> torch.Tensor:
    return ((x.float().clamp(-1, 1) + 1) / 2)


def psnr_per_frame(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """PSNR (dB) of each frame of (C, T, H, W) videos in [-1, 1], on the [0, 1] scale. -> (T,)"""
    mse = ((_to01(pred) - _to01(target)) ** 2).mean(dim=(0, 2, 3))
    return 10 * torch.log10(1.0 / (mse + eps))


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(ax ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()


def ssim_per_frame(pred: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """SSIM of each frame (Wang et al. 2004: Gaussian window 11 / sigma 1.5, K1=0.01, K2=0.03,
    data range 1, 'valid' filtering, mean over channels). Frames smaller than the window use a
    window of the frame's size. (C, T, H, W) in [-1, 1] -> (T,)"""
    x = _to01(pred).double().permute(1, 0, 2, 3)  # (T, C, H, W); float64: var = E[x^2] - mu^2 cancels
    y = _to01(target).double().permute(1, 0, 2, 3)
    C = x.shape[1]
    win = min(window, x.shape[-1], x.shape[-2])
    w = _gaussian_window(win, sigma).to(x)[None, None].expand(C, 1, win, win)
    filt = lambda z: F.conv2d(z, w, groups=C)  # noqa: E731
    mu_x, mu_y = filt(x), filt(y)
    sxx = filt(x * x) - mu_x ** 2
    syy = filt(y * y) - mu_y ** 2
    sxy = filt(x * y) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return s.mean(dim=(1, 2, 3)).float()


def copy_last_baseline(context: torch.Tensor, n: int) -> torch.Tensor:
    """Repeat the last context frame ``n`` times. (C, Tc, H, W) -> (C, n, H, W)"""
    return context[:, -1:].expand(-1, n, -1, -1).clone()


def linear_baseline(context: torch.Tensor, n: int) -> torch.Tensor:
    """Per-pixel linear extrapolation of the last two frames, clipped to [-1, 1]."""
    if context.shape[1] < 2:
        return copy_last_baseline(context, n)
    last, prev = context[:, -1], context[:, -2]
    k = torch.arange(1, n + 1, dtype=context.dtype).view(1, n, 1, 1)
    return (last[:, None] + k * (last - prev)[:, None]).clamp(-1, 1)
