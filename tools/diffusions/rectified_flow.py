"""Rectified-flow objective for next-clip diffusion (t = 1 clean, x_t = t*x1 + (1-t)*eps)."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from tools.diffusions import samplers, schedules
from utils.registry import DIFFUSION

PREDICTIONS = ("x1", "v", "eps")
T_SAMPLERS = ("uniform", "logit_normal")


# --------------------------------------------------------------------------- shared helpers
def frame_clip_index(clip_lens: torch.Tensor, num_frames: int):
    """Map frames to clips.

    Returns ``(idx, valid, last)``, each (B, F): ``idx`` the clip index of every frame
    (clamped to a real clip for padding), ``valid`` True for frames inside
    ``clip_lens[b].sum()``, ``last`` True for frames of each sample's last non-empty clip.
    """
    if clip_lens.dim() != 2:
        raise ValueError(f"clip_lens must be (B, K), got shape {tuple(clip_lens.shape)}.")
    if (clip_lens < 0).any():
        raise ValueError(f"clip_lens must be >= 0, got {clip_lens.tolist()}.")
    total = clip_lens.sum(1)  # (B,)
    if (total > num_frames).any() or (total == 0).any():
        raise ValueError(f"clip_lens sums {total.tolist()} must be in 1..F={num_frames} "
                         f"(the video has F frames; fix the clip cutter).")
    ends = clip_lens.cumsum(1)  # (B, K)
    f = torch.arange(num_frames, device=clip_lens.device).expand(clip_lens.shape[0], -1).contiguous()
    idx = torch.searchsorted(ends.contiguous(), f, right=True)  # (B, F)
    valid = f < total[:, None]
    nz = (clip_lens > 0).long()
    last_clip = (nz * torch.arange(clip_lens.shape[1], device=clip_lens.device)).amax(1)  # (B,)
    idx = torch.minimum(idx, last_clip[:, None])
    last = valid & (idx == last_clip[:, None])
    return idx, valid, last


def per_frame(t_clip: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(B, K) per-clip values -> (B, F) per-frame values."""
    return torch.gather(t_clip, 1, idx)


def bcast(t, x: torch.Tensor) -> torch.Tensor:
    """Broadcast time to x (B, C, F, H, W): scalar, (B,) per sample, or (B, F) per frame."""
    if not torch.is_tensor(t):
        return torch.as_tensor(t, dtype=x.dtype, device=x.device)
    t = t.to(device=x.device, dtype=x.dtype)
    if t.dim() == 0:
        return t
    if t.dim() == 1:
        return t.reshape(-1, *([1] * (x.dim() - 1)))
    if t.dim() == 2 and x.dim() == 5:
        return t[:, None, :, None, None]
    raise ValueError(f"time of shape {tuple(t.shape)} cannot be broadcast to x {tuple(x.shape)}; "
                     f"pass a scalar, (B,) or (B, F).")


class Randomness:
    """Random draws for one training batch, reproducible from ``generator``.

    With ``rank_slice=(rank, world)`` every draw is made for the global batch
    (world * B rows) and this rank's rows are returned, so the randomness of sample b
    of the global batch does not depend on how the batch is split across ranks.
    """

    def __init__(self, like: torch.Tensor, generator: torch.Generator | None = None, rank_slice=None):
        self.like, self.generator = like, generator
        rank, world = rank_slice if rank_slice is not None else (0, 1)
        if not (isinstance(world, int) and world >= 1 and 0 <= rank < world):
            raise ValueError(f"rank_slice={rank_slice!r} must be (rank, world_size) with 0 <= rank < world_size.")
        self.rank, self.world = rank, world
        self.dev = generator.device if generator is not None else like.device

    def _slice(self, draw, shape):
        B = shape[0]
        x = draw((B * self.world, *shape[1:]))
        return x[self.rank * B:(self.rank + 1) * B].to(self.like.device)

    def rand(self, shape) -> torch.Tensor:
        return self._slice(lambda s: torch.rand(s, generator=self.generator, device=self.dev), tuple(shape))

    def randn(self, shape) -> torch.Tensor:
        return self._slice(lambda s: torch.randn(s, generator=self.generator, device=self.dev), tuple(shape))

    def randint(self, high: int, shape) -> torch.Tensor:
        return self._slice(lambda s: torch.randint(0, high, s, generator=self.generator, device=self.dev),
                           tuple(shape))


