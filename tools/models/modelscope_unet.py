"""MODEL ``UNetSD_T2VBase``: the ModelScope / VGen text-to-video UNet (3D UNet of numbered SD-style blocks).

The network is diffusers' ``UNet3DConditionModel`` (spatial ResBlocks + temporal conv stacks, spatial cross-attention
and temporal self-attention transformers), built from VGen's constructor names. The released weights use VGen's key
layout (``input_blocks.N``, ``middle_block``, ``output_blocks.N``, ``temopral_conv``); the PRETRAIN loader
``ModelScopeCheckpoint`` converts them (tools/pretrain/modelscope_checkpoint.py).

Contract (whole-video models): ``forward(x, t, y) -> prediction`` with x (B, C, F, H, W) noisy latents, t the
INTEGER diffusion timestep per sample (B,) in [0, num_timesteps) (``timestep_input = "index"``), y the text
context (B, L, context_dim) (77 OpenCLIP ViT-H-14 penultimate-layer tokens in the release, no mask).
The output has x's shape (eps or v, as the diffusion was trained).

The released model (the defaults): dim 320, dim_mult [1, 2, 4, 4], 2 res blocks, attention at scales 1, 1/2, 1/4
(spatial heads = channels / head_dim, head_dim 64), 8 heads in the first temporal transformer, context 1024: 1.41 B
parameters (1.7 B with the text encoder and the autoencoder). ``grad_checkpointing: true`` recomputes each down / mid /
up block in the backward (activation checkpointing; the state-dict keys stay the same).
"""
from __future__ import annotations

import torch
from torch import nn

from utils.registry import MODEL


def check_unet_args(dim: int, dim_mult, num_res_blocks: int, attn_scales, head_dim: int, num_heads: int,
                    temporal_attention) -> list[bool]:
    """Per level: has attention. ValueError naming the bad value for what the architecture cannot build."""
    if not dim_mult or any(int(m) < 1 for m in dim_mult):
        raise ValueError(f"dim_mult={dim_mult!r} must be a non-empty list of positive ints, e.g. [1, 2, 4, 4].")
    if int(num_res_blocks) < 1:
        raise ValueError(f"num_res_blocks={num_res_blocks!r} must be >= 1 (the release has 2).")
    if str(temporal_attention).lower() != "true":
        raise ValueError(f"temporal_attention={temporal_attention!r}: only the temporal-attention UNet (the "
                         f"released layout) is supported; set temporal_attention: true.")
    scales = [1.0 / 2 ** i for i in range(len(dim_mult))]
    bad = [s for s in attn_scales if float(s) not in scales]
    if bad:
        raise ValueError(f"attn_scales={list(attn_scales)!r}: {bad} are not scales of this UNet ({scales}).")
    for c in [dim * int(m) for m in dim_mult]:
        if c % head_dim or c % 32:
            raise ValueError(f"channels {c} (dim={dim} x dim_mult) must be multiples of head_dim={head_dim} and of "
                             f"32 (the group norms); pick dim accordingly (the release: dim 320, head_dim 64).")
    if int(num_heads) < 1:
        raise ValueError(f"num_heads={num_heads!r} must be >= 1 (heads of the first temporal transformer).")
    return [s in [float(a) for a in attn_scales] for s in scales]


def block_types(has_attn: list[bool]) -> tuple[list[str], list[str]]:
    """diffusers down / up block type names for the per-level attention flags."""
    down = ["CrossAttnDownBlock3D" if a else "DownBlock3D" for a in has_attn]
    up = ["CrossAttnUpBlock3D" if a else "UpBlock3D" for a in reversed(has_attn)]
    return down, up


def diffusers_unet_kwargs(in_dim: int, out_dim: int, dim: int, dim_mult, num_res_blocks: int, context_dim: int,
                          head_dim: int, has_attn: list[bool]) -> dict:
    """Constructor kwargs of diffusers' 3D UNets (UNet3DConditionModel, I2VGenXLUNet) in the released layout;
    their ``attention_head_dim`` is the head width (heads = channels / head_dim)."""
    down, up = block_types(has_attn)
    return dict(in_channels=in_dim, out_channels=out_dim, block_out_channels=[dim * int(m) for m in dim_mult],
                down_block_types=down, up_block_types=up, layers_per_block=num_res_blocks,
                cross_attention_dim=context_dim, attention_head_dim=head_dim, norm_num_groups=32)


def finish_unet(model: nn.Module, dropout: float, grad_checkpointing: bool, has_attn: list[bool], **config) -> None:
    """What both UNet wrappers set after building ``model.unet``: dropout, activation checkpointing, the plain
    ``config`` dict and the attributes the engines read."""
    set_dropout(model.unet, dropout)
    model.grad_checkpointing = bool(grad_checkpointing)
    if model.grad_checkpointing:
        checkpoint_blocks(model.unet)
    model.config = dict(config, dim_mult=list(config["dim_mult"]), attn_scales=list(config["attn_scales"]))
    model.has_attn = has_attn
    model.in_channels, model.context_dim = config["in_dim"], config["context_dim"]


def set_dropout(module: nn.Module, p: float) -> None:
    """VGen's ``dropout`` on every dropout layer of the ResBlocks and temporal conv stacks."""
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = float(p)


