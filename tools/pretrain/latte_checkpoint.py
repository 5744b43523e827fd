"""PRETRAIN LatteCheckpoint: the released Latte files (``{"ema": state_dict}`` .pt, or safetensors) -> a Latte
MODEL and its class EMBEDDER.

The file's keys are the reference ``Latte.state_dict()``, which is ``tools.models.latte.Latte.state_dict()``
plus the class table ``y_embedder.embedding_table.weight`` (num_classes + 1 rows, the last the null class).
That table belongs to the ClassLabel EMBEDDER here (``table.weight``, the same row layout), so the loader
puts it there and says so. Pickled files are read with ``torch.load(weights_only=True)``: nothing in them runs.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch.nn as nn

from utils.checkpoint import CheckpointError, compare_state_dict, format_report, read_state_dict
from utils.registry import PRETRAIN

logger = logging.getLogger("nextclip")

CLASS_TABLE = "y_embedder.embedding_table.weight"  # the reference's key
EMBEDDER_TABLE = "table.weight"                     # ClassLabel's key
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _strip(key: str) -> str:
    for pre in WRAPPER_PREFIXES:
        if key.startswith(pre):
            return key[len(pre):]
    return key


def load_latte(model: nn.Module, path: str, embedder: nn.Module | None = None, strict: bool = True) -> dict:
    """Load ``path`` into ``model`` (and its class table into ``embedder``); the key report in model key names:
    ``missing`` / ``unexpected`` / ``mismatched``, and ``embedder`` = what went to the embedder."""
    file = Path(str(path)).expanduser()
    sd = {_strip(k): v for k, v in read_state_dict(file).items()}
    table = sd.pop(CLASS_TABLE, None)
    report = compare_state_dict(model, sd)
    report["embedder"] = []
    if table is not None and embedder is not None and EMBEDDER_TABLE in embedder.state_dict():
        want = tuple(embedder.state_dict()[EMBEDDER_TABLE].shape)
        if tuple(table.shape) != want:
            report["mismatched"].append(f"{CLASS_TABLE}: checkpoint {tuple(table.shape)} vs embedder {want} "
                                        f"(num_classes + 1 rows, the last the null class)")
        else:
            report["embedder"].append(f"{CLASS_TABLE} -> embedder.{EMBEDDER_TABLE} {want}")
    elif table is not None:
        report["unexpected"].append(f"{CLASS_TABLE} (a class table: give the model a ClassLabel embedder "
                                    f"with num_classes={table.shape[0] - 1}, dim={table.shape[1]})")
    elif embedder is not None and EMBEDDER_TABLE in embedder.state_dict():
        report["missing"].append(f"{CLASS_TABLE} (the embedder has a class table but the file has none: an "
                                 f"unconditional release; use embedder: {{type: NoCondition}})")
    bad = {k: report[k] for k in ("missing", "unexpected", "mismatched")}
    if strict and any(bad.values()):
        raise CheckpointError(f"{file} does not match the Latte model ({format_report(bad)}). Set the model's "
                              f"preset / input_size / num_frames / learn_sigma to the release's, or strict: false "
                              f"to load what matches.")
    skip = {k.split(":")[0] for k in report["mismatched"]} | set(report["unexpected"])
    model.load_state_dict({k: v for k, v in sd.items() if k not in skip}, strict=False)
    if report["embedder"]:
        embedder.load_state_dict({EMBEDDER_TABLE: table}, strict=False)
    report["file"] = [str(file)]
    return report


@PRETRAIN.register_class()
def LatteCheckpoint(model, path: str, embedder=None, strict: bool = True):
    """Released Latte weights (.pt holding {"ema": ...} via weights_only, or safetensors); the class table
    goes to the ClassLabel embedder (engines pass ``embedder``). Strict unless ``strict: false``."""
    report = load_latte(model, path, embedder=embedder, strict=strict)
    bad = {k: report[k] for k in ("missing", "unexpected", "mismatched")}
    log = logger.warning if any(bad.values()) else logger.info
    log("loaded Latte weights %s: %s", report["file"][0], format_report(bad, limit=20))
    for line in report["embedder"]:
        logger.info("class table into the embedder: %s", line)
    return report
