"""Latte: a latent video diffusion transformer (Ma et al. 2024), the Open-Sora Plan v1.0 backbone.

Key-compatible with the released checkpoints (``Latte.state_dict()`` of the reference, minus the
class table ``y_embedder.embedding_table.weight``, which lives in the ClassLabel EMBEDDER: its
``num_classes + 1`` rows end with the same null row). Facts from ../shared/fixtures/latte_tiny/README.md:

- Blocks alternate spatial (attention over the patches of one frame) and temporal (attention over the
  frames of one patch position); both are adaLN-zero DiT blocks modulated by ``t_emb + class_emb``.
- ``pos_embed`` (1, patches, hidden) and ``temp_embed`` (1, frames, hidden) are fixed sin-cos tables
  stored in the checkpoint; ``temp_embed`` is added once, before the first temporal block.
- The timestep is the integer diffusion index (``timestep_input = "index"``), not the project's 1 - k/T.
- The output has ``2C`` channels with ``learn_sigma``: eps, then the learned-range variance values.

Layout at the boundary is the project's (B, C, F, H, W) in and (B, C_out, F, H, W) out; inside, the
reference's (B * F, tokens, hidden) for spatial and (B * tokens, F, hidden) for temporal blocks.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from utils.registry import MODEL

from .block_causal import sdpa_dense
from .layers import Mlp, TimeEmbed, xavier_linears
from .videogpt import PatchEmbed, sincos_pos_embed


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def sincos_1d(dim: int, length: int) -> Tensor:
    """(1, length, dim) table ``[sin(p w), cos(p w)]``, ``w_i = 10000^(-i / (dim/2))``, computed in float64."""
    assert dim % 2 == 0, f"hidden={dim} must be even for the temporal sin-cos table"
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    ang = torch.arange(length, dtype=torch.float64)[:, None] * omega[None]
    return torch.cat([ang.sin(), ang.cos()], dim=1).float()[None]


class TimestepEmbedder(TimeEmbed):
    """``TimeEmbed`` of the integer timestep whose frequencies ``exp(-ln(10000) i / 128)`` are rounded once from
    float64: the float32 ``exp`` differs by an ulp between platforms, and at t = 999 an ulp of the angle moves
    the output by ~1e-5 (measured against the fixture: 1.1e-5 with float32 exp, 7e-6 with this)."""

    def forward(self, t: Tensor) -> Tensor:
        half = self.freq_dim // 2
        expo = -math.log(self.max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half
        ang = t.float()[..., None] * expo.double().exp().float()  # (B, half)
        return self.mlp(torch.cat([ang.cos(), ang.sin()], dim=-1).to(self.mlp[0].weight.dtype))


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm's layout: qkv, proj)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        assert dim % heads == 0, f"hidden={dim} is not divisible by heads={heads}"
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, dense_fn: Callable) -> Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # 3x (B, h, N, d)
        return self.proj(dense_fn(q, k, v).transpose(1, 2).reshape(B, N, D))


class LatteBlock(nn.Module):
    """DiT block with adaLN-zero: ``x + gate * f(modulate(norm(x)))`` for attention, then the MLP."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio), "gelu")
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x: Tensor, c: Tensor, dense_fn: Callable) -> Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=1)  # (N, D) each
        x = x + gate_a.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_a, scale_a), dense_fn)
        return x + gate_m.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, patch: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, patch * patch * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