def check_history_noise(history_noise) -> tuple | None:
    if history_noise is None:
        return None
    ok = isinstance(history_noise, (list, tuple)) and len(history_noise) == 2 and \
        0.0 <= float(history_noise[0]) <= float(history_noise[1]) <= 1.0
    if not ok:
        raise ValueError(f"history_noise={history_noise!r} must be [lo, hi] with 0 <= lo <= hi <= 1 "
                         f"(clean-frame t_in ~ U[lo, hi], e.g. [0.9, 1.0]) or null to disable.")
    return float(history_noise[0]), float(history_noise[1])


def make_clean_input(x1, valid, last, history_noise, rng: Randomness):
    """Clean copies for the model: history noise per frame (t_in ~ U[lo, hi]), the last
    clip's frames and padding zeroed (the model must never see them)."""
    x_clean = x1
    if history_noise is not None:
        lo, hi = history_noise
        B, F = valid.shape
        t_in = lo + (hi - lo) * rng.rand((B, F)).to(x1.dtype)  # (B, F)
        x_clean = bcast(t_in, x1) * x1 + (1 - bcast(t_in, x1)) * rng.randn(x1.shape).to(x1.dtype)
    keep = (valid & ~last).to(x1.dtype)
    return x_clean * bcast(keep, x1)


def noised(x1, t_frame, eps, valid):
    """The noisy input ``t x1 + (1 - t) eps`` at per-frame times t (B, F), padding frames zeroed."""
    tf = bcast(t_frame, x1)
    return (tf * x1 + (1 - tf) * eps) * bcast(valid.to(x1.dtype), x1)


def frame_conditions(frame_cond) -> dict:
    """The model's keyword for per-frame condition tokens (B, F, D): ``{"frame_cond": ...}``, or nothing
    when there are none (models without frame conditions keep their signature)."""
    return {} if frame_cond is None else {"frame_cond": frame_cond}


def masked_frame_mse(pred, target, valid):
    """Mean over (C, H, W) per frame, then mean over valid frames. Returns (loss, per_frame)."""
    per_frame_loss = ((pred.float() - target.float()) ** 2).mean(dim=(1, 3, 4))  # (B, F)
    per_frame_loss = per_frame_loss * valid
    loss = per_frame_loss.sum() / valid.sum().clamp(min=1)
    return loss, per_frame_loss


