"""How engines use an embedder: the model's ``cond_dim``, and turning condition values into
``(cond, cond_mask)`` (contract K1/K4). Shared by the training engine, the Predictor and visuals."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch

from utils.config import ConfigError
from utils.registry import MODEL, accepted_kwargs

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


def model_cfg_for(model_cfg: Mapping[str, Any], embedder, embedder_type: str = "") -> Dict[str, Any]:
    """The model config with ``cond_dim`` = the embedder's token width unless the config sets it.

    A set ``cond_dim`` that differs from the embedder's width could never run: ConfigError.
    """
    cfg = dict(model_cfg)
    if not is_conditional(embedder):
        return cfg
    dim, have = int(embedder.dim), cfg.get("cond_dim")
    name = embedder_type or type(embedder).__name__
    if have is None:
        cfg["cond_dim"] = dim
    elif have != dim:
        raise ConfigError(f"model.cond_dim={have!r} but the embedder {name} makes tokens of width {dim}; "
                          f"remove model.cond_dim (it follows the embedder) or set it to {dim}")
    return cfg


def model_cfg_with_cond_dim(model_cfg: Mapping[str, Any], embedder, embedder_type: str = "") -> dict[str, Any]:
    """:func:`model_cfg_for` for a whole-video model that takes ``cond_dim`` (Latte's class token); a model
    without that argument (a UNet whose text width is its ``context_dim``) is left as configured."""
    if "cond_dim" not in accepted_kwargs(MODEL.get(model_cfg["type"])):
        return dict(model_cfg)
    return model_cfg_for(model_cfg, embedder, embedder_type)


def condition_values(batch: Mapping[str, Any], cond_key: Optional[str]) -> list:
    """The batch's condition values under ``cond_key`` as a plain list (tensors -> Python values)."""
    if cond_key not in batch:
        raise KeyError(f"cond_key={cond_key!r} but dataset items have only {sorted(batch)}; "
                       f"set cond_key to one of them (label | caption).")
    values = batch[cond_key]
    if torch.is_tensor(values):
        values = values.reshape(-1).tolist()
    return list(values)


def embed(embedder, values: Sequence, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """``embedder(values)`` -> (cond (B, M, dim) float32, cond_mask (B, M) bool) on ``device``."""
    tokens, mask = embedder(list(values))
    return tokens.to(device), mask.to(device)


def null_condition(embedder, batch_size: int, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """``embedder.null(B)`` on ``device``: the unconditional branch of classifier-free guidance."""
    tokens, mask = embedder.null(batch_size)
    return tokens.to(device), mask.to(device)
