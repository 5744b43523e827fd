"""The KV-cache API of NextClipTransformer: rollouts and features over a cached clean history.

A rollout encodes the clean history once per clip (:meth:`encode_history` -> :class:`KVCache` of every
layer's keys / values of [cond tokens][clean history tokens]) and then runs each denoising step on
the noisy clip alone against the cache (:meth:`denoise`), which equals the noisy-clip output of the
training ``forward`` on [history, clip]. :meth:`features` encodes frames exactly as history is
encoded and returns the blocks' hidden states (probes, segmentation heads).

``CachedRollout`` is a mixin of the model class: it uses the model's embeddings, condition tokens,
RoPE tables and blocks (``_patchify``, ``_cond_tokens``, ``_rope_cached``, ``_run``, ``_blocks``, ...).
Frame conditions (``frame_cond``, one token per frame, e.g. actions) are given per call for the frames
of that call (the history frames to ``encode_history``, the clip's frames to ``denoise``); the cache
holds them inside its frames' keys / values, so extending and rolling it carries them.
Models declare whether :meth:`denoise` batches several branches in one pass (``batches_branches``);
the rollout reads that flag.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .block_causal import cached_prefix_attns
from .layers import KVCache


class DenoiseCall(NamedTuple):
    """What one :meth:`CachedRollout.denoise` branch sees: a history ``cache`` (its condition
    inside) and the clip's ``frame_offset``, or no cache and the condition tokens ``cond`` /
    ``cond_mask`` of the clip alone. A frame-conditioned model's branch also carries the clip's
    frame conditions (:meth:`with_frame_cond`, read by :func:`frame_cond_of`)."""
    cache: KVCache | None = None
    frame_offset: int | None = None  # None: right after the cache, else 0
    cond: Tensor | None = None
    cond_mask: Tensor | None = None

    def with_frame_cond(self, frame_cond: Tensor | None) -> DenoiseCall:
        """This call with the clip's frame conditions (B, G, D) attached (an attribute beside the four
        fields: the call still unpacks as four, and a model without frame conditions never sees it)."""
        return self if frame_cond is None else _FramedCall(*self, frame_cond=frame_cond)

    def kwargs(self) -> dict:
        """Keyword arguments of ``denoise`` for this call (``frame_cond`` only when attached)."""
        fc = frame_cond_of(self)
        return {**self._asdict(), **({} if fc is None else {"frame_cond": fc})}


class _FramedCall(DenoiseCall):
    """A :class:`DenoiseCall` with the clip's frame conditions (``DenoiseCall.with_frame_cond``)."""

    def __new__(cls, *fields, frame_cond: Tensor):
        call = super().__new__(cls, *fields)
        call.frame_cond = frame_cond
        return call


def frame_cond_of(call: DenoiseCall) -> Tensor | None:
    """The clip's frame conditions attached to a call (None: none)."""
    return getattr(call, "frame_cond", None)


