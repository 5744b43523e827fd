"""Discrete Gaussian diffusion (DDPM training, DDIM sampling) for next-clip and whole-video models."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from tools.diffusions import learned_variance as lv
from tools.diffusions import samplers, schedules
from tools.diffusions.rectified_flow import (
    Randomness,
    bcast,
    check_history_noise,
    frame_clip_index,
    frame_conditions,
    make_clean_input,
    masked_frame_mse,
    per_frame,
)
from utils.registry import DIFFUSION

#: what a model takes as its time input: the project's unit time ``1 - k / T`` or the integer timestep k
TIMESTEP_INPUTS = ("unit", "index")
#: where the last DDIM step goes: alpha_bar = 1 (returns x0_hat) or alpha_bar at timestep 0 (the reference DDIM)
FINAL_ALPHAS = ("one", "first")
#: the variance of p(x_prev | x_k): fixed (DDPM's posterior variance) or the model's learned range (2C outputs)
VARIANCES = ("fixed", "learned_range")


def timestep_input(model) -> str:
    """How ``model`` takes time: its class attribute ``timestep_input`` = ``"unit"`` (the default when absent:
    ``t = 1 - k / T``, 1 = clean) or ``"index"`` (the integer timestep k, as ModelScope / VGen UNets).
    The one place this is read; a DDP / FSDP / compile wrapper is looked through."""
    inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None) or model
    kind = getattr(inner, "timestep_input", "unit")
    if kind not in TIMESTEP_INPUTS:
        raise ValueError(f"{type(inner).__name__}.timestep_input={kind!r}; use one of {list(TIMESTEP_INPUTS)}.")
    return kind


@DIFFUSION.register_class()
class GaussianDiffusion:
    """DDPM/DDIM Gaussian diffusion (linear/linear_sd/cosine betas, eps/v prediction, optional zero terminal SNR).

    Discrete timestep k in [0, T) (k = 0 least noisy); ``x_k = sqrt(ab_k) x0 + sqrt(1-ab_k) eps``.
    The model receives ``t_model = 1 - k / T`` so that, as with the flow, larger = cleaner, or k itself
    when it declares ``timestep_input = "index"`` (:func:`timestep_input`).

    DDIM settings: ``timestep_spacing`` (``trailing``: 999, 749, ...; ``leading``: the reference's
    ``offset + arange(0, T, T // steps)``, see :func:`schedules.ddim_timesteps`), ``steps_offset`` and
    ``final_alpha_cumprod`` (``one``: the last step returns x0_hat; ``first``: it goes to alpha_bar at k = 0).
    VGen / ModelScope's reference sampler is ``leading``, offset 1, ``first``; Latte's (improved DDPM's
    respacing) is ``linspace``, ``one``.

    ``variance: learned_range``: the model outputs the prediction and then the learned-range variance values
    (2C channels, tools/diffusions/learned_variance.py). Guidance (:meth:`guide`) then acts on the prediction
    channels only; ``sampler: ddpm`` is ancestral sampling with the learned variance on the chain of the kept
    timesteps (betas recomputed from their alpha-cumprods); training adds the variational-bound term to the
    MSE (improved DDPM's hybrid loss, :meth:`video_losses`).
    """

    def __init__(self, num_timesteps: int = 1000, schedule: str = "linear", prediction: str = "eps",
                 zero_terminal_snr: bool = False, beta_start: float = 1e-4, beta_end: float = 0.02,
                 history_noise: Sequence[float] | None = (0.9, 1.0), timestep_spacing: str = "trailing",
                 steps_offset: int = 0, final_alpha_cumprod: str = "one", variance: str = "fixed"):
        if prediction not in ("eps", "v"):
            raise ValueError(f"prediction={prediction!r} is not supported; use 'eps' or 'v'.")
        if zero_terminal_snr and prediction == "eps":
            raise ValueError("zero_terminal_snr=True needs prediction='v': at zero SNR the eps "
                             "prediction carries no information about x0.")
        if timestep_spacing not in schedules.SPACINGS:
            raise ValueError(f"timestep_spacing={timestep_spacing!r} is not supported; use one of "
                             f"{list(schedules.SPACINGS)} (leading + steps_offset 1 = the VGen / ModelScope DDIM).")
        if isinstance(steps_offset, bool) or not isinstance(steps_offset, int) or not 0 <= steps_offset < num_timesteps:
            raise ValueError(f"steps_offset={steps_offset!r} must be an int in [0, {num_timesteps}).")
        if final_alpha_cumprod not in FINAL_ALPHAS:
            raise ValueError(f"final_alpha_cumprod={final_alpha_cumprod!r}; use 'one' (the last DDIM step returns "
                             f"x0) or 'first' (it goes to alpha_bar at timestep 0, the reference DDIM).")
        if variance not in VARIANCES:
            raise ValueError(f"variance={variance!r}; use 'fixed' or 'learned_range' (a model with learn_sigma, "
                             f"e.g. Latte or DiT, whose output has 2 x the latent channels).")
        if schedule in ("linear", "linear_sd"):
            betas = schedules.make_betas(schedule, num_timesteps, beta_start=beta_start, beta_end=beta_end)
        else:
            betas = schedules.make_betas(schedule, num_timesteps)
        if zero_terminal_snr:
            betas = schedules.rescale_zero_terminal_snr(betas)
        self.num_timesteps = num_timesteps
        self.schedule, self.prediction, self.zero_terminal_snr = schedule, prediction, bool(zero_terminal_snr)
        self.betas = betas
        self.alphas_cumprod = schedules.alphas_cumprod_from_betas(betas)  # float64 (T,)
        self.history_noise = check_history_noise(history_noise)
        self.timestep_spacing, self.steps_offset = timestep_spacing, steps_offset
        self.final_alpha_cumprod = final_alpha_cumprod
        self.variance = variance
        self._full_chain = lv.chain_tables(self.alphas_cumprod, range(num_timesteps)) \
            if variance == "learned_range" else None

    def __repr__(self):
        return (f"GaussianDiffusion(T={self.num_timesteps}, schedule={self.schedule!r}, "
                f"prediction={self.prediction!r}, zero_terminal_snr={self.zero_terminal_snr}, "
                f"timestep_spacing={self.timestep_spacing!r}, steps_offset={self.steps_offset}, "
                f"final_alpha_cumprod={self.final_alpha_cumprod!r}, variance={self.variance!r})")

    # ---------------------------------------------------------------- conversions
    def t_model(self, k: torch.Tensor) -> torch.Tensor:
        """Discrete timestep -> model time (1 = clean)."""
        return 1.0 - k.float() / self.num_timesteps

    def model_time(self, k: torch.Tensor, kind: str, dtype: torch.dtype) -> torch.Tensor:
        """What a model of :func:`timestep_input` ``kind`` receives for timesteps k (B,)."""
        return k.long() if kind == "index" else self.t_model(k).to(dtype)

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
                        cond_mask=None, generator: torch.Generator | None = None, rank_slice=None,
                        frame_cond=None) -> dict:
        """Same layout as :meth:`RectifiedFlow.training_losses`; per-clip discrete timesteps.

        Returns ``dict(loss, loss_per_frame (B, F), t (B, K) model times, k (B, K) timesteps)``.
        """
        if x1.dim() != 5:
            raise ValueError(f"x1 must be (B, C, F, H, W), got shape {tuple(x1.shape)}.")
        if self.variance != "fixed":
            raise ValueError("variance: learned_range is for whole-video models (video_losses); next-clip "
                             "training uses variance: fixed")
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
        t_in = self.model_time(k, timestep_input(model), x1.dtype)
        pred = model(x_noisy, x_clean, clip_lens, t_in, cond=cond, cond_mask=cond_mask,
                     **frame_conditions(frame_cond))
        if pred.shape != x_noisy.shape:
            raise ValueError(f"model returned shape {tuple(pred.shape)}, expected {tuple(x_noisy.shape)}.")
        loss, lpf = masked_frame_mse(pred, self.target(x1, eps, ab), valid)
        return {"loss": loss, "loss_per_frame": lpf, "t": t, "k": k}

    def video_losses(self, model: Callable, x0: torch.Tensor, generator: torch.Generator | None = None,
                     rank_slice=None, **model_kwargs) -> dict:
        """Whole-video DDPM loss: one timestep per sample, every frame noised alike.

        ``model(x_k, t_in, **model_kwargs)`` (t_in as :func:`timestep_input` says) predicts eps or v for the
        whole video x0 (B, C, F, H, W). Draws (timesteps, noise) are made for the global batch from
        ``generator`` and sliced by ``rank_slice`` (see :class:`Randomness`).
        With ``variance: learned_range`` the model outputs 2C channels and the loss is improved DDPM's hybrid:
        the MSE of the prediction channels plus the variational-bound term (bits per dimension) of the
        variance channels, computed with the predicted mean detached (:func:`learned_variance.vb_term`).
        Returns ``dict(loss, k (B,))`` (and ``mse``, ``vb`` with a learned variance)."""
        if x0.dim() != 5:
            raise ValueError(f"x0 must be (B, C, F, H, W), got shape {tuple(x0.shape)}.")
        rng = Randomness(x0, generator, rank_slice)
        k = rng.randint(self.num_timesteps, (x0.shape[0],))
        eps = rng.randn(x0.shape).to(x0.dtype)
        ab = bcast(self._ab(k, x0), x0)
        x_k = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        pred = model(x_k, self.model_time(k, timestep_input(model), x0.dtype), **model_kwargs)
        if self.variance == "learned_range":
            pred, var_values = lv.split_output(pred, x0.shape[1])
        if pred.shape != x0.shape:
            raise ValueError(f"model returned shape {tuple(pred.shape)}, expected {tuple(x0.shape)}.")
        mse = (pred.float() - self.target(x0, eps, ab).float()).pow(2).mean()
        if self.variance != "learned_range":
            return {"loss": mse, "k": k}
        x0_hat = self.to_eps_x0(pred.detach().float(), x_k.float(), ab.float())[1]  # stop-grad on the mean
        vb = lv.vb_term(x0.float(), x_k.float(), x0_hat, var_values.float(), self._full_chain, k).mean()
        return {"loss": mse + vb, "mse": mse.detach(), "vb": vb.detach(), "k": k}

    def guide(self, cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
        """Classifier-free guidance of raw model outputs: ``u + scale (c - u)``; with a learned variance on the
        prediction channels only, the variance channels taken from the conditional branch."""
        if self.variance == "learned_range":
            return lv.guide(cond, uncond, scale, cond.shape[1] // 2)
        return uncond + scale * (cond - uncond)

    def p_mean_variance(self, out: torch.Tensor, x: torch.Tensor, j: torch.Tensor, tables: dict) -> dict:
        """Mean and learned log variance of ``p(x_prev | x)`` at chain index j (B,) of ``tables``
        (:func:`learned_variance.chain_tables`) from the raw model output (B, 2C, ...), and the x0 estimate."""
        pred, var_values = lv.split_output(out, x.shape[1])
        ab = lv.table_at(tables, "ab", j, x)
        x0 = self.to_eps_x0(pred, x, ab)[1]
        return {"mean": lv.posterior_mean(x0, x, tables, j), "log_variance": lv.log_variance(var_values, tables, j),
                "pred_xstart": x0}

    # ---------------------------------------------------------------- sampling
    def timesteps(self, steps: int) -> torch.Tensor:
        """The descending DDIM timesteps of a ``steps``-step run (this diffusion's spacing and offset)."""
        return schedules.ddim_timesteps(self.num_timesteps, steps, self.timestep_spacing, self.steps_offset)

    def sample(self, pred_fn: Callable, z: torch.Tensor, steps: int = 50, sampler: str = "ddim",
               eta: float = 0.0, shift: float = 1.0, generator: torch.Generator | None = None,
               timestep_input: str = "unit") -> torch.Tensor:
        """DDIM (``sampler='ddim'``, any eta) or DDPM-like ancestral (``'ddpm'`` = DDIM with eta=1; with
        ``variance: learned_range`` true ancestral sampling with the learned variance over the chain of
        :meth:`timesteps`, eta unused) from noise ``z``; ``pred_fn(z, t (B,))`` returns the raw prediction, t the
        model time of ``timestep_input`` (``unit``: 1 - k / T; ``index``: k; engines pass :func:`timestep_input`
        of the model)."""
        if sampler not in ("ddim", "ddpm"):
            raise ValueError(f"sampler={sampler!r} is not supported by GaussianDiffusion; use 'ddim' or 'ddpm'.")
        if shift != 1.0:
            raise ValueError(f"shift={shift} is a flow-sampling option; GaussianDiffusion supports only shift=1.0.")
        if timestep_input not in TIMESTEP_INPUTS:
            raise ValueError(f"timestep_input={timestep_input!r}; use one of {list(TIMESTEP_INPUTS)}.")
        learned = self.variance == "learned_range"
        if sampler == "ddpm" and learned:  # ancestral with the learned variance on the chain of kept timesteps
            tables = lv.chain_tables(self.alphas_cumprod, self.timesteps(steps))

            def mean_log_var_fn(x, j):
                jj = torch.full((x.shape[0],), j, dtype=torch.long, device=x.device)
                k = tables["timesteps"].to(x.device)[jj]
                out = self.p_mean_variance(pred_fn(x, self.model_time(k, timestep_input, x.dtype)), x, jj, tables)
                return out["mean"], out["log_variance"]

            return samplers.ancestral(mean_log_var_fn, z, len(tables["timesteps"]), generator=generator)
        if sampler == "ddpm":
            eta = 1.0

        def eps_x0_fn(x, k):
            ab = bcast(self._ab(k, x), x)
            pred = pred_fn(x, self.model_time(k, timestep_input, x.dtype))
            if learned:  # DDIM does not use the variance channels
                pred = lv.split_output(pred, x.shape[1])[0]
            return self.to_eps_x0(pred, x, ab)

        final = 1.0 if self.final_alpha_cumprod == "one" else float(self.alphas_cumprod[0])
        return samplers.ddim(eps_x0_fn, z, self.alphas_cumprod, self.timesteps(steps), eta=eta, generator=generator,
                             final_alpha_cumprod=final)
