"""VideoGPT: the official Video-GPT network (Phi-3 backbone + LVM heads), key-compatible with
its checkpoints (``LVM.state_dict()``), reproducing the reference's outputs.

The facts below are the golden fixture's (../shared/fixtures/videogpt_tiny/README.md):

- Every frame is N = P + 2 tokens (P = patches). Noisy frame: ``<|diffusion|>``, a time token
  (``time_token(t)``), P patches (``x_embedder + pos``). Clean frame: ``<img>``, P patches
  (``input_x_embedder + pos``), ``</img>``. Markers are ``llm.embed_tokens`` rows.
- Position id of slot s of frame f: ``(frame_offset + f) * N + s``; the noisy and clean copy
  of a frame share them (training), the history counts straight on (inference).
- Attention: clean frames are causal frame by frame, and inside a frame ``<img>`` < patches <
  ``</img>``; a noisy clip sees every earlier clean frame, and inside the clip markers see
  markers, time tokens markers + time tokens, patches everything. This is the project's
  block-causal layout with slot levels (tools/models/block_causal.py), not a second attention.
- Backbone: Phi-3 pre-norm layers without biases or qk-norm, fused ``qkv_proj`` [q; k; v] and
  ``gate_up_proj`` [gate; up] (``down(up * silu(gate))``), RMSNorm, longrope RoPE that always
  uses the long factors, with the mscale on cos / sin.
- Output: ``llm.norm``, then per noisy frame ``final_layer`` = LayerNorm (no affine, eps 1e-6)
  modulated by ``adaLN(SiLU(t_embedder(t)))`` (shift first), Linear(H, p*p*C), unpatchified
  with channel index ``(pr * p + pc) * C + c``. The model predicts x1 (t = 1 clean).

Token order inside our sequence is the layout's ``[clean clips][noisy clips]`` (level-major
inside a block); positions are explicit, so the order is an implementation detail.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from utils.registry import MODEL

from .block_causal import (
    CLEAN,
    IMPLS,
    NOISY,
    PAD,
    BlockCausalLayout,
    block_causal_attention,
    block_token_order,
    cached_prefix_attns,
    level_spans,
    sdpa_dense,
)
from .layers import KVCache, LongRope, RMSNorm, Rope, TimeEmbed, xavier_linears

MARKERS = ("<|diffusion|>", "<img>", "</img>")  # tokenizer names of the three markup tokens


def clean_levels(P: int) -> list[int]:
    """Slot levels of a clean frame ``<img> patches </img>``."""
    return [0] + [1] * P + [2]


def noisy_levels(P: int) -> list[int]:
    """Slot levels of a noisy frame ``<|diffusion|> time patches``."""
    return [0, 1] + [2] * P


def sincos_pos_embed(dim: int, size: int, base_size: int = 64, interpolation: float = 1.0) -> Tensor:
    """(1, size*size, dim) fp32 2-D sin-cos table: channels [0, dim/2) encode the column,
    [dim/2, dim) the row, each as [sin(x w), cos(x w)] with w_i = 10000^(-i/(dim/4)) and grid
    coordinate x = index / (size / base_size) / interpolation, rounded to fp32 as the reference
    does; the products and sin / cos in float64, then cast to fp32 (bit-identical to the fixture)."""
    assert dim % 4 == 0, f"hidden={dim} must be divisible by 4 for the 2-D sin-cos table"
    coord = (torch.arange(size, dtype=torch.float32) / (size / base_size) / interpolation).double()
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))

    ang = coord[:, None] * omega[None]
    one_d = torch.cat([ang.sin(), ang.cos()], dim=1).float()  # (size, dim/2): one row per coordinate
    row, col = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.cat([one_d[col.reshape(-1)], one_d[row.reshape(-1)]], dim=1)[None]


class PatchEmbed(nn.Module):
    """Conv2d with kernel = stride = p over each frame; tokens row-major over the patch grid."""

    def __init__(self, in_channels: int, hidden: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden, kernel_size=patch, stride=patch, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        B, C, Fr, H, W = x.shape  # -> (B, F * n, hidden)
        y = self.proj(x.transpose(1, 2).reshape(B * Fr, C, H, W)).flatten(2).transpose(1, 2)
        return y.reshape(B, -1, y.shape[-1])


class Phi3Attention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv_proj = nn.Linear(hidden, 3 * hidden, bias=False)
        self.o_proj = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, attn: Callable) -> Tensor:
        B, L, C = x.shape
        q, k, v = self.qkv_proj(x).view(B, L, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # (B, h, L, d) each
        o = attn(Rope.apply(q, cos, sin), Rope.apply(k, cos, sin), v)
        return self.o_proj(o.transpose(1, 2).reshape(B, L, C))


class Phi3MLP(nn.Module):
    def __init__(self, hidden: int, ffn: int):
        super().__init__()
        self.gate_up_proj = nn.Linear(hidden, 2 * ffn, bias=False)
        self.down_proj = nn.Linear(ffn, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(up * F.silu(gate))


class Phi3Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int, eps: float):
        super().__init__()
        self.self_attn = Phi3Attention(hidden, heads)
        self.mlp = Phi3MLP(hidden, ffn)
        self.input_layernorm = RMSNorm(hidden, eps=eps)
        self.post_attention_layernorm = RMSNorm(hidden, eps=eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, attn: Callable) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn)
        return x + self.mlp(self.post_attention_layernorm(x))


class Phi3Backbone(nn.Module):
    """``llm.*`` of the checkpoint: token table, decoder layers, final RMSNorm (no lm_head)."""

    def __init__(self, vocab: int, hidden: int, depth: int, heads: int, ffn: int, eps: float):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, hidden)
        self.layers = nn.ModuleList(Phi3Layer(hidden, heads, ffn, eps) for _ in range(depth))
        self.norm = RMSNorm(hidden, eps=eps)


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, out: int, eps: float):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=eps)
        self.linear = nn.Linear(hidden, out)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)  # c: (B, T, H) per token
        return self.linear(self.norm_final(x) * (1 + scale) + shift)


DEFAULTS = dict(in_channels=4, patch_size=2, hidden=3072, depth=32, heads=32, ffn=8192, vocab_size=32064,
                rms_norm_eps=1e-5, rope_theta=10000.0, rope_scaling=None, max_position_embeddings=131072,
                original_max_position_embeddings=4096, pos_embed_max_size=192, pos_embed_base_size=64,
                pe_interpolation=1.0, frequency_embedding_size=256, timestep_max_period=10000.0,
                final_layer_norm_eps=1e-6, diffusion_token_id=None, image_start_token_id=None,
                image_end_token_id=None, attention="blocks", grad_checkpointing=False, empty_weights=False)

PRESETS = {
    # the golden fixture's tiny config (../shared/fixtures/videogpt_tiny/config.json)
    "tiny": dict(hidden=64, depth=2, heads=2, ffn=128, vocab_size=32, diffusion_token_id=3,
                 image_start_token_id=4, image_end_token_id=5),
    # the published 3.8B model: Phi-3-mini shape (hidden 3072, 32 layers, 32 heads, FFN 8192);
    # rope factors and marker ids come from the checkpoint folder (VideoGPTCheckpoint)
    "3.8b": dict(),
}


@MODEL.register_class()
class VideoGPT(nn.Module):
    """The official Video-GPT architecture (Phi-3 + time token + adaLN head); loads its checkpoints.

    Every argument defaults to ``None`` = "from ``preset``, else ``DEFAULTS``". ``rope_scaling``
    is the checkpoint config's dict (``long_factor`` is used; None = all factors 1, to be set by
    the loader from the checkpoint's config.json). Marker token ids left None are set by
    ``VideoGPTCheckpoint`` from the checkpoint's tokenizer files. ``empty_weights=True`` builds
    the parameters on the meta device (no memory) for a loader to fill shard by shard.
    """

    #: LoRA targets by name (tools/lora.py): the Phi-3 layers' attention and MLP projections
    lora_presets = {"default": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"], "attention": ["qkv_proj", "o_proj"],
                    "all": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj", "adaLN_modulation"]}
    batches_branches = False  # denoise takes one branch per call (see tools/models/kv_rollout.py)

    def __init__(self, in_channels=None, patch_size=None, hidden=None, depth=None, heads=None, ffn=None,
                 vocab_size=None, rms_norm_eps=None, rope_theta=None, rope_scaling=None,
                 max_position_embeddings=None, original_max_position_embeddings=None, pos_embed_max_size=None,
                 pos_embed_base_size=None, pe_interpolation=None, frequency_embedding_size=None,
                 timestep_max_period=None, final_layer_norm_eps=None, diffusion_token_id=None,
                 image_start_token_id=None, image_end_token_id=None, attention=None, grad_checkpointing=None,
                 empty_weights=None, preset=None):
        super().__init__()
        given = {k: v for k, v in locals().items() if k not in ("self", "preset", "__class__") and v is not None}
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"preset={preset!r} is unknown; use one of {sorted(PRESETS)} or None")
        cfg = {**DEFAULTS, **(PRESETS[preset] if preset else {}), **given}
        self.config = dict(cfg, preset=preset)
        self.in_channels, self.patch_size, self.hidden = cfg["in_channels"], cfg["patch_size"], cfg["hidden"]
        self.heads, self.grad_checkpointing = cfg["heads"], bool(cfg["grad_checkpointing"])
        assert self.hidden % self.heads == 0, f"hidden={self.hidden} is not divisible by heads={self.heads}"
        self.pos_size = cfg["pos_embed_max_size"]
        self.set_attention(cfg["attention"])
        C, p, H = self.in_channels, self.patch_size, self.hidden
        with torch.device("meta") if cfg["empty_weights"] else contextlib.nullcontext():
            self.llm = Phi3Backbone(cfg["vocab_size"], H, cfg["depth"], self.heads, cfg["ffn"], cfg["rms_norm_eps"])
            self.x_embedder = PatchEmbed(C, H, p)
            self.input_x_embedder = PatchEmbed(C, H, p)
            tkw = dict(freq_dim=cfg["frequency_embedding_size"], t_scale=1.0, max_period=cfg["timestep_max_period"])
            self.time_token = TimeEmbed(H, **tkw)
            self.t_embedder = TimeEmbed(H, **tkw)
            self.final_layer = FinalLayer(H, p * p * C, cfg["final_layer_norm_eps"])
        self.register_buffer("pos_embed", self.compute_pos_embed(meta=bool(cfg["empty_weights"])), persistent=True)
        self.rope = LongRope(H // self.heads, cfg["rope_theta"], None, cfg["max_position_embeddings"],
                             cfg["original_max_position_embeddings"])
        self.set_rope_scaling(cfg["rope_scaling"])
        self.token_ids: dict[str, int | None] = {}
        self.set_token_ids(cfg["diffusion_token_id"], cfg["image_start_token_id"], cfg["image_end_token_id"])
        if not cfg["empty_weights"]:
            self._init_weights()

    # ------------------------------------------------------------------ settings
    def compute_pos_embed(self, meta: bool = False) -> Tensor:
        """The sin-cos table the reference computes (``pos_embed`` when a checkpoint lacks it)."""
        shape = (1, self.pos_size ** 2, self.hidden)
        if meta:
            return torch.empty(shape, device="meta")
        return sincos_pos_embed(self.hidden, self.pos_size, self.config["pos_embed_base_size"],
                                self.config["pe_interpolation"])

    def set_rope_scaling(self, rope_scaling: dict | None) -> None:
        """Use a checkpoint config's ``rope_scaling`` (longrope: its ``long_factor``; None: all 1)."""
        if rope_scaling is not None:
            kind = rope_scaling.get("type", rope_scaling.get("rope_type"))
            if kind not in ("longrope", "su") or "long_factor" not in rope_scaling:
                raise ValueError(f"rope_scaling={rope_scaling!r}: Video-GPT uses longrope; give "
                                 f"{{type: longrope, long_factor: [...], short_factor: [...]}} or null")
        self.rope.set_factors(None if rope_scaling is None else rope_scaling["long_factor"])
        self.config["rope_scaling"] = rope_scaling

    def set_token_ids(self, diffusion: int | None, image_start: int | None, image_end: int | None) -> None:
        """Marker token ids (rows of ``llm.embed_tokens``) of ``<|diffusion|>``, ``<img>``, ``</img>``."""
        ids = dict(zip(MARKERS, (diffusion, image_start, image_end)))
        V = self.config["vocab_size"]
        bad = {k: v for k, v in ids.items() if v is not None and not 0 <= int(v) < V}
        if bad:
            raise ValueError(f"marker token ids {bad} are outside the vocabulary 0..{V - 1}")
        self.token_ids = {k: None if v is None else int(v) for k, v in ids.items()}
        self.config.update(diffusion_token_id=diffusion, image_start_token_id=image_start,
                           image_end_token_id=image_end)

    def get_extra_state(self) -> Tensor:
        """Marker ids and longrope factors ride in the state dict (key ``_extra_state``, float64, so a
        bf16 cast never rounds them): a NextClip checkpoint of an imported model keeps what the
        loader took from the official folder. Layout: [3 ids (nan = unset)][long][short] factors."""
        half, rs = self.rope.head_dim // 2, self.config["rope_scaling"]
        ids = [float("nan") if self.token_ids[m] is None else float(self.token_ids[m]) for m in MARKERS]
        long = list(rs["long_factor"]) if rs else [float("nan")] * half
        short = list(rs.get("short_factor", long)) if rs else [float("nan")] * half
        return torch.tensor(ids + long + short, dtype=torch.float64)

    def set_extra_state(self, state: Tensor) -> None:
        v, half = [float(x) for x in state.tolist()], self.rope.head_dim // 2
        self.set_token_ids(*(None if x != x else int(x) for x in v[:3]))
        long, short = v[3:3 + half], v[3 + half:]
        self.set_rope_scaling(None if long[0] != long[0] else
                              {"type": "longrope", "long_factor": long, "short_factor": short})

    def set_attention(self, impl: str, dense_fn: Callable | None = None):
        """Choose the block-causal implementation ('flex' | 'blocks' | 'math') and dense kernel."""
        if impl not in IMPLS:
            raise ValueError(f"attention impl {impl!r} is unknown; use one of {IMPLS}")
        self.attn_impl, self.dense_fn = impl, dense_fn or sdpa_dense

    def _init_weights(self):
        """Fresh-start init as the reference: xavier Linears, zero biases, zero adaLN / output."""
        xavier_linears(self)
        for pe in (self.x_embedder, self.input_x_embedder):
            nn.init.xavier_uniform_(pe.proj.weight.view(pe.proj.weight.shape[0], -1))
            nn.init.zeros_(pe.proj.bias)
        nn.init.normal_(self.llm.embed_tokens.weight, std=0.02)
        for te in (self.time_token, self.t_embedder):
            nn.init.normal_(te.mlp[0].weight, std=0.02)
            nn.init.normal_(te.mlp[2].weight, std=0.02)
        for m in (self.final_layer.adaLN_modulation[1], self.final_layer.linear):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ pieces
    def _geometry(self, H: int, W: int):
        p = self.patch_size
        assert H % p == 0 and W % p == 0, f"frame {H}x{W} is not divisible by patch_size={p}"
        gh, gw = H // p, W // p
        assert gh <= self.pos_size and gw <= self.pos_size, \
            f"{gh}x{gw} patches exceed the {self.pos_size}x{self.pos_size} position table"
        return gh, gw, gh * gw

    def _patches(self, embedder: PatchEmbed, x: Tensor | None, gh: int, gw: int) -> Tensor:
        """(B, F*n, H) patch tokens + the centre crop of the position table."""
        top, left = (self.pos_size - gh) // 2, (self.pos_size - gw) // 2
        pos = self.pos_embed.view(self.pos_size, self.pos_size, -1)[top:top + gh, left:left + gw].reshape(gh * gw, -1)
        y = embedder(x)
        return y + pos.repeat(x.shape[2], 1).to(y.dtype)

    def _markers(self) -> Tensor:
        ids = self.token_ids
        if any(v is None for v in ids.values()):
            raise ValueError(f"VideoGPT marker token ids are not set ({ids}): load the checkpoint with PRETRAIN "
                             f"VideoGPTCheckpoint (reads them from its tokenizer files) or set model."
                             f"diffusion_token_id / image_start_token_id / image_end_token_id")
        idx = torch.tensor([ids["<img>"], ids["</img>"], ids["<|diffusion|>"]], device=self.pos_embed.device)
        return self.llm.embed_tokens(idx)  # (3, H)

    def _embed(self, kind, frame, slot, clip, x_clean, x_noisy, temb, gh, gw) -> Tensor:
        """Token embeddings (B, L, H) from per-token kind / frame / slot / clip (B, L): markers from
        the token table, patch slots from the patch embedders, time slots from ``temb`` (B, K, H)."""
        B, n = kind.shape[0], gh * gw
        parts = [self._markers()[None].expand(B, -1, -1)]
        clean = self._patches(self.input_x_embedder, x_clean, gh, gw) if x_clean is not None else None
        noisy = self._patches(self.x_embedder, x_noisy, gh, gw) if x_noisy is not None else None
        parts += [t for t in (clean, noisy, temb) if t is not None]
        dtype = parts[0].dtype
        src = torch.cat([t.to(dtype) for t in parts] + [parts[0].new_zeros(B, 1, parts[0].shape[-1])], dim=1)
        nc = 0 if clean is None else clean.shape[1]
        nn_ = 0 if noisy is None else noisy.shape[1]
        N = n + 2
        fr = frame.clamp(min=0)
        idx_clean = torch.where(slot == 0, 0, torch.where(slot == N - 1, 1, 3 + fr * n + slot - 1))
        idx_noisy = torch.where(slot == 0, 2, torch.where(slot == 1, 3 + nc + nn_ + clip.clamp(min=0),
                                                          3 + nc + fr * n + slot - 2))
        idx = torch.where(kind == CLEAN, idx_clean, torch.where(kind == NOISY, idx_noisy, src.shape[1] - 1))
        return torch.gather(src, 1, idx[..., None].expand(-1, -1, src.shape[-1]))

    def _backbone(self, x: Tensor, pos: Tensor, attns: Sequence[Callable]) -> Tensor:
        cos, sin = self.rope.cos_sin(pos)
        ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for layer, attn in zip(self.llm.layers, attns):
            x = checkpoint(layer, x, cos, sin, attn, use_reentrant=False) if ckpt else layer(x, cos, sin, attn)
        return self.llm.norm(x)

    def _output(self, h, kind, frame, slot, t_frame, Fr, gh, gw) -> Tensor:
        """Final layer on the noisy patch tokens of every frame -> (B, C, F, H, W)."""
        B, L = kind.shape
        n, p, C = gh * gw, self.patch_size, self.in_channels
        sel = (kind == NOISY) & (slot >= 2)
        key = torch.where(sel, frame.clamp(min=0) * n + slot - 2, Fr * n)  # others -> a dump column
        rows = torch.zeros(B, Fr * n + 1, dtype=torch.long, device=h.device)
        rows.scatter_(1, key, torch.arange(L, device=h.device).expand(B, L))
        hn = torch.gather(h, 1, rows[:, :Fr * n, None].expand(-1, -1, h.shape[-1]))  # (B, F*n, H)
        c = self.t_embedder(t_frame).repeat_interleave(n, dim=1)  # (B, F*n, H)
        y = self.final_layer(hn, c.to(hn.dtype))  # (B, F*n, p*p*C)
        y = y.reshape(B, Fr, gh, gw, p, p, C).permute(0, 6, 1, 2, 4, 3, 5)
        return y.reshape(B, C, Fr, gh * p, gw * p)

    @staticmethod
    def _no_cond(cond, cond_mask) -> None:
        if cond is not None or cond_mask is not None:
            raise ValueError("VideoGPT takes no condition tokens (the official model predicts video from its "
                             "history); use embedder NoCondition")

    # ------------------------------------------------------------------ training forward
    def forward(self, x_noisy: Tensor, x_clean: Tensor, clip_lens: Tensor, t: Tensor,
                cond: Tensor | None = None, cond_mask: Tensor | None = None,
                frame_offset: int = 0) -> Tensor:
        """x_noisy, x_clean (B, C, F, H, W); clip_lens (B, K); t (B, K) per-clip time (1 = clean)
        -> x1 prediction shaped like x_noisy. Frame f sits at position frame_offset + f."""
        self._no_cond(cond, cond_mask)
        B, _, Fr, H, W = x_noisy.shape
        gh, gw, n = self._geometry(H, W)
        N = n + 2
        layout = BlockCausalLayout(clip_lens, N, frame_causal_clean=True, clean_levels=clean_levels(n),
                                   noisy_levels=noisy_levels(n))
        assert max(sum(c) for c in layout.clips) <= Fr, f"clip_lens sum past the {Fr} frames given"
        meta = {k: v[:, : layout.L] for k, v in layout.meta().items()}
        kind, clip, frame, slot = meta["kind"], meta["clip"], meta["frame"], meta["patch"]
        x = self._embed(kind, frame, slot, clip, x_clean, x_noisy, self.time_token(t), gh, gw)
        pos = torch.where(kind != PAD, (frame + frame_offset) * N + slot, 0)

        def attn(q, k, v):
            return block_causal_attention(q, k, v, layout, self.attn_impl, self.dense_fn)

        h = self._backbone(x, pos, [attn] * len(self.llm.layers))
        ends = clip_lens.to(h.device).cumsum(1)
        fidx = torch.searchsorted(ends, torch.arange(Fr, device=h.device).expand(B, Fr).contiguous(), right=True)
        t_frame = torch.gather(t.to(h.device), 1, fidx.clamp(max=t.shape[1] - 1))  # (B, F)
        return self._output(h, kind, frame, slot, t_frame, Fr, gh, gw)

    # ------------------------------------------------------------------ rollout API
    def _frame_tokens(self, B: int, frames: int, kind: int, n: int, dev):
        """kind / frame / slot / clip (B, L) of one block of ``frames`` frames (level-major)."""
        levels = clean_levels(n) if kind == CLEAN else noisy_levels(n)
        if kind == CLEAN:  # frame-causal: every frame is its own block
            fr = torch.arange(frames).repeat_interleave(n + 2)
            sl = torch.arange(n + 2).repeat(frames)
        else:
            fr, sl = block_token_order(frames, levels)
        L = fr.shape[0]
        ids = (torch.full((L,), kind), fr, sl, torch.zeros(L, dtype=torch.long))
        return [x.to(dev)[None].expand(B, L) for x in ids]

    def encode_history(self, x_hist: Tensor, frame_offset: int | None = None, cond: Tensor | None = None,
                       cond_mask: Tensor | None = None, clip_lens: Sequence[int] | None = None,
                       cache: KVCache | None = None) -> KVCache:
        """Keys/values of the clean history x_hist (B, C, Fh, H, W) at positions frame_offset + f;
        with ``cache`` appended after the cached frames (see NextClipTransformer.encode_history)."""
        self._no_cond(cond, cond_mask)
        B, _, Fh, H, W = x_hist.shape
        gh, gw, n = self._geometry(H, W)
        N = n + 2
        clip_lens = [int(g) for g in (clip_lens if clip_lens is not None else ([Fh] if Fh else []))]
        assert sum(clip_lens) == Fh and all(g > 0 for g in clip_lens), f"clip_lens {clip_lens} vs {Fh} frames"
        if cache is not None:
            frame_offset = cache.end_frame if frame_offset is None else frame_offset
            assert frame_offset == cache.end_frame, \
                f"new frames must follow the cache: frame_offset={frame_offset}, cache ends at {cache.end_frame}"
        frame_offset = frame_offset or 0
        kind, frame, slot, clip = self._frame_tokens(B, Fh, CLEAN, n, x_hist.device)
        x = self._embed(kind, frame, slot, clip, x_hist, None, None, gh, gw)
        prefix = 0 if cache is None else cache.k[0].shape[2]
        segs = [(f * N + a, f * N + b, prefix + f * N + b)
                for f in range(Fh) for a, b in level_spans(1, clean_levels(n))]
        kv: list = []
        self._backbone(x, (frame + frame_offset) * N + slot,
                       cached_prefix_attns(cache, segs, len(self.llm.layers), self.dense_fn, keep=kv))
        ks, vs = [k for k, _ in kv], [v for _, v in kv]
        start = frame_offset if cache is None else cache.frame_offset
        lens = clip_lens if cache is None else list(cache.clip_lens) + clip_lens
        return KVCache(ks, vs, num_cond=0, tokens_per_frame=N, frame_offset=start, clip_lens=lens)

    def features(self, video: Tensor, layers: Sequence[int] = (-1,), clip_len: int | None = None,
                 frame_offset: int = 0, cond: Tensor | None = None,
                 cond_mask: Tensor | None = None) -> list[Tensor]:
        """Hidden states of the clean patch tokens of ``video`` (B, C, F, H, W) after the chosen Phi-3
        layers (-1 = last, before ``llm.norm``) -> one (B, F, H/p, W/p, hidden) tensor per layer; the
        frames are encoded as ``encode_history`` encodes history (frame-causal, so ``clip_len`` has no
        effect). Same API as NextClipTransformer.features."""
        self._no_cond(cond, cond_mask)
        depth = len(self.llm.layers)
        bad = [i for i in layers if isinstance(i, bool) or not isinstance(i, int) or not -depth <= i < depth]
        if bad:
            raise ValueError(f"feature layers {bad} are out of range: the model has {depth} layers, use "
                             f"0..{depth - 1} or -{depth}..-1 (-1 = the last layer)")
        idx = [i % depth for i in layers]
        B, _, Fr, H, W = video.shape
        gh, gw, n = self._geometry(H, W)
        N = n + 2
        kind, frame, slot, clip = self._frame_tokens(B, Fr, CLEAN, n, video.device)
        x = self._embed(kind, frame, slot, clip, video, None, None, gh, gw)
        segs = [(f * N + a, f * N + b, f * N + b) for f in range(Fr) for a, b in level_spans(1, clean_levels(n))]
        cos, sin = self.rope.cos_sin((frame + frame_offset) * N + slot)
        keep = []
        for layer, attn in zip(self.llm.layers, cached_prefix_attns(None, segs, max(idx) + 1, self.dense_fn)):
            x = layer(x, cos, sin, attn)
            keep.append(x)
        # clean frame f is [<img>, n patches, </img>] at tokens f*N .. f*N + N - 1
        return [keep[i].reshape(B, Fr, N, -1)[:, :, 1:n + 1].reshape(B, Fr, gh, gw, self.hidden) for i in idx]

    def denoise(self, x_clip: Tensor, t: Tensor, cache: KVCache | None = None,
                frame_offset: int | None = None, cond: Tensor | None = None,
                cond_mask: Tensor | None = None) -> Tensor:
        """x1 prediction for one noisy clip x_clip (B, C, G, H, W) at time t (B,) given a history
        cache (None: the clip alone, at frame_offset, default 0). Equals ``forward``'s clip output."""
        self._no_cond(cond, cond_mask)
        B, _, G, H, W = x_clip.shape
        gh, gw, n = self._geometry(H, W)
        N = n + 2
        if frame_offset is None:
            frame_offset = cache.end_frame if cache is not None else 0
        kind, frame, slot, clip = self._frame_tokens(B, G, NOISY, n, x_clip.device)
        t = t.reshape(B, 1).to(x_clip.dtype)
        x = self._embed(kind, frame, slot, clip, None, x_clip, self.time_token(t), gh, gw)
        prefix = 0 if cache is None else cache.k[0].shape[2]
        segs = [(a, b, prefix + b) for a, b in level_spans(G, noisy_levels(n))]
        h = self._backbone(x, (frame + frame_offset) * N + slot,
                           cached_prefix_attns(cache, segs, len(self.llm.layers), self.dense_fn))
        return self._output(h, kind, frame, slot, t.expand(B, G), G, gh, gw)
