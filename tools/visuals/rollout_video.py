"""VISUAL RolloutVideo: every viz_interval steps, predict the continuation of a few
training videos and write ground truth | prediction side by side."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tools.autoencoders.base import latent_frames
from tools.embedders.conditioning import condition_values, embed, is_conditional, is_per_frame
from tools.inferences.guidance import Condition
from tools.inferences.rollout import RolloutSettings, rollout
from utils.registry import VISUAL
from utils.video_io import side_by_side, write_video


@VISUAL.register_class()
class RolloutVideo:
    """Ground truth | rollout mp4 of the current batch's first videos (EMA weights).

    A conditional model is given each video's own condition (the batch's ``cond_key`` values; an
    action-conditioned model its actions, one per frame); ``context_frames: 0`` generates from the
    condition alone.
    """

    def __init__(self, num_samples: int = 2, context_frames: int = 4, clip_len: int = 4, window: int = 16,
                 num_sample_steps: int = 20, fps: int = 8, seed: int = 0):
        self.n, self.context, self.clip_len, self.window = num_samples, context_frames, clip_len, window
        self.steps, self.fps, self.seed = num_sample_steps, fps, seed

    @staticmethod
    def conditions(state: dict, n: int, num_frames: int) -> Condition:
        """The condition of the batch's first ``n`` samples (a per-frame embedder: the first ``num_frames``
        actions of each, as frame conditions); empty if unconditional."""
        embedder, cfg = state.get("embedder"), state.get("cfg") or {}
        cond_key = cfg.get("cond_key")
        if embedder is None or not cond_key or not is_conditional(embedder):
            return Condition()
        per_frame = is_per_frame(embedder)
        values = condition_values(state["batch"], cond_key, per_frame=per_frame)[:n]
        with torch.no_grad():
            if per_frame:
                values = [list(v)[:num_frames] for v in values]
                return Condition(frame_cond=embed(embedder, values, state["backend"].device, num_frames)[0])
            return Condition(*embed(embedder, values, state["backend"].device))

    @torch.no_grad()
    def __call__(self, state: dict) -> list[str]:
        model, diffusion, ae, backend = state["model"], state["diffusion"], state["autoencoder"], state["backend"]
        batch = state["batch"]
        was_training = model.training
        model.eval()
        try:
            if "video" in batch:
                video = batch["video"][: self.n].to(backend.device)
            else:  # trained from a latent cache
                video = ae.decode(batch["latent"][: self.n].to(backend.device)).clamp(-1, 1)
            if self.context > 0:
                ctx = ae.encode(video[:, :, : self.context])
            else:  # no context frames: an empty latent video of the right shape
                sf = int(ae.spatial_factor)
                ctx = video.new_zeros(video.shape[0], int(ae.latent_channels), 0, video.shape[3] // sf,
                                      video.shape[4] // sf)
            condition = self.conditions(state, video.shape[0], video.shape[2])
            settings = RolloutSettings(num_frames=latent_frames(ae, video.shape[2]) - ctx.shape[2],  # latent frames
                                       clip_len=self.clip_len, window=self.window, num_sample_steps=self.steps,
                                       seed=self.seed)
            with backend.autocast():
                out = rollout(model, diffusion, ctx, settings, condition)
            pred = ae.decode(out.float()).clamp(-1, 1).cpu()
        finally:
            model.train(was_training)
        rows = [side_by_side(video[i].cpu(), pred[i]) for i in range(video.shape[0])]
        path = Path(state["run_dir"]) / "visuals" / f"step_{state['step']:08d}.mp4"
        write_video(path, np.concatenate(rows, axis=1), fps=self.fps)
        return [str(path)]
