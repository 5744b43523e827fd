"""CLIP-T and CLIP-I: OpenCLIP similarity of a video's frames to its prompt or conditioning image.

Weights come from a local file only (nothing is downloaded). The text side is the project's
text embedder :class:`tools.embedders.text.OpenCLIPText` (last layer): its end-of-text token
feature times the model's ``text_projection`` is open_clip's ``encode_text``. The image side is
the same file's image tower (``encode_image``); frames are prepared as open_clip does
(shorter side resized to the tower's input size, bicubic with antialiasing, centre crop,
normalised by the model's mean and std).

    CLIP-T(video, prompt) = mean_t cos(E_img(frame_t), E_txt(prompt))
    CLIP-I(video, image)  = mean_t cos(E_img(frame_t), E_img(image))

(:func:`utils.metrics.clip_similarity`; raw cosines in [-1, 1], not scaled by 100 or clipped
at 0 as CLIPScore does.)
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from tools.embedders.text import OpenCLIPText, _load_text_weights
from utils.metrics import clip_similarity


class CLIPScorer:
    """``clip_t(video, prompt)`` and ``clip_i(video, image)`` with one local OpenCLIP weights file.

    ``arch``: an open_clip architecture (``config_file``: its ``<arch>.json`` when open_clip does
    not ship it); ``pretrained``: the weights file (.safetensors, or .bin/.pt read with
    ``weights_only=True``) holding the full CLIP (both towers); ``setting``: the config key named
    in errors."""

    def __init__(self, arch: str = "ViT-B-32", pretrained: str | None = None, config_file: str | None = None,
                 device: str | torch.device = "cpu", setting: str = "pretrained"):
        if not pretrained or not os.path.isfile(str(pretrained)):
            raise FileNotFoundError(
                f"{setting}={pretrained!r}: no such OpenCLIP weights file. CLIP-T / CLIP-I need local weights of "
                f"arch {arch} (never downloaded at run time): download them once on a machine with internet, e.g. "
                f"open_clip_model.safetensors of a laion/CLIP-* repository, copy the file here and set {setting}, "
                f"or leave clip_t / clip_i out of metrics")
        import open_clip  # heavy: import only when used

        self.device = torch.device(device)
        self.text = OpenCLIPText(arch=arch, pretrained=str(pretrained), layer="last", config_file=config_file)
        self.text.to(self.device)
        model = open_clip.create_model(arch, pretrained=None)  # random init, no network
        _load_text_weights(model, str(pretrained), tower="CLIP model (both towers)")  # strictly
        self.model = model.eval().requires_grad_(False).to(self.device)
        cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
        self.mean = torch.tensor(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", open_clip.OPENAI_DATASET_STD)).view(1, 3, 1, 1)
        size = model.visual.image_size
        self.size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def prepare(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (N, 3, H, W) in [-1, 1] -> the image tower's input (N, 3, h, w), normalised."""
        x = (frames.float().clamp(-1, 1) + 1) / 2
        h, w = x.shape[-2:]
        scale = max(self.size[0] / h, self.size[1] / w)
        x = F.interpolate(x, size=(max(self.size[0], round(h * scale)), max(self.size[1], round(w * scale))),
                          mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        top, left = (x.shape[2] - self.size[0]) // 2, (x.shape[3] - self.size[1]) // 2
        x = x[:, :, top:top + self.size[0], left:left + self.size[1]]
        return (x - self.mean) / self.std

    @torch.no_grad()
    def image_embeddings(self, frames: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """Frames (N, 3, H, W) in [-1, 1] -> image embeddings (N, D) on the CPU."""
        out = [self.model.encode_image(self.prepare(frames[i:i + batch_size]).to(self.device)).float().cpu()
               for i in range(0, frames.shape[0], batch_size)]
        return torch.cat(out)

    @torch.no_grad()
    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> text embeddings (N, D) on the CPU: the embedder's end-of-text token feature
        (last layer, after ln_final) times the text projection."""
        tokens, mask = self.text(list(prompts))  # (N, M, width), (N, M)
        eot = tokens[torch.arange(tokens.shape[0]), mask.long().sum(1) - 1]  # the end-of-text token
        proj = self.model.text_projection
        pooled = proj(eot) if isinstance(proj, torch.nn.Linear) else eot @ proj
        return pooled.float().cpu()

    def clip_t(self, video: torch.Tensor, prompt: str) -> float:
        """CLIP-T of a video (C, T, H, W) in [-1, 1] and its prompt."""
        return clip_similarity(self.image_embeddings(video.transpose(0, 1)), self.text_embeddings([prompt])[0])

    def clip_i(self, video: torch.Tensor, image: torch.Tensor) -> float:
        """CLIP-I of a video (C, T, H, W) and its conditioning image (C, H, W), both in [-1, 1]."""
        return clip_similarity(self.image_embeddings(video.transpose(0, 1)), self.image_embeddings(image[None])[0])
