"""MODEL LinearProbe: mean-pooled backbone features -> class logits (a linear probe)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from utils.registry import MODEL

from .base import Head, class_index, target_values


@MODEL.register_class()
class LinearProbe(Head):
    """Linear probe: features mean-pooled over frames and patches -> standardised -> Linear -> classes.

    ``target`` is the item value to predict: a batch key (``label``) or a SyntheticPhysics property
    (``count``, ``gravity``, ``collision``); ``classes`` lists its values in class order (e.g.
    ``[1, 2, 3]`` balls, or the gravity names), else the values are class indices already.
    The standardisation is a BatchNorm without affine parameters (as in MAE's probe), so the
    probe stays linear in the pooled features and their scale does not matter."""

    task = "classification"

    def __init__(self, backbone: dict[str, Any], num_classes: int | None = None, target: str = "label",
                 classes: Sequence[Any] | None = None, layers: Sequence[int] = (-1,),
                 clip_len: int | None = None, freeze: bool = True):
        super().__init__(backbone, layers, clip_len, freeze)
        if classes is not None:
            classes = list(classes)
            if num_classes is not None and num_classes != len(classes):
                raise ValueError(f"num_classes={num_classes} but classes has {len(classes)} entries {classes}; "
                                 f"drop num_classes (it follows classes)")
            num_classes = len(classes)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes={num_classes!r} must be an int >= 2 (or give classes: [...])")
        self.num_classes, self.target, self.classes = num_classes, str(target), classes
        self.norm = nn.BatchNorm1d(self.feature_dim, affine=False)
        self.fc = nn.Linear(self.feature_dim, num_classes)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, video: Tensor) -> Tensor:
        """video (B, C, F, H, W) -> logits (B, num_classes)."""
        pooled = self.features(video).mean(dim=(1, 2, 3))  # (B, feature_dim)
        return self.fc(self.norm(pooled))

    def prepare(self, batch: dict[str, Any], max_frames: int, device) -> dict[str, Any]:
        values = target_values(batch, self.target)
        labels = [class_index(v, self.classes, self.num_classes, f"item {i} ({self.target})")
                  for i, v in enumerate(values)]
        video = batch["video"][:, :, :max_frames].to(device, non_blocking=True)
        return {"net": {"video": video}, "target": torch.tensor(labels, dtype=torch.long, device=device)}

    def loss(self, logits: Tensor, inputs: dict[str, Any]) -> Tensor:
        return F.cross_entropy(logits.float(), inputs["target"])

    def predict(self, logits: Tensor, inputs: dict[str, Any]) -> list[dict[str, Any]]:
        pred = logits.argmax(-1).tolist()
        return [{"pred": p, "target": t} for p, t in zip(pred, inputs["target"].tolist())]
