"""Classifier-free guidance of a next-clip rollout: named branches and one formula.

A guided prediction combines up to three predictions of the same noisy clip (raw model outputs;
the conversion to velocity is affine, so guiding raw predictions equals guiding velocities)::

    pred = p[FULL] + (s_h - 1) (p[FULL] - p[NO_HISTORY]) + (s_c - 1) (p[FULL] - p[NO_CONDITION])

- ``FULL``: with the history and the condition;
- ``NO_HISTORY``: the same clip with no history (condition kept): history guidance, ``s_h =
  history_guide_scale``;
- ``NO_CONDITION``: history kept, the condition replaced by the embedder's null condition:
  condition guidance, ``s_c = guide_scale``. Per-frame conditions (actions) are replaced by the null
  token at every frame, the clip's and its history's (the history's KV cache of this branch is encoded
  with null actions, as it is encoded with the null condition).

A branch is computed only where its term acts: its scale != 1, and the model time t (0 noise,
1 clean, as ``pred_fn`` sees it for both diffusions) inside its interval (``guide_interval`` /
``history_guide_interval``, Kynkaanniemi et al. 2024); history guidance also needs a history. Scales
of 1 give exactly the unguided prediction. At high noise the guided x1 of a rare condition (one ball)
is pushed below the unconditional mean layout and the sample can lose its only ball; starting
guidance later keeps the layout the condition drew and still sharpens it.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

FULL, NO_HISTORY, NO_CONDITION = "full", "no_history", "no_condition"


@dataclass(frozen=True)
class Condition:
    """The condition of a rollout: tokens (B, M, cond_dim) and mask (B, M) bool (True = real, None =
    all real), and the null condition of guidance (``embedder.null(B)``), needed when guide_scale != 1.
    Per-frame conditions (a frame-conditioned model, e.g. actions): ``frame_cond`` (B, F, D) one token
    per frame, and ``null_frame_cond`` the embedder's null token at every frame (the NO_CONDITION
    branch: null actions for the clip being generated AND its history). All None: an unconditional model."""
    cond: Tensor | None = None
    cond_mask: Tensor | None = None
    null_cond: Tensor | None = None
    null_mask: Tensor | None = None
    frame_cond: Tensor | None = None
    null_frame_cond: Tensor | None = None


def active_branches(settings, t: float, has_history: bool) -> list[str]:
    """The branches a denoising step at model time ``t`` needs, ``FULL`` first (``settings``: a
    :class:`~tools.inferences.rollout.RolloutSettings`)."""
    names = [FULL]
    lo, hi = settings.history_guide_interval
    if settings.history_guide_scale != 1.0 and has_history and lo <= t <= hi:
        names.append(NO_HISTORY)
    lo, hi = settings.guide_interval
    if settings.guide_scale != 1.0 and lo <= t <= hi:
        names.append(NO_CONDITION)
    return names


def guided(preds: Mapping[str, Tensor], settings) -> Tensor:
    """The guidance formula over the branches in ``preds`` (those of :func:`active_branches`)."""
    full = preds[FULL]
    out = full
    if NO_HISTORY in preds:
        out = out + (settings.history_guide_scale - 1.0) * (full - preds[NO_HISTORY])
    if NO_CONDITION in preds:
        out = out + (settings.guide_scale - 1.0) * (full - preds[NO_CONDITION])
    return out
