"""ENGINE train_video: whole-video diffusion training (ModelScope / VGen UNets, video DiTs such as Latte).

A whole-video model denoises every frame of a clip at one timestep: ``model(x_k, t, **conditions)`` (the contract
of tools/inferences/generate_video.py), trained with the DIFFUSION's ``video_losses`` (GaussianDiffusion: eps or v
MSE at a timestep drawn per sample; the model gets k or 1 - k/T as its ``timestep_input`` says).

Everything else is the next-clip engine's, not a copy (tools/train/train_next_clip.py, tools/train/loop.py): the
build stage, DDP / FSDP wrapping, EMA, AdamW and LR schedule, checkpoints, exact resume (global-batch randomness
from the step generator, sliced per rank), the memory plan (``train_net.py --dry-run``), the settings and their
validation. What differs is passed in: :func:`video_loss` (one micro-batch's loss) and :func:`video_model_config`.
``clip_sampling`` does not exist here (the whole window of ``max_frames`` is one sample).

Weights: ``pretrain`` (e.g. ``{type: ModelScopeCheckpoint, path: weights/text-to-video-synthesis}``) fills the
model; its folder fixes the model's shape and provides the null file settings (``auto_encoder.path``, the
embedder's ``pretrained``), as in ``generate_video``. The resolved config (model shape, file paths) is what the run
stores, so its checkpoints are read back by ``generate_video`` with ``test_model=<step .safetensors>``.

Conditions: a model whose ``conditions`` include ``y`` gets the embedder's tokens of ``cond_key`` (captions; VGen's
full 77-token context, no mask), with ``cond_dropout`` replacing a sample's caption by the null condition (drawn
per sample of the global batch). Image conditions (I2VGen-XL) are not trained by this engine. The model's dropout
draws from the global RNG, seeded per (step, micro-step, rank) from the step generator: resume is exact; N
processes reproduce one process except for the dropout masks.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from easydict import EasyDict

from tools.embedders.conditioning import condition_values, embed, model_cfg_with_cond_dim, video_conditions
from tools.pretrain.model_config import merged_model_config, model_folder, with_folder_files
from tools.train import loop, train_next_clip
from tools.train.train_next_clip import drop_conditions, latents_of
from utils.config import ConfigError
from utils.registry import ENGINE

DEFAULTS: dict[str, Any] = {k: copy.deepcopy(v) for k, v in train_next_clip.DEFAULTS.items() if k != "clip_sampling"}
DEFAULTS["cond_key"] = "caption"


def validate(cfg) -> None:
    """Contract C1: the next-clip engine's checks (loop, conditioning, window_start) apply unchanged."""
    train_next_clip.validate(cfg)


def resolved(cfg) -> EasyDict:
    """The run's config with what the pretrained folder fixes filled in (model shape, component files)."""
    out = EasyDict(copy.deepcopy({k: v for k, v in cfg.items()}))
    folder = model_folder(out)
    out.model = merged_model_config(out.model, out.pretrain, folder)
    for key in ("auto_encoder", "embedder"):
        out[key] = with_folder_files(key, out.get(key), folder)
    return out


def video_model_config(cfg, autoencoder, embedder) -> dict[str, Any]:
    """The model config as resolved (``cond_dim`` from the embedder for a model that takes it: Latte's class
    token); its latent channels and text width checked against the components."""
    model_cfg = model_cfg_with_cond_dim(cfg.model, embedder, cfg.embedder.get("type", ""))
    channels = model_cfg.get("in_dim", model_cfg.get("in_channels"))
    if channels is not None and int(channels) != int(autoencoder.latent_channels):
        raise ConfigError(f"the model takes {channels}-channel latents but the auto_encoder makes "
                          f"{autoencoder.latent_channels}; use the model's own autoencoder (auto_encoder.path: null = "
                          f"the pretrain folder's)")
    width = model_cfg.get("context_dim")
    if width is not None and getattr(embedder, "dim", None) is not None and int(embedder.dim) != int(width):
        raise ConfigError(f"the embedder {cfg.embedder.get('type')} makes {embedder.dim}-wide tokens but the model's "
                          f"context_dim is {width}; use the model's text encoder")
    return model_cfg


def video_loss(run, batch: dict[str, Any], gen) -> dict[str, Any]:
    """One micro-batch: latents of ``max_frames`` frames, captions -> tokens (with dropout), the diffusion's
    ``video_losses`` under autocast."""
    cfg, rank, world, device = run.cfg, run.rank, run.world, run.backend.device
    model = run.model
    conditions = video_conditions(model)
    if set(conditions) - {"y"}:
        raise ConfigError(f"train_video trains text-conditioned or unconditional models; {type(model).__name__} "
                          f"takes {list(conditions)}")
    if not callable(getattr(run.diffusion, "video_losses", None)):
        raise ConfigError(f"diffusion {cfg.diffusion.get('type')} has no whole-video loss (video_losses); use "
                          f"GaussianDiffusion")
    x0 = latents_of(batch, run.autoencoder, cfg.max_frames, device, gen, (rank, world), cfg.window_start)
    kwargs = {}
    if "y" in conditions:
        values = condition_values(batch, cfg.cond_key)
        if cfg.cond_dropout > 0:
            values = drop_conditions(values, cfg.cond_dropout, gen, rank, world)
        kwargs["y"], _ = embed(run.embedder, values, device)  # the whole token sequence (VGen's context)
    # the model's dropout (VGen's 0.1) draws from the global RNG: seed it from the step generator (+ rank), so a
    # resumed run draws exactly what the uninterrupted one drew
    torch.manual_seed(int(torch.randint(0, 2 ** 62, (1,), generator=gen)) + rank)
    with run.backend.autocast():
        return run.diffusion.video_losses(run.net, x0, generator=gen, rank_slice=(rank, world), **kwargs)


@ENGINE.register_class()
def train_video(cfg) -> int:
    """Whole-video diffusion training (ModelScope / VGen UNets): the next-clip engine's loop with a video loss."""
    validate(cfg)
    return loop.launch(cfg, _train)


def _train(cfg, backend, rank, world, out_dir: Path, log) -> int:
    return train_next_clip._train(resolved(cfg), backend, rank, world, out_dir, log, loss_fn=video_loss,
                                  model_config=video_model_config)


train_video.defaults = DEFAULTS
train_video.validate = validate
