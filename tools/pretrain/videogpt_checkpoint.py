"""PRETRAIN VideoGPTCheckpoint: official Video-GPT weights -> a VideoGPT model, and the export back.

The official layout is ``LVM.state_dict()`` (keys ``llm.*``, ``x_embedder.*``, ``input_x_embedder.*``,
``time_token.*``, ``t_embedder.*``, ``final_layer.*``, ``pos_embed``), which is exactly
``VideoGPT.state_dict()``. ``path`` is any of:

- a folder holding ``model.safetensors`` (or a single ``*.safetensors``), sharded safetensors with ``model.safetensors.index.json``,
  ``model.pt`` or ``pytorch_model.bin`` (or bin shards with ``pytorch_model.bin.index.json``),
  directly or in a ``transformer/`` sub-folder, optionally with ``config.json`` and tokenizer files;
- one such weights file;
- a hub repo id (``owner/name``) already in the local Hugging Face or ModelScope cache: it is
  resolved with ``local_files_only`` and never downloaded.

Loading is strict with a key report (missing / unexpected / mis-shaped), reads one tensor at a
time (``torch.load(weights_only=True, mmap=True)`` for pickled files) and, on a model built with
``empty_weights: true`` (meta device), assigns every tensor in place: the model never exists twice.
A missing ``pos_embed`` is computed. Values the checkpoint defines and the model config leaves
unset (null) are taken from it: the longrope factors (``config.json``) and the marker token ids
(tokenizer files, else ``config.json``'s ``videogpt`` block); set on both sides they must agree.
"""
from __future__ import annotations

import json
import logging
import sys
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from utils.checkpoint import CheckpointError, format_report, unwrap_state_dict
from utils.hub import SOURCES, cached_snapshot, is_repo_id
from utils.io import atomic_path, atomic_write_text
from utils.registry import PRETRAIN

logger = logging.getLogger("nextclip")

SAFE_INDEX = ("model.safetensors.index.json",)
SAFE_FILES = ("model.safetensors",)
TORCH_INDEX = ("pytorch_model.bin.index.json",)
TORCH_FILES = ("model.pt", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "added_tokens.json", "tokenizer_config.json")
EXTRA = "_extra_state"  # VideoGPT's marker ids + rope factors (NextClip checkpoints only; not official)
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# config.json field -> VideoGPT kwarg (the fields that fix tensor shapes or the function)
CONFIG_FIELDS = {"hidden_size": "hidden", "num_hidden_layers": "depth", "num_attention_heads": "heads",
                 "intermediate_size": "ffn", "vocab_size": "vocab_size", "rms_norm_eps": "rms_norm_eps",
                 "rope_theta": "rope_theta", "max_position_embeddings": "max_position_embeddings",
                 "original_max_position_embeddings": "original_max_position_embeddings"}
VIDEOGPT_FIELDS = ("in_channels", "patch_size", "pos_embed_max_size", "pe_interpolation",
                   "frequency_embedding_size", "final_layer_norm_eps")
TOKEN_KWARGS = {"<|diffusion|>": "diffusion_token_id", "<img>": "image_start_token_id",
                "</img>": "image_end_token_id"}


# ---------------------------------------------------------------------------- finding the files
def resolve_path(path: str, source: str = "auto", revision: Optional[str] = None) -> Path:
    """A local file / folder, or a repo id found in the local HF / ModelScope cache (no download)."""
    if source not in ("local",) + SOURCES:
        raise CheckpointError(f"source={source!r} is unknown; use auto, local, huggingface or modelscope")
    p = Path(str(path)).expanduser()
    if p.exists():
        return p
    tried: List[str] = []
    if source != "local" and is_repo_id(str(path)):
        hit, tried = cached_snapshot(str(path), source, revision)
        if hit is not None:
            return hit
    raise CheckpointError(
        f"VideoGPT checkpoint {str(path)!r} is not a local file or folder"
        + (f", nor in the local {' or the '.join(tried)}" if tried else "")
        + ". Nothing is downloaded: fetch the weights on a machine with network access (README, 'Running "
          "official Video-GPT weights') and give the folder as path.")


def _read_index(index: Path) -> List[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index}: not a readable shard index (a JSON file with 'weight_map'): {e}") from e
    files = [index.parent / f for f in dict.fromkeys(weight_map.values())]
    absent = [str(f) for f in files if not f.is_file()]
    if absent:
        raise CheckpointError(f"{index} names {len(absent)} shard(s) that are missing: {', '.join(absent[:5])}; "
                              f"copy every shard beside the index")
    return files


