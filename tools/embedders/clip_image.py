"""EMBEDDER ``OpenCLIPImage``: the frozen OpenCLIP vision tower with its own preprocessing (image-to-video models).

I2VGen-XL conditions on the CLIP image embedding of its first frame (ViT-H-14: 1024 wide). Images are uint8
(H, W, 3) arrays (what ``utils.video_io.read_image`` returns) or PIL images; they go through open_clip's inference
transform for the tower (resize the shortest side, bicubic, center crop to the tower's image size, normalise with
the CLIP mean / std) and ``encode_image`` (the projected embedding, not normalised). Weights are a local file only
(the ModelScope / VGen folder's ``open_clip_pytorch_model.bin``, read with ``weights_only=True``, or safetensors);
only the ``visual.*`` tensors are kept. ``null`` = zeros: VGen's unconditional image feature
(``black_image_feature = zeros`` with ``use_zero_infer``, its I2VGen-XL inference setting).

VGen's own preprocessing crops the center square at the video's width with a box filter and resizes it to 224;
open_clip's crops the same square region with a bicubic filter, so the embeddings differ slightly.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from utils.registry import EMBEDDER


@EMBEDDER.register_class()
class OpenCLIPImage(nn.Module):
    """Frozen OpenCLIP vision tower: image -> one token, the CLIP image embedding (B, 1, embed_dim)."""

    def __init__(self, arch: str = "ViT-H-14", pretrained: str | None = None, config_file: str | None = None):
        super().__init__()
        if not pretrained or not os.path.isfile(str(pretrained)):
            raise FileNotFoundError(
                f"OpenCLIPImage: weights file pretrained={pretrained!r} not found; weights are never downloaded at "
                f"run time. Use the model folder's open_clip_pytorch_model.bin (null = the folder's, in "
                f"generate_video) or a local CLIP .safetensors / .bin of arch {arch}.")
        import open_clip  # heavy: import only when used

        from utils.checkpoint import read_state_dict

        if config_file is not None:
            if not os.path.isfile(config_file):
                raise FileNotFoundError(f"OpenCLIPImage: config_file={config_file!r} does not exist.")
            open_clip.add_model_config(config_file)
        if open_clip.get_model_config(arch) is None:
            raise ValueError(f"OpenCLIPImage: unknown open_clip arch {arch!r}; pass config_file=<arch>.json.")
        model = open_clip.create_model(arch, pretrained=None)  # random init, no network
        visual = model.visual
        sd = {k[len("visual."):]: v for k, v in read_state_dict(str(pretrained)).items() if k.startswith("visual.")}
        missing, unexpected = visual.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise ValueError(f"OpenCLIPImage: {pretrained} does not fit the {arch} vision tower ({len(missing)} "
                             f"missing, e.g. {missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]}); "
                             f"check arch against the file.")
        visual.eval().requires_grad_(False)
        self._frozen = {"visual": visual}  # a dict hides it from parameters()/state_dict(): never saved
        self.register_buffer("_probe", torch.zeros(0), persistent=False)
        size = visual.image_size
        mean, std = getattr(visual, "image_mean", None), getattr(visual, "image_std", None)
        self.transform = open_clip.image_transform(size, is_train=False, mean=mean, std=std)
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        with torch.no_grad():
            self.dim = int(visual(torch.zeros(1, 3, *self.image_size)).shape[-1])
        self.num_tokens, self.arch, self.pretrained = 1, arch, str(pretrained)

    def preprocess(self, images) -> torch.Tensor:
        """uint8 (H, W, 3) arrays / PIL images -> the tower's input (B, 3, S, S)."""
        from PIL import Image

        out = []
        for im in images:
            if isinstance(im, np.ndarray):
                if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
                    raise ValueError(f"OpenCLIPImage takes uint8 (H, W, 3) images, got {im.dtype} {im.shape}.")
                im = Image.fromarray(im)
            elif not isinstance(im, Image.Image):
                raise ValueError(f"OpenCLIPImage takes uint8 (H, W, 3) arrays or PIL images, got {type(im).__name__}.")
            out.append(self.transform(im.convert("RGB")))
        return torch.stack(out)

    @torch.no_grad()
    def forward(self, images) -> tuple[torch.Tensor, torch.Tensor]:
        """images -> (tokens (B, 1, dim) float32, mask (B, 1) all True) on the embedder's device."""
        visual, dev = self._frozen["visual"], self._probe.device
        if next(visual.parameters()).device != dev:
            visual.to(dev)
        emb = visual(self.preprocess(list(images)).to(dev)).float()  # (B, dim)
        return emb[:, None], torch.ones(emb.shape[0], 1, dtype=torch.bool, device=dev)

    def null(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Zeros (B, 1, dim): VGen's unconditional image feature."""
        dev = self._probe.device
        return (torch.zeros(batch_size, 1, self.dim, device=dev),
                torch.ones(batch_size, 1, dtype=torch.bool, device=dev))
