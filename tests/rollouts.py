"""``roll``: :func:`tools.inferences.rollout.rollout` called with keywords, for tests that vary many
settings at once (the settings object and the condition are built from them)."""
import torch

from tools.inferences.guidance import Condition
from tools.inferences.rollout import RolloutSettings, rollout


def roll(model, diffusion, context, shape=None, progress=None, cond=None, cond_mask=None, null_cond=None,
         null_mask=None, steps=None, **settings):
    """``context=None`` with ``shape=(B, C, H, W)``: generate from nothing; ``steps``: num_sample_steps."""
    if context is None:
        if shape is None:
            raise ValueError("context is None: pass shape=(B, C, H, W) of the frames to generate")
        B, C, H, W = shape
        p = next(model.parameters())
        context = torch.zeros(B, C, 0, H, W, device=p.device, dtype=p.dtype)
    if steps is not None:
        settings["num_sample_steps"] = steps
    return rollout(model, diffusion, context, RolloutSettings(**settings),
                   Condition(cond, cond_mask, null_cond, null_mask), progress)