def weight_files(path: Path) -> Tuple[List[Path], Path]:
    """(weights files in load order, the folder with config / tokenizer files) of a checkpoint."""
    if path.is_file():
        return (_read_index(path) if path.name.endswith(".index.json") else [path]), path.parent
    for folder in (path, path / "transformer"):
        for names, is_index in ((SAFE_INDEX, True), (SAFE_FILES, False), (TORCH_INDEX, True), (TORCH_FILES, False)):
            for name in names:
                f = folder / name
                if f.is_file():
                    return (_read_index(f) if is_index else [f]), folder
    raise CheckpointError(
        f"{path}: no Video-GPT weights found (looked for {', '.join(SAFE_INDEX + SAFE_FILES + TORCH_INDEX + TORCH_FILES)}"
        f" in the folder and in its transformer/ sub-folder, or a single *.safetensors file)")


# ---------------------------------------------------------------------------- reading tensors
def _strip(key: str) -> str:
    for pre in WRAPPER_PREFIXES:
        if key.startswith(pre):
            return key[len(pre):]
    return key


class _Shard:
    """One weights file, read a tensor at a time: key -> shape, and key -> tensor."""

    def __init__(self, path: Path):
        self.path = path
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            try:
                self._f = safe_open(str(path), framework="pt")
            except Exception as e:
                raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e
            self._keys = {_strip(k): k for k in self._f.keys()}
            self.shapes = {k: tuple(self._f.get_slice(raw).get_shape()) for k, raw in self._keys.items()}
        else:
            # mmap: the pickled tensors stay on disk until read; torch's legacy (non-zip) format cannot be
            # mapped, and is read whole, as safely (weights_only)
            mmap = zipfile.is_zipfile(path)
            try:
                sd = unwrap_state_dict(torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap), path,
                                       keys=("state_dict", "module", "model"))
            except CheckpointError:
                raise
            except Exception as e:
                raise CheckpointError(f"{path}: cannot be loaded with torch.load(weights_only=True) "
                                      f"({type(e).__name__}: {e}); NextClip never unpickles arbitrary objects") from e
            self._sd = {_strip(k): v for k, v in sd.items()}
            self.shapes = {k: tuple(v.shape) for k, v in self._sd.items()}

    def get(self, key: str) -> torch.Tensor:
        if hasattr(self, "_f"):
            return self._f.get_tensor(self._keys[key])
        return self._sd.pop(key)


