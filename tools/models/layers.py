"""Building blocks of the next-clip transformer: norms, RoPE, time embedding, KV cache."""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class RMSNorm(nn.RMSNorm):
    """RMSNorm whose weight follows the input dtype, so bf16 autocast keeps the fused kernel."""

    def forward(self, x: Tensor) -> Tensor:
        w = None if self.weight is None else self.weight.to(x.dtype)
        return F.rms_norm(x, self.normalized_shape, w, self.eps)


@torch.no_grad()
def xavier_linears(module: nn.Module) -> None:
    """Fresh-start init of every Linear in ``module``: xavier-uniform weights, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _input_to_weight_dtype(layer: nn.Linear, args):
    x = args[0]
    return (x.to(layer.weight.dtype), *args[1:]) if x.dtype != layer.weight.dtype else None


@torch.no_grad()
def cast_linears(module: nn.Module, dtype: torch.dtype) -> int:
    """The sampling dtype policy without autocast: every Linear's weight and bias cast once to ``dtype``, and
    its input cast to ``dtype`` on the way in (a pre-hook: the first layers get fp32 patches, condition tokens
    and time features); everything else keeps fp32: norm weights (the norm kernels accumulate in fp32 either
    way), RoPE frequency tables, the sinusoidal time features. The residual stream and the KV cache are then
    ``dtype``, as under autocast. Returns the number of layers cast (cast twice, a layer is counted once)."""
    n = 0
    for m in module.modules():
        if isinstance(m, nn.Linear):
            m.to(dtype)
            if not getattr(m, "_casts_input", False):
                m.register_forward_pre_hook(_input_to_weight_dtype)
                m._casts_input = True
                n += 1
    return n


def make_norm(kind: str, dim: int, affine: bool = True) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(dim, elementwise_affine=affine, eps=1e-6)
    if kind == "rmsnorm":
        return RMSNorm(dim, elementwise_affine=affine, eps=1e-6)
    raise ValueError(f"norm={kind!r} is unknown; use 'layernorm' or 'rmsnorm'")


class Mlp(nn.Module):
    """GELU MLP or SwiGLU (``ffn`` is the hidden width of both)."""

    def __init__(self, dim: int, ffn: int, kind: str = "gelu"):
        super().__init__()
        if kind not in ("gelu", "swiglu"):
            raise ValueError(f"mlp={kind!r} is unknown; use 'gelu' or 'swiglu'")
        self.kind = kind
        self.fc1 = nn.Linear(dim, ffn * (2 if kind == "swiglu" else 1))
        self.fc2 = nn.Linear(ffn, dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        if self.kind == "swiglu":
            a, g = h.chunk(2, dim=-1)
            h = F.silu(g) * a
        else:
            h = F.gelu(h, approximate="tanh")
        return self.fc2(h)


class TimeEmbed(nn.Module):
    """Sinusoidal features [cos, sin] of t in [0, 1] (times ``t_scale``, default 1000) -> MLP -> (..., dim).

    ``t_scale=1``, ``max_period=10000`` is Video-GPT's embedding of the raw t."""

    def __init__(self, dim: int, freq_dim: int = 256, t_scale: float = 1000.0, max_period: float = 10000.0):
        super().__init__()
        self.freq_dim, self.t_scale, self.max_period = freq_dim, float(t_scale), float(max_period)
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, device=t.device, dtype=torch.float32)
                          / half)
        tt = t.float() if self.t_scale == 1.0 else t.float() * self.t_scale
        ang = tt[..., None] * freqs
        return self.mlp(torch.cat([ang.cos(), ang.sin()], dim=-1).to(self.mlp[0].weight.dtype))


