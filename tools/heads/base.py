"""Head: the shared part of the downstream task heads, and PixelFeatures (the pixel baseline backbone).

A head owns its backbone (built from a MODEL config) and reads features through
``backbone.features(video, layers=..., clip_len=...)`` -> list of (B, F, h, w, C). With
``freeze: true`` the backbone has no gradients, stays in eval mode and runs under no_grad;
with ``freeze: false`` it is fine-tuned with the head. Pretrained weights come in through
PRETRAIN (``LoadCheckpoint`` with ``prefix: backbone.``), never through the head itself.

The engines (train_head / evaluate_head) use four calls, the same for every head:

- ``prepare(batch, max_frames, device) -> inputs``: ``inputs["net"]`` are the keyword arguments of
  ``forward`` (tensors on ``device``), the rest is what ``loss`` / ``predict`` need (targets);
- ``forward(**inputs["net"]) -> outputs`` (called through the wrapped / DDP module);
- ``loss(outputs, inputs) -> scalar``;
- ``predict(outputs, inputs) -> list`` of one prediction per video.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from utils.registry import MODEL


class Head(nn.Module):
    """Base class: a backbone, its feature settings and the freeze rule."""

    task = "none"

    def __init__(self, backbone: dict[str, Any], layers: Sequence[int] = (-1,), clip_len: int | None = None,
                 freeze: bool = True):
        super().__init__()
        if not isinstance(backbone, dict) or "type" not in backbone:
            raise ValueError(f"backbone={backbone!r} must be a MODEL config with a 'type:' entry, e.g. "
                             f"{{type: NextClipTransformer, preset: demo, in_channels: 3, patch_size: 8}}")
        self.backbone = MODEL.build(backbone, "model.backbone")
        if not callable(getattr(self.backbone, "features", None)):
            raise ValueError(f"backbone {backbone['type']} has no features(video, layers=...) method; use "
                             f"NextClipTransformer or PixelFeatures")
        self.layers = [int(i) for i in layers]
        if not self.layers:
            raise ValueError("layers=[] selects no feature layer; give block indices, e.g. layers: [-1]")
        if clip_len is not None and (isinstance(clip_len, bool) or not isinstance(clip_len, int) or clip_len < 1):
            raise ValueError(f"clip_len={clip_len!r} must be a positive int (frames per clean clip) or null (one clip)")
        self.clip_len, self.freeze = clip_len, bool(freeze)
        if self.freeze:
            self.backbone.requires_grad_(False)
        self.feature_dim = int(self.backbone.hidden) * len(self.layers)
        self.patch_size = int(self.backbone.patch_size)

    def set_attention(self, impl: str, dense_fn=None) -> None:
        """The engine's attention kernel goes to the backbone."""
        if callable(getattr(self.backbone, "set_attention", None)):
            self.backbone.set_attention(impl, dense_fn)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze:
            self.backbone.eval()
        return self

    def features(self, video: Tensor) -> Tensor:
        """Chosen layers of the backbone concatenated -> (B, F, h, w, feature_dim)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            feats = self.backbone.features(video, layers=self.layers, clip_len=self.clip_len)
        return torch.cat([f.float() for f in feats], dim=-1)


def class_index(value: Any, classes: Sequence[Any] | None, num_classes: int, what: str) -> int:
    """A target value -> class index: its position in ``classes``, or the value itself (0..num_classes-1)."""
    if classes is not None:
        for i, c in enumerate(classes):
            if c == value and isinstance(c, bool) == isinstance(value, bool):  # True is not 1
                return i
        raise ValueError(f"{what}: target value {value!r} is not one of the head's classes {list(classes)}; add it "
                         f"to model.classes")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < num_classes:
        raise ValueError(f"{what}: target value {value!r} is not a class index 0..{num_classes - 1}; set "
                         f"model.classes to the values (e.g. classes: [1, 2, 3]) or fix num_classes")
    return value


def target_values(batch: dict[str, Any], target: str) -> list[Any]:
    """Per-item values of ``target``: a batch key (e.g. ``label``), else ``meta["properties"][target]``
    (SyntheticPhysics: count, gravity, collision)."""
    if target in batch:
        v = batch[target]
        return v.tolist() if isinstance(v, Tensor) else list(v)
    metas = batch.get("meta") or []
    out = []
    for i, m in enumerate(metas):
        props = (m or {}).get("properties") or {}
        if target not in props:
            raise ValueError(f"item {i} of the batch has no {target!r}: not a batch key ({sorted(batch)}) nor in "
                             f"meta['properties'] ({sorted(props)}); set model.target to one of them")
        out.append(props[target])
    if not out:
        raise ValueError(f"the batch has no {target!r} (keys: {sorted(batch)}); set model.target to one of them")
    return out


@MODEL.register_class()
class PixelFeatures(nn.Module):
    """Pixel baseline backbone: the raw pixels of every patch as its 'features' (no parameters)."""

    def __init__(self, in_channels: int = 3, patch_size: int = 8):
        super().__init__()
        self.in_channels, self.patch_size = int(in_channels), int(patch_size)
        self.hidden = self.in_channels * self.patch_size ** 2

    def features(self, video: Tensor, layers: Sequence[int] = (-1,), clip_len: int | None = None,
                 **_: Any) -> list[Tensor]:
        """video (B, C, F, H, W) -> [(B, F, H/p, W/p, C*p*p)] once per requested layer."""
        B, C, Fr, H, W = video.shape
        p = self.patch_size
        assert C == self.in_channels and H % p == 0 and W % p == 0, \
            f"video {tuple(video.shape)} does not fit in_channels={self.in_channels}, patch_size={p}"
        x = video.reshape(B, C, Fr, H // p, p, W // p, p).permute(0, 2, 3, 5, 1, 4, 6)
        x = x.reshape(B, Fr, H // p, W // p, C * p * p)
        return [x for _ in layers]