def unet_blocks(unet: nn.Module) -> list[nn.Module]:
    """The down, mid and up blocks of a diffusers 3D UNet: the units of activation checkpointing."""
    return [*unet.down_blocks, unet.mid_block, *unet.up_blocks]


def checkpoint_blocks(unet: nn.Module) -> None:
    """Activation checkpointing of every down / mid / up block (recomputed in the backward; torch's non-reentrant
    checkpoint wrapper, whose state-dict hooks keep the keys unchanged)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

    blocks = set(unet_blocks(unet))
    apply_activation_checkpointing(unet, check_fn=lambda m: m in blocks)


class DenseAttnProcessor:
    """diffusers attention processor calling the backend's ``dense_fn(q, k, v)`` ((B, H, L, D), no mask,
    scale 1/sqrt(D)): SDPA, xformers or the NPU kernel, chosen by the backend (docs/design.md)."""

    def __init__(self, dense_fn):
        self.dense_fn = dense_fn

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **_):
        if attention_mask is not None:
            raise ValueError("DenseAttnProcessor takes no attention mask (the UNet's attention never masks).")
        B, L, _ = hidden_states.shape  # (B, L, C)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        d = q.shape[-1] // attn.heads

        def heads(x):  # (B, L, H*D) -> (B, H, L, D)
            return x.view(B, -1, attn.heads, d).transpose(1, 2)

        out = self.dense_fn(heads(q), heads(k), heads(v)).transpose(1, 2).reshape(B, L, -1).to(q.dtype)
        return attn.to_out[1](attn.to_out[0](out))


def set_dense_attention(unet: nn.Module, dense_fn) -> None:
    """Every attention of ``unet`` through ``dense_fn`` (None: diffusers' own SDPA processor)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    for m in unet.modules():
        if hasattr(m, "set_processor") and hasattr(m, "to_q"):
            extras = m.group_norm is not None or m.spatial_norm is not None or m.rescale_output_factor != 1
            if m.residual_connection or extras:
                raise ValueError(f"attention {type(m).__name__} uses features DenseAttnProcessor does not implement")
            m.set_processor(DenseAttnProcessor(dense_fn) if dense_fn is not None else AttnProcessor2_0())


#: LoRA targets by name (tools/lora.py): diffusers' projections of every spatial, temporal and cross attention
#: (the layers diffusers' own UNet LoRAs adapt), and their feed-forwards
UNET_LORA_PRESETS = {"default": ["to_q", "to_k", "to_v", "to_out.0"], "attention": ["to_q", "to_k", "to_v", "to_out.0"],
                     "all": ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]}


@MODEL.register_class()
class UNetSD_T2VBase(nn.Module):
    """ModelScope / VGen text-to-video 3D UNet (integer timesteps, text context), diffusers' UNet3DConditionModel."""

    #: the diffusion calls this model with the integer timestep k, not the unit time 1 - k/T
    timestep_input = "index"
    lora_presets = UNET_LORA_PRESETS

    def __init__(self, in_dim: int = 4, dim: int = 320, y_dim: int = 1024, context_dim: int = 1024,
                 out_dim: int = 4, dim_mult: list[int] = (1, 2, 4, 4), num_heads: int = 8, head_dim: int = 64,
                 num_res_blocks: int = 2, attn_scales: list[float] = (1.0, 0.5, 0.25), dropout: float = 0.1,
                 temporal_attention: bool | str = True, grad_checkpointing: bool = False):
        super().__init__()
        from diffusers import UNet3DConditionModel

        has_attn = check_unet_args(dim, dim_mult, num_res_blocks, attn_scales, head_dim, num_heads,
                                   temporal_attention)
        if int(num_heads) != 8:
            raise ValueError(f"num_heads={num_heads}: the first temporal transformer of this UNet has 8 heads (as the "
                             f"release); set num_heads: 8.")
        if y_dim != context_dim:
            raise ValueError(f"y_dim={y_dim} must equal context_dim={context_dim} (the text tokens are the context).")
        self.unet = UNet3DConditionModel(**diffusers_unet_kwargs(in_dim, out_dim, dim, dim_mult, num_res_blocks,
                                                                 context_dim, head_dim, has_attn))
        finish_unet(self, dropout, grad_checkpointing, has_attn, in_dim=in_dim, dim=dim, context_dim=context_dim,
                    out_dim=out_dim, dim_mult=dim_mult, head_dim=head_dim, num_res_blocks=num_res_blocks,
                    attn_scales=attn_scales)

    def checkpoint_units(self) -> list[nn.Module]:
        """What ``grad_checkpointing`` recomputes one at a time (read by the memory plan)."""
        return unet_blocks(self.unet)

    def set_attention(self, impl: str, dense_fn) -> None:
        """The backend's dense attention kernel for every attention (``impl`` is a block-causal choice: unused)."""
        set_dense_attention(self.unet, dense_fn)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (B, {self.in_channels}, F, H, W) latents, got {tuple(x.shape)}.")
        if y.dim() != 3 or y.shape[-1] != self.context_dim or y.shape[0] != x.shape[0]:
            raise ValueError(f"y must be (B={x.shape[0]}, L, {self.context_dim}) text tokens, got {tuple(y.shape)}.")
        if t.dtype.is_floating_point:
            raise ValueError(f"t must be integer timesteps (timestep_input = 'index'), got dtype {t.dtype}.")
        return self.unet(x, t, encoder_hidden_states=y, return_dict=False)[0]  # (B, C, F, H, W)