# --------------------------------------------------------------------------- objective
@DIFFUSION.register_class()
class RectifiedFlow:
    """Rectified flow (t=1 clean) with per-clip times, history noise and x1/v/eps prediction.

    Parameterizations of the raw model output ``p`` at state ``z = t*x1 + (1-t)*eps``:
    ``x1``: p = x1; ``v``: p = x1 - eps; ``eps``: p = eps. ``t_eps`` bounds the
    divisions by ``1 - t`` (x1) and ``t`` (eps) in the conversions.
    """

    def __init__(self, prediction: str = "x1", t_sampler: str = "uniform", logit_mean: float = 0.0,
                 logit_std: float = 1.0, history_noise: Sequence[float] | None = (0.9, 1.0),
                 t_eps: float = 1e-3):
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction={prediction!r} is not supported; use one of {PREDICTIONS}.")
        if t_sampler not in T_SAMPLERS:
            raise ValueError(f"t_sampler={t_sampler!r} is not supported; use one of {T_SAMPLERS}.")
        if logit_std <= 0:
            raise ValueError(f"logit_std={logit_std} must be > 0.")
        if not 0 < t_eps < 0.5:
            raise ValueError(f"t_eps={t_eps} must be in (0, 0.5); typical 1e-3.")
        self.prediction = prediction
        self.t_sampler = t_sampler
        self.logit_mean, self.logit_std = float(logit_mean), float(logit_std)
        self.history_noise = check_history_noise(history_noise)
        self.t_eps = float(t_eps)

    def __repr__(self):
        return (f"RectifiedFlow(prediction={self.prediction!r}, t_sampler={self.t_sampler!r}, "
                f"history_noise={self.history_noise})")

    # ---------------------------------------------------------------- conversions
    def target(self, x1: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """What the model should output for clean data x1 and noise eps."""
        return {"x1": x1, "v": x1 - eps, "eps": eps}[self.prediction]

    def from_x1(self, x1: torch.Tensor, z: torch.Tensor, t) -> torch.Tensor:
        """Inverse of :meth:`to_x1`: the raw prediction that corresponds to clean estimate x1 at z."""
        tb = bcast(t, z)
        if self.prediction == "x1":
            return x1
        eps = (z - tb * x1) / (1 - tb).clamp(min=self.t_eps)
        return x1 - eps if self.prediction == "v" else eps

    def to_x1(self, pred: torch.Tensor, z: torch.Tensor, t) -> torch.Tensor:
        tb = bcast(t, z)
        if self.prediction == "x1":
            return pred
        if self.prediction == "v":
            return z + (1 - tb) * pred
        return (z - (1 - tb) * pred) / tb.clamp(min=self.t_eps)

    def to_velocity(self, pred: torch.Tensor, z: torch.Tensor, t) -> torch.Tensor:
        """dx/dt = x1 - eps from the raw prediction (x1: (p - z)/(1-t); eps: (z - p)/t)."""
        tb = bcast(t, z)
        if self.prediction == "v":
            return pred
        if self.prediction == "x1":
            return (pred - z) / (1 - tb).clamp(min=self.t_eps)
        return (z - pred) / tb.clamp(min=self.t_eps)

    velocity = to_velocity

    # ---------------------------------------------------------------- training
    def sample_t(self, shape, rng: Randomness) -> torch.Tensor:
        """Per-clip times: U(0, 1) or sigmoid(N(logit_mean, logit_std)) (logit-normal)."""
        if self.t_sampler == "uniform":
            return rng.rand(shape)
        return torch.sigmoid(self.logit_mean + self.logit_std * rng.randn(shape))

    def training_losses(self, model: Callable, x1: torch.Tensor, clip_lens: torch.Tensor, cond=None,
                        cond_mask=None, generator: torch.Generator | None = None, rank_slice=None,
                        frame_cond=None) -> dict:
        """One next-clip training step's loss.

        x1 (B, C, F, H, W) clean data; clip_lens (B, K). Every clip gets its own t; every
        frame is noised at its clip's t (noisy input); the clean input is x1 with per-frame
        history noise, the last clip's frames and padding zeroed. ``cond`` (B, M, D) and
        ``cond_mask`` (B, M) bool (True = real token), and ``frame_cond`` (B, F, D) (one token per
        frame, frame-conditioned models) are passed to the model as they are
        (condition dropout is the engine's job). ``rank_slice=(rank, world)``
        draws the randomness of the global batch and keeps this rank's rows (see
        :class:`Randomness`). Returns ``dict(loss, loss_per_frame (B, F), t (B, K))``.
        """
        if x1.dim() != 5:
            raise ValueError(f"x1 must be (B, C, F, H, W), got shape {tuple(x1.shape)}.")
        B, C, F, H, W = x1.shape
        if clip_lens.shape[0] != B:
            raise ValueError(f"clip_lens batch {clip_lens.shape[0]} != x1 batch {B}.")
        idx, valid, last = frame_clip_index(clip_lens, F)
        rng = Randomness(x1, generator, rank_slice)
        t = self.sample_t(clip_lens.shape, rng)  # (B, K)
        t = torch.where(clip_lens > 0, t, torch.zeros_like(t))
        eps = rng.randn(x1.shape).to(x1.dtype)
        x_noisy = noised(x1, per_frame(t, idx), eps, valid)
        x_clean = make_clean_input(x1, valid, last, self.history_noise, rng)
        pred = model(x_noisy, x_clean, clip_lens, t.to(x1.dtype), cond=cond, cond_mask=cond_mask,
                     **frame_conditions(frame_cond))
        if pred.shape != x_noisy.shape:
            raise ValueError(f"model returned shape {tuple(pred.shape)}, expected {tuple(x_noisy.shape)}.")
        loss, lpf = masked_frame_mse(pred, self.target(x1, eps), valid)
        return {"loss": loss, "loss_per_frame": lpf, "t": t}

    # ---------------------------------------------------------------- sampling
    def timesteps(self, steps: int, shift: float = 1.0) -> torch.Tensor:
        """Grid 0 -> 1 of ``steps + 1`` times; see :func:`schedules.shift_time` (shift=1 uniform)."""
        return schedules.flow_timesteps(steps, shift)

    def sample(self, pred_fn: Callable, z: torch.Tensor, steps: int = 50, sampler: str = "euler",
               shift: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Integrate the flow from noise ``z`` (t=0) to data (t=1).

        ``pred_fn(z, t)`` with t a (B,) tensor returns the raw model prediction
        (classifier-free guidance combines raw predictions inside pred_fn).
        """
        def velocity_fn(x, t):
            return self.to_velocity(pred_fn(x, t), x, t)

        ts = self.timesteps(steps, shift)
        if sampler == "euler":
            return samplers.euler(velocity_fn, z, ts)
        if sampler == "heun":
            return samplers.heun(velocity_fn, z, ts, final_euler=self.prediction != "v")
        raise ValueError(f"sampler={sampler!r} is not supported by RectifiedFlow; use 'euler' or 'heun'.")
