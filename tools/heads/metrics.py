"""Scores of the downstream heads: accuracy, and the DAVIS region (J) / boundary (F) measures.

J is the IoU of an object's predicted and true masks in a frame; F is the F-measure of their
boundary pixels matched within a tolerance of ``ceil(0.008 * image diagonal)`` pixels (DAVIS's
``bound_th``); both are 1 when the object is absent in both masks and 0 when in only one. An
object's J / F average its frames after the prompt frame; a video's average its first-frame
objects; J&F is their mean.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def accuracy(preds: Sequence[int], targets: Sequence[int]) -> float:
    return sum(int(p == t) for p, t in zip(preds, targets)) / max(1, len(targets))


def region_j(pred: Tensor, truth: Tensor) -> Tensor:
    """pred, truth (T, H, W) bool -> per-frame IoU (T,)."""
    inter = (pred & truth).flatten(1).sum(1).float()
    union = (pred | truth).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def _boundary(mask: Tensor) -> Tensor:
    """(T, H, W) bool -> pixels of the mask with a 4-neighbour outside it (image border counts as outside)."""
    m = mask.float()[:, None]
    inner = -F.max_pool2d(-F.pad(m, (1, 1, 1, 1), value=0.0), 3, stride=1)
    return (m - inner)[:, 0] > 0


def _dilate(mask: Tensor, r: int) -> Tensor:
    return F.max_pool2d(mask.float()[:, None], 2 * r + 1, stride=1, padding=r)[:, 0] > 0


def boundary_f(pred: Tensor, truth: Tensor) -> Tensor:
    """pred, truth (T, H, W) bool -> per-frame boundary F-measure (T,)."""
    H, W = truth.shape[-2:]
    r = max(1, math.ceil(0.008 * math.hypot(H, W)))
    bp, bt = _boundary(pred), _boundary(truth)
    n_p, n_t = bp.flatten(1).sum(1).float(), bt.flatten(1).sum(1).float()
    prec = (bp & _dilate(bt, r)).flatten(1).sum(1).float() / n_p.clamp(min=1)
    rec = (bt & _dilate(bp, r)).flatten(1).sum(1).float() / n_t.clamp(min=1)
    f = torch.where(prec + rec > 0, 2 * prec * rec / (prec + rec).clamp(min=1e-12), torch.zeros_like(prec))
    both_empty, one_empty = (n_p == 0) & (n_t == 0), (n_p == 0) ^ (n_t == 0)
    return torch.where(both_empty, torch.ones_like(f), torch.where(one_empty, torch.zeros_like(f), f))


def vos_scores(pred: Tensor, truth: Tensor, ids: Sequence[int]) -> dict[str, object]:
    """pred, truth (T, H, W) object-id maps; ``ids`` the prompted objects -> J, F, J&F of the video
    (frames 1..T-1) and per object."""
    per: dict[str, dict[str, float]] = {}
    for k in ids:
        p, t = pred[1:] == k, truth[1:] == k
        per[str(k)] = {"J": float(region_j(p, t).mean()), "F": float(boundary_f(p, t).mean())}
    J = sum(o["J"] for o in per.values()) / max(1, len(per))
    Fm = sum(o["F"] for o in per.values()) / max(1, len(per))
    return {"J": J, "F": Fm, "JF": (J + Fm) / 2, "objects": per}


def mean_of(rows: list[dict[str, float]], key: str) -> float:
    vals = [r[key] for r in rows]
    return sum(vals) / max(1, len(vals))
