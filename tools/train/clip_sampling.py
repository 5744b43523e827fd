"""How a training video is cut into clips (a plain function; the engine calls it per sample)."""
from __future__ import annotations

import torch

CLIP_MODES = ("random", "fixed", "single_frame")


def sample_clip_lens(num_frames: int, batch: int, mode: str = "random", clip_len: int = 4,
                     min_clips: int = 2, max_clips: int | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Clip lengths (B, Kmax) for videos of ``num_frames`` LATENT frames (what the model sees: pixel
    frames for Identity, 1 + k for 1 + 4k pixel frames of a causal f=4 VAE); lengths are latent frames.

    * ``random`` (paper stages 2-4): K ~ U{min_clips..max_clips or F}, K-1 distinct random cut
      points, so clip lengths differ within a sample;
    * ``fixed``: clips of ``clip_len`` frames (the last one shorter if F % clip_len);
    * ``single_frame`` (paper stage 1): every frame is a clip.
    """
    F = int(num_frames)
    if mode not in CLIP_MODES:
        raise ValueError(f"clip_sampling.mode={mode!r}; choose one of {', '.join(CLIP_MODES)}.")
    if F < 1:
        raise ValueError(f"cannot cut a video of {F} frames into clips.")
    if mode == "single_frame":
        return torch.ones(batch, F, dtype=torch.long)
    if mode == "fixed":
        if clip_len < 1:
            raise ValueError(f"clip_sampling.clip_len must be >= 1, got {clip_len}.")
        lens = [clip_len] * (F // clip_len) + ([F % clip_len] if F % clip_len else [])
        return torch.tensor(lens, dtype=torch.long).expand(batch, -1).clone()
    hi = min(F, max_clips or F)
    lo = max(1, min(min_clips, hi))
    out = torch.zeros(batch, hi, dtype=torch.long)
    for b in range(batch):
        k = int(torch.randint(lo, hi + 1, (1,), generator=generator))
        cuts = torch.randperm(F - 1, generator=generator)[: k - 1] + 1 if k > 1 else torch.zeros(0, dtype=torch.long)
        bounds = torch.cat([torch.tensor([0]), cuts.sort().values, torch.tensor([F])])
        out[b, :k] = bounds[1:] - bounds[:-1]
    return out
