"""Checkpoints: safetensors weights + a state file (optimizer, schedule, step, RNG, config).

Layout in ``<log_dir>/<name>/checkpoints/``::

    step_00001000.safetensors        model weights (plain state_dict keys)
    step_00001000.ema.safetensors    EMA weights (when use_ema)
    step_00001000.embedder.safetensors  trained condition embedder (e.g. a class table), if any
    step_00001000.state.pt           optimizer / LR schedule / step / RNG / merged config

Sharded checkpoints (``backend.parallel: fsdp``) keep the state file and replace the three
weights files by one ``torch.distributed.checkpoint`` (DCP) directory that every rank writes
its shards into::

    step_00001000.dcp/               model, ema, embedder and optimizer state, sharded
    step_00001000.state.pt           LR schedule / step / RNG / merged config, "format": "dcp"

The directory is written under ``.step_00001000.dcp.tmp`` and renamed when every rank is done;
the state file is written after it. DCP reshards on load, so a checkpoint written by N ranks
resumes on M (also on one process); ``python -m scripts.consolidate_checkpoint`` turns one into a
single safetensors file for inference.

Every file is written atomically (temp file + rename), so a crash never leaves a
checkpoint that looks complete. A failed save (disk full) removes that step's files;
:func:`clean_checkpoint_dir` removes what killed writers left; :func:`load_resume` skips
a corrupt newest checkpoint when resuming automatically. State files hold only tensors and plain Python values
and are read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import errno
import logging
import os
import random
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from . import distributed as du
from .io import as_os_error, atomic_path, clean_stale_temps

STEP_RE = re.compile(r"^step_(\d+)\.state\.pt$")
FILE_STEP_RE = re.compile(r"^step_(\d+)\.")  # any file of a checkpoint step
WEIGHT_SUFFIXES = (".safetensors", ".ema.safetensors", ".embedder.safetensors")
_log = logging.getLogger("nextclip.checkpoint")


class CheckpointError(RuntimeError):
    pass


def _contiguous(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def save_weights(path: Path, state_dict: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically; a failed write (e.g. a full disk, which the safetensors writer
    reports as its own error type) is one OSError naming ``path``."""
    try:
        with atomic_path(path) as tmp:
            save_file(_contiguous(state_dict), str(tmp), metadata=metadata or {})
    except Exception as e:
        err = as_os_error(e)
        if err is None or (isinstance(e, OSError) and e.filename):
            raise
        raise OSError(err.errno, err.strerror, str(path)) from e


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": repr(random.getstate()),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    import ast

    torch.set_rng_state(state["torch"])
    random.setstate(ast.literal_eval(state["python"]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))


def save_checkpoint(ckpt_dir: Path, step: int, model_sd, ema_sd, train_state: dict[str, Any], config_yaml: str,
                    embedder_sd=None, metadata: dict[str, str] | None = None) -> Path:
    """Write weights (+EMA, +embedder) then the state file last: it marks a complete checkpoint.
    ``metadata``: extra entries of the weights files' metadata (e.g. a LoRA adapter's base identity).

    If a write fails (disk full, ...) the files this step already wrote are removed, so no
    orphaned weights fill the disk, and one OSError names the file and the cause.
    """
    ckpt_dir = Path(ckpt_dir)
    stem = ckpt_dir / f"step_{step:08d}"
    meta = {**(metadata or {}), "step": str(step), "config": config_yaml, "format": "nextclip-1"}
    jobs = [(stem.with_suffix(".safetensors"), model_sd)]
    if ema_sd is not None:
        jobs.append((Path(str(stem) + ".ema.safetensors"), ema_sd))
    if embedder_sd:
        jobs.append((Path(str(stem) + ".embedder.safetensors"), embedder_sd))
    state_path = Path(str(stem) + ".state.pt")
    written: list[Path] = []
    current = jobs[0][0]
    try:
        for current, sd in jobs:
            save_weights(current, sd, meta)
            written.append(current)
        current = state_path
        state = dict(train_state, step=step, config=config_yaml, rng=rng_state())
        with atomic_path(state_path) as tmp:
            _torch_save(state, tmp)
    except Exception as e:
        if written:  # this step's files are now a mix of new and old: none of them is usable
            remove_step_files(ckpt_dir, step)
        _raise_save_error(e, f"checkpoint step {step} (the partial files of this step", current)
    return stem


