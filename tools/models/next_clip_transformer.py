"""NextClipTransformer: the plain pre-norm transformer of next-clip diffusion (Video-GPT).

One forward trains all K clips of a video at once (teacher forcing): the sequence is
``[cond][clean clips 1..K-1][noisy clips 1..K][padding]`` with block-causal attention
(tools/models/block_causal.py). Noisy and clean tokens have separate patch embeddings;
the blocks are shared. Time is per clip (clean tokens and cond tokens use t = 1):

- ``time_cond='adaln'``: every block modulates its two norms per token from the token's
  time embedding (shift / scale / gate, DiT-style, gates zero-initialised);
- ``time_cond='token'``: the time embedding is *added* to every token's input embedding
  (the reference's per-frame time token, added instead of appended); blocks are plain.

Positions are RoPE from frame index and patch index only, so the noisy and clean copy of a
frame share positions and the token order is an implementation detail. Condition tokens
sit at (first frame of the sequence - 1, patch 0) in every path (forward, encode_history,
denoise; the rolling KV cache moves them along), so outputs are invariant to a global frame
shift; padding is not rotated.

Conditioning: ``cond`` (B, M, cond_dim) tokens with ``cond_mask`` (B, M) bool (True = real,
None = all real). Padded cond tokens are invisible to every query in every attention path.
The null condition (for condition dropout and guidance) is the embedder's (``embedder.null``);
the model has no null tokens of its own. ``pooled_cond=True`` also adds an MLP of the masked
mean of the cond tokens to the time embedding of the noisy tokens (DiT's class embedding,
SD3's pooled text embedding): every noisy token is then modulated by the condition directly
instead of only attending to it. The MLP's last layer starts at zero, so loading weights of a
model without it starts from the same function; KV caches carry the pooled vector.

Frame conditions (``frame_cond_dim > 0``, e.g. one action per frame from the ``DiscreteActions``
embedder): ``frame_cond`` (B, F, frame_cond_dim) gives every frame one more token, projected by
``frame_cond_proj`` and appended to the frame's own tokens as slot N (after its N patches), in its
clean copy and in its noisy copy. A frame then has N + 1 tokens everywhere (layout, RoPE, KV cache),
so the masks, the cache and its rolling window carry the token exactly as they carry the frame, and
the output head drops the slot. The slot's RoPE position is its frame's time and "patch N": with
'1d' the position right after the frame's last patch, with '3d' the row below the patch grid
(column 0), a spatial position no patch has, so the token is told apart from the patches by
position as well as by content. Every call of a frame-conditioned model needs ``frame_cond``
("no action" is the embedder's learned null token, not a missing token); a model without
``frame_cond_dim`` is unchanged (same parameters, same outputs).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from utils.registry import MODEL

from .block_causal import CLEAN, COND, IMPLS, NOISY, PAD, BlockCausalLayout, block_causal_attention, sdpa_dense
from .kv_rollout import CachedRollout
from .layers import Mlp, RMSNorm, Rope, ShapeMemo, TimeEmbed, make_norm, xavier_linears


def _gather_tokens(table: Tensor, idx) -> Tensor:
    """table (B, T, D), idx (B, L) -> (B, L, D) with out[b, l] = table[b, idx[b, l]]; an int idx
    (every token takes row idx) -> the broadcastable (B, 1, D) row, nothing gathered.

    One row gather (index_select) of the flattened table: the same values as ``torch.gather``
    with an expanded index, ~30x faster forward and backward on CPU (no per-element index)."""
    if isinstance(idx, int):
        return table[:, idx:idx + 1]
    B, T, D = table.shape
    flat = idx if B == 1 else idx + torch.arange(B, device=idx.device)[:, None] * T
    return table.reshape(B * T, D).index_select(0, flat.reshape(-1)).view(B, idx.shape[1], D)


def call_attention(attn: Callable, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return attn(q, k, v)


class Block(nn.Module):
    """Pre-norm attention + MLP block with optional per-token adaLN modulation."""

    #: how the block calls its attention; backend.compile: blocks sets a ``torch.compiler.disable`` d one per
    #: block (tools/backends/compile.py), so the attention's per-layout Python never enters a compiled graph
    attend = staticmethod(call_attention)

    def __init__(self, hidden, heads, ffn, norm, mlp, adaln, qk_norm, bias=True):
        super().__init__()
        assert hidden % heads == 0, f"hidden={hidden} is not divisible by heads={heads}"
        self.heads, self.adaln = heads, adaln
        hd = hidden // heads
        self.norm1 = make_norm(norm, hidden, affine=not adaln)
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=bias)
        self.q_norm = RMSNorm(hd, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(hd, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(hidden, hidden, bias=bias)
        self.norm2 = make_norm(norm, hidden, affine=not adaln)
        self.mlp = Mlp(hidden, ffn, mlp)
        if not bias:  # Phi-3 layout: no bias in any attention / MLP linear
            for fc in (self.mlp.fc1, self.mlp.fc2):
                fc.register_parameter("bias", None)
        if adaln:
            self.ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x, temb, tid, cos, sin, attn: Callable):
        # x (B, L, C); temb (B, T, C) time embeddings; tid (B, L) index into temb (int: the same for all)
        B, L, C = x.shape
        if self.adaln:
            mod = _gather_tokens(self.ada(temb), tid)  # (B, L, 6C)
            sh1, sc1, g1, sh2, sc2, g2 = mod.chunk(6, dim=-1)
            h = self.norm1(x) * (1 + sc1) + sh1
        else:
            h = self.norm1(x)
        q, k, v = self.qkv(h).view(B, L, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # (B, H, L, D) each
        q = Rope.apply(self.q_norm(q), cos, sin)
        k = Rope.apply(self.k_norm(k), cos, sin)
        o = self.attend(attn, q, k, v).transpose(1, 2).reshape(B, L, C)
        if self.adaln:
            x = x + g1 * self.proj(o)
            return x + g2 * self.mlp(self.norm2(x) * (1 + sc2) + sh2)
        x = x + self.proj(o)
        return x + self.mlp(self.norm2(x))


MEMO_SIZE = 16  # shapes whose token metadata a model keeps
DEFAULTS = dict(in_channels=4, patch_size=2, hidden=256, depth=4, heads=4, ffn=1024, norm="layernorm",
                mlp="gelu", time_cond="adaln", rope="1d", cond_dim=0, pooled_cond=False,
                frame_causal_clean=False, grad_checkpointing=False, attention="blocks", qk_norm=True,
                bias=True, frame_cond_dim=0)


@MODEL.register_class()
class NextClipTransformer(CachedRollout, nn.Module):
    """Decoder-only transformer denoising the next clip given clean previous clips (Video-GPT).

    Every argument defaults to ``None`` = "take it from ``preset`` (if any), else from
    ``DEFAULTS``"; explicit values override the preset. Presets: see ``PRESETS``.
    ``bias=False`` drops the biases of every block's attention and MLP linears (Phi-3 has none);
    embeddings, time MLP and output layer keep theirs.
    """

    #: LoRA targets by name (tools/lora.py): module-name patterns of the blocks' linear layers
    lora_presets = {"default": ["blocks.*.qkv", "blocks.*.proj", "blocks.*.mlp"],
                    "attention": ["blocks.*.qkv", "blocks.*.proj"],
                    "all": ["blocks.*.qkv", "blocks.*.proj", "blocks.*.mlp", "blocks.*.ada"]}

    def __init__(self, in_channels=None, patch_size=None, hidden=None, depth=None, heads=None, ffn=None,
                 norm=None, mlp=None, time_cond=None, rope=None, cond_dim=None, pooled_cond=None,
                 frame_causal_clean=None, grad_checkpointing=None, attention=None, qk_norm=None,
                 bias=None, frame_cond_dim=None, preset=None):
        super().__init__()
        given = {k: v for k, v in locals().items()
                 if k not in ("self", "preset", "__class__") and v is not None}
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"preset={preset!r} is unknown; use one of {sorted(PRESETS)} or None")
        cfg = {**DEFAULTS, **(PRESETS[preset] if preset else {}), **given}
        self.config = dict(cfg, preset=preset)  # plain dict, for logging / checkpoints
        if cfg["time_cond"] not in ("adaln", "token"):
            raise ValueError(f"time_cond={cfg['time_cond']!r} is unknown; use 'adaln' or 'token'")
        self.in_channels, self.patch_size = cfg["in_channels"], cfg["patch_size"]
        self.hidden, self.heads = cfg["hidden"], cfg["heads"]
        self.adaln = cfg["time_cond"] == "adaln"
        self.cond_dim = cfg["cond_dim"]
        self.pooled_cond = bool(cfg["pooled_cond"])
        if self.pooled_cond and not self.cond_dim:
            raise ValueError("pooled_cond=True needs a condition (cond_dim > 0, i.e. an EMBEDDER other than "
                             "NoCondition); set pooled_cond: false for an unconditional model")
        self.frame_cond_dim = int(cfg["frame_cond_dim"] or 0)
        self.frame_slots = 1 if self.frame_cond_dim else 0  # extra tokens per frame (the frame condition)
        self.frame_causal_clean = bool(cfg["frame_causal_clean"])
        self.grad_checkpointing = bool(cfg["grad_checkpointing"])
        self.set_attention(cfg["attention"])
        C, P = self.hidden, self.in_channels * self.patch_size ** 2
        self.embed_noisy = nn.Linear(P, C)
        self.embed_clean = nn.Linear(P, C)
        self.time_embed = TimeEmbed(C)
        if self.cond_dim:
            self.cond_proj = nn.Linear(self.cond_dim, C)
        if self.pooled_cond:
            self.cond_pool = nn.Sequential(nn.Linear(self.cond_dim, C), nn.SiLU(), nn.Linear(C, C))
        if self.frame_cond_dim:
            self.frame_cond_proj = nn.Linear(self.frame_cond_dim, C)
        self.rope = Rope(C // self.heads, cfg["rope"])
        self.blocks = nn.ModuleList(Block(C, self.heads, cfg["ffn"], cfg["norm"], cfg["mlp"], self.adaln,
                                          cfg["qk_norm"], bool(cfg["bias"])) for _ in range(cfg["depth"]))
        self.norm_out = make_norm(cfg["norm"], C, affine=not self.adaln)
        if self.adaln:
            self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(C, 2 * C))
        self.out = nn.Linear(C, P)
        self._init_weights()
        self._memo = ShapeMemo(MEMO_SIZE)  # per-shape token metadata (RoPE tables, gather indices)

    def _init_weights(self):
        xavier_linears(self)
        nn.init.normal_(self.time_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[2].weight, std=0.02)
        zero = [self.out] + ([b.ada[1] for b in self.blocks] + [self.ada_out[1]] if self.adaln else [])
        zero += [self.cond_pool[2]] if self.pooled_cond else []
        for m in zero:  # blocks start as identity, output starts at 0
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def set_attention(self, impl: str, dense_fn: Callable | None = None):
        """Choose the block-causal implementation ('flex' | 'blocks' | 'math') and dense kernel."""
        if impl not in IMPLS:
            raise ValueError(f"attention impl {impl!r} is unknown; use one of {IMPLS}")
        self.attn_impl, self.dense_fn = impl, dense_fn or sdpa_dense

    # ------------------------------------------------------------------ helpers
    def _memoized(self, key: tuple, build: Callable[[], object]):
        """``build()`` once per shape ``key`` (:class:`ShapeMemo`); the key carries the RoPE tables'
        device and dtype, so moving or casting the model never returns a stale entry."""
        return self._memo.get(key + (str(self.rope.freq0.device), self.rope.freq0.dtype), build)

    def _patchify(self, x: Tensor) -> Tensor:
        B, C, Fr, H, W = x.shape
        p = self.patch_size
        assert C == self.in_channels, f"expected {self.in_channels} channels, got {C}"
        assert H % p == 0 and W % p == 0, f"frame {H}x{W} is not divisible by patch_size={p}"
        x = x.reshape(B, C, Fr, H // p, p, W // p, p).permute(0, 2, 3, 5, 1, 4, 6)
        return x.reshape(B, Fr * (H // p) * (W // p), C * p * p)  # (B, F*N, C*p*p)

    def _unpatchify(self, x: Tensor, Fr: int, H: int, W: int) -> Tensor:
        B, p, C = x.shape[0], self.patch_size, self.in_channels
        x = x.reshape(B, Fr, H // p, W // p, C, p, p).permute(0, 4, 1, 2, 5, 3, 6)
        return x.reshape(B, C, Fr, H, W)

    def _geometry(self, H: int, W: int) -> tuple[int, int, int]:
        """(patches per frame N, tokens per frame N + frame slots, patch grid width) of an H x W frame."""
        N = (H // self.patch_size) * (W // self.patch_size)
        return N, N + self.frame_slots, W // self.patch_size

    def _with_frame_cond(self, tokens: Tensor, frame_cond: Tensor | None, Fr: int) -> Tensor:
        """Patch tokens (B, Fr*N, C) of Fr frames -> with each frame's condition token appended as its
        slot N: (B, Fr*(N+1), C); unchanged without ``frame_cond_dim``."""
        if not self.frame_cond_dim:
            assert frame_cond is None, "frame_cond was given but the model was built with frame_cond_dim=0"
            return tokens
        if frame_cond is None:
            raise ValueError(f"this model was built with frame_cond_dim={self.frame_cond_dim}: every call needs "
                             f"frame_cond (B, frames, {self.frame_cond_dim}), one token per frame; pass the "
                             f"embedder's null tokens (embedder.null(B, frames)) where no condition is known")
        B, _, C = tokens.shape
        assert tuple(frame_cond.shape) == (B, Fr, self.frame_cond_dim), \
            f"frame_cond must be (B, F, frame_cond_dim) = {(B, Fr, self.frame_cond_dim)}, got {tuple(frame_cond.shape)}"
        slot = self.frame_cond_proj(frame_cond.to(self.frame_cond_proj.weight.dtype)).to(tokens.dtype)  # (B, Fr, C)
        return torch.cat([tokens.view(B, Fr, -1, C), slot[:, :, None]], dim=2).view(B, -1, C)

    def _drop_frame_slots(self, y: Tensor, Fr: int) -> Tensor:
        """Outputs (B, Fr*(N+1), P) of whole frames -> the patch outputs (B, Fr*N, P) (the frame
        condition slot dropped); unchanged without frame conditions."""
        if not self.frame_slots:
            return y
        B, _, P = y.shape
        return y.view(B, Fr, -1, P)[:, :, :-self.frame_slots].reshape(B, -1, P)

    def _cond_tokens(self, cond: Tensor | None, cond_mask: Tensor | None):
        """-> (cond tokens (B, M, C) or None, real cond count per sample or None = all real,
        pooled cond vector (B, C) or None).

        With padding the real tokens are moved to the front (stable); cond tokens share one
        position and see only each other, so their order does not matter."""
        if cond is None:
            assert cond_mask is None, "cond_mask was given without cond"
            return None, None, None
        assert self.cond_dim, "cond was given but the model was built with cond_dim=0"
        assert cond.dim() == 3 and cond.shape[-1] == self.cond_dim, \
            f"cond must be (B, M, {self.cond_dim}), got {tuple(cond.shape)}"
        lens = None
        if cond_mask is not None:
            assert tuple(cond_mask.shape) == tuple(cond.shape[:2]), \
                f"cond_mask must be (B, M) = {tuple(cond.shape[:2])}, got {tuple(cond_mask.shape)}"
            real = cond_mask.to(torch.bool)
            if not bool(real.all()):
                order = torch.argsort((~real).to(torch.uint8), dim=1, stable=True)  # real tokens first
                cond = _gather_tokens(cond, order)
                lens = real.sum(1).tolist()
        return self.cond_proj(cond), lens, self._pool(cond, lens)

    def _pool(self, cond: Tensor, lens: list[int] | None) -> Tensor | None:
        """MLP of the mean of the real cond tokens (real tokens first) -> (B, C); None without
        ``pooled_cond``. A sample with no real token pools the zero vector."""
        if not self.pooled_cond:
            return None
        B, M = cond.shape[:2]
        if lens is None:
            mean = cond.mean(1)
        else:
            n = torch.tensor(lens, device=cond.device)
            w = (torch.arange(M, device=cond.device)[None] < n[:, None]).to(cond.dtype)
            mean = (cond * w[..., None]).sum(1) / n.clamp(min=1)[:, None].to(cond.dtype)
        return self.cond_pool(mean)

    @staticmethod
    def _add_pooled(temb: Tensor, pooled: Tensor | None) -> Tensor:
        """Add the pooled cond to the noisy rows (1..K) of a (B, K+1, C) time-embedding table."""
        if pooled is None:
            return temb
        return torch.cat([temb[:, :1], temb[:, 1:] + pooled[:, None].to(temb.dtype)], dim=1)

    def _rope(self, frame, patch, N, grid_w, valid):
        ang = self.rope.angles(frame, patch, N, grid_w, valid)
        return ang.cos()[:, None], ang.sin()[:, None]  # (B, 1, L, D/2)

    def _rope_cached(self, M: int, frames: int, N: int, grid_w: int, first_frame: int, B: int, dev):
        """cos/sin of [M cond tokens][frames x N tokens] with the frames at first_frame + f and
        the cond tokens at (first_frame - 1, patch 0); built once per shape (:meth:`_memoized`)."""
        return self._memoized(("rope", M, frames, N, grid_w, first_frame, B, str(dev)),
                              lambda: self._rope_stream(M, frames, N, grid_w, first_frame, B, dev))

    def _rope_stream(self, M: int, frames: int, N: int, grid_w: int, first_frame: int, B: int, dev):
        frame = torch.cat([torch.full((M,), -1, device=dev), torch.arange(frames, device=dev).repeat_interleave(N)])
        patch = torch.cat([torch.zeros(M, dtype=torch.long, device=dev), torch.arange(N, device=dev).repeat(frames)])
        L = frame.shape[0]
        return self._rope((frame + first_frame)[None].expand(B, L), patch[None].expand(B, L), N, grid_w,
                          torch.ones(B, L, device=dev))

    def _blocks(self, x, temb, tid, cos, sin, attns: Sequence[Callable], keep: list[Tensor] | None = None):
        """The time-conditioned input through one block per ``attns`` entry; ``keep`` collects
        every block's output (B, L, C)."""
        if self.time_cond_token:
            x = x + _gather_tokens(temb, tid)
        ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for blk, attn in zip(self.blocks, attns):
            if ckpt:
                x = checkpoint(blk, x, temb, tid, cos, sin, attn, use_reentrant=False)
            else:
                x = blk(x, temb, tid, cos, sin, attn)
            if keep is not None:
                keep.append(x)
        return x

    def _run(self, x, temb, tid, cos, sin, attns: Sequence[Callable]):
        x = self._blocks(x, temb, tid, cos, sin, attns)
        h = self.norm_out(x)
        if self.adaln:
            sh, sc = _gather_tokens(self.ada_out(temb), tid).chunk(2, dim=-1)
            h = h * (1 + sc) + sh
        return self.out(h)

    @property
    def time_cond_token(self) -> bool:
        return not self.adaln

    # ------------------------------------------------------------------ training forward
    def forward(self, x_noisy: Tensor, x_clean: Tensor, clip_lens: Tensor, t: Tensor,
                cond: Tensor | None = None, cond_mask: Tensor | None = None,
                frame_offset: int = 0, frame_cond: Tensor | None = None) -> Tensor:
        """x_noisy, x_clean (B, C, F, H, W); clip_lens (B, K) long; t (B, K) per-clip time
        (1 = clean); cond (B, M, cond_dim) or None, cond_mask (B, M) bool (True = real) or
        None; frame_cond (B, F, frame_cond_dim) one token per frame (models with frame_cond_dim)
        -> prediction shaped like x_noisy. Frame f sits at position frame_offset + f.
        Outputs at padded frames are arbitrary (finite); x_clean of each last clip is unused."""
        B, _, Fr, H, W = x_noisy.shape
        _, N, gw = self._geometry(H, W)  # N: tokens per frame (patches + frame condition slot)
        ctok, cond_lens, pooled = self._cond_tokens(cond, cond_mask)
        M = 0 if ctok is None else ctok.shape[1]
        layout = BlockCausalLayout(clip_lens, N, num_cond=M, frame_causal_clean=self.frame_causal_clean,
                                   cond_lens=cond_lens)
        assert max(sum(c) for c in layout.clips) <= Fr, f"clip_lens sum past the {Fr} frames given"
        layout, idx, tid, cos, sin, pos = self._memoized(
            ("forward", layout.key(), Fr, gw, int(frame_offset)),
            lambda: self._forward_tokens(layout, Fr, N, gw, int(frame_offset)))
        parts = [] if ctok is None else [ctok]
        parts += [self._with_frame_cond(self.embed_clean(self._patchify(x_clean)), frame_cond, Fr),
                  self._with_frame_cond(self.embed_noisy(self._patchify(x_noisy)), frame_cond, Fr)]
        parts.append(parts[-1].new_zeros(B, 1, self.hidden))  # the padding row, in the activation dtype
        x = _gather_tokens(torch.cat(parts, dim=1), idx)  # (B, L, C) from (B, M + 2*F*N + 1, C)
        temb = self.time_embed(torch.cat([t.new_ones(B, 1), t], dim=1))  # (B, K+1, C); t stays fp32
        temb = self._add_pooled(temb, pooled)

        def attn(q, k, v):
            return block_causal_attention(q, k, v, layout, self.attn_impl, self.dense_fn)

        y = self._run(x, temb, tid, cos, sin, [attn] * len(self.blocks))  # (B, L, P)
        return self._unpatchify(self._drop_frame_slots(_gather_tokens(y, pos), Fr), Fr, H, W)

    def _forward_tokens(self, layout: BlockCausalLayout, Fr: int, N: int, gw: int, frame_offset: int):
        """Token metadata of a training forward, built once per layout (:meth:`_memoized`): (layout,
        gather index into [cond][clean frames][noisy frames][zero row], time ids, RoPE cos / sin,
        index of every frame token's noisy output)."""
        M = layout.M
        meta = {k: v[:, : layout.L] for k, v in layout.meta().items()}
        kind, clip, frame, patch = meta["kind"], meta["clip"], meta["frame"], meta["patch"]
        fp = frame.clamp(min=0) * N + patch
        idx = torch.where(kind == CLEAN, M + fp, torch.where(kind == NOISY, M + Fr * N + fp, patch))
        idx = torch.where(kind > NOISY, M + 2 * Fr * N, idx)  # padding (and padded cond) -> the zero row
        tid = torch.where(kind == NOISY, clip + 1, 0)  # 0 -> t = 1 (clean, cond, padding)
        is_cond = kind == COND  # at frame -1 (before the first frame), patch 0
        cos, sin = self._rope(frame + frame_offset, patch.masked_fill(is_cond, 0), N, gw, (kind != PAD).float())
        dev = kind.device
        starts = torch.tensor([layout.noisy_start(c) for c in layout.clips], device=dev)
        nreal = torch.tensor([sum(c) * N for c in layout.clips], device=dev)
        ar = torch.arange(Fr * N, device=dev)
        pos = torch.where(ar[None] < nreal[:, None], starts[:, None] + ar[None], 0)  # padded frames -> token 0
        return layout, idx, tid, cos, sin, pos


PRESETS = {
    "tiny": dict(hidden=64, depth=2, heads=2, ffn=128),
    # the shipped CPU demo (configs/demo): ~9M parameters
    "demo": dict(hidden=256, depth=6, heads=4, ffn=1024, mlp="swiglu", norm="rmsnorm", time_cond="adaln",
                 rope="3d"),
    # paper scale (hidden 3072, 32 layers, 32 heads, FFN 8192); the reference adds the time to
    # the tokens and is frame-causal inside clean clips; Phi-3 layers have no qk-norm and no biases
    "videogpt-3.8b": dict(hidden=3072, depth=32, heads=32, ffn=8192, mlp="swiglu", norm="rmsnorm",
                          time_cond="token", rope="1d", frame_causal_clean=True, qk_norm=False, bias=False),
}
