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
import functools
import logging
from collections.abc import Sequence
from pathlib import Path

import torch.nn as nn
from torch import Tensor

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


def adapt_patch_weights(sd: dict[str, Tensor], in_channels: int, patch_size: int) -> dict[str, Tensor]:
    """A state dict trained with a smaller patch size p0 (this model's ``patch_size`` = s * p0,
    s an integer) -> one for this model that computes, on a frame s times larger, what the
    old model computed on that frame average-pooled by s, nearest-upsampled back: the patch
    embeddings read each s x s pixel block through the old weight / s^2 and the output layer
    writes each old output pixel to its s x s block (a warm start for a higher resolution with
    the same token grid). Other tensors pass through; the same patch size returns ``sd``."""
    w = sd.get("embed_noisy.weight")
    if w is None or w.shape[1] == in_channels * patch_size ** 2:
        return sd
    Cin, p = in_channels, patch_size
    p0 = int(round((w.shape[1] / Cin) ** 0.5))
    if Cin * p0 * p0 != w.shape[1] or p % p0:
        raise ValueError(f"cannot adapt patch embeddings of width {w.shape[1]} (in_channels {Cin}) to "
                         f"patch_size {p}: the checkpoint's patch size must divide it (e.g. 8 -> 16)")
    s = p // p0
    out = dict(sd)

    def up(x, dims):  # repeat each of the patch axes ``dims`` s times
        for d in dims:
            x = x.repeat_interleave(s, dim=d)
        return x

    for name in ("embed_noisy.weight", "embed_clean.weight"):
        if name in sd:
            C = sd[name].shape[0]
            out[name] = up(sd[name].reshape(C, Cin, p0, p0), (2, 3)).reshape(C, Cin * p * p) / (s * s)
    if "out.weight" in sd:
        C = sd["out.weight"].shape[1]
        out["out.weight"] = up(sd["out.weight"].reshape(Cin, p0, p0, C), (1, 2)).reshape(Cin * p * p, C)
    if "out.bias" in sd:
        out["out.bias"] = up(sd["out.bias"].reshape(Cin, p0, p0), (1, 2)).reshape(-1)
    return out



def load_into(model: nn.Module, path: str, strict: bool = True, strip_prefix: str = "", prefix: str = "",
              weights: str = "auto", adapt_patch_size: bool = False,
              exclude: Sequence[str] = ()) -> dict[str, list[str]]:
    """Load ``path`` into ``model`` (or its sub-module ``prefix``); the key report in model key names:
    missing / unexpected / mismatched, and ``not_loaded`` = the model's tensors outside ``prefix``."""
    file = resolve_weights(path, weights)
    target = _target(model, prefix)
    transform = None
    if adapt_patch_size:
        if not (hasattr(target, "embed_noisy") and hasattr(target, "patch_size")):
            raise CheckpointError(f"adapt_patch_size: true but {type(target).__name__} is not a "
                                  f"NextClipTransformer, whose patch embeddings it adapts (set "
                                  f"adapt_patch_size: false)")
        transform = functools.partial(adapt_patch_weights, in_channels=target.in_channels, patch_size=target.patch_size)
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
    (:func:`adapt_patch_weights`: patch 8 at 32x32 -> patch 16 at 64x64).
    ``exclude``: key prefixes of the model (after ``prefix``) left at their initial values, e.g.
    ``[out.]`` to restart the output layer when the model's output changes meaning."""
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