LOW_SPACE_BYTES = 16 * 2 ** 20  # a writer error with less free space than this counts as a full disk


def _torch_save(obj: Any, path: str) -> None:
    """``torch.save``, whose C++ writer reports a full disk without an errno ("unexpected pos ...")."""
    try:
        torch.save(obj, path)
    except RuntimeError as e:  # judged while the partial file still holds its space
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
        if st.f_bavail * st.f_frsize < LOW_SPACE_BYTES:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path) from e
        raise


def _raise_save_error(e: BaseException, what: str, path) -> None:
    """Re-raise a failed save: an OS-level cause as one OSError naming ``what`` and ``path`` (the step's
    files were removed, earlier checkpoints are intact); anything else unchanged."""
    err = as_os_error(e)
    if err is None:
        raise e
    raise OSError(err.errno, f"{err.strerror} while saving {what} were removed; earlier checkpoints are intact)",
                  str(path)) from e


def remove_step_files(ckpt_dir: Path, step: int) -> list[str]:
    """Delete every file of checkpoint ``step`` in ``ckpt_dir``; returns the removed paths."""
    removed = []
    for p in Path(ckpt_dir).glob(f"step_{step:08d}.*"):
        try:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            removed.append(str(p))
        except FileNotFoundError:
            pass
    return removed


def clean_checkpoint_dir(ckpt_dir: Path) -> list[str]:
    """Remove what failed or killed writers left in ``ckpt_dir``; returns the removed paths.

    * temp files of writers that are no longer running (:func:`utils.io.clean_stale_temps`);
    * incomplete checkpoints: the files of a step that has no state file, if that step is
      older than the newest complete checkpoint (nothing resumes from them). Complete
      checkpoints and anything newer than the newest complete one are never touched.
    """
    ckpt_dir = Path(ckpt_dir)
    removed = clean_stale_temps(ckpt_dir)
    if ckpt_dir.is_dir():  # sharded writes of a killed run (the run that cleans writes nothing yet)
        for p in ckpt_dir.glob(".step_*" + DCP_SUFFIX + ".tmp"):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(str(p))
    latest = find_latest(ckpt_dir)
    if latest is None:
        return removed
    newest = int(latest.name.split("_")[1])
    complete, steps = set(), set()
    for p in ckpt_dir.iterdir():
        m = FILE_STEP_RE.match(p.name)
        if m:
            steps.add(int(m.group(1)))
            if STEP_RE.match(p.name):
                complete.add(int(m.group(1)))
    for step in sorted(steps - complete):
        if step < newest:
            removed += remove_step_files(ckpt_dir, step)
    return removed


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Stems of the complete checkpoints (those with a state file) in ``ckpt_dir``, newest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    steps = sorted((int(m.group(1)) for p in ckpt_dir.iterdir() if (m := STEP_RE.match(p.name))), reverse=True)
    return [ckpt_dir / f"step_{s:08d}" for s in steps]


def find_latest(ckpt_dir: Path) -> Path | None:
    """The newest complete checkpoint stem in ``ckpt_dir`` (None if there is none)."""
    stems = complete_checkpoints(ckpt_dir)
    return stems[0] if stems else None


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


def resolve_resume(resume: str, ckpt_dir: Path) -> Path | None:
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


def load_train_state(stem: Path) -> dict[str, Any]:
    path = str(stem) + ".state.pt"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: the state file does not exist; the checkpoint is incomplete.") from None
    except Exception as e:  # truncated / corrupt file
        detail = (str(e).strip().splitlines() or ["no detail"])[0].split(". ")[0][:200]
        raise CheckpointError(f"{path}: not a readable checkpoint state file, truncated or corrupt "
                              f"({type(e).__name__}: {detail}).") from e
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path}: not a NextClip checkpoint state file (no 'step' entry).")
    return state


