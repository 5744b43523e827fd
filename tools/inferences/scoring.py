"""Shared by the evaluation engines: generation metrics of one video, their summaries and plots.

evaluate_generation, evaluate_prediction and evaluate_condition score videos through these
helpers, which call the metric functions of utils/metrics.py (flicker, Physics-IQ-style motion
scores) and the weight-backed scorers of tools/scorers/ (CLIP-T / CLIP-I, FVD features): one
mechanism for every engine. Settings shared by the engines:

- ``motion``: the motion-mask settings of :func:`utils.metrics.motion_masks`
  (``alpha``, ``threshold``, ``blur``, ``kernel``);
- ``clip_weights`` / ``clip_arch`` / ``clip_config_file``: a local OpenCLIP weights file for
  CLIP-T / CLIP-I (null: those metrics are off);
- ``i3d_path`` / ``fvd_frames``: StyleGAN-V's I3D TorchScript file and the frames it sees (null:
  no FVD).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from utils.config import ConfigError
from utils.io import atomic_path
from utils.metrics import MOTION_METRICS, physics_iq_score, physics_iq_scores, temporal_flicker

MOTION_DEFAULTS = {"alpha": 0.3, "threshold": 10.0, "blur": 5, "kernel": 5}  # Physics-IQ's
#: settings of the scorers that need weights (every engine that scores generations takes them)
SCORER_DEFAULTS = {
    "motion": dict(MOTION_DEFAULTS),
    "clip_weights": None,         # local OpenCLIP weights file (.safetensors / .bin / .pt): CLIP-T / CLIP-I
    "clip_arch": "ViT-B-32",      # its open_clip architecture
    "clip_config_file": None,     # <arch>.json for an architecture open_clip does not ship
    "i3d_path": None,             # StyleGAN-V's i3d_torchscript.pt: FVD
    "fvd_frames": 16,             # frames of each video the I3D sees (StyleGAN-V: 16)
}
#: direction of every metric, for readers of metrics.json and the plots
HIGHER_IS_BETTER = {"flicker": True, "psnr": True, "ssim": True, "spatial_iou": True, "spatiotemporal_iou": True,
                    "weighted_spatial_iou": True, "mse": False, "clip_t": True, "clip_i": True, "fvd": False}


def check_scorer_settings(cfg, need_clip: bool = False, need_fvd: bool = False) -> None:
    """Contract C1 for the scorer settings: one ConfigError line naming the setting."""
    motion = cfg.get("motion", {})  # engines without motion scores have no such setting
    if not isinstance(motion, dict) or set(motion) - set(MOTION_DEFAULTS):
        raise ConfigError(f"motion={motion!r} must be a dict with keys among {list(MOTION_DEFAULTS)}; set e.g. "
                          f"'motion.kernel=3'")
    m = {**MOTION_DEFAULTS, **motion}
    for key in ("blur", "kernel"):
        v = m[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1 or (v > 1 and v % 2 == 0):
            raise ConfigError(f"motion.{key}={v!r} must be an odd int >= 1 (1: none); set e.g. 'motion.{key}=5'")
    if not (isinstance(m["alpha"], (int, float)) and 0 < m["alpha"] <= 1):
        raise ConfigError(f"motion.alpha={m['alpha']!r} must be in (0, 1] (the running average's weight); "
                          f"set e.g. 'motion.alpha=0.3'")
    if not (isinstance(m["threshold"], (int, float)) and 0 <= m["threshold"] < 255):
        raise ConfigError(f"motion.threshold={m['threshold']!r} must be in [0, 255) (grey levels); "
                          f"set e.g. 'motion.threshold=10'")
    f = cfg.get("fvd_frames", 16)
    if isinstance(f, bool) or not isinstance(f, int) or f < 1:
        raise ConfigError(f"fvd_frames={f!r} must be an int >= 1 (StyleGAN-V: 16); set e.g. 'fvd_frames=16'")
    for key, needed, what in (("clip_weights", need_clip, "CLIP-T / CLIP-I need local OpenCLIP weights"),
                              ("i3d_path", need_fvd, "FVD needs StyleGAN-V's I3D TorchScript file")):
        path = cfg.get(key)
        if path is None and needed:
            raise ConfigError(f"{key}=null: {what} (never downloaded); set '{key}=FILE' or drop the metric")
        if path is not None and not os.path.isfile(str(path)):
            raise ConfigError(f"{key}={str(path)!r}: no such file; {what} (never downloaded at run time): copy "
                              f"the file there and set '{key}=FILE', or set '{key}=null' to leave the metric out")
    cf = cfg.get("clip_config_file")
    if cf is not None and not os.path.isfile(str(cf)):
        raise ConfigError(f"clip_config_file={str(cf)!r}: no such file; give the open_clip <arch>.json or null")


def motion_settings(cfg) -> dict:
    return {**MOTION_DEFAULTS, **dict(cfg.get("motion") or {})}


def build_clip(cfg, device="cpu"):
    """The CLIP scorer of ``clip_weights`` (None when it is null)."""
    if not cfg.get("clip_weights"):
        return None
    from tools.scorers.clip import CLIPScorer

    return CLIPScorer(cfg.clip_arch, cfg.clip_weights, cfg.get("clip_config_file"), device=device,
                      setting="clip_weights")


def build_i3d(cfg, device="cpu"):
    """The FVD feature network of ``i3d_path`` (None when it is null)."""
    if not cfg.get("i3d_path"):
        return None
    from tools.scorers.i3d import I3DFeatures

    return I3DFeatures(cfg.i3d_path, num_frames=int(cfg.fvd_frames), device=device, setting="i3d_path")


def video_scores(video: torch.Tensor, reference: torch.Tensor | None = None, skip: int = 0,
                 motion: dict | None = None, clip=None, prompt: str | None = None,
                 image: torch.Tensor | None = None) -> dict[str, float]:
    """Per-video generation metrics of ``video`` (C, T, H, W) in [-1, 1] whose first ``skip`` frames
    were given: ``flicker`` of the generated frames; with a ``reference`` of the same shape the
    Physics-IQ-style scores (masks over the whole video, scored on the generated frames); with a
    CLIP scorer ``clip_t`` (``prompt``) and ``clip_i`` (conditioning ``image`` (C, H, W)) of the
    generated frames."""
    gen = video[:, skip:]
    out = {"flicker": temporal_flicker(gen)} if gen.shape[1] >= 2 else {}
    if reference is not None:
        out.update(physics_iq_scores(video, reference, skip=skip, **(motion or MOTION_DEFAULTS)))
    if clip is not None and prompt:
        out["clip_t"] = clip.clip_t(gen, prompt)
    if clip is not None and image is not None:
        out["clip_i"] = clip.clip_i(gen, image)
    return out


def summarize(rows: list[dict[str, float]]) -> dict[str, dict]:
    """``{metric: {mean, std, min, max, n}}`` over the videos that have the metric."""
    out = {}
    for key in dict.fromkeys(k for r in rows for k in r):
        vals = np.array([r[key] for r in rows if key in r and r[key] is not None and math.isfinite(r[key])])
        if len(vals):
            out[key] = {"mean": float(vals.mean()), "std": float(vals.std()), "min": float(vals.min()),
                        "max": float(vals.max()), "n": int(len(vals))}
    return out


def physics_iq(summary: dict, variance: dict) -> float | None:
    """Physics-IQ aggregate (%) of the mean motion scores of ``summary`` against the physical
    variance's (both :func:`summarize` outputs); None unless both have every motion metric."""
    if not all(k in summary and k in variance for k in MOTION_METRICS):
        return None
    return physics_iq_score({k: summary[k]["mean"] for k in MOTION_METRICS},
                            {k: variance[k]["mean"] for k in MOTION_METRICS})


