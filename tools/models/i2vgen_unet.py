"""MODEL ``UNetSD_I2VGen``: VGen's I2VGen-XL image-to-video UNet (diffusers' ``I2VGenXLUNet`` built from VGen's names).

The text-to-video UNet (tools/models/modelscope_unet.py) plus an image branch: the CLIP image embedding becomes
extra context tokens (``context_embedding``), the first frame's latent becomes context tokens too
(``local_image_embedding``) and, with per-frame position ramps ``(i + 1) / (F - 1)``, concat channels of the input
(``local_image_concat`` + ``local_temporal_encoder``); fps is embedded like the timestep.

Contract: ``forward(x, t, y, image, local_image, fps) -> prediction`` with x (B, 4, F, H, W), t integer timesteps
(B,), y text tokens (B, L, context_dim), image (B, context_dim) a CLIP image embedding, local_image the first
frame's latent (B, 4, 1, H, W) (or (B, 4, F, H, W): only frame 0 is used), fps (B,) integers.

VGen's reference forward adds the image branch twice to the zero concat channels; diffusers' once. The converter
(``adapt_reference_weights``) doubles the concat input channels of ``conv_in`` so released weights give the
reference's outputs; this model's own checkpoints hold the doubled weights (the same function).
"""
from __future__ import annotations

import torch
from torch import nn

from tools.models.modelscope_unet import (
    UNET_LORA_PRESETS,
    check_unet_args,
    diffusers_unet_kwargs,
    finish_unet,
    set_dense_attention,
    unet_blocks,
)
from utils.registry import MODEL

#: VGen top-level layers of the image branch -> diffusers names (the converter's extra renames)
IMAGE_BRANCH_KEYS = {
    "local_image_concat.": "image_latents_proj_in.",
    "local_image_embedding.": "image_latents_context_embedding.",
    "local_temporal_encoder.layers.0.0.norm.": "image_latents_temporal_encoder.norm1.",
    "local_temporal_encoder.layers.0.0.fn.to_qkv.": "image_latents_temporal_encoder.attn1.to_qkv.",
    "local_temporal_encoder.layers.0.0.fn.to_out.": "image_latents_temporal_encoder.attn1.to_out.",
    "local_temporal_encoder.layers.0.1.net.0.0.": "image_latents_temporal_encoder.ff.net.0.proj.",
    "local_temporal_encoder.layers.0.1.net.2.": "image_latents_temporal_encoder.ff.net.2.",
    "context_embedding.": "context_embedding.",
    "fps_embedding.": "fps_embedding.",
}


def position_ramps(local_image: torch.Tensor, num_frames: int) -> torch.Tensor:
    """First-frame latent (B, C, 1+, h, w) -> (B, C, F, h, w): frame 0, then constant frames (i + 1) / (F - 1)."""
    first = local_image[:, :, :1]
    ramps = [torch.full_like(first, (i + 1) / (num_frames - 1)) for i in range(num_frames - 1)]
    return torch.cat([first, *ramps], dim=2)


@MODEL.register_class()
class UNetSD_I2VGen(nn.Module):
    """VGen I2VGen-XL image-to-video 3D UNet (text + CLIP image embedding + first-frame latent + fps)."""

    #: the diffusion calls this model with the integer timestep k, not the unit time 1 - k/T
    timestep_input = "index"
    lora_presets = UNET_LORA_PRESETS  # LoRA targets by name (tools/lora.py)
    #: the inputs it takes besides x and t (tools/inferences/generate_video.py gives them)
    conditions = ("y", "image", "local_image", "fps")
    reference_extra_keys = IMAGE_BRANCH_KEYS

    def __init__(self, in_dim: int = 4, dim: int = 320, y_dim: int = 1024, context_dim: int = 1024,
                 concat_dim: int = 4, out_dim: int = 4, dim_mult: list[int] = (1, 2, 4, 4), num_heads: int = 8,
                 head_dim: int = 64, num_res_blocks: int = 2, attn_scales: list[float] = (1.0, 0.5, 0.25),
                 dropout: float = 0.1, temporal_attention: bool | str = True, grad_checkpointing: bool = False):
        super().__init__()
        from diffusers import I2VGenXLUNet

        has_attn = check_unet_args(dim, dim_mult, num_res_blocks, attn_scales, head_dim, num_heads,
                                   temporal_attention)
        if int(num_heads) != 8 or y_dim != context_dim or concat_dim != in_dim or in_dim != 4:
            raise ValueError(f"num_heads={num_heads}, y_dim={y_dim}, context_dim={context_dim}, in_dim={in_dim}, "
                             f"concat_dim={concat_dim}: I2VGen-XL has 8 first-layer temporal heads, y_dim = "
                             f"context_dim and 4-channel latents concatenated with 4 image channels")
        self.unet = I2VGenXLUNet(**diffusers_unet_kwargs(in_dim, out_dim, dim, dim_mult, num_res_blocks, context_dim,
                                                         head_dim, has_attn))
        finish_unet(self, dropout, grad_checkpointing, has_attn, in_dim=in_dim, dim=dim, context_dim=context_dim,
                    out_dim=out_dim, dim_mult=dim_mult, head_dim=head_dim, num_res_blocks=num_res_blocks,
                    attn_scales=attn_scales)

    def adapt_reference_weights(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Released weights (converted keys) -> this model: split the temporal encoder's fused qkv; double the
        concat input channels of conv_in (VGen adds the image branch twice)."""
        sd = dict(sd)
        qkv = sd.pop("unet.image_latents_temporal_encoder.attn1.to_qkv.weight", None)
        if qkv is not None:
            for name, w in zip("qkv", qkv.chunk(3, dim=0)):
                sd[f"unet.image_latents_temporal_encoder.attn1.to_{name}.weight"] = w
        w = sd.get("unet.conv_in.weight")
        if w is not None and w.shape[1] == 2 * self.in_channels:
            sd["unet.conv_in.weight"] = torch.cat([w[:, :self.in_channels], 2 * w[:, self.in_channels:]], dim=1)
        return sd

    def checkpoint_units(self) -> list[nn.Module]:
        """What ``grad_checkpointing`` recomputes one at a time (read by the memory plan)."""
        return unet_blocks(self.unet)

    def set_attention(self, impl: str, dense_fn) -> None:
        """The backend's dense attention kernel for every attention (``impl`` is a block-causal choice: unused)."""
        set_dense_attention(self.unet, dense_fn)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, image: torch.Tensor,
                local_image: torch.Tensor, fps: torch.Tensor) -> torch.Tensor:
        B, C, F = x.shape[:3]
        if x.dim() != 5 or C != self.in_channels or F < 2:
            raise ValueError(f"x must be (B, {self.in_channels}, F >= 2, H, W) latents, got {tuple(x.shape)}.")
        if local_image.dim() != 5 or local_image.shape[0] != B or local_image.shape[3:] != x.shape[3:]:
            raise ValueError(f"local_image must be the first frame's latent (B={B}, {C}, 1, {x.shape[3]}, "
                             f"{x.shape[4]}), got {tuple(local_image.shape)}.")
        if image.shape != (B, self.context_dim):
            raise ValueError(f"image must be a CLIP image embedding (B={B}, {self.context_dim}), "
                             f"got {tuple(image.shape)}.")
        if t.dtype.is_floating_point:
            raise ValueError(f"t must be integer timesteps (timestep_input = 'index'), got dtype {t.dtype}.")
        return self.unet(x, t, fps=fps, image_latents=position_ramps(local_image, F), image_embeddings=image,
                         encoder_hidden_states=y, return_dict=False)[0]  # (B, C, F, H, W)