def read_checkpoint(stem: Path) -> dict[str, Any]:
    """Everything a resume needs from checkpoint ``stem``: ``state`` (optimizer, step, rng, config)
    and the ``model`` / ``ema`` / ``embedder`` state_dicts (None when not saved). Raises
    :class:`CheckpointError` naming the unreadable file."""
    out: dict[str, Any] = {"stem": Path(stem), "state": load_train_state(stem)}
    if out["state"].get("format") == "dcp":
        return _read_sharded(out)
    for key, suffix in zip(("model", "ema", "embedder"), WEIGHT_SUFFIXES):
        path = Path(str(stem) + suffix)
        if key != "model" and not path.is_file():
            out[key] = None
            continue
        out[key] = read_state_dict(path)
    return out


def load_resume(resume: Any, ckpt_dir: Path,
                warn: Callable[[str], None] | None = None) -> dict[str, Any] | None:
    """The checkpoint to resume from (see :func:`read_checkpoint`), or None to start fresh.

    ``resume: auto`` takes the newest *readable* complete checkpoint of ``ckpt_dir``, skipping
    (with a warning naming the file) newer ones that are corrupt; if none is readable it raises.
    An explicit path must be readable: one :class:`CheckpointError` naming the file otherwise.
    """
    if resume != "auto":
        stem = resolve_resume(resume, ckpt_dir)
        return None if stem is None else read_checkpoint(stem)
    bad: list[str] = []
    for stem in complete_checkpoints(ckpt_dir):
        try:
            ckpt = read_checkpoint(stem)
        except CheckpointError as e:
            bad.append(str(e))
            (warn or _log.warning)(f"resume: auto: skipping unreadable checkpoint {stem.name}: {e}")
            continue
        return ckpt
    if bad:
        raise CheckpointError(
            f"resume: auto: no readable checkpoint in {ckpt_dir} ({len(bad)} unreadable; newest: {bad[0]}). "
            f"Give a good checkpoint with resume=PATH, or move the directory away to start over.")
    return None


# ---------------------------------------------------------------------------- sharded (DCP)
DCP_SUFFIX = ".dcp"
DCP_PARTS = ("model", "ema", "embedder")


def sharded_dir(stem: Path) -> Path:
    return Path(str(stem) + DCP_SUFFIX)


def _optim_root(model: torch.nn.Module, embedder: torch.nn.Module | None) -> torch.nn.Module:
    """The module whose parameter names key the sharded optimizer state (the engines' trainable set)."""
    return torch.nn.ModuleList([model] + ([embedder] if embedder is not None else []))


def sharded_state(model, ema, embedder, optimizer) -> dict[str, Any]:
    """What a sharded checkpoint holds: each rank's shards of the model, EMA and optimizer state
    (DTensors; plain tensors when the modules are not sharded) and the (replicated) embedder."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    sd: dict[str, Any] = {"model": get_model_state_dict(model)}
    if ema is not None:
        sd["ema"] = get_model_state_dict(ema)
    if embedder is not None and len(embedder.state_dict()):
        sd["embedder"] = embedder.state_dict()
    if optimizer is not None:
        sd["optimizer"] = get_optimizer_state_dict(_optim_root(model, embedder), optimizer)
    return sd


def save_sharded_checkpoint(ckpt_dir: Path, step: int, model, ema, embedder, optimizer, train_state: dict[str, Any],
                            config_yaml: str) -> Path:
    """Collective: every rank writes its shards with DCP into a temp directory, rank 0 renames it
    to ``step_N.dcp`` and then writes the state file (``train_state`` + step / RNG / config)."""
    import torch.distributed.checkpoint as dcp

    ckpt_dir = Path(ckpt_dir)
    stem = ckpt_dir / f"step_{step:08d}"
    final = sharded_dir(stem)
    tmp = ckpt_dir / f".{final.name}.tmp"
    if du.get_rank() == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    du.barrier()
    dcp.save(sharded_state(model, ema, embedder, optimizer), checkpoint_id=str(tmp))
    du.barrier()
    if du.get_rank() == 0:
        try:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            state = dict(train_state, step=step, config=config_yaml, rng=rng_state(), format="dcp")
            with atomic_path(Path(str(stem) + ".state.pt")) as t:
                _torch_save(state, t)
        except Exception as e:
            remove_step_files(ckpt_dir, step)
            _raise_save_error(e, f"sharded checkpoint step {step} (its files", final)
    du.barrier()
    return stem


def sharded_metadata(path: Path) -> dict[str, Any]:
    """{flattened key: tensor metadata (``.size``, ``.properties.dtype``)} of the tensors of a DCP directory
    (``model.blocks.0...``)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    try:
        meta = dcp.FileSystemReader(str(path)).read_metadata()
    except Exception as e:  # missing / truncated .metadata
        raise CheckpointError(f"{path}: not a readable sharded checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else 'no detail'}).") from e
    _check_shard_files(Path(path), meta)
    return {k: v for k, v in meta.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}


