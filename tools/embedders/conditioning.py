"""How engines use an embedder: the model's ``cond_dim``, and turning condition values into
``(cond, cond_mask)`` (contract K1/K4). Shared by the training engine, the Predictor and visuals.

A per-frame embedder (class attribute ``per_frame = True``, e.g. ``DiscreteActions``) makes one token
per frame: its width sets the model's ``frame_cond_dim`` instead of ``cond_dim``, an item's value is a
sequence (one entry per frame), and the engines pass the tokens to the model as ``frame_cond``."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from utils.config import ConfigError

#: what a whole-video model may take besides x and t (tools/inferences/generate_video.py gives them)
VIDEO_CONDITIONS = ("y", "image", "local_image", "fps")


def video_conditions(model) -> tuple:
    """The inputs a whole-video model takes besides x and t: its class attribute ``conditions`` (absent: text
    tokens ``("y",)``; an unconditional model declares ``()``). ValueError for a name no engine gives."""
    inner = getattr(model, "module", None) or model
    conds = tuple(getattr(inner, "conditions", ("y",)))
    unknown = [c for c in conds if c not in VIDEO_CONDITIONS]
    if unknown:
        raise ValueError(f"{type(inner).__name__}.conditions has {unknown}; the engines give {list(VIDEO_CONDITIONS)}")
    return conds


def is_conditional(embedder) -> bool:
    """True when the embedder makes condition tokens (NoCondition: num_tokens 0 -> False)."""
    return int(getattr(embedder, "num_tokens", 0) or 0) > 0


def is_per_frame(embedder) -> bool:
    """True for an embedder of per-frame conditions (one token per frame, e.g. DiscreteActions)."""
    return bool(getattr(embedder, "per_frame", False)) and is_conditional(embedder)


def cond_dim_key(embedder) -> str:
    """The model setting that takes the embedder's token width: ``frame_cond_dim`` for a per-frame
    embedder, else ``cond_dim``."""
    return "frame_cond_dim" if is_per_frame(embedder) else "cond_dim"


def model_cfg_for(model_cfg: Mapping[str, Any], embedder, embedder_type: str = "") -> dict[str, Any]:
    """The model config with ``cond_dim`` (``frame_cond_dim`` for a per-frame embedder) = the embedder's
    token width unless the config sets it.

    A set value that differs from the embedder's width could never run: ConfigError.
    """
    cfg = dict(model_cfg)
    if not is_conditional(embedder):
        return cfg
    key = cond_dim_key(embedder)
    dim, have = int(embedder.dim), cfg.get(key)
    name = embedder_type or type(embedder).__name__
    if have is None:
        cfg[key] = dim
    elif have != dim:
        raise ConfigError(f"model.{key}={have!r} but the embedder {name} makes tokens of width {dim}; "
                          f"remove model.{key} (it follows the embedder) or set it to {dim}")
    return cfg


def condition_values(batch: Mapping[str, Any], cond_key: str | None, per_frame: bool = False) -> list:
    """The batch's condition values under ``cond_key`` as a plain list (tensors -> Python values);
    ``per_frame``: one sequence per item (a (B, F) tensor -> B lists)."""
    if cond_key not in batch:
        raise KeyError(f"cond_key={cond_key!r} but dataset items have only {sorted(batch)}; "
                       f"set cond_key to one of them (label | caption | actions).")
    values = batch[cond_key]
    if torch.is_tensor(values):
        values = values.tolist() if per_frame else values.reshape(-1).tolist()
    return list(values)


def embed(embedder, values: Sequence, device, num_frames: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``embedder(values)`` -> (cond (B, M, dim) float32, cond_mask (B, M) bool) on ``device``; a per-frame
    embedder makes ``num_frames`` tokens per item (shorter sequences padded with its null token, longer
    ones truncated)."""
    tokens, mask = embedder(list(values), num_frames) if is_per_frame(embedder) else embedder(list(values))
    return tokens.to(device), mask.to(device)


def null_condition(embedder, batch_size: int, device, num_frames: int | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``embedder.null(B)`` on ``device``: the unconditional branch of classifier-free guidance (a per-frame
    embedder: its null token at each of ``num_frames`` frames)."""
    tokens, mask = embedder.null(batch_size, num_frames or 1) if is_per_frame(embedder) else embedder.null(batch_size)
    return tokens.to(device), mask.to(device)
