"""MODEL SegmentationHead: semi-supervised video object segmentation from per-patch features.

The first frame's mask of each object is the prompt. Per object (the batch holds one row per
(video, object) pair; ``owner`` says which video), every patch of every frame attends to the
patches of the first frame through a learned projection of the features, which carries the
prompt along (label propagation, (P, F, h, w), scaled to 1 at each frame's most prompt-like patch).
A small MLP of [features, propagated mask] gives per-pixel logits inside each patch (a p x p sub-pixel
decoder), added to the
propagated mask bilinearly upsampled to full resolution. Several objects: the per-object logits
compete with a background logit of 0 (a pixel gets the object of the highest positive logit).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from utils.registry import MODEL

from .base import Head


@MODEL.register_class()
class SegmentationHead(Head):
    """Per-patch features + first-frame mask prompt -> per-pixel mask logits (upsampled) per object."""

    task = "segmentation"

    def __init__(self, backbone: dict[str, Any], dim: int = 64, layers: Sequence[int] = (-1,),
                 clip_len: int | None = None, freeze: bool = True, temperature: float = 0.1):
        super().__init__(backbone, layers, clip_len, freeze)
        p = self.patch_size
        self.norm = nn.LayerNorm(self.feature_dim)
        self.key = nn.Linear(self.feature_dim, dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))  # affinity sharpness
        self.decoder = nn.Sequential(nn.Linear(self.feature_dim + 1, dim), nn.GELU(), nn.Linear(dim, p * p))
        self.prop_gain = nn.Parameter(torch.tensor(8.0))
        nn.init.zeros_(self.decoder[2].weight)
        nn.init.zeros_(self.decoder[2].bias)

    def forward(self, video: Tensor, prompt: Tensor, owner: Tensor) -> Tensor:
        """video (B, C, F, H, W); prompt (P, H, W) first-frame masks in {0, 1}; owner (P,) video index
        of each prompt -> logits (P, F, H, W)."""
        B, _, Fr, H, W = video.shape
        p = self.patch_size
        gh, gw = H // p, W // p
        feats = self.norm(self.features(video).reshape(B, Fr, gh * gw, -1))[owner]  # (P, F, N, D)
        keys = F.normalize(self.key(feats), dim=-1)
        m0 = F.avg_pool2d(prompt[:, None].float(), p).flatten(1)  # (P, N) share of each patch covered
        aff = torch.einsum("pfnd,pmd->pfnm", keys, keys[:, 0]) * self.log_scale.exp()
        prop = torch.einsum("pfnm,pm->pfn", aff.softmax(-1), m0)  # (P, F, N) propagated prompt
        sub = self.decoder(torch.cat([feats, prop[..., None]], dim=-1))  # (P, F, N, p*p)
        P = sub.shape[0]
        fine = sub.reshape(P, Fr, gh, gw, p, p).permute(0, 1, 2, 4, 3, 5).reshape(P, Fr, H, W)
        prop = prop / prop.amax(-1, keepdim=True).clamp(min=1e-6)  # 1 at the patch most like the prompt
        coarse = F.interpolate(prop.reshape(P * Fr, 1, gh, gw), size=(H, W), mode="bilinear", align_corners=False)
        return fine + self.prop_gain * (coarse.reshape(P, Fr, H, W) - 0.5)

    def prepare(self, batch: dict[str, Any], max_frames: int, device) -> dict[str, Any]:
        """One (video, object) pair per object present in a video's first-frame mask."""
        if "masks" not in batch:
            raise ValueError(f"SegmentationHead needs items with 'masks' (T, H, W) object ids; the batch has "
                             f"{sorted(batch)} (SyntheticPhysics: set with_masks: true)")
        video = batch["video"][:, :, :max_frames]
        masks = torch.stack([torch.as_tensor(m)[:max_frames] for m in batch["masks"]]).long()  # (B, T, H, W)
        owner, ids = [], []
        for b in range(masks.shape[0]):
            for k in torch.unique(masks[b, 0]).tolist():
                if k > 0:
                    owner.append(b)
                    ids.append(k)
        owner_t = torch.tensor(owner, dtype=torch.long)
        ids_t = torch.tensor(ids, dtype=torch.long)
        prompt = (masks[owner_t, 0] == ids_t[:, None, None]).float()
        target = (masks[owner_t] == ids_t[:, None, None, None]).float()  # (P, T, H, W)
        return {"net": {"video": video.to(device, non_blocking=True), "prompt": prompt.to(device),
                        "owner": owner_t.to(device)},
                "target": target.to(device), "ids": ids, "owner": owner, "masks": masks}

    def loss(self, logits: Tensor, inputs: dict[str, Any]) -> Tensor:
        """Binary cross-entropy + soft Dice (objects are small: BCE alone learns 'background')
        over the frames after the prompt frame."""
        if logits.shape[0] == 0:  # no object in any first frame
            return logits.sum() * 0.0
        lg, tg = logits[:, 1:].float(), inputs["target"][:, 1:]
        prob = lg.sigmoid().flatten(1)
        dice = 1 - (2 * (prob * tg.flatten(1)).sum(1) + 1) / (prob.sum(1) + tg.flatten(1).sum(1) + 1)
        return F.binary_cross_entropy_with_logits(lg, tg) + dice.mean()

    def predict(self, logits: Tensor, inputs: dict[str, Any]) -> list[dict[str, Any]]:
        """Per video: {"pred": (T, H, W) object ids, "truth": (T, H, W), "ids": objects of the first frame}."""
        masks = inputs["masks"]
        out = []
        for b in range(masks.shape[0]):
            rows = [i for i, o in enumerate(inputs["owner"]) if o == b]
            ids = [inputs["ids"][i] for i in rows]
            pred = torch.zeros_like(masks[b])
            if rows:
                lg = logits[rows].float().cpu()  # (K, T, H, W)
                best, arg = lg.max(0)
                pred = torch.where(best > 0, torch.tensor(ids)[arg], torch.zeros_like(arg))
            out.append({"pred": pred, "truth": masks[b], "ids": ids})
        return out