def _check_shard_files(path: Path, meta) -> None:
    """CheckpointError naming the first shard file of a DCP directory that is missing or shorter than its
    metadata says (a rank that did not write, a copy that left one out), so that nothing tries to load it."""
    need: dict[str, int] = {}
    for info in (getattr(meta, "storage_data", None) or {}).values():
        need[info.relative_path] = max(need.get(info.relative_path, 0), int(info.offset) + int(info.length))
    for name, size in sorted(need.items()):
        f = path / name
        have = f.stat().st_size if f.is_file() else None
        if have is None or have < size:
            rank = re.match(r"__(\d+)_", name)
            who = f" (written by rank {rank.group(1)})" if rank else ""
            why = "is missing" if have is None else f"is truncated ({have} of {size} bytes)"
            raise CheckpointError(f"{path}: shard file {name}{who} {why}; the sharded checkpoint is incomplete")


def _read_sharded(out: dict[str, Any]) -> dict[str, Any]:
    """A DCP checkpoint for :func:`read_checkpoint`: the tensors stay on disk (``dcp``); ``model`` /
    ``ema`` / ``embedder`` are meta tensors of the stored global shapes, for the resume checks."""
    path = sharded_dir(out["stem"])
    tensors = sharded_metadata(path)
    out["dcp"] = path
    for part in DCP_PARTS:
        sd = {k[len(part) + 1:]: torch.empty(tuple(m.size), device="meta") for k, m in tensors.items()
              if k.startswith(part + ".")}
        out[part] = sd if (sd or part == "model") else None
    return out


def load_sharded_checkpoint(ckpt: dict[str, Any], model, ema, embedder, optimizer) -> None:
    """Load a DCP checkpoint (see :func:`read_checkpoint`) into this run's modules and optimizer,
    resharded to this run's world size (collective under torchrun; plain modules on one process)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    sd = sharded_state(model, ema if ckpt["ema"] is not None else None,
                       embedder if ckpt["embedder"] is not None else None, optimizer)
    try:
        dcp.load(sd, checkpoint_id=str(ckpt["dcp"]))
    except Exception as e:
        raise CheckpointError(f"{ckpt['dcp']}: the sharded checkpoint does not load into this run "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}).") from e
    set_model_state_dict(model, sd["model"])
    if ema is not None:
        set_model_state_dict(ema, sd["ema"] if "ema" in sd else sd["model"])
    if "embedder" in sd:
        embedder.load_state_dict(sd["embedder"])
    if optimizer is not None:
        set_optimizer_state_dict(_optim_root(model, embedder), optimizer, sd["optimizer"])


def sharded_checkpoint_of(path) -> Path | None:
    """The stem of the sharded checkpoint that ``path`` names (``step_N``, ``step_N.dcp``, ``step_N.state.pt``
    or a weights file name it does not have, like ``step_N.ema.safetensors``), None otherwise."""
    p = Path(str(path))
    if p.is_file() and not p.name.endswith(".state.pt"):
        return None
    stem = checkpoint_stem(p)
    if stem.name.endswith(DCP_SUFFIX):
        stem = stem.with_name(stem.name[: -len(DCP_SUFFIX)])
    return stem if sharded_dir(stem).is_dir() else None


def load_full_into_sharded(ckpt: dict[str, Any], model, ema, embedder, optimizer) -> None:
    """Load a whole-file checkpoint (safetensors weights, optimizer state keyed by parameter index: written by
    a run without sharding, e.g. one process) into FSDP-sharded modules: every rank reads the full tensors
    and keeps its shards. The optimizer state is re-keyed by parameter name, in the order both runs build
    their parameter groups (same model: same order). Collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    full = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, ckpt["model"], options=full)
    if ema is not None:
        set_model_state_dict(ema, ckpt["ema"] if ckpt["ema"] is not None else ckpt["model"], options=full)
    if embedder is not None and ckpt["embedder"] is not None:
        embedder.load_state_dict(ckpt["embedder"])
    if optimizer is None:
        return
    saved = ckpt["state"]["optimizer"]
    root = _optim_root(model, embedder)
    names = {id(p): n for n, p in root.named_parameters()}
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    saved_order = [i for g in saved["param_groups"] for i in g["params"]]
    if len(order) != len(saved_order):
        raise CheckpointError(f"{ckpt['stem'].name}: its optimizer holds {len(saved_order)} parameters, this run "
                              f"has {len(order)}; resume with the checkpoint's settings")
    fqn = dict(zip(saved_order, order))
    state = {"state": {fqn[i]: v for i, v in saved["state"].items()},
             "param_groups": [dict(g, params=[fqn[i] for i in g["params"]]) for g in saved["param_groups"]]}
    set_optimizer_state_dict(root, optimizer, state, options=full)


