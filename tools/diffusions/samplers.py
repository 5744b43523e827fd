"""Samplers as plain functions with one shared style.

``sampler(model_fn, z, <time grid>, ...) -> x``. The model function receives the current
state and a (B,) tensor of times; conversions between parameterizations (x1 / v / eps)
are done by small wrappers in the diffusion classes, never here.

Flow samplers integrate ``dx/dt = v(x, t)`` over an increasing grid ``ts`` (t = 1 clean).
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _tb(t, x: torch.Tensor) -> torch.Tensor:
    """Scalar time -> (B,) tensor on x's device/dtype."""
    return torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)


def euler(velocity_fn: VelocityFn, z: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """First-order Euler: ``x <- x + (t_{i+1} - t_i) * v(x, t_i)``."""
    x = z
    ts = [float(t) for t in ts]
    for t0, t1 in zip(ts[:-1], ts[1:]):
        x = x + (t1 - t0) * velocity_fn(x, _tb(t0, x))
    return x


def heun(velocity_fn: VelocityFn, z: torch.Tensor, ts: torch.Tensor, final_euler: bool = False) -> torch.Tensor:
    """Second-order Heun (explicit trapezoid): predictor Euler step, corrector averages the
    velocities at both ends. Two velocity evaluations per step.

    ``final_euler=True`` skips the corrector on a step ending at t = 1, where velocities
    derived from an x1- or eps-prediction are ill-conditioned.
    """
    x = z
    ts = [float(t) for t in ts]
    for t0, t1 in zip(ts[:-1], ts[1:]):
        dt = t1 - t0
        v0 = velocity_fn(x, _tb(t0, x))
        x_pred = x + dt * v0
        if final_euler and t1 >= 1.0:
            x = x_pred
            continue
        v1 = velocity_fn(x_pred, _tb(t1, x))
        x = x + dt * 0.5 * (v0 + v1)
    return x


def ddim(eps_x0_fn: Callable[[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]],
         z: torch.Tensor, alphas_cumprod: torch.Tensor, timesteps: torch.Tensor,
         eta: float = 0.0, generator: Optional[torch.Generator] = None,
         final_alpha_cumprod: float = 1.0) -> torch.Tensor:
    """DDIM (Song et al. 2021) over descending discrete ``timesteps``.

    ``eps_x0_fn(x, k) -> (eps_hat, x0_hat)`` with k a (B,) long tensor of timestep indices.
    After the last listed timestep the sampler steps to alpha_bar = ``final_alpha_cumprod``: 1 returns
    x0_hat; the reference DDIM of VGen / ModelScope steps to alpha_bar at timestep 0 instead.
    ``eta = 0`` is deterministic; ``eta = 1`` matches DDPM's posterior variance.
    """
    if eta < 0:
        raise ValueError(f"eta={eta} must be >= 0 (0 = deterministic DDIM, 1 = DDPM-like).")
    ac = alphas_cumprod.to(device=z.device, dtype=torch.float64)
    ks = [int(k) for k in timesteps]
    x = z
    for i, k in enumerate(ks):
        k_prev = ks[i + 1] if i + 1 < len(ks) else -1
        a_t = ac[k]
        a_prev = ac[k_prev] if k_prev >= 0 else torch.tensor(float(final_alpha_cumprod), dtype=torch.float64,
                                                             device=z.device)
        eps, x0 = eps_x0_fn(x, torch.full((x.shape[0],), k, device=x.device, dtype=torch.long))
        sigma = 0.0
        if eta > 0 and float(a_prev) < 1:
            sigma = float(eta * ((1 - a_prev) / (1 - a_t)).clamp(min=0).sqrt() * (1 - a_t / a_prev).clamp(min=0).sqrt())
        dir_coef = float((1 - a_prev - sigma ** 2).clamp(min=0).sqrt())  # direction pointing to x_t
        x = float(a_prev.sqrt()) * x0 + dir_coef * eps
        if sigma > 0:
            noise = torch.randn(x.shape, generator=generator,
                                device=generator.device if generator is not None else x.device).to(x)
            x = x + sigma * noise
    return x


def ancestral(mean_log_var_fn: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]], z: torch.Tensor,
              steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """DDPM ancestral sampling over chain indices ``steps - 1 .. 0``: ``x <- mean + exp(log_var / 2) * noise``,
    without noise at index 0 (which returns the last mean). ``mean_log_var_fn(x, j) -> (mean, log_var)``."""
    x = z
    for j in reversed(range(steps)):
        mean, log_var = mean_log_var_fn(x, j)
        if j == 0:
            return mean
        noise = torch.randn(x.shape, generator=generator,
                            device=generator.device if generator is not None else x.device).to(x)
        x = mean + torch.exp(0.5 * log_var) * noise
    return x
