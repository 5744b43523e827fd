"""Noise schedules as plain functions (no state, no registry).

Discrete (DDPM-style) schedules return ``betas`` as float64 tensors of length
``num_timesteps``; index 0 is the least noisy step. Flow schedules return a grid of
times from 0 (noise) to 1 (clean), following NextClip's convention
``x_t = t * x1 + (1 - t) * eps``.
"""
from __future__ import annotations

import math

import torch


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM linear betas, scaled by ``1000 / num_timesteps`` so any length spans the same noise range.

    ``beta_i = linspace(s * beta_start, s * beta_end)`` with ``s = 1000 / num_timesteps``.
    """
    _check_steps(num_timesteps)
    scale = 1000.0 / num_timesteps
    return torch.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=torch.float64)


def sqrt_linear_betas(num_timesteps: int, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """Stable Diffusion's "scaled linear" betas (VGen / ModelScope ``linear_sd``): linear in sqrt(beta),
    ``beta_i = linspace(sqrt(beta_start), sqrt(beta_end))_i ** 2``, no rescaling by the length."""
    _check_steps(num_timesteps)
    return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_timesteps, dtype=torch.float64) ** 2


def cosine_alpha_bar(u: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal's ``alpha_bar(u) = cos^2(((u + s) / (1 + s)) * pi / 2)`` for u in [0, 1]."""
    return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule betas: ``beta_i = min(1 - abar((i+1)/T) / abar(i/T), max_beta)``."""
    _check_steps(num_timesteps)
    u = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    ab = cosine_alpha_bar(u, s)
    return (1 - ab[1:] / ab[:-1]).clamp(max=max_beta)


def make_betas(schedule: str, num_timesteps: int, **kwargs) -> torch.Tensor:
    """Dispatch ``'linear'`` / ``'linear_sd'`` / ``'cosine'`` to the functions above."""
    table = {"linear": linear_betas, "linear_sd": sqrt_linear_betas, "cosine": cosine_betas}
    if schedule not in table:
        raise ValueError(f"schedule={schedule!r} is not supported; use one of {sorted(table)}.")
    return table[schedule](num_timesteps, **kwargs)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Rescale betas so the last step has zero SNR (Lin et al. 2023, "Common diffusion noise
    schedules and sample steps are flawed"), Algorithm 1.

    ``sqrt(alpha_bar)`` is shifted so its last value is 0 and scaled so its first value is
    unchanged; betas are recomputed from the new ``alpha_bar``. The last beta becomes 1.
    """
    sab = torch.cumprod(1 - betas.double(), 0).sqrt()
    first, last = sab[0].clone(), sab[-1].clone()
    sab = (sab - last) * first / (first - last)
    ab = sab ** 2
    alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]])
    return 1 - alphas


def alphas_cumprod_from_betas(betas: torch.Tensor) -> torch.Tensor:
    return torch.cumprod(1 - betas.double(), 0)


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Time shift for flow sampling, written for t = 1 clean.

    With the noise level ``sigma = 1 - t`` this is the SD3 shift
    ``sigma' = shift * sigma / (1 + (shift - 1) * sigma)``, i.e.
    ``t' = 1 - shift * (1 - t) / (1 + (shift - 1) * (1 - t))``.
    ``shift = 1`` is the identity; ``shift > 1`` spends more steps at high noise.
    Endpoints 0 and 1 are fixed.
    """
    if shift <= 0:
        raise ValueError(f"shift={shift} must be > 0 (1.0 = no shift, >1 = more steps near noise).")
    sigma = 1 - t
    return 1 - shift * sigma / (1 + (shift - 1) * sigma)


def flow_timesteps(steps: int, shift: float = 1.0, dtype=torch.float64) -> torch.Tensor:
    """``steps + 1`` times from 0 (noise) to 1 (clean): a uniform grid passed through :func:`shift_time`."""
    _check_steps(steps)
    return shift_time(torch.linspace(0, 1, steps + 1, dtype=dtype), float(shift))


#: DDIM timestep spacings (:func:`ddim_timesteps`)
SPACINGS = ("trailing", "leading", "linspace")


def ddim_timesteps(num_timesteps: int, steps: int, spacing: str = "trailing", offset: int = 0) -> torch.Tensor:
    """Descending discrete timesteps of a DDIM run, a long tensor.

    * ``trailing`` (the default): ``steps`` timesteps ending at ``T - 1``, so a zero-terminal-SNR schedule
      starts from pure noise (999, 749, 499, 249 for 4 of 1000); ``offset`` shifts them down.
    * ``leading``: the reference DDIM of VGen / ModelScope (diffusers' "leading" with ``steps_offset``):
      ``(offset + arange(0, T, T // steps)).clamp(0, T - 1)`` reversed: 801, 601, 401, 201, 1 for 5 of 1000
      with offset 1. When ``steps`` does not divide T the grid has ``ceil(T / (T // steps))`` entries, as the
      reference's has.
    * ``linspace``: improved DDPM's respacing (Latte, DiT): ``round(i * (T - 1) / (steps - 1))``, i = 0 .. steps - 1,
      accumulated and rounded half to even as its ``space_timesteps``: 999, 749, 500, 250, 0 for 5 of 1000.
      ``offset`` is not used.
    """
    _check_steps(steps)
    if steps > num_timesteps:
        raise ValueError(f"steps={steps} exceeds num_timesteps={num_timesteps}; use steps <= {num_timesteps}.")
    if spacing not in SPACINGS:
        raise ValueError(f"timestep_spacing={spacing!r} is not supported; use one of {list(SPACINGS)}.")
    if spacing == "linspace":
        return linspace_timesteps(num_timesteps, steps).flip(0)
    if spacing == "leading":
        return (offset + torch.arange(0, num_timesteps, num_timesteps // steps)).clamp(0, num_timesteps - 1).flip(0)
    ts = torch.round(torch.arange(num_timesteps, 0, -num_timesteps / steps, dtype=torch.float64)).long() - 1
    return (ts[:steps] - offset).clamp(min=0)


def linspace_timesteps(num_timesteps: int, steps: int) -> torch.Tensor:
    """Ascending timesteps kept by improved DDPM's ``space_timesteps(T, [steps])`` (one section)."""
    stride = (num_timesteps - 1) / (steps - 1) if steps > 1 else 1
    kept, idx = [], 0.0
    for _ in range(steps):
        kept.append(round(idx))  # Python's round: half to even, as the reference
        idx += stride
    return torch.tensor(kept, dtype=torch.long)


def _check_steps(n) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"number of steps must be a positive int, got {n!r}.")
