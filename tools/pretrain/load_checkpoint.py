"""PRETRAIN LoadCheckpoint: NextClip / plain state_dict weights into a model or into one of its parts.

``path`` is a weights file (safetensors, or a legacy .pt/.pth via weights_only), or a
``train_next_clip`` / ``train_head`` checkpoint as it lies on disk: a step stem
(``.../checkpoints/step_00000250``), the ``checkpoints/`` folder or the run folder (its newest
complete step). ``weights`` picks the file of a checkpoint step: ``ema`` | ``model`` | ``auto``
(the EMA when it was saved, as inference uses it).

``prefix`` maps the checkpoint's keys ``*`` to ``prefix*`` in the model, i.e. loads the file into the
sub-module ``prefix`` names (``backbone.``: a pretrained next-clip model as the backbone of a task
head). ``strict`` then applies to that sub-module; the model's other tensors (the head) are listed
under ``not_loaded`` and keep their initial values.
"""
import logging
from pathlib import Path
from typing import Dict, List, Sequence

import torch.nn as nn

from utils.checkpoint import CheckpointError, checkpoint_stem, find_latest, format_report, load_weights
from utils.registry import PRETRAIN

logger = logging.getLogger("nextclip")

WEIGHTS = ("auto", "ema", "model")


def resolve_weights(path: str, weights: str = "auto") -> Path:
    """The weights file of ``path`` (a file, a checkpoint step stem, a checkpoints/ or run folder)."""
    if weights not in WEIGHTS:
        raise CheckpointError(f"weights={weights!r} is unknown; use one of {list(WEIGHTS)} (auto: the EMA "
                              f"when the checkpoint has one)")
    p = Path(str(path)).expanduser()
    if p.is_file() and not p.name.endswith(".state.pt"):
        return p
    if p.suffix in (".safetensors", ".pt", ".pth", ".bin") and not p.name.endswith(".state.pt"):
        return p  # a weights file that is not there: load_weights names it
    stem = checkpoint_stem(p) if not p.is_dir() else None
    if p.is_dir():
        stem = find_latest(p / "checkpoints") or find_latest(p)
        if stem is None:
            raise CheckpointError(f"pretrain path {str(path)!r} is a folder without a complete checkpoint "
                                  f"(no step_*.state.pt in it or in its checkpoints/); give a weights file "
                                  f"or a run / checkpoints folder")
    ema, model = Path(str(stem) + ".ema.safetensors"), Path(str(stem) + ".safetensors")
    if weights == "ema" and not ema.is_file():
        raise CheckpointError(f"weights=ema but {ema} does not exist (the run had use_ema: false); use "
                              f"weights: model")
    chosen = ema if weights == "ema" or (weights == "auto" and ema.is_file()) else model
    if not chosen.is_file():
        raise CheckpointError(f"pretrain path {str(path)!r}: no weights file {chosen}; give a .safetensors file, "
                              f"a checkpoint step (.../checkpoints/step_N) or a run folder")
    return chosen


def _target(model: nn.Module, prefix: str) -> nn.Module:
    """The sub-module ``prefix`` (``backbone.`` or ``backbone``) names; the model for ''."""
    name = prefix.rstrip(".")
    if not name:
        return model
    try:
        return model.get_submodule(name)
    except AttributeError:
        top = [n for n, _ in model.named_children()]
        raise CheckpointError(f"prefix={prefix!r} names no sub-module of {type(model).__name__}; its parts are "
                              f"{top} (e.g. prefix: {top[0] + '.' if top else ''!r})") from None


def load_into(model: nn.Module, path: str, strict: bool = True, strip_prefix: str = "", prefix: str = "",
              weights: str = "auto", adapt_patch_size: bool = False,
              exclude: Sequence[str] = ()) -> Dict[str, List[str]]:
    """Load ``path`` into ``model`` (or its sub-module ``prefix``); the key report in model key names:
    missing / unexpected / mismatched, and ``not_loaded`` = the model's tensors outside ``prefix``."""
    file = resolve_weights(path, weights)
    target = _target(model, prefix)
    transform = None
    if adapt_patch_size:
        transform = getattr(target, "adapt_patch_size", None)
        if transform is None:
            raise CheckpointError(f"adapt_patch_size: true but {type(target).__name__} has no adapt_patch_size(); "
                                  f"it works for NextClipTransformer (set adapt_patch_size: false)")
    report = load_weights(target, file, strict=strict, strip_prefix=strip_prefix, transform=transform,
                          exclude=exclude)
    name = prefix.rstrip(".")
    if name:
        report = {k: [f"{name}.{key}" for key in v] for k, v in report.items()}
        inside = {f"{name}.{k}" for k in target.state_dict()}
        report["not_loaded"] = sorted(k for k in model.state_dict() if k not in inside)
    report["file"] = [str(file)]
    return report


@PRETRAIN.register_class()
def LoadCheckpoint(model, path: str, strict: bool = True, strip_prefix: str = "", prefix: str = "",
                   weights: str = "auto", adapt_patch_size: bool = False, exclude: Sequence[str] = ()):
    """Load safetensors (or legacy .pt via weights_only) weights, optionally into a sub-module (prefix).

    With ``strict: false`` what matches is loaded and everything skipped is logged: missing
    and mis-shaped tensors keep their initial values (e.g. a ``cond_proj`` new to the model),
    unexpected ones are ignored. ``path`` may be a checkpoint step or run folder (see module doc).
    ``adapt_patch_size: true`` warm-starts a larger patch from weights of a smaller one
    (``NextClipTransformer.adapt_patch_size``: patch 8 at 32x32 -> patch 16 at 64x64).
    ``exclude``: key prefixes of the model (after ``prefix``) left at their initial values, e.g.
    ``[out.]`` to restart the output layer when the model's output changes meaning (``history_skip``)."""
    report = load_into(model, path, strict=strict, strip_prefix=strip_prefix, prefix=prefix, weights=weights,
                       adapt_patch_size=adapt_patch_size, exclude=exclude)
    file = report["file"][0]
    bad = {k: report[k] for k in ("missing", "unexpected", "mismatched")}
    if any(bad.values()):
        logger.warning("partially loaded %s (strict: false): %s; the missing/mismatched tensors keep their "
                       "initial values, the unexpected ones are ignored", file, format_report(bad, limit=20))
    else:
        logger.info("loaded %s%s: %s", file, f" into {prefix.rstrip('.')}" if prefix else "", format_report(bad))
    if report.get("excluded"):
        logger.info("excluded (kept at their initial values): %s", ", ".join(report["excluded"]))
    if report.get("not_loaded"):
        logger.info("%d tensors outside %s keep their initial values (e.g. %s)", len(report["not_loaded"]),
                    prefix.rstrip("."), ", ".join(report["not_loaded"][:4]))
    return report
