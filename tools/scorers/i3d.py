"""FVD features: an I3D network the user supplies as a TorchScript file (nothing is downloaded).

The convention is StyleGAN-V's ``i3d_torchscript.pt`` (the Kinetics-400 I3D used by StyleGAN-V,
DIGAN, MoCoGAN-HD and most video generation papers after them). It is loaded with
``torch.jit.load(path)`` (no architecture code) and called as

    features = net(videos, rescale=False, resize=False, return_features=True)   # (N, 400)

on ``videos`` float (N, 3, T, 224, 224) in [-1, 1]: the logits before the softmax. Preprocessing
(:func:`preprocess`, what StyleGAN-V's FVD code does before the call): the first ``num_frames``
frames (16 in StyleGAN-V; the I3D needs at least ~9), the shorter side resized to 224 bilinearly
(no antialiasing, ``align_corners=False``), a centre crop to 224 x 224, values in [-1, 1].
A file of another network works if it takes those keyword arguments, or set ``call_kwargs``
(e.g. ``{}`` for a plain ``forward(videos) -> (N, D)``).
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

from utils.metrics import frechet_distance, gaussian_stats

#: StyleGAN-V's call: raw features before the softmax, the input already resized and in [-1, 1]
STYLEGAN_V_KWARGS = {"rescale": False, "resize": False, "return_features": True}


def preprocess(video: torch.Tensor, size: int = 224, num_frames: int | None = 16) -> torch.Tensor:
    """One video (C, T, H, W) in [-1, 1] -> (C, T', size, size) in [-1, 1], StyleGAN-V's FVD input:
    the first ``num_frames`` frames (None: all), the shorter side resized to ``size`` (bilinear,
    ``align_corners=False``, the longer side rounded up), a centre crop."""
    c, t, h, w = video.shape
    if num_frames is not None:
        if t < num_frames:
            raise ValueError(f"a video has {t} frames but FVD uses the first num_frames={num_frames}; give longer "
                             f"videos or lower fvd_frames")
        video = video[:, :num_frames]
    scale = size / min(h, w)
    target = (size, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), size)
    x = F.interpolate(video.float(), size=target, mode="bilinear", align_corners=False)  # T is the batch
    top, left = (x.shape[2] - size) // 2, (x.shape[3] - size) // 2
    return x[:, :, top:top + size, left:left + size].clamp(-1, 1).contiguous()


class I3DFeatures:
    """Video features from a TorchScript file: ``__call__(videos) -> (N, D)`` float64 on the CPU.

    ``path``: the TorchScript file (``i3d_path`` in the evaluate_generation engine); ``size`` and
    ``num_frames``: :func:`preprocess`; ``call_kwargs``: keyword arguments of the call (default
    StyleGAN-V's); ``batch_size`` videos per forward; ``device`` where the network runs."""

    def __init__(self, path: str, size: int = 224, num_frames: int | None = 16, call_kwargs: dict | None = None,
                 batch_size: int = 8, device: str | torch.device = "cpu", setting: str = "path"):
        if not path or not os.path.isfile(str(path)):
            raise FileNotFoundError(
                f"{setting}={path!r}: no such I3D TorchScript file. FVD needs StyleGAN-V's i3d_torchscript.pt "
                f"(never downloaded at run time): fetch it once on a machine with internet, copy it here and "
                f"set {setting}, or leave fvd out of metrics")
        self.path, self.size, self.num_frames, self.batch_size = str(path), int(size), num_frames, int(batch_size)
        self.call_kwargs = dict(STYLEGAN_V_KWARGS if call_kwargs is None else call_kwargs)
        self.device = torch.device(device)
        self.net = torch.jit.load(self.path, map_location=self.device).eval()

    @torch.no_grad()
    def __call__(self, videos: list[torch.Tensor]) -> torch.Tensor:
        """Videos (C, T, H, W) in [-1, 1] (sizes may differ) -> features (N, D) float64."""
        out = []
        for i in range(0, len(videos), self.batch_size):
            batch = torch.stack([preprocess(v, self.size, self.num_frames) for v in videos[i:i + self.batch_size]])
            feats = self.net(batch.to(self.device), **self.call_kwargs)
            out.append(feats.reshape(feats.shape[0], -1).double().cpu())
        return torch.cat(out)


def fvd(features: torch.Tensor, ref_features: torch.Tensor) -> float:
    """FVD: the Fréchet distance (:func:`utils.metrics.frechet_distance`) between Gaussian fits
    (:func:`utils.metrics.gaussian_stats`) of the generated and the reference videos' features.
    Biased upwards at small numbers of videos: compare values only at equal n (papers use 2048)."""
    return frechet_distance(*gaussian_stats(features), *gaussian_stats(ref_features))
