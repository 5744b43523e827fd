"""Shared by the inference engines: build the components, load weights, roll out one input."""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from tools.inferences.rollout import rollout
from utils.checkpoint import CheckpointError, embedder_weights_for, format_report, load_weights
from utils.config import DEFAULT_COMPONENTS
from utils.registry import AUTO_ENCODER, BACKEND, DIFFUSION, EMBEDDER, MODEL, PRETRAIN
from utils.video_io import read_image, read_video, resize_crop, to_tensor

logger = logging.getLogger("nextclip")

#: settings shared by every inference engine that rolls a model out
ROLLOUT_DEFAULTS: Dict[str, Any] = {
    **copy.deepcopy(DEFAULT_COMPONENTS),
    "test_model": None,         # weights file (.safetensors; legacy .pth via weights_only)
    "strict": True,
    "log_dir": "workspace/inference",
    "seed": 8888,
    "resolution": [64, 64],     # [H, W] inputs are resized (keeping aspect) and center-cropped to
    "frame_stride": 1,          # stride when reading context frames from a video
    "context_frames": 4,        # C: frames given to the model (0 = generate from nothing)
    "max_frames": 16,           # total frames of every output video (context included)
    "clip_len": 4,              # G: frames generated per autoregressive step
    "window": 16,               # W: most history frames the model attends to
    "num_sample_steps": 25,
    "sampler": "euler",
    "shift": 1.0,
    "guide_scale": 1.0,         # CFG on the class / text condition (1 = off)
    "history_guide_scale": 1.0,  # CFG on the history (1 = off)
    "history_noise": None,      # t_in of the history at inference (null = clean history)
    "kv_cache": "recompute",    # recompute | rolling | off
    "fps": 8,
}


class Predictor:
    """Built once per run: model (+weights), diffusion, autoencoder, embedder, backend."""

    def __init__(self, cfg, local_rank: int = 0):
        self.cfg = cfg
        self.backend = BACKEND.build(cfg.backend, "backend", local_rank=local_rank)
        self.device = self.backend.device
        self.model = MODEL.build(cfg.model, "model")
        self.model.set_attention(*self.backend.attention_kernel())
        if cfg.test_model:
            report = load_weights(self.model, Path(cfg.test_model), strict=cfg.strict)
            logger.info("weights %s: %s", cfg.test_model, format_report(report))
        elif cfg.pretrain:
            PRETRAIN.build(cfg.pretrain, "pretrain", model=self.model)
        else:
            logger.warning("no test_model and no pretrain: the model has random weights")
        self.model.to(self.device).eval().requires_grad_(False)
        self.diffusion = DIFFUSION.build(cfg.diffusion, "diffusion")
        self.autoencoder = AUTO_ENCODER.build(cfg.auto_encoder, "auto_encoder").to(self.device).eval()
        self.embedder = EMBEDDER.build(cfg.embedder, "embedder")
        if cfg.test_model and self.embedder.state_dict():  # a trained embedder (e.g. a class table)
            emb_path = embedder_weights_for(Path(cfg.test_model))
            if emb_path.is_file():
                load_weights(self.embedder, emb_path, strict=cfg.strict)
            elif cfg.strict:
                raise CheckpointError(
                    f"the embedder {cfg.embedder['type']} has trained weights but {emb_path} does not exist "
                    f"(training writes it beside the model weights). Copy it there, or set strict: false "
                    f"to run with an untrained embedder.")
        self.embedder.to(self.device).eval()
        hw = cfg.resolution
        self.hw = (int(hw), int(hw)) if isinstance(hw, int) else (int(hw[0]), int(hw[1]))

    # -- inputs ------------------------------------------------------------------
    def load_video(self, path: str, num_frames: int) -> torch.Tensor:
        """First ``num_frames`` frames (at ``frame_stride``) resized/cropped -> (C, T, H, W) in [-1, 1].
        Shorter videos give what they have (at least ``context_frames``)."""
        from utils.video_io import probe_video

        info = probe_video(path)
        stride = int(self.cfg.frame_stride)
        idx = list(range(0, info.num_frames, stride))[:num_frames]
        if len(idx) < max(1, self.cfg.context_frames):
            raise ValueError(f"{path}: {info.num_frames} frames at stride {stride} gives {len(idx)}, "
                             f"fewer than context_frames={self.cfg.context_frames}")
        frames, _ = read_video(path, frame_indices=idx)
        return to_tensor(resize_crop(frames, self.hw))

    def load_image(self, path: str) -> torch.Tensor:
        return to_tensor(resize_crop(read_image(path)[None], self.hw))

    def condition(self, value) -> Optional[torch.Tensor]:
        """Condition tokens (1, M, dim) for one input, or None (no embedder / no value).

        The unconditional branch of classifier-free guidance uses the model's learned null
        tokens, the ones its ``cond_dropout`` trained (rollout's default for null_cond)."""
        if getattr(self.embedder, "num_tokens", 0) == 0 or value is None:
            return None
        with torch.no_grad():
            return self.embedder([value]).to(self.device)

    # -- rollout -----------------------------------------------------------------
    @torch.no_grad()
    def predict(self, context: Optional[torch.Tensor], seed: int, cond_value=None,
                num_frames: Optional[int] = None) -> torch.Tensor:
        """context (C, Tc, H, W) in [-1, 1] or None -> video (C, T, H, W) in [-1, 1], context included."""
        cfg = self.cfg
        total = int(num_frames or cfg.max_frames)
        cond = self.condition(cond_value)
        ae = self.autoencoder
        ctx_latent, shape = None, None
        if context is not None and context.shape[1] > 0:
            ctx_latent = ae.encode(context[None].to(self.device))
        else:  # latent frame shape from the autoencoder's contract attributes
            sf = ae.spatial_factor
            shape = (1, ae.latent_channels, self.hw[0] // sf, self.hw[1] // sf)
        done = 0 if ctx_latent is None else ctx_latent.shape[2]  # latent frames
        with self.backend.autocast():
            out = rollout(self.model, self.diffusion, ctx_latent, num_frames=total // ae.temporal_factor - done,
                          clip_len=cfg.clip_len, window=cfg.window, steps=cfg.num_sample_steps,
                          sampler=cfg.sampler, shift=cfg.shift, history_guide_scale=cfg.history_guide_scale,
                          guide_scale=cfg.guide_scale, cond=cond,
                          history_noise=cfg.history_noise, seed=seed, kv_cache=cfg.kv_cache, shape=shape)
        return self.autoencoder.decode(out.float())[0].clamp(-1, 1).cpu()


def side_by_side(*videos: torch.Tensor, gap: int = 2) -> np.ndarray:
    """(C, T, H, W) videos in [-1, 1] -> uint8 (T, H, sum W + gaps, 3), white gaps; shorter
    videos are padded with their last frame."""
    from utils.video_io import to_uint8

    T = max(v.shape[1] for v in videos)
    parts = []
    for i, v in enumerate(videos):
        if v.shape[1] < T:
            v = torch.cat([v, v[:, -1:].expand(-1, T - v.shape[1], -1, -1)], 1)
        parts.append(to_uint8(v))
        if i < len(videos) - 1:
            parts.append(np.full((T, v.shape[2], gap, 3), 255, np.uint8))
    return np.concatenate(parts, axis=2)
