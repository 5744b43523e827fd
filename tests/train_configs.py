"""The tiny next-clip training run the engine tests start from, as YAML text: ``tiny_train_yaml(**overrides)``.

The base is the tiny preset in pixel space on 16x16 SyntheticPhysics videos of 8 frames, fp32 SDPA on the CPU,
two steps of batch 2, a checkpoint at step 2, no visuals, no progress bar and no MFU in the log (its FLOP count
runs every logged step: tests/test_train_mfu.py covers it). A test names only what it
changes: a keyword replaces that top-level key (``None`` removes it); ``physics(**kw)`` and ``cpu(**kw)`` give the
base's dataset / backend with some settings changed.
"""
from __future__ import annotations

from typing import Any

import yaml

MODEL = {"type": "NextClipTransformer", "preset": "tiny", "in_channels": 3, "patch_size": 4, "rope": "3d"}


def physics(**kw) -> dict[str, Any]:
    """The base dataset (SyntheticPhysics, 16x16, 8 frames, 16 videos, seed 0) with ``kw`` changed."""
    return {"type": "SyntheticPhysics", "resolution": 16, "num_frames": 8, "length": 16, "seed": 0, **kw}


def cpu(**kw) -> dict[str, Any]:
    """The base backend (CPU, fp32, SDPA) with ``kw`` changed (e.g. ``parallel="auto"``)."""
    return {"type": "cpu", "precision": "fp32", "attention": "sdpa", **kw}


def tiny_train_config(**overrides) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "TASK_TYPE": "train_next_clip", "name": "tiny", "backend": cpu(), "model": dict(MODEL),
        "diffusion": {"type": "RectifiedFlow", "prediction": "x1"}, "auto_encoder": {"type": "Identity"},
        "dataset": physics(), "max_frames": 8, "batch_size": 2, "num_steps": 2, "save_ckp_interval": 2,
        "viz_interval": 1000, "log_interval": 1, "progress": False, "log_mfu": False,
    }
    for key, value in overrides.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    return cfg


def tiny_train_yaml(**overrides) -> str:
    """:func:`tiny_train_config` as the YAML text of a config file."""
    return yaml.safe_dump(tiny_train_config(**overrides), sort_keys=False, default_flow_style=None, width=1000)
