"""The model config a pretrained checkpoint fixes, merged under the YAML's ``model`` block, and the component files
a model folder provides (the whole-video engines: generate_video, train_video).

A PRETRAIN loader may define ``model_config(path) -> dict``: the constructor kwargs its weights' own config file
fixes (ModelScope's ``configuration.json``, VGen's ``config.json``). A NextClip ``.safetensors`` checkpoint carries
the merged config of its run, whose ``model`` block counts the same way. The YAML names the model ``type`` and may
set other keys; a key set in both must agree.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from utils.checkpoint import checkpoint_config
from utils.config import ConfigError
from utils.hub import cached_snapshot, is_repo_id
from utils.registry import PRETRAIN, accepted_kwargs

#: file settings a model folder fills when they are null: (config key, kwarg) -> file name in the folder
FOLDER_FILES = {("auto_encoder", "path"): "", ("embedder", "pretrained"): "open_clip_pytorch_model.bin",
                ("image_embedder", "pretrained"): "open_clip_pytorch_model.bin"}


def run_pretrain(pretrain_cfg: dict, model, embedder=None, path: str | None = None) -> dict:
    """Build the PRETRAIN loader of ``pretrain_cfg`` on ``model`` (``path`` replaces its path); a loader that takes
    ``embedder`` gets it (a checkpoint whose class table belongs to the embedder: LatteCheckpoint)."""
    extra = {"embedder": embedder} if embedder is not None and "embedder" in accepted_kwargs(
        PRETRAIN.get(pretrain_cfg["type"])) else {}
    cfg = {**pretrain_cfg, "path": str(path)} if path is not None else pretrain_cfg
    return PRETRAIN.build(cfg, "pretrain", model=model, **extra)


def model_folder(cfg) -> str | None:
    """Where a whole-video run's weights come from: ``test_model`` (inference), else ``pretrain.path``; a repo id
    (``damo/text-to-video-synthesis``) that is not a local path is the folder of its local ModelScope / Hugging
    Face cache when it is cached (never downloaded)."""
    path = cfg.get("test_model") or (cfg.get("pretrain") or {}).get("path")
    if path and not Path(str(path)).exists() and is_repo_id(str(path)):
        hit, _ = cached_snapshot(str(path))
        return str(hit) if hit is not None else path
    return path


def with_folder_files(key: str, comp: dict | None, folder: str | None) -> dict | None:
    """``comp`` (the config of component ``key``) with its null file settings taken from the model folder
    (:data:`FOLDER_FILES`): ``auto_encoder.path`` = the folder, the embedders' ``pretrained`` = its OpenCLIP file."""
    if comp is None or folder is None or not Path(str(folder)).is_dir():
        return comp
    out = dict(comp)
    for (k, kwarg), name in FOLDER_FILES.items():
        if k == key and kwarg in out and out[kwarg] is None:
            out[kwarg] = str(Path(str(folder)) / name) if name else str(folder)
    return out


def fixed_model_config(pretrain_cfg: dict | None, path: str | None) -> dict[str, Any]:
    """The kwargs ``path`` fixes: a NextClip checkpoint's stored ``model`` block, else the loader's ``model_config``."""
    if not path:
        return {}
    p = Path(str(path))
    if p.suffix == ".safetensors" and p.is_file():
        text = checkpoint_config(p)
        stored = (yaml.safe_load(text) or {}).get("model") if text else None
        if isinstance(stored, dict):
            return {k: v for k, v in stored.items() if k != "type"}
    loader = PRETRAIN.get(pretrain_cfg["type"]) if pretrain_cfg else None
    read = getattr(loader, "model_config", None)
    return dict(read(str(path))) if read is not None else {}


def merged_model_config(model_cfg: dict, pretrain_cfg: dict | None, path: str | None) -> dict[str, Any]:
    """``model_cfg`` with the keys ``path`` fixes filled in; ConfigError when the YAML sets one differently."""
    out = dict(model_cfg)
    for key, value in fixed_model_config(pretrain_cfg, path).items():
        have = out.get(key)
        if have is not None and have != value and not _same_number_list(have, value):
            raise ConfigError(f"model.{key}={have!r} but the checkpoint {path} has {key}={value!r}; remove model.{key} "
                              f"from the config (it follows the checkpoint) or set it to {value!r}")
        out[key] = value
    return out


def _same_number_list(a, b) -> bool:
    try:
        return len(a) == len(b) and all(float(x) == float(y) for x, y in zip(a, b))
    except TypeError:
        return False