class Rope(nn.Module):
    """Rotary position embedding. '1d': position = frame * N + patch; '3d': the head dim is
    split into (t, h, w) parts rotated by frame, patch row and patch column.

    ``angles(frame, patch, tokens_per_frame, grid_w, valid)`` -> (B, L, D/2); ``frame`` may be
    negative; tokens with ``valid`` False (padding) get angle 0, i.e. no rotation. The model
    places condition tokens at (first frame of the sequence - 1, patch 0): '3d' rotates
    them in time only, '1d' puts them at position (first frame - 1) * N.
    """

    def __init__(self, head_dim: int, mode: str = "1d", theta: float = 10000.0):
        super().__init__()
        assert head_dim % 2 == 0, f"head dim {head_dim} must be even for RoPE"
        if mode not in ("1d", "3d"):
            raise ValueError(f"rope={mode!r} is unknown; use '1d' or '3d'")
        self.mode = mode
        half = head_dim // 2
        if mode == "1d":
            parts = [half]
        else:
            hw = half // 3
            parts = [half - 2 * hw, hw, hw]
            assert min(parts) > 0, f"head dim {head_dim} is too small for 3d RoPE"
        self.parts = parts
        for i, n in enumerate(parts):
            self.register_buffer(f"freq{i}", theta ** (-torch.arange(n, dtype=torch.float32) / n), persistent=False)

    def angles(self, frame: Tensor, patch: Tensor, tokens_per_frame: int, grid_w: int, valid: Tensor) -> Tensor:
        frame, patch = frame.float(), patch.clamp(min=0)
        if self.mode == "1d":
            pos = [frame * tokens_per_frame + patch.float()]
        else:
            pos = [frame, (patch // grid_w).float(), (patch % grid_w).float()]
        ang = torch.cat([p[..., None] * getattr(self, f"freq{i}") for i, p in enumerate(pos)], dim=-1)
        return ang * valid[..., None]

    def frame_step(self, tokens_per_frame: int) -> Tensor:
        """(D/2) angles of a shift by one frame (the same for every token)."""
        if self.mode == "1d":
            return self.freq0 * tokens_per_frame
        return torch.cat([self.freq0, torch.zeros_like(self.freq1), torch.zeros_like(self.freq2)])

    @staticmethod
    def apply(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """x (B, H, L, D); cos/sin (B, 1, L, D/2); rotate-half convention, computed in fp32."""
        x1, x2 = x.float().chunk(2, dim=-1)
        out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
        return out.to(x.dtype)


class LongRope(nn.Module):
    """Phi-3 "longrope" RoPE on explicit position ids (rotate-half convention, see :meth:`Rope.apply`).

    ``inv_freq_i = 1 / (factor_i * theta^(2i/D))`` with one factor per frequency (None = all 1),
    and cos / sin multiplied by ``mscale = sqrt(1 + ln(s) / ln(original_max))`` with
    ``s = max_position / original_max`` (1 when s <= 1). The factors are plain floats (no
    buffer), so casting the model to bf16 never rounds them; :meth:`set_factors` replaces them.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0, factors: list[float] | None = None,
                 max_position: int = 4096, original_max_position: int = 4096):
        super().__init__()
        assert head_dim % 2 == 0, f"head dim {head_dim} must be even for RoPE"
        self.head_dim, self.theta = head_dim, float(theta)
        s = max_position / original_max_position
        self.mscale = 1.0 if s <= 1.0 else math.sqrt(1 + math.log(s) / math.log(original_max_position))
        self.set_factors(factors)

    def set_factors(self, factors: list[float] | None) -> None:
        half = self.head_dim // 2
        factors = [1.0] * half if factors is None else [float(f) for f in factors]
        if len(factors) != half:
            raise ValueError(f"longrope needs head_dim / 2 = {half} factors, got {len(factors)}")
        self.factors = factors

    def cos_sin(self, pos: Tensor):
        """pos (B, L) position ids -> cos, sin (B, 1, L, D/2) in fp32, mscale included."""
        shape = torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=pos.device).float() / self.head_dim
        ext = torch.tensor(self.factors, dtype=torch.float32, device=pos.device)
        inv_freq = 1.0 / (ext * self.theta ** shape)
        ang = pos.float()[..., None] * inv_freq  # (B, L, D/2)
        return (ang.cos() * self.mscale)[:, None], (ang.sin() * self.mscale)[:, None]


class ShapeMemo:
    """Values built once per key, the ``size`` most recently used kept: the token metadata of an
    input shape (RoPE tables, gather indices, time ids), which a rollout or a fixed-cut training
    would otherwise rebuild at every step."""

    def __init__(self, size: int):
        self.size = int(size)
        self._items: OrderedDict = OrderedDict()

    def get(self, key: tuple, build: Callable[[], object]):
        hit = self._items.get(key)
        if hit is None:
            hit = self._items[key] = build()
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(key)
        return hit

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()


@dataclass
class KVCache:
    """Per-layer keys/values of [cond tokens][clean history tokens] (after qk-norm and RoPE).

    ``k[i]``/``v[i]``: (B, H, num_cond + num_frames * tokens_per_frame, D) of layer i.
    ``frame_offset``: position (frame index) of the first cached history frame.
    ``clip_lens``: clip structure of the cached history (oldest first).
    ``cond_lens``: real cond tokens per sample (the rest of the ``num_cond`` are padding,
    invisible to every query); None = all real.
    ``frame_step``: (D/2) RoPE angles of a one-frame shift; the cond keys sit at
    ``frame_offset - 1`` and are rotated along when :meth:`drop_frames` moves the offset.
    ``pooled``: (B, C) pooled condition of a ``pooled_cond`` model (added to the noisy
    tokens' time embedding when denoising against this cache), else None.
    ``buffers``: preallocated storage the ``k`` / ``v`` tensors are views of (see :meth:`join`);
    None until the first :meth:`join`. It only saves copies: the values are always ``k`` / ``v``.
    """
    k: list[Tensor]
    v: list[Tensor]
    num_cond: int
    tokens_per_frame: int
    frame_offset: int = 0
    clip_lens: list[int] = field(default_factory=list)
    cond_lens: list[int] | None = None
    frame_step: Tensor | None = None
    pooled: Tensor | None = None
    buffers: KVBuffers | None = field(default=None, repr=False, compare=False)

    @property
    def num_frames(self) -> int:
        return sum(self.clip_lens)

    @property
    def end_frame(self) -> int:
        """Position of the frame right after the cached history."""
        return self.frame_offset + self.num_frames

    def drop_frames(self, n: int) -> KVCache:
        """Forget the oldest ``n`` history frames. The cond tokens are kept and moved along to
        just before the first kept frame (their keys rotated by ``n`` frames)."""
        n = min(int(n), self.num_frames)
        if n <= 0:
            return self
        a, b = self.num_cond, self.num_cond + n * self.tokens_per_frame
        cond_k = [x[:, :, :a] for x in self.k]
        if a:  # move the cond keys along with the window
            assert self.frame_step is not None, "a cache with cond tokens needs frame_step to drop frames"
            ang = (self.frame_step * n).to(self.k[0].device)
            cos, sin = ang.cos(), ang.sin()
            cond_k = [Rope.apply(x, cos, sin) for x in cond_k]
        room = 2 * (b - a)  # the next clip's denoise scratch and its append fit without a copy
        self.buffers = KVBuffers(len(self.k)) if not torch.is_grad_enabled() else None
        self.k = [self._compact(i, [c, x[:, :, b:]], room, True) for i, (c, x) in enumerate(zip(cond_k, self.k))]
        self.v = [self._compact(i, [x[:, :, :a], x[:, :, b:]], room, False) for i, x in enumerate(self.v)]
        lens, left = list(self.clip_lens), n
        while left:
            take = min(left, lens[0])
            lens[0] -= take
            left -= take
            if lens[0] == 0:
                lens.pop(0)
        self.clip_lens = lens
        self.frame_offset += n
        return self

    # ------------------------------------------------------------------ preallocated storage
    def _compact(self, i: int, parts: list[Tensor], room: int, keys: bool) -> Tensor:
        """``parts`` of layer i concatenated into fresh buffers with ``room`` spare tokens
        (plain ``torch.cat`` without buffers)."""
        if self.buffers is None:
            return torch.cat(parts, dim=2)
        n = sum(x.shape[2] for x in parts)
        B, H, _, D = parts[0].shape
        buf = parts[0].new_empty(B, H, n + room, D)
        o = 0
        for x in parts:
            buf[:, :, o:o + x.shape[2]] = x
            o += x.shape[2]
        (self.buffers.k if keys else self.buffers.v)[i] = buf
        self.buffers.used[i] = n
        return buf[:, :, :n]

    def _owns_tail(self, i: int, k: Tensor) -> bool:
        """True if layer i's cached k / v are the newest views of their buffers and the
        ``k.shape[2]`` new tokens fit into the spare room after them."""
        bufs, ck, cv = self.buffers, self.k[i], self.v[i]
        if bufs is None or bufs.k[i] is None:
            return False
        bk, bv, n = bufs.k[i], bufs.v[i], ck.shape[2]
        return (n == bufs.used[i] and ck.data_ptr() == bk.data_ptr() and cv.data_ptr() == bv.data_ptr()
                and ck.stride() == bk.stride() and cv.stride() == bv.stride() and n + k.shape[2] <= bk.shape[2])

    def _grow(self, i: int, capacity: int) -> None:
        """Move layer i's keys / values into new buffers of ``capacity`` tokens owned by this cache."""
        if self.buffers is None or self.buffers.k[i] is not None:  # shared or used: start our own
            self.buffers = KVBuffers(len(self.k))
        for keys in (True, False):
            x = (self.k if keys else self.v)[i]
            buf = x.new_empty(x.shape[0], x.shape[1], capacity, x.shape[3])
            buf[:, :, :x.shape[2]] = x
            (self.buffers.k if keys else self.buffers.v)[i] = buf
            (self.k if keys else self.v)[i] = buf[:, :, :x.shape[2]]
        self.buffers.used[i] = self.k[i].shape[2]

    def join(self, i: int, k: Tensor, v: Tensor, keep: bool = False):
        """Keys and values of layer i: the cached ones followed by ``k`` / ``v`` (B, H, L, D) ->
        (B, H, n + L, D) each, equal to ``torch.cat([self.k[i], k], 2)`` (and likewise v).

        Without autograd the new rows are written into preallocated room after the cached rows
        (no copy of the cache; the first call moves the cache into buffers with room for 2 L
        more tokens). ``keep=False``: scratch, valid until the next ``join`` of this layer (a
        denoising step); ``keep=True``: the rows stay claimed, for a cache extended by them
        (pass ``buffers=self.buffers`` to it). Only the newest cache of a buffer writes into
        it, so older caches sharing the buffer never change; with autograd, or keys of
        another dtype / shape, it falls back to ``torch.cat``."""
        if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad or self.k[i].requires_grad):
            return torch.cat([self.k[i], k], dim=2), torch.cat([self.v[i], v], dim=2)
        ck, cv = self.k[i], self.v[i]
        like = [(k, ck), (v, cv)]
        if any(a.dtype != b.dtype or a.device != b.device or a.shape[:2] != b.shape[:2] or a.shape[3] != b.shape[3]
               for a, b in like):
            return torch.cat([self.k[i], k], dim=2), torch.cat([self.v[i], v], dim=2)
        n, L = self.k[i].shape[2], k.shape[2]
        if not self._owns_tail(i, k):
            self._grow(i, n + 2 * L)
        bk, bv = self.buffers.k[i], self.buffers.v[i]
        bk[:, :, n:n + L] = k
        bv[:, :, n:n + L] = v
        if keep:
            self.buffers.used[i] = n + L
        return bk[:, :, :n + L], bv[:, :, :n + L]


class KVBuffers:
    """Per-layer preallocated key / value storage (B, H, capacity, D) of :class:`KVCache` views.

    ``used[i]``: tokens of layer i claimed by the newest cache; rows past it are free (scratch)."""

    def __init__(self, depth: int):
        self.k: list[Tensor | None] = [None] * depth
        self.v: list[Tensor | None] = [None] * depth
        self.used: list[int] = [0] * depth