@MODEL.register_class()
class Latte(nn.Module):
    """Latte video DiT (spatial / temporal blocks, adaLN-zero on timestep + class, learned variance).

    Args:
        preset: one of ``PRESETS`` (``"XL/2"`` is the released size), setting hidden, depth, heads and
            patch_size; explicit arguments override it.
        in_channels: latent channels (4 for the SD VAE; the engine sets it from the auto_encoder).
        input_size: latent height = width the fixed spatial table is made for (32 = 256 px via the SD VAE).
        num_frames: latent frames of the fixed temporal table (16 released); shorter inputs use its start.
        learn_sigma: output 2 * in_channels channels (eps, then the learned-range variance values).
        cond_dim: width of the class token from the EMBEDDER (= hidden: it is added to the timestep
            embedding); None = unconditional (the FaceForensics / SkyTimelapse / Taichi releases).
        grad_checkpointing: in training, keep only each block's input and recompute the block in the backward.
    """

    #: the model takes the integer diffusion timestep k (see GaussianDiffusion.model_time)
    timestep_input = "index"
    #: LoRA targets by name (tools/lora.py): the blocks' attention and MLP linears
    lora_presets = {"default": ["blocks.*.attn.qkv", "blocks.*.attn.proj", "blocks.*.mlp"],
                    "attention": ["blocks.*.attn.qkv", "blocks.*.attn.proj"],
                    "all": ["blocks.*.attn.qkv", "blocks.*.attn.proj", "blocks.*.mlp", "blocks.*.adaLN_modulation"]}

    def __init__(self, preset: str | None = None, in_channels: int = 4, input_size: int = 32,
                 patch_size: int | None = None, hidden: int | None = None, depth: int | None = None,
                 heads: int | None = None, mlp_ratio: float = 4.0, num_frames: int = 16, learn_sigma: bool = True,
                 cond_dim: int | None = None, grad_checkpointing: bool = False):
        super().__init__()
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"preset={preset!r} is unknown; use one of {list(PRESETS)} or set hidden, depth, "
                             f"heads and patch_size")
        given = dict(hidden=hidden, depth=depth, heads=heads, patch_size=patch_size)
        size = {**(PRESETS[preset] if preset else {}), **{k: v for k, v in given.items() if v is not None}}
        unset = [k for k in given if k not in size]
        if unset:
            raise ValueError(f"Latte: {unset} not set; give preset (one of {list(PRESETS)}) or every one of them")
        if size["depth"] % 2:
            raise ValueError(f"depth={size['depth']} must be even: blocks alternate spatial and temporal")
        if input_size % size["patch_size"]:
            raise ValueError(f"input_size={input_size} is not a multiple of patch_size={size['patch_size']}")
        if cond_dim is not None and cond_dim != size["hidden"]:
            raise ValueError(f"cond_dim={cond_dim} but Latte adds the class embedding to its timestep embedding "
                             f"of width hidden={size['hidden']}; give the embedder dim: {size['hidden']}")
        self.in_channels, self.input_size, self.num_frames = in_channels, input_size, num_frames
        self.patch_size, self.hidden, self.depth = size["patch_size"], size["hidden"], size["depth"]
        self.learn_sigma, self.cond_dim = bool(learn_sigma), cond_dim
        self.grad_checkpointing = bool(grad_checkpointing)
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.conditions = ("y",) if cond_dim is not None else ()  # what the whole-video engines pass besides x, t
        self.spatial_multiple = self.patch_size  # latent H and W must be multiples of it
        self.dense_fn: Callable = sdpa_dense
        grid = input_size // self.patch_size
        self.config = dict(size, mlp_ratio=mlp_ratio, ffn=int(self.hidden * mlp_ratio), preset=preset)  # memory plan

        self.x_embedder = PatchEmbed(in_channels, self.hidden, self.patch_size)
        self.t_embedder = TimestepEmbedder(self.hidden, freq_dim=256, t_scale=1.0)
        self.register_buffer("pos_embed", sincos_pos_embed(self.hidden, grid, base_size=grid))  # (1, n, D)
        self.register_buffer("temp_embed", sincos_1d(self.hidden, num_frames))  # (1, F, D)
        self.blocks = nn.ModuleList(LatteBlock(self.hidden, size["heads"], mlp_ratio) for _ in range(self.depth))
        self.final_layer = FinalLayer(self.hidden, self.patch_size, self.out_channels)
        self._init_weights()

    def set_attention(self, impl: str, dense_fn: Callable | None = None) -> None:
        """The backend's dense kernel (no mask is needed: every token sees its whole frame / patch column)."""
        self.dense_fn = dense_fn or sdpa_dense

    def checkpoint_units(self) -> list[nn.Module]:
        """What ``grad_checkpointing`` recomputes one at a time (read by the memory plan)."""
        return list(self.blocks)

    def _block(self, i: int, h: Tensor, c: Tensor) -> Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(self.blocks[i], h, c, self.dense_fn, use_reentrant=False)
        return self.blocks[i](h, c, self.dense_fn)

    @torch.no_grad()
    def _init_weights(self) -> None:
        """Fresh-start init as the reference: xavier Linears and patch conv, zero adaLN and output layer."""
        xavier_linears(self)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        for lin in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
        for mod in [b.adaLN_modulation[-1] for b in self.blocks] + [self.final_layer.adaLN_modulation[-1],
                                                                     self.final_layer.linear]:
            nn.init.zeros_(mod.weight)
            nn.init.zeros_(mod.bias)

    def unpatchify(self, x: Tensor, gh: int, gw: int) -> Tensor:
        """(N, gh * gw, p * p * C) -> (N, C, gh * p, gw * p); channel index ``(pr * p + pc) * C + c``."""
        p, c = self.patch_size, self.out_channels
        x = x.reshape(x.shape[0], gh, gw, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, gh * p, gw * p)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """x (B, C, F, H, W) noisy latents, t (B,) integer timesteps, y (B, 1, hidden) the class token of the
        EMBEDDER (None for unconditional models) -> (B, out_channels, F, H, W)."""
        B, C, Fr, H, W = x.shape
        p = self.patch_size
        if C != self.in_channels or H % p or W % p:
            raise ValueError(f"Latte got x of shape {tuple(x.shape)}: expected (B, {self.in_channels}, F, H, W) "
                             f"with H and W multiples of patch_size={p}")
        gh, gw = H // p, W // p
        if gh * gw != self.pos_embed.shape[1] or Fr > self.num_frames:
            raise ValueError(f"Latte was built for {self.input_size}x{self.input_size} latents and at most "
                             f"{self.num_frames} frames, got {H}x{W} and {Fr} frames; set model.input_size / "
                             f"model.num_frames to the checkpoint's (their fixed tables are stored in it)")
        if (y is None) != (self.cond_dim is None):
            raise ValueError("Latte: y must be given exactly when the model is class-conditional (cond_dim set); "
                             f"cond_dim={self.cond_dim}, y {'None' if y is None else tuple(y.shape)}")
        n = gh * gw

        # 1. Input: patches of every frame, (B * F, n, D)
        h = self.x_embedder(x).reshape(B * Fr, n, self.hidden) + self.pos_embed
        c = self.t_embedder(t)  # (B, D)
        if y is not None:
            c = c + y[:, 0].to(c.dtype)
        c_spatial = c.repeat_interleave(Fr, dim=0)  # (B * F, D)
        c_temporal = c.repeat_interleave(n, dim=0)  # (B * n, D)

        # 2. Blocks: spatial over the n patches of a frame, temporal over the F frames of a patch position
        for i in range(0, self.depth, 2):
            h = self._block(i, h, c_spatial)  # (B * F, n, D)
            h = h.reshape(B, Fr, n, self.hidden).transpose(1, 2).reshape(B * n, Fr, self.hidden)
            if i == 0:
                h = h + self.temp_embed[:, :Fr]
            h = self._block(i + 1, h, c_temporal)  # (B * n, F, D)
            h = h.reshape(B, n, Fr, self.hidden).transpose(1, 2).reshape(B * Fr, n, self.hidden)

        # 3. Output: (B * F, n, p * p * C_out) -> (B, C_out, F, H, W)
        out = self.unpatchify(self.final_layer(h, c_spatial), gh, gw)  # (B * F, C_out, H, W)
        return out.reshape(B, Fr, self.out_channels, H, W).transpose(1, 2)


#: the released sizes (Latte-XL/2 is the UCF-101 / FaceForensics / SkyTimelapse / Taichi release)
PRESETS = {
    f"{name}/{p}": dict(hidden=hidden, depth=depth, heads=heads, patch_size=p)
    for name, hidden, depth, heads in (("S", 384, 12, 6), ("B", 768, 12, 12), ("L", 1024, 24, 16),
                                       ("XL", 1152, 28, 16))
    for p in (2, 4, 8)
}