def plot_distributions(per_method: dict[str, list[dict]], path: Path, title: str,
                       bounds: dict[str, float] | None = None) -> None:
    """One panel per metric: every video's value per method (a strip of dots and the mean as a bar);
    ``bounds`` (the physical variance's means) as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(dict.fromkeys(k for rows in per_method.values() for r in rows for k in r))
    if not metrics:
        return
    ncol = min(4, len(metrics))
    nrow = math.ceil(len(metrics) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.2 * nrow), squeeze=False,
                             gridspec_kw={"hspace": 0.55, "wspace": 0.3, "bottom": 0.15, "top": 0.88})
    rng = np.random.default_rng(0)
    for ax, metric in zip(axes.flat, metrics):
        for i, rows in enumerate(per_method.values()):
            vals = [r[metric] for r in rows if r.get(metric) is not None]
            if not vals:
                continue
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(vals)), vals, s=10, alpha=0.6, color=f"C{i}")
            ax.hlines(np.mean(vals), i - 0.3, i + 0.3, color="k", linewidth=1.5)
        if bounds and metric in bounds:
            ax.axhline(bounds[metric], color="grey", linestyle="--", linewidth=1, label="physical variance")
            ax.legend(fontsize=7)
        arrow = "" if metric not in HIGHER_IS_BETTER else (" (higher better)" if HIGHER_IS_BETTER[metric]
                                                          else " (lower better)")
        ax.set_title(metric + arrow, fontsize=9)
        ax.set_xticks(range(len(per_method)))
        ax.set_xticklabels(list(per_method), rotation=30, ha="right", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=72, format="png")
    plt.close(fig)