def consolidate_checkpoint(src: Path, dst: Path, part: str = "ema", dtype: str | None = None) -> Path:
    """One safetensors file (``part``: ema | model | embedder) of a sharded checkpoint, with the run's
    config in the metadata like every NextClip weights file (inference loads it as ``test_model``).
    Runs in one process; holds one full copy of that part."""
    import torch.distributed.checkpoint as dcp

    stem = checkpoint_stem(Path(src))
    if stem.name.endswith(DCP_SUFFIX):
        stem = stem.with_name(stem.name[: -len(DCP_SUFFIX)])
    state = load_train_state(stem)
    if state.get("format") != "dcp":
        raise CheckpointError(f"{stem}: not a sharded checkpoint (its weights are already safetensors files: "
                              f"{stem}.safetensors / .ema.safetensors)")
    tensors = sharded_metadata(sharded_dir(stem))
    keys = {k: m for k, m in tensors.items() if k.startswith(part + ".")}
    if not keys:
        have = sorted({k.split(".")[0] for k in tensors} & set(DCP_PARTS))
        raise CheckpointError(f"{stem}: the sharded checkpoint has no {part!r} weights; choose one of {have}")
    sd = {k[len(part) + 1:]: torch.empty(tuple(m.size), dtype=m.properties.dtype) for k, m in keys.items()}
    try:
        dcp.load({part: sd}, checkpoint_id=str(sharded_dir(stem)), no_dist=True)
    except Exception as e:
        raise CheckpointError(f"{sharded_dir(stem)}: the sharded checkpoint cannot be read ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:300] if str(e) else ''}).") from e
    if dtype:
        target = getattr(torch, dtype)
        sd = {k: v.to(target) if v.is_floating_point() else v for k, v in sd.items()}
    info = {"step": str(state["step"]), "config": state.get("config", ""), "format": "nextclip-1",
            "consolidated_from": sharded_dir(stem).name, "part": part}
    save_weights(Path(dst), sd, info)
    return Path(dst)


# ---------------------------------------------------------------------------- weights
def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
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
            f"{path}: refused: cannot be loaded with torch.load(weights_only=True) ({type(e).__name__}: "
            f"{unpickling_reason(e)}). NextClip never unpickles arbitrary objects (they can run code); convert the "
            f"file to safetensors on a trusted machine."
        ) from None
    return unwrap_state_dict(obj, path)