# ---------------------------------------------------------------------------- config and tokenizer
def read_json(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e


def tokenizer_marker_ids(folder: Path) -> Dict[str, int]:
    """Ids of ``<|diffusion|>``, ``<img>``, ``</img>`` found in the folder's tokenizer files
    (``tokenizer.json`` added tokens / vocab, ``added_tokens.json``, ``tokenizer_config.json``)."""
    found: Dict[str, int] = {}
    for base in (folder, folder.parent):
        tj = read_json(base / "tokenizer.json") or {}
        pairs = [(t.get("content"), t.get("id")) for t in tj.get("added_tokens", []) if isinstance(t, dict)]
        pairs += list(((tj.get("model") or {}).get("vocab") or {}).items()) if isinstance(
            (tj.get("model") or {}).get("vocab"), dict) else []
        pairs += list((read_json(base / "added_tokens.json") or {}).items())
        dec = (read_json(base / "tokenizer_config.json") or {}).get("added_tokens_decoder") or {}
        pairs += [(v.get("content"), int(k)) for k, v in dec.items() if isinstance(v, dict)]
        for content, idx in pairs:
            if content in TOKEN_KWARGS and content not in found and isinstance(idx, int):
                found[content] = idx
        if found:
            return found
    return found


def _adopt(model, folder: Path, cfg: Optional[dict]) -> None:
    """Check the checkpoint config against the model; take rope factors and marker ids it leaves unset."""
    mc = model.config
    if cfg is not None:
        block = cfg.get("videogpt") or {}
        wrong = [f"{kw}: {cfg[k]!r} (model has {mc[kw]!r})" for k, kw in CONFIG_FIELDS.items()
                 if k in cfg and cfg[k] != mc[kw]]
        wrong += [f"{k}: {block[k]!r} (model has {mc[k]!r})" for k in VIDEOGPT_FIELDS if k in block and block[k] != mc[k]]
        kv = cfg.get("num_key_value_heads")
        if kv is not None and kv != cfg.get("num_attention_heads", mc["heads"]):
            wrong.append(f"num_key_value_heads: {kv} (VideoGPT supports multi-head attention only)")
        if wrong:
            raise CheckpointError(f"{folder}/config.json does not match the model: {'; '.join(wrong)}. "
                                  f"Set these under model: in the YAML (same names), or use the matching preset")
        rs = cfg.get("rope_scaling")
        if rs is not None and mc["rope_scaling"] is None:
            model.set_rope_scaling(rs)
        elif rs is not None and list(rs.get("long_factor", [])) != list(mc["rope_scaling"].get("long_factor", [])):
            raise CheckpointError(f"model.rope_scaling long_factor differs from {folder}/config.json; remove "
                                  f"model.rope_scaling to take the checkpoint's")
    ids = tokenizer_marker_ids(folder)
    where = "tokenizer files"
    if not ids and cfg is not None:
        block = cfg.get("videogpt") or {}
        ids = {m: block[kw] for m, kw in TOKEN_KWARGS.items() if block.get(kw) is not None}
        where = "config.json"
    current = dict(model.token_ids)
    for m, idx in ids.items():
        if current.get(m) is not None and current[m] != idx:
            raise CheckpointError(f"model.{TOKEN_KWARGS[m]}={current[m]} but the checkpoint's {where} in {folder} "
                                  f"give {m} = {idx}; remove model.{TOKEN_KWARGS[m]} to take the checkpoint's")
        current[m] = idx
    model.set_token_ids(current["<|diffusion|>"], current["<img>"], current["</img>"])
    if ids:
        logger.info("VideoGPT marker token ids from the %s: %s", where, ids)


# ---------------------------------------------------------------------------- loading
def _set_tensor(model: nn.Module, key: str, value: torch.Tensor) -> None:
    """Put ``value`` in place of parameter / buffer ``key``: assigned on the meta device, copied otherwise."""
    mod_name, _, name = key.rpartition(".")
    mod = model.get_submodule(mod_name) if mod_name else model
    old = mod._parameters.get(name) if name in mod._parameters else mod._buffers.get(name)
    value = value.to(old.dtype)
    if old.is_meta:
        if name in mod._parameters:
            mod._parameters[name] = nn.Parameter(value, requires_grad=old.requires_grad)
        else:
            mod._buffers[name] = value
    else:
        with torch.no_grad():
            old.copy_(value)


def load_videogpt(model: nn.Module, path, strict: bool = True, source: str = "auto",
                  revision: Optional[str] = None, dtype: Optional[str] = None) -> Dict[str, list]:
    """Load an official checkpoint into a VideoGPT ``model``; returns the key report (pos_embed,
    when computed, is listed under ``computed``). ``dtype`` casts the model first (e.g. bfloat16)."""
    if dtype is not None:
        if dtype not in DTYPES:
            raise CheckpointError(f"dtype={dtype!r} is unknown; use one of {sorted(DTYPES)} or null")
        model.to(DTYPES[dtype])
    root = resolve_path(path, source, revision)
    files, folder = weight_files(root)
    shards = [_Shard(f) for f in files]
    found = {k: s for s in shards for k in s.shapes}
    if EXTRA in found:  # a NextClip checkpoint of a VideoGPT: marker ids and rope factors inside
        model.set_extra_state(found[EXTRA].get(EXTRA))
    _adopt(model, folder, read_json(folder / "config.json"))
    own = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != EXTRA}
    found.pop(EXTRA, None)
    report = {
        "missing": sorted(k for k in own if k not in found and k != "pos_embed"),
        "unexpected": sorted(k for k in found if k not in own),
        "mismatched": sorted(f"{k}: checkpoint {found[k].shapes[k]} vs model {own[k]}"
                             for k in own if k in found and found[k].shapes[k] != own[k]),
        "computed": [] if "pos_embed" in found else ["pos_embed"],
    }
    bad = {k: report[k] for k in ("missing", "unexpected", "mismatched")}
    if strict and any(bad.values()):
        raise CheckpointError(f"{root} does not match the VideoGPT model ({format_report(bad)}). Check the model "
                              f"config (preset, hidden, depth, vocab_size, ...) against the checkpoint's "
                              f"config.json, or set strict: false to load what matches")
    skip = {k.split(":")[0] for k in report["mismatched"]}
    found.clear()
    while shards:  # one tensor at a time; each file is closed (unmapped) once its tensors are in place
        shard = shards.pop(0)
        for key in list(shard.shapes):
            if key in own and key not in skip:
                _set_tensor(model, key, shard.get(key))
        del shard
    if report["computed"]:
        _set_tensor(model, "pos_embed", model.compute_pos_embed())
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"{root}: {len(left)} tensors of the empty_weights model were not in the checkpoint "
                              f"({', '.join(left[:5])}); set model.empty_weights: false to start them from a "
                              f"random init")
    return report


