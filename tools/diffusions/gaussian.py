"""Discrete Gaussian diffusion (DDPM training, DDIM sampling) for next-clip models."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from tools.diffusions import samplers, schedules
from tools.diffusions.rectified_flow import (Randomness, bcast, check_history_noise, frame_clip_index,
                                             make_clean_input, masked_frame_mse, per_frame)
from utils.registry import DIFFUSION


@DIFFUSION.register_class()
class GaussianDiffusion:
    """DDPM/DDIM Gaussian diffusion (linear/cosine betas, eps/v prediction, optional zero terminal SNR).

    Discrete timestep k in [0, T) (k = 0 least noisy); ``x_k = sqrt(ab_k) x0 + sqrt(1-ab_k) eps``.
    The model receives ``t_model = 1 - k / T`` so that, as with the flow, larger = cleaner.
    """

    def __init__(self, num_timesteps: int = 1000, schedule: str = "linear", prediction: str = "eps",
                 zero_terminal_snr: bool = False, beta_start: float = 1e-4, beta_end: float = 0.02,
                 history_noise: Optional[Sequence[float]] = (0.9, 1.0)):
        if prediction not in ("eps", "v"):
            raise ValueError(f"prediction={prediction!r} is not supported; use 'eps' or 'v'.")
        if zero_terminal_snr and prediction == "eps":
            raise ValueError("zero_terminal_snr=True needs prediction='v': at zero SNR the eps "
                             "prediction carries no information about x0.")
        if schedule == "linear":
            betas = schedules.linear_betas(num_timesteps, beta_start, beta_end)
        else:
            betas = schedules.make_betas(schedule, num_timesteps)
        if zero_terminal_snr:
            betas = schedules.rescale_zero_terminal_snr(betas)
        self.num_timesteps = num_timesteps
        self.schedule, self.prediction, self.zero_terminal_snr = schedule, prediction, bool(zero_terminal_snr)
        self.betas = betas
        self.alphas_cumprod = schedules.alphas_cumprod_from_betas(betas)  # float64 (T,)
        self.history_noise = check_history_noise(history_noise)

    def __repr__(self):
        return (f"GaussianDiffusion(T={self.num_timesteps}, schedule={self.schedule!r}, "
                f"prediction={self.prediction!r}, zero_terminal_snr={self.zero_terminal_snr})")

    # ---------------------------------------------------------------- conversions
    def t_model(self, k: torch.Tensor) -> torch.Tensor:
        """Discrete timestep -> model time (1 = clean)."""
        return 1.0 - k.float() / self.num_timesteps

    def _ab(self, k: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.alphas_cumprod.to(x.device)[k].to(x.dtype)

    def target(self, x0, eps, ab):
        if self.prediction == "eps":
            return eps
        return ab.sqrt() * eps - (1 - ab).sqrt() * x0

    def to_eps_x0(self, pred: torch.Tensor, x: torch.Tensor, ab: torch.Tensor):
        """Raw prediction -> (eps_hat, x0_hat); ``ab`` is alpha_bar broadcast to x."""
        if self.prediction == "v":
            return (1 - ab).sqrt() * x + ab.sqrt() * pred, ab.sqrt() * x - (1 - ab).sqrt() * pred
        return pred, (x - (1 - ab).sqrt() * pred) / ab.sqrt().clamp(min=1e-8)

    # ---------------------------------------------------------------- training
    def training_losses(self, model: Callable, x1: torch.Tensor, clip_lens: torch.Tensor, cond=None,
                        cond_mask=None, generator: Optional[torch.Generator] = None, rank_slice=None) -> dict:
        """Same layout as :meth:`RectifiedFlow.training_losses`; per-clip discrete timesteps.

        Returns ``dict(loss, loss_per_frame (B, F), t (B, K) model times, k (B, K) timesteps)``.
        """
        if x1.dim() != 5:
            raise ValueError(f"x1 must be (B, C, F, H, W), got shape {tuple(x1.shape)}.")
        B, C, F, H, W = x1.shape
        idx, valid, last = frame_clip_index(clip_lens, F)
        rng = Randomness(x1, generator, rank_slice)
        k = rng.randint(self.num_timesteps, clip_lens.shape)
        k = torch.where(clip_lens > 0, k, torch.zeros_like(k))
        ab = bcast(per_frame(self._ab(k, x1), idx), x1)
        eps = rng.randn(x1.shape).to(x1.dtype)
        vmask = bcast(valid.to(x1.dtype), x1)
        x_noisy = (ab.sqrt() * x1 + (1 - ab).sqrt() * eps) * vmask
        x_clean = make_clean_input(x1, valid, last, self.history_noise, rng)
        t = self.t_model(k).to(x1.dtype)
        pred = model(x_noisy, x_clean, clip_lens, t, cond=cond, cond_mask=cond_mask)
        if pred.shape != x_noisy.shape:
            raise ValueError(f"model returned shape {tuple(pred.shape)}, expected {tuple(x_noisy.shape)}.")
        loss, lpf = masked_frame_mse(pred, self.target(x1, eps, ab), valid)
        return {"loss": loss, "loss_per_frame": lpf, "t": t, "k": k}

    # ---------------------------------------------------------------- sampling
    def sample(self, pred_fn: Callable, z: torch.Tensor, steps: int = 50, sampler: str = "ddim",
               eta: float = 0.0, shift: float = 1.0, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """DDIM (``sampler='ddim'``, any eta) or DDPM-like ancestral (``'ddpm'`` = DDIM with eta=1)
        from noise ``z``; ``pred_fn(z, t_model (B,))`` returns the raw prediction."""
        if sampler not in ("ddim", "ddpm"):
            raise ValueError(f"sampler={sampler!r} is not supported by GaussianDiffusion; use 'ddim' or 'ddpm'.")
        if shift != 1.0:
            raise ValueError(f"shift={shift} is a flow-sampling option; GaussianDiffusion supports only shift=1.0.")
        if sampler == "ddpm":
            eta = 1.0

        def eps_x0_fn(x, k):
            ab = bcast(self._ab(k, x), x)
            return self.to_eps_x0(pred_fn(x, self.t_model(k).to(x.dtype)), x, ab)

        ks = schedules.ddim_timesteps(self.num_timesteps, steps)
        return samplers.ddim(eps_x0_fn, z, self.alphas_cumprod, ks, eta=eta, generator=generator)
