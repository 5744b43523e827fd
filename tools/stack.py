"""The generator stack of a config: autoencoder, embedder, model and diffusion, built in one place.

The model's config follows the other components: ``in_channels`` from the autoencoder's latent
channels, ``cond_dim`` (``frame_cond_dim`` for a per-frame embedder) from the embedder
(:func:`model_config`). Training, the Predictor, the memory
plan and the benchmarks build through here, and new model families plug in here.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from tools.autoencoders.base import model_cfg_with_channels
from tools.embedders.conditioning import cond_dim_key, is_per_frame, model_cfg_for
from utils.config import ConfigError
from utils.registry import AUTO_ENCODER, DIFFUSION, EMBEDDER, MODEL, accepted_kwargs


@dataclass
class GeneratorStack:
    autoencoder: Any
    embedder: Any
    model: Any
    diffusion: Any


def model_config(cfg, autoencoder=None, embedder=None, model_cfg=None) -> dict:
    """``cfg.model`` (or ``model_cfg``, e.g. merged with what a checkpoint fixes) with ``in_channels`` from
    ``autoencoder`` and ``cond_dim`` from ``embedder``, each for a model that takes that argument (a component
    left None keeps the model's own setting); a set value that disagrees is a ConfigError. The one place
    where a model's config follows the other components."""
    model_cfg = dict(cfg.model if model_cfg is None else model_cfg)
    takes = accepted_kwargs(MODEL.get(model_cfg["type"])) if "type" in model_cfg else []
    if autoencoder is not None and "in_channels" in takes:
        model_cfg = model_cfg_with_channels(model_cfg, autoencoder, (cfg.get("auto_encoder") or {}).get("type", ""))
    if embedder is not None and is_per_frame(embedder) and "type" in model_cfg and "frame_cond_dim" not in takes:
        raise ConfigError(f"the embedder {(cfg.get('embedder') or {}).get('type', type(embedder).__name__)} makes one "
                          f"token per frame, but model {model_cfg['type']} takes no frame conditions "
                          f"(frame_cond_dim); use model NextClipTransformer")
    if embedder is not None and cond_dim_key(embedder) in takes:
        model_cfg = model_cfg_for(model_cfg, embedder, (cfg.get("embedder") or {}).get("type", ""))
    return model_cfg


def build_stack(cfg, embedder=None, model_context=None, model_config=model_config,
                autoencoder=None) -> GeneratorStack:
    """Build the config's components.

    ``embedder`` / ``autoencoder``: ones already built (e.g. with trained weights loaded, or checked against
    the data before the model is built); ``model_context``: a context manager the model is built in (e.g. the
    backend's meta-device init for FSDP); ``model_config(cfg, autoencoder, embedder) -> dict``: the model's
    constructor kwargs, by default :func:`model_config` (a model family whose checkpoint fixes its shape
    passes its own, e.g. tools/train/train_video.py). Nothing is moved to a device, no weights are loaded."""
    if autoencoder is None:
        autoencoder = AUTO_ENCODER.build(cfg.auto_encoder, "auto_encoder")
    if embedder is None:
        embedder = EMBEDDER.build(cfg.embedder, "embedder")
    with model_context if model_context is not None else contextlib.nullcontext():
        model = MODEL.build(model_config(cfg, autoencoder, embedder), "model")
    return GeneratorStack(autoencoder, embedder, model, DIFFUSION.build(cfg.diffusion, "diffusion"))