class CachedRollout:
    """encode_history / denoise / features of a next-clip transformer (see the module docstring)."""

    batches_branches = True  # denoise(..., branches=[...]) runs the branches as one batch

    def _clean_segments(self, clip_lens: Sequence[int], N: int, M: int, prefix: int):
        """Query segments (qs, qe, key_end) of [cond][clean clips] after ``prefix`` cached keys."""
        segs = [(0, M, prefix + M)] if M else []
        s = M
        for g in clip_lens:
            step = N if self.frame_causal_clean else g * N
            for a in range(s, s + g * N, step):
                segs.append((a, a + step, prefix + a + step))
            s += g * N
        return segs

    def _clean_stream(self, video: Tensor, ctok: Tensor | None, frame_offset: int,
                      frame_cond: Tensor | None = None):
        """Inputs of the blocks for clean frames (B, C, F, H, W) after the cond tokens ``ctok``: tokens
        [cond][clean frames] (each frame with its ``frame_cond`` slot), their RoPE at ``frame_offset``,
        the clean time embedding (t = 1) and the time ids. Returns (x, cos, sin, temb, tid, M) with M
        cond tokens."""
        B, _, Fr, H, W = video.shape
        _, N, gw = self._geometry(H, W)
        M = 0 if ctok is None else ctok.shape[1]
        x = self._with_frame_cond(self.embed_clean(self._patchify(video)), frame_cond, Fr)
        if ctok is not None:
            x = torch.cat([ctok, x], dim=1)  # (B, M + F*N, C)
        cos, sin = self._rope_cached(M, Fr, N, gw, frame_offset, B, x.device)
        temb = self.time_embed(x.new_ones(B, 1))
        return x, cos, sin, temb, 0, M  # time id 0 (t = 1) for every token

    def encode_history(self, x_hist: Tensor, frame_offset: int | None = None, cond: Tensor | None = None,
                       cond_mask: Tensor | None = None, clip_lens: Sequence[int] | None = None,
                       cache: KVCache | None = None, frame_cond: Tensor | None = None) -> KVCache:
        """Keys/values of [cond][clean history] for every layer.

        x_hist (B, C, Fh, H, W) clean frames (Fh may be 0) treated as clean clips of
        ``clip_lens`` frames (default: one clip), at positions frame_offset + f; the cond
        tokens (cond_mask: True = real) sit at frame_offset - 1. ``frame_cond`` (B, Fh, D):
        the frame conditions of these frames (frame-conditioned models; also when extending).
        With ``cache``: append x_hist after the cached history (cond and its mask come from
        the cache; ``frame_offset`` defaults to ``cache.end_frame``, else 0); returns a new cache.
        """
        assert x_hist is not None and x_hist.dim() == 5, "x_hist must be (B, C, Fh, H, W)"
        B, _, Fh, H, W = x_hist.shape
        _, N, _ = self._geometry(H, W)  # tokens per frame
        clip_lens = [int(g) for g in (clip_lens if clip_lens is not None else ([Fh] if Fh else []))]
        assert sum(clip_lens) == Fh and all(g > 0 for g in clip_lens), f"clip_lens {clip_lens} vs {Fh} frames"
        if cache is not None:
            assert cond is None and cond_mask is None, "cond is taken from the cache when extending it"
            frame_offset = cache.end_frame if frame_offset is None else frame_offset
            assert frame_offset == cache.end_frame, \
                f"new frames must follow the cache: frame_offset={frame_offset}, cache ends at {cache.end_frame}"
        frame_offset = frame_offset or 0
        ctok, cond_lens, pooled = (self._cond_tokens(cond, cond_mask) if cache is None
                                   else (None, cache.cond_lens, cache.pooled))
        x, cos, sin, temb, tid, M = self._clean_stream(x_hist, ctok, frame_offset, frame_cond)
        prefix = 0 if cache is None else cache.k[0].shape[2]
        segs = self._clean_segments(clip_lens, N, M, prefix)
        kv: list = []
        num_cond = M if cache is None else cache.num_cond
        attns = cached_prefix_attns(cache, segs, len(self.blocks), self.dense_fn, kv, cond_lens, num_cond)
        self._run(x, temb, tid, cos, sin, attns)
        ks, vs = [k for k, _ in kv], [v for _, v in kv]
        if cache is None:
            return KVCache(ks, vs, num_cond=M, tokens_per_frame=N, frame_offset=frame_offset, clip_lens=clip_lens,
                           cond_lens=cond_lens, frame_step=self.rope.frame_step(N), pooled=pooled)
        return KVCache(ks, vs, num_cond=cache.num_cond, tokens_per_frame=N, frame_offset=cache.frame_offset,
                       clip_lens=list(cache.clip_lens) + clip_lens, cond_lens=cache.cond_lens,
                       frame_step=cache.frame_step, pooled=pooled, buffers=cache.buffers)

    def feature_layers(self, layers: Sequence[int]) -> list[int]:
        """Block indices (negative counts from the last block) -> 0-based indices; ValueError if out of range."""
        depth = len(self.blocks)
        out = []
        for i in layers:
            if isinstance(i, bool) or not isinstance(i, int) or not -depth <= i < depth:
                raise ValueError(f"feature layer {i!r} is out of range: the model has {depth} blocks, use "
                                 f"0..{depth - 1} or -{depth}..-1 (-1 = the last block)")
            out.append(i % depth)
        return out

    def features(self, video: Tensor, layers: Sequence[int] = (-1,), clip_len: int | None = None,
                 frame_offset: int = 0, cond: Tensor | None = None,
                 cond_mask: Tensor | None = None, frame_cond: Tensor | None = None) -> list[Tensor]:
        """Hidden states of the clean tokens of ``video`` (B, C, F, H, W) after the chosen blocks
        (``layers``: block indices, -1 = last) -> one (B, F, H/p, W/p, hidden) tensor per layer.

        The frames are encoded exactly as ``encode_history`` encodes history (clean embedding,
        t = 1, cond tokens at frame_offset - 1): clips of ``clip_len`` frames (None = one clip)
        see themselves and earlier clips. Only the blocks up to the deepest requested one run;
        gradients flow unless called under ``torch.no_grad()`` (frozen backbone)."""
        assert video.dim() == 5, f"video must be (B, C, F, H, W), got {tuple(video.shape)}"
        idx = self.feature_layers(layers)
        B, _, Fr, H, W = video.shape
        gh, gw = H // self.patch_size, W // self.patch_size
        _, N, _ = self._geometry(H, W)  # tokens per frame
        g = Fr if clip_len is None else int(clip_len)
        assert g >= 1, f"clip_len={clip_len!r} must be >= 1 (frames per clean clip) or None (one clip)"
        clip_lens = [min(g, Fr - s) for s in range(0, Fr, g)]
        ctok, cond_lens, _ = self._cond_tokens(cond, cond_mask)
        x, cos, sin, temb, tid, M = self._clean_stream(video, ctok, frame_offset, frame_cond)
        segs = self._clean_segments(clip_lens, N, M, 0)
        attns = cached_prefix_attns(None, segs, max(idx) + 1, self.dense_fn, None, cond_lens, M)
        keep: list[Tensor] = []
        self._blocks(x, temb, tid, cos, sin, attns, keep)
        return [self._drop_frame_slots(keep[i][:, M:], Fr).reshape(B, Fr, gh, gw, self.hidden) for i in idx]

    def denoise(self, x_clip: Tensor, t: Tensor, cache: KVCache | None = None,
                frame_offset: int | None = None, cond: Tensor | None = None,
                cond_mask: Tensor | None = None, branches: Sequence[DenoiseCall] | None = None,
                frame_cond: Tensor | None = None):
        """Predict one noisy clip x_clip (B, C, G, H, W) at time t (B,) given a history cache.

        Without a cache the clip sees only itself (and ``cond`` tokens if given, at
        frame_offset - 1); with a cache cond comes from the cache. ``frame_cond`` (B, G, D):
        the clip's frame conditions (frame-conditioned models). ``frame_offset``: position
        of the clip's first frame (default: right after the cache). Equals the noisy-clip
        output of ``forward``. ``branches``: further :class:`DenoiseCall` s of the same clip,
        computed in the same batched pass (:meth:`denoise_many`); then the result is the list
        [this prediction, one per branch].
        """
        first = DenoiseCall(cache, frame_offset, cond, cond_mask).with_frame_cond(frame_cond)
        outs = self.denoise_many(x_clip, t, [first, *(branches or ())])
        return outs if branches is not None else outs[0]

    def denoise_many(self, x_clip: Tensor, t: Tensor, branches: Sequence[DenoiseCall]) -> list[Tensor]:
        """:meth:`denoise` of one noisy clip under several ``branches`` at once, e.g. the branches
        of a guided prediction -> one prediction per branch.

        Branches with the same number of query tokens run as one batch through the blocks (one
        call per layer and linear instead of one per branch; only the attention is per branch),
        the patch and time embeddings are computed once. Equals separate :meth:`denoise` calls."""
        B, _, G, H, W = x_clip.shape
        tokens = self.embed_noisy(self._patchify(x_clip))
        t = t.reshape(B, 1).to(tokens.dtype)
        temb = self.time_embed(torch.cat([torch.ones_like(t), t], dim=1))  # (B, 2, C)
        ins = [self._denoise_inputs(tokens, temb, G, H, W, **b._asdict(), frame_cond=frame_cond_of(b))
               for b in branches]
        outs: list[Tensor | None] = [None] * len(ins)
        by_len: dict[int, list[int]] = {}
        for j, d in enumerate(ins):
            by_len.setdefault(d["x"].shape[1], []).append(j)
        for group in by_len.values():
            ys = self._run_branches([ins[j] for j in group])
            for j, y in zip(group, ys):
                outs[j] = self._unpatchify(self._drop_frame_slots(y[:, ins[j]["M"]:], G), G, H, W)
        return outs

    def _denoise_inputs(self, tokens: Tensor, temb: Tensor, G: int, H: int, W: int, cache: KVCache | None = None,
                        frame_offset: int | None = None, cond: Tensor | None = None,
                        cond_mask: Tensor | None = None, frame_cond: Tensor | None = None) -> dict:
        """Block inputs of one :meth:`denoise` branch: the noisy clip's patch ``tokens`` (B, G*N, C)
        (with the branch's ``frame_cond`` slots) and its time embedding ``temb`` (B, 2, C: t = 1, t)
        against ``cache`` (or alone with ``cond``)."""
        B = tokens.shape[0]
        _, N, gw = self._geometry(H, W)  # tokens per frame
        tokens = self._with_frame_cond(tokens, frame_cond, G)
        if frame_offset is None:
            frame_offset = cache.end_frame if cache is not None else 0
        if cache is not None:
            assert cond is None and cond_mask is None, \
                "with a cache the cond tokens come from the cache (encode_history(cond=...))"
        ctok, cond_lens, pooled = (self._cond_tokens(cond, cond_mask) if cache is None
                                   else (None, cache.cond_lens, cache.pooled))
        M = 0 if ctok is None else ctok.shape[1]
        x = tokens if ctok is None else torch.cat([ctok, tokens], dim=1)
        L = x.shape[1]
        cos, sin = self._rope_cached(M, G, N, gw, frame_offset, B, x.device)
        tid = 1 if not M else self._memoized(("tid_noisy", B, L, M), lambda: (
            torch.arange(L, device=x.device) >= M).long()[None].expand(B, L))  # cond: t = 1
        prefix = 0 if cache is None else cache.k[0].shape[2]
        segs = ([(0, M, M)] if M else []) + [(M, L, prefix + L)]
        num_cond = M if cache is None else cache.num_cond
        attns = cached_prefix_attns(cache, segs, len(self.blocks), self.dense_fn, None, cond_lens, num_cond)
        return dict(x=x, temb=self._add_pooled(temb, pooled), tid=tid, cos=cos, sin=sin, attns=attns, M=M)

    def _run_branches(self, ins: list[dict]) -> list[Tensor]:
        """Branch inputs of equal token count through the blocks as one batch -> outputs per branch."""
        if len(ins) == 1:
            d = ins[0]
            return [self._run(d["x"], d["temb"], d["tid"], d["cos"], d["sin"], d["attns"])]
        B = ins[0]["x"].shape[0]
        cat = {k: torch.cat([d[k] for d in ins]) for k in ("x", "temb", "cos", "sin")}
        tid = ins[0]["tid"] if isinstance(ins[0]["tid"], int) else torch.cat([d["tid"] for d in ins])

        def batched(layer):
            def attn(q, k, v):
                return torch.cat([d["attns"][layer](q[j * B:(j + 1) * B], k[j * B:(j + 1) * B], v[j * B:(j + 1) * B])
                                  for j, d in enumerate(ins)])
            return attn

        y = self._run(cat["x"], cat["temb"], tid, cat["cos"], cat["sin"], [batched(i) for i in range(len(self.blocks))])
        return list(y.split(B))