def unpickling_reason(err: BaseException) -> str:
    """The line of a ``weights_only`` load error that names the refused object (one line, for messages)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    hit = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), lines[0] if lines else "")
    return hit[:240]


def unwrap_state_dict(obj: Any, path: Path, keys: Sequence[str] = ("ema", "state_dict", "model", "module")
                      ) -> dict[str, torch.Tensor]:
    """The tensors of an unpickled checkpoint: the dict itself, or its first entry of ``keys`` that
    is a dict (EMA, plain, trainer and DeepSpeed wrappers); CheckpointError otherwise."""
    for key in keys:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: does not hold a state_dict of tensors.")
    return obj


def compare_state_dict(model: torch.nn.Module, sd: Mapping[str, torch.Tensor]) -> dict[str, list]:
    own = model.state_dict()
    return {
        "missing": sorted(k for k in own if k not in sd),
        "unexpected": sorted(k for k in sd if k not in own),
        "mismatched": sorted(f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                             for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)),
    }


def format_report(report: dict[str, list], limit: int = 10) -> str:
    lines = []
    for kind in ("missing", "unexpected", "mismatched"):
        items = report.get(kind, [])
        if items:
            shown = ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
            lines.append(f"{len(items)} {kind}: {shown}")
    return "; ".join(lines) if lines else "all keys matched"


def load_weights(model: torch.nn.Module, path: Path, strict: bool = True, strip_prefix: str = "",
                 transform=None, exclude: Sequence[str] = ()) -> dict[str, list]:
    """Load ``path`` into ``model``; strict raises with a readable report of every mismatch.
    ``transform(state_dict) -> state_dict`` runs on the (prefix-stripped) file before matching.
    ``exclude``: model key prefixes (``out.``) not loaded: those tensors keep their initial values
    (a re-initialised output layer) and are reported as ``excluded``, not as missing."""
    sd = read_state_dict(path)
    if strip_prefix:
        sd = {k[len(strip_prefix):] if k.startswith(strip_prefix) else k: v for k, v in sd.items()}
    if transform is not None:
        sd = transform(sd)
    excl = (exclude,) if isinstance(exclude, str) else tuple(str(e) for e in (exclude or ()))
    if excl:
        own = model.state_dict()
        hit = sorted(k for k in own if k.startswith(excl))
        unused = [e for e in excl if not any(k.startswith(e) for k in own)]
        if unused:
            raise CheckpointError(f"exclude={list(excl)}: {unused} match no tensor of {type(model).__name__} "
                                  f"(its keys start with e.g. {sorted({k.split('.')[0] + '.' for k in own})[:8]})")
        sd = {k: v for k, v in sd.items() if not k.startswith(excl)}
    report = compare_state_dict(model, sd)
    if excl:
        report["missing"] = [k for k in report["missing"] if k not in hit]
    if strict and any(report.values()):
        raise CheckpointError(
            f"{path} does not match the model ({format_report(report)}). Check that the model config "
            f"equals the one the checkpoint was trained with, or set strict: false to load what matches."
        )
    bad = {k.split(":")[0] for k in report["mismatched"]}
    model.load_state_dict({k: v for k, v in sd.items() if k not in bad and k not in report["unexpected"]},
                          strict=False)
    if excl:
        report["excluded"] = hit
    return report


def checkpoint_config(path: Path) -> str | None:
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

    src = Path(src)
    if src.name.endswith(".state.pt") or src.name.endswith(DCP_SUFFIX) or src.suffix != ".safetensors":
        stem = checkpoint_stem(src)
        if stem.name.endswith(DCP_SUFFIX):
            stem = stem.with_name(stem.name[: -len(DCP_SUFFIX)])
        raise CheckpointError(
            f"{src}: export_weights copies a weights file (.safetensors), this is not one"
            + (" (the training state: optimizer, step, RNG)" if src.name.endswith(".state.pt") else "")
            + f"; give {stem.name}.ema.safetensors or {stem.name}.safetensors (a sharded checkpoint: consolidate "
              f"it first, python -m scripts.consolidate_checkpoint {stem} OUT.safetensors)")
    sd = read_state_dict(src)
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata() or {})
    target = getattr(torch, dtype)
    sd = {k: v.to(target) if v.is_floating_point() else v for k, v in sd.items()}
    meta["exported_from"] = Path(src).name
    meta["stored_dtype"] = dtype
    save_weights(Path(dst), sd, meta)
    return Path(dst)
