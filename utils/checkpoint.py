"""Checkpoints: safetensors weights + a state file (optimizer, schedule, step, RNG, config).

Layout in ``<log_dir>/<name>/checkpoints/``::

    step_00001000.safetensors        model weights (plain state_dict keys)
    step_00001000.ema.safetensors    EMA weights (when use_ema)
    step_00001000.embedder.safetensors  trained condition embedder (e.g. a class table), if any
    step_00001000.state.pt           optimizer / LR schedule / step / RNG / merged config

Every file is written atomically (temp file + rename), so a crash never leaves a
checkpoint that looks complete. State files hold only tensors and plain Python values
and are read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .io import atomic_path

STEP_RE = re.compile(r"^step_(\d+)\.state\.pt$")


class CheckpointError(RuntimeError):
    pass


def _contiguous(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def save_weights(path: Path, state_dict: Mapping[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None) -> None:
    with atomic_path(path) as tmp:
        save_file(_contiguous(state_dict), str(tmp), metadata=metadata or {})


def rng_state() -> Dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": repr(random.getstate()),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    import ast

    torch.set_rng_state(state["torch"])
    random.setstate(ast.literal_eval(state["python"]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))


def save_checkpoint(ckpt_dir: Path, step: int, model_sd, ema_sd, train_state: Dict[str, Any], config_yaml: str,
                    embedder_sd=None) -> Path:
    """Write weights (+EMA, +embedder) then the state file last: it marks a complete checkpoint."""
    ckpt_dir = Path(ckpt_dir)
    stem = ckpt_dir / f"step_{step:08d}"
    meta = {"step": str(step), "config": config_yaml, "format": "nextclip-1"}
    save_weights(stem.with_suffix(".safetensors"), model_sd, meta)
    if ema_sd is not None:
        save_weights(Path(str(stem) + ".ema.safetensors"), ema_sd, meta)
    if embedder_sd:
        save_weights(Path(str(stem) + ".embedder.safetensors"), embedder_sd, meta)
    state = dict(train_state, step=step, config=config_yaml, rng=rng_state())
    with atomic_path(Path(str(stem) + ".state.pt")) as tmp:
        torch.save(state, tmp)
    return stem


def find_latest(ckpt_dir: Path) -> Optional[Path]:
    """The newest complete checkpoint stem in ``ckpt_dir`` (None if there is none)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    steps = [int(m.group(1)) for p in ckpt_dir.iterdir() if (m := STEP_RE.match(p.name))]
    return ckpt_dir / f"step_{max(steps):08d}" if steps else None


def checkpoint_stem(path: Path) -> Path:
    """``.../step_N.ema.safetensors`` (or .safetensors / .state.pt / .embedder...) -> ``.../step_N``."""
    p = Path(path)
    for suffix in (".state.pt", ".ema.safetensors", ".embedder.safetensors", ".safetensors"):
        if p.name.endswith(suffix):
            return p.with_name(p.name[: -len(suffix)])
    return p


def embedder_weights_for(model_path: Path) -> Path:
    """Where the embedder weights saved beside a model weights file live."""
    return Path(str(checkpoint_stem(model_path)) + ".embedder.safetensors")


def resolve_resume(resume: str, ckpt_dir: Path) -> Optional[Path]:
    """``resume: auto|none|PATH`` -> checkpoint stem or None."""
    if resume in (None, "", "none", False):
        return None
    if resume == "auto":
        return find_latest(ckpt_dir)
    p = checkpoint_stem(Path(str(resume)))
    if not Path(str(p) + ".state.pt").is_file():
        raise CheckpointError(
            f"resume={resume!r}: no state file {p}.state.pt. Give a checkpoint stem or file from "
            f"<run>/checkpoints/, or resume: auto to take the newest one."
        )
    return p


def load_train_state(stem: Path) -> Dict[str, Any]:
    return torch.load(str(stem) + ".state.pt", map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------- weights
def read_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    """A state_dict from safetensors, or a legacy .pt/.pth/.bin through weights_only unpickling."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {str(path)!r} does not exist. Check test_model / pretrain.path.")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as e:  # corrupt header / truncated file
            raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e}).") from e
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{path}: cannot be loaded with torch.load(weights_only=True) ({type(e).__name__}: {e}). "
            f"NextClip never unpickles arbitrary objects; convert the file to safetensors."
        ) from e
    for key in ("ema", "state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: does not hold a state_dict of tensors.")
    return obj


def compare_state_dict(model: torch.nn.Module, sd: Mapping[str, torch.Tensor]) -> Dict[str, list]:
    own = model.state_dict()
    return {
        "missing": sorted(k for k in own if k not in sd),
        "unexpected": sorted(k for k in sd if k not in own),
        "mismatched": sorted(f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                             for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)),
    }


def format_report(report: Dict[str, list], limit: int = 10) -> str:
    lines = []
    for kind in ("missing", "unexpected", "mismatched"):
        items = report.get(kind, [])
        if items:
            shown = ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
            lines.append(f"{len(items)} {kind}: {shown}")
    return "; ".join(lines) if lines else "all keys matched"


def load_weights(model: torch.nn.Module, path: Path, strict: bool = True, strip_prefix: str = "") -> Dict[str, list]:
    """Load ``path`` into ``model``; strict raises with a readable report of every mismatch."""
    sd = read_state_dict(path)
    if strip_prefix:
        sd = {k[len(strip_prefix):] if k.startswith(strip_prefix) else k: v for k, v in sd.items()}
    report = compare_state_dict(model, sd)
    if strict and any(report.values()):
        raise CheckpointError(
            f"{path} does not match the model ({format_report(report)}). Check that the model config "
            f"equals the one the checkpoint was trained with, or set strict: false to load what matches."
        )
    bad = {k.split(":")[0] for k in report["mismatched"]}
    model.load_state_dict({k: v for k, v in sd.items() if k not in bad and k not in report["unexpected"]},
                          strict=False)
    return report


def checkpoint_config(path: Path) -> Optional[str]:
    """The merged config YAML stored in a NextClip safetensors checkpoint (None otherwise)."""
    from safetensors import safe_open

    if Path(path).suffix != ".safetensors":
        return None
    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {}).get("config")


def export_weights(src: Path, dst: Path, dtype: str = "float16") -> Path:
    """Copy a weights file with floating tensors stored as ``dtype`` (halves the size for
    shipping); the config metadata is kept. Loading casts back to the model's dtype."""
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata() or {})
    sd = read_state_dict(Path(src))
    target = getattr(torch, dtype)
    sd = {k: v.to(target) if v.is_floating_point() else v for k, v in sd.items()}
    meta["exported_from"] = Path(src).name
    meta["stored_dtype"] = dtype
    save_weights(Path(dst), sd, meta)
    return Path(dst)