@PRETRAIN.register_class()
def VideoGPTCheckpoint(model, path: str, strict: bool = True, source: str = "auto", revision: Optional[str] = None,
                       dtype: Optional[str] = None):
    """Official Video-GPT weights (folder / file / cached hub id), strict with a key report."""
    if not hasattr(model, "compute_pos_embed"):
        raise CheckpointError(f"VideoGPTCheckpoint loads into model type VideoGPT, not {type(model).__name__}; "
                              f"set model.type: VideoGPT (or use LoadCheckpoint)")
    report = load_videogpt(model, path, strict=strict, source=source, revision=revision, dtype=dtype)
    extra = " (pos_embed computed: not in the file)" if report["computed"] else ""
    bad = {k: report[k] for k in ("missing", "unexpected", "mismatched")}
    if any(bad.values()):
        logger.warning("PARTIAL LOAD of %s (strict: false): %s%s", path, format_report(bad, limit=20), extra)
    else:
        logger.info("loaded Video-GPT %s: all keys matched%s", path, extra)
    return report


# ---------------------------------------------------------------------------- export
def official_config(model) -> dict:
    """config.json of the official layout (Phi3Config fields + the ``videogpt`` block)."""
    mc = model.config
    cfg = {"model_type": "phi3", **{k: mc[kw] for k, kw in CONFIG_FIELDS.items()},
           "num_key_value_heads": mc["heads"], "hidden_act": "silu", "rope_scaling": mc["rope_scaling"],
           "tie_word_embeddings": False}
    cfg["videogpt"] = {**{k: mc[k] for k in VIDEOGPT_FIELDS}, **{kw: mc[kw] for kw in TOKEN_KWARGS.values()}}
    return cfg


def export_videogpt(model, out_dir, dtype: Optional[str] = None, max_shard_bytes: int = 5 * 2 ** 30) -> Path:
    """Write ``model`` in the official layout: ``model.safetensors`` (or shards + index) and
    ``config.json``; every file atomically, the index last. ``dtype`` casts floating tensors."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = DTYPES[dtype] if dtype else None
    sd = {k: (v.to(target) if target is not None and v.is_floating_point() else v).detach().cpu().contiguous()
          for k, v in model.state_dict().items() if k != EXTRA}  # those go to config.json
    shards: List[Dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in sd.items():
        n = v.numel() * v.element_size()
        if shards[-1] and size + n > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += n
    names = ["model.safetensors"] if len(shards) == 1 else \
        [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, part in zip(names, shards):
        with atomic_path(out / name, require_nonempty=True) as tmp:
            save_file(part, str(tmp), metadata={"format": "pt"})
    atomic_write_text(out / "config.json", json.dumps(official_config(model), indent=1))
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in sd.values())},
                 "weight_map": {k: name for name, part in zip(names, shards) for k in part}}
        atomic_write_text(out / "model.safetensors.index.json", json.dumps(index, indent=1))
    return out


def export_checkpoint(weights, out_dir, dtype: Optional[str] = None, max_shard_bytes: int = 5 * 2 ** 30) -> Path:
    """A NextClip training checkpoint of a VideoGPT model (``step_N[.ema].safetensors``, config in its
    metadata) -> the official layout in ``out_dir``; built on the meta device, so one copy in memory."""
    import yaml

    from utils.checkpoint import checkpoint_config
    from utils.registry import MODEL

    text = checkpoint_config(Path(weights))
    model_cfg = dict((yaml.safe_load(text) or {}).get("model") or {}) if text else {}
    if model_cfg.get("type") != "VideoGPT":
        raise CheckpointError(f"{weights}: not a NextClip checkpoint of a VideoGPT model (its config names model "
                              f"type {model_cfg.get('type')!r}); export works on VideoGPT training checkpoints")
    model = MODEL.build({**model_cfg, "empty_weights": True}, "model")
    load_videogpt(model, str(weights), strict=True, source="local")
    return export_videogpt(model, out_dir, dtype=dtype, max_shard_bytes=max_shard_bytes)


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m tools.pretrain.videogpt_checkpoint WEIGHTS OUT_DIR [--dtype bfloat16] [--shard-gb 5]``"""
    import argparse

    p = argparse.ArgumentParser(description="export a VideoGPT training checkpoint to the official layout")
    p.add_argument("weights")
    p.add_argument("out_dir")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None)
    p.add_argument("--shard-gb", type=float, default=5.0)
    a = p.parse_args(argv)
    try:
        out = export_checkpoint(a.weights, a.out_dir, a.dtype, int(a.shard_gb * 2 ** 30))
    except (CheckpointError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
