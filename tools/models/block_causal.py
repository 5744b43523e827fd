"""Block-causal attention of next-clip diffusion, without a dense L x L mask.

Token order of one sample (see docs/design.md)::

    [M cond][clean clips 1..K-1][noisy clips 1..K][padding]

Visibility (query -> key):
- cond  -> cond only;
- every real (non-padding) token -> all cond tokens;
- noisy clip k -> its own noisy tokens + clean clips < k (never other noisy clips,
  never its own clean copy);
- clean clip k -> clean clips <= k; with ``frame_causal_clean`` clean frame f -> clean
  frames <= f only;
- clean never sees noisy; padding queries see only themselves; nobody sees padding.
- padded condition tokens (``cond_lens[b] < M``: sample b has real cond tokens
  ``[0, cond_lens[b])``) are padding: they see only themselves and nobody sees them.

Because of the token order, every real query segment attends to one *contiguous prefix*
``[0, end)`` of cond + clean tokens, plus (noisy only) its own block.  Three
implementations share :class:`BlockCausalLayout`:

- ``"flex"``: compiled FlexAttention with a BlockMask built from per-token metadata;
- ``"blocks"``: per-segment calls of an unmasked ``dense_fn(q, k, v)``;
- ``"math"``: dense boolean mask + SDPA, the test reference only.

Padded cond tokens keep the kernels mask-free: 'blocks' (and :func:`prefix_attention`, the
KV-cached path) group samples by their real cond count m and drop the padded cond rows
``[m, M)`` from q, k, v, so every segment again attends to contiguous key ranges.

Slot levels (``clean_levels`` / ``noisy_levels``, one int per token slot of a frame, default
all 0) refine the rule *inside* a block (a noisy clip; a clean clip, or a clean frame with
``frame_causal_clean``): a query of level l sees the keys of its own block whose level is
<= l (earlier blocks are seen whole). Video-GPT's frames are ``<|diffusion|> time patches``
(levels 0 1 2: the marker sees only the clip's markers, the time token markers and time
tokens) and ``<img> patches </img>`` (levels 0 1 2). Inside a block the tokens are stored
level-major (:func:`block_token_order`), so every level's query rows again see one prefix
of keys and 'blocks' stays mask-free.
"""
from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

COND, CLEAN, NOISY, PAD = 0, 1, 2, 3
FLEX_BLOCK = 128
IMPLS = ("flex", "blocks", "math")
logger = logging.getLogger("nextclip")

_FLEX_FN = None  # compiled flex_attention, built once per process
_CBM_FN = None  # compiled create_block_mask
_BLOCK_MASK_CACHE: OrderedDict[tuple, object] = OrderedDict()
_BLOCK_MASK_CACHE_SIZE = 16
#: (padded length, batch, heads, head dim, dtype) of every FlexAttention compile of this process
FLEX_COMPILES: list[tuple] = []


def flex_len(L: int) -> int:
    """Sequence length the flex kernels run at: ``L`` rounded up to whole 128-token blocks and, past
    8 blocks, to one of 8 sizes per octave (m * 2^e blocks, m = 8..15): random clip cuts then hit a
    few lengths (<= 12.5 % padding) instead of compiling once per length."""
    blocks = -(-int(L) // FLEX_BLOCK)
    if blocks > 8:
        step = 2 ** (int(math.log2(blocks)) - 3)
        blocks = -(-blocks // step) * step
    return blocks * FLEX_BLOCK


def block_token_order(frames: int, levels: Sequence[int]) -> tuple[Tensor, Tensor]:
    """(frame, slot) LongTensors of the ``frames * len(levels)`` tokens of one block, stored
    level-major: by slot level, then frame, then slot (all levels 0: frame-major)."""
    order = sorted((lv, f, s) for f in range(frames) for s, lv in enumerate(levels))
    return (torch.tensor([f for _, f, _ in order], dtype=torch.long),
            torch.tensor([s for _, _, s in order], dtype=torch.long))


def level_spans(frames: int, levels: Sequence[int]) -> list[tuple[int, int]]:
    """[start, end) of each level's tokens inside a level-major block of ``frames`` frames."""
    spans, a = [], 0
    for lv in sorted(set(levels)):
        n = frames * sum(1 for x in levels if x == lv)
        spans.append((a, a + n))
        a += n
    return spans


def _check_levels(levels: Sequence[int] | None, N: int, what: str) -> tuple[int, ...]:
    if levels is None:
        return (0,) * N
    levels = tuple(int(x) for x in levels)
    assert len(levels) == N and min(levels) >= 0, \
        f"{what} must give a level >= 0 for each of the {N} token slots of a frame, got {levels}"
    return levels


def sdpa_dense(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Default ``dense_fn``: unmasked scaled-dot-product attention, scale 1/sqrt(D)."""
    return F.scaled_dot_product_attention(q, k, v)


class BlockCausalLayout:
    """What every implementation needs to know about one batch's clip structure.

    Args:
        clip_lens: (B, K) frame counts per clip, zeros for absent clips (zeros only at the end).
        tokens_per_frame: N, tokens of one frame.
        num_cond: M, condition tokens at the front of every sample.
        frame_causal_clean: clean frame f sees clean frames <= f only.
        total_len: sequence length L (>= the longest sample); default: the longest sample.
        cond_lens: real cond tokens per sample (the first ``cond_lens[b]`` of the M), the
            rest is padding; default: all M are real.
        clean_levels / noisy_levels: level of each of the N token slots of a clean / noisy
            frame (see the module docstring); default all 0 = a block is bidirectional.
    """

    def __init__(self, clip_lens, tokens_per_frame: int, num_cond: int = 0,
                 frame_causal_clean: bool = False, total_len: int | None = None,
                 cond_lens: Sequence[int] | None = None, clean_levels: Sequence[int] | None = None,
                 noisy_levels: Sequence[int] | None = None):
        if not torch.is_tensor(clip_lens):
            clip_lens = torch.as_tensor(clip_lens, dtype=torch.long)
        assert clip_lens.dim() == 2, f"clip_lens must be (B, K), got shape {tuple(clip_lens.shape)}"
        self.device = clip_lens.device
        self.N = int(tokens_per_frame)
        self.M = int(num_cond)
        self.frame_causal_clean = bool(frame_causal_clean)
        self.clean_levels = _check_levels(clean_levels, self.N, "clean_levels")
        self.noisy_levels = _check_levels(noisy_levels, self.N, "noisy_levels")
        self.leveled = any(self.clean_levels) or any(self.noisy_levels)
        rows = clip_lens.detach().cpu().tolist()
        self.clips: list[tuple[int, ...]] = []
        for b, row in enumerate(rows):
            nz = [int(g) for g in row if g > 0]
            assert nz, f"sample {b} has no clip (clip_lens row {row}); every sample needs >= 1 frame"
            assert all(g > 0 for g in row[: len(nz)]), f"zeros must come after the clips, got {row}"
            self.clips.append(tuple(nz))
        self.B = len(self.clips)
        self.cond_lens = tuple(int(m) for m in cond_lens) if cond_lens is not None else (self.M,) * self.B
        assert len(self.cond_lens) == self.B and all(0 <= m <= self.M for m in self.cond_lens), \
            f"cond_lens {self.cond_lens} must give 0..{self.M} real cond tokens for each of the {self.B} samples"
        self.seq_lens = [self.sample_len(c) for c in self.clips]
        longest = max(self.seq_lens)
        self.L = longest if total_len is None else int(total_len)
        assert self.L >= longest, f"total_len={total_len} is shorter than the longest sample ({longest})"
        self._meta = None

    # ------------------------------------------------------------------ geometry
    def sample_len(self, clips: Sequence[int]) -> int:
        frames = sum(clips)
        return self.M + (frames - clips[-1]) * self.N + frames * self.N

    def noisy_start(self, clips: Sequence[int], num_cond: int | None = None) -> int:
        return (self.M if num_cond is None else num_cond) + (sum(clips) - clips[-1]) * self.N

    def key(self) -> tuple:
        return (tuple(self.clips), self.N, self.M, self.frame_causal_clean, self.L, str(self.device),
                self.cond_lens, self.clean_levels, self.noisy_levels)

    def groups(self) -> dict[tuple[tuple[int, ...], int], list[int]]:
        """Samples with identical (clip structure, real cond count), computed together by 'blocks'."""
        out: dict[tuple[tuple[int, ...], int], list[int]] = {}
        for b, c in enumerate(self.clips):
            out.setdefault((c, self.cond_lens[b]), []).append(b)
        return out

    def segments(self, clips: Sequence[int], num_cond: int | None = None) -> list[tuple[int, int, int, int, int]]:
        """(q_start, q_end, prefix_end, own_start, own_end) for every real query segment.

        The segment attends to keys [0, prefix_end) and [own_start, own_end) (empty own
        range for cond / clean segments, whose visible keys are a single prefix).
        ``num_cond``: cond tokens in front (default M; the 'blocks' impl passes a sample's
        real count after dropping its padded cond rows).
        """
        N, M = self.N, (self.M if num_cond is None else num_cond)
        segs = []
        if M:
            segs.append((0, M, M, 0, 0))
        starts = [0]
        for g in clips:
            starts.append(starts[-1] + g)
        for k, g in enumerate(clips[:-1]):  # clean clips (blocks: frames or the whole clip)
            s = M + starts[k] * N
            step = 1 if self.frame_causal_clean else g
            for f in range(0, g, step):
                a = s + f * N
                for x, y in level_spans(step, self.clean_levels):
                    segs.append((a + x, a + y, a + y, 0, 0))
        S = self.noisy_start(clips, M)
        for k, g in enumerate(clips):  # noisy clips
            a = S + starts[k] * N
            for x, y in level_spans(g, self.noisy_levels):
                segs.append((a + x, a + y, M + starts[k] * N, a, a + y))
        return segs

    # ------------------------------------------------------------------ metadata
    def meta(self) -> dict[str, Tensor]:
        """Per-token (B, Lpad) LongTensors: kind, clip, frame, lim, patch, level (Lpad = :func:`flex_len` of L).

        ``frame``: frame index within the sample (-1 for cond / padding); ``lim``: a query
        sees clean keys whose frame < lim; ``patch``: index (token slot) within the frame
        (cond: its index); ``level``: the slot's level (0 for cond / padding).
        """
        if self._meta is not None:
            return self._meta
        Lp = flex_len(self.L)
        B, N, M = self.B, self.N, self.M
        kind = torch.full((B, Lp), PAD, dtype=torch.long)
        clip = torch.full((B, Lp), -2, dtype=torch.long)
        frame = torch.full((B, Lp), -1, dtype=torch.long)
        lim = torch.full((B, Lp), -1, dtype=torch.long)
        patch = torch.zeros((B, Lp), dtype=torch.long)
        level = torch.zeros((B, Lp), dtype=torch.long)
        clean_lv, noisy_lv = torch.tensor(self.clean_levels), torch.tensor(self.noisy_levels)
        for b, clips in enumerate(self.clips):
            lens = torch.tensor(clips, dtype=torch.long)
            nf = int(lens.sum())
            start = torch.cumsum(lens, 0) - lens
            clip_of = torch.repeat_interleave(torch.arange(len(clips)), lens)  # (F,)
            fr = torch.arange(nf)
            kind[b, :self.cond_lens[b]] = COND  # padded cond tokens stay PAD
            clip[b, :M] = -1
            patch[b, :M] = torch.arange(M)
            nc = nf - clips[-1]
            if nc:
                sl = slice(M, M + nc * N)
                kind[b, sl] = CLEAN
                clip[b, sl] = clip_of[:nc].repeat_interleave(N)
                frame[b, sl] = fr[:nc].repeat_interleave(N)
                blocks = [(f, 1) for f in range(nc)] if self.frame_causal_clean else \
                    [(int(start[k]), g) for k, g in enumerate(clips[:-1])]
                fc, sc = self._block_tokens(blocks, self.clean_levels)
                end = (start + lens)[clip_of[fc]]
                frame[b, sl], patch[b, sl], level[b, sl] = fc, sc, clean_lv[sc]
                clip[b, sl] = clip_of[fc]
                lim[b, sl] = fc + 1 if self.frame_causal_clean else end
            S = M + nc * N
            sl = slice(S, S + nf * N)
            fn, sn = self._block_tokens([(int(start[k]), g) for k, g in enumerate(clips)], self.noisy_levels)
            kind[b, sl] = NOISY
            clip[b, sl] = clip_of[fn]
            frame[b, sl], patch[b, sl], level[b, sl] = fn, sn, noisy_lv[sn]
            lim[b, sl] = start[clip_of[fn]]
        self._meta = {k: v.to(self.device) for k, v in
                      dict(kind=kind, clip=clip, frame=frame, lim=lim, patch=patch, level=level).items()}
        return self._meta

    @staticmethod
    def _block_tokens(blocks: Sequence[tuple[int, int]], levels: Sequence[int]) -> tuple[Tensor, Tensor]:
        """(frame, slot) of consecutive blocks (first frame, frames), each stored level-major."""
        parts = [block_token_order(g, levels) for _, g in blocks]
        return (torch.cat([f + f0 for (f0, _), (f, _) in zip(blocks, parts)]),
                torch.cat([s for _, s in parts]))

    def dense_mask(self) -> Tensor:
        """(B, L, L) boolean mask, True = may attend. Test reference only (O(L^2) memory)."""
        m = self.meta()
        kind, clip, frame, lim, level = (m[k][:, : self.L] for k in ("kind", "clip", "frame", "lim", "level"))
        ar = torch.arange(self.L, device=kind.device)
        vis = _visible(kind[:, :, None], kind[:, None, :], clip[:, :, None], clip[:, None, :],
                       frame[:, None, :], lim[:, :, None], ar[:, None], ar[None, :])
        if not self.leveled:
            return vis
        return vis & _level_ok(kind[:, :, None], kind[:, None, :], clip[:, :, None], clip[:, None, :],
                               frame[:, :, None], frame[:, None, :], level[:, :, None], level[:, None, :],
                               ar[:, None], ar[None, :], self.frame_causal_clean)

    def block_mask(self):
        """FlexAttention BlockMask of this layout at the padded length :func:`flex_len` (padding tokens
        see only themselves). Cached by layout (a rollout meets the same layouts again); the compiled
        mask builder and kernel depend only on the padded shape, so a new layout of a known shape
        costs no compile."""
        key = self.key()
        bm = _BLOCK_MASK_CACHE.get(key)
        if bm is not None:
            _BLOCK_MASK_CACHE.move_to_end(key)
            return bm
        m = self.meta()
        kind, clip, frame, lim, level = m["kind"], m["clip"], m["frame"], m["lim"], m["level"]
        fcc = self.frame_causal_clean

        def mask_mod(b, h, q, kv):
            return _visible(kind[b, q], kind[b, kv], clip[b, q], clip[b, kv], frame[b, kv], lim[b, q], q, kv)

        if self.leveled:
            plain = mask_mod

            def mask_mod(b, h, q, kv):  # the level rule on top of the plain one
                return plain(b, h, q, kv) & _level_ok(kind[b, q], kind[b, kv], clip[b, q], clip[b, kv],
                                                      frame[b, q], frame[b, kv], level[b, q], level[b, kv],
                                                      q, kv, fcc)

        Lp = flex_len(self.L)
        bm = _compiled_create_block_mask()(mask_mod, self.B, None, Lp, Lp, device=self.device)
        _BLOCK_MASK_CACHE[key] = bm
        while len(_BLOCK_MASK_CACHE) > _BLOCK_MASK_CACHE_SIZE:
            _BLOCK_MASK_CACHE.popitem(last=False)
        return bm


def _visible(kq, kk, cq, ck, fk, limq, q, kv):
    """The visibility rule on broadcastable per-token metadata (shared by math and flex)."""
    real_q = kq != PAD
    cond_k = (kk == COND) & real_q
    clean_k = (kk == CLEAN) & (fk < limq)
    noisy_k = (kk == NOISY) & (kq == NOISY) & (ck == cq)
    return (q == kv) | cond_k | clean_k | noisy_k


def _level_ok(kq, kk, cq, ck, fq, fk, lq, lk, q, kv, frame_causal_clean: bool):
    """False where a key of the query's own block has a higher slot level than the query."""
    same_clip = (kq == kk) & (cq == ck)
    same_block = same_clip & ((kq == NOISY) | ((fq == fk) if frame_causal_clean else (kq == CLEAN)))
    return (q == kv) | ~same_block | (lk <= lq)


def interleaved_dense_mask(clips: Sequence[int], tokens_per_frame: int, num_cond: int = 0,
                           frame_causal_clean: bool = False) -> tuple[Tensor, Tensor]:
    """The paper's order ``[cond] noisy(c1) clean(c1) noisy(c2) ... noisy(cK)`` written out
    rule by rule, independently of :class:`BlockCausalLayout` (for the equivalence test).

    Returns (mask (L, L) bool, perm (L,)) where ``perm[i]`` is the interleaved index of the
    token at position i of our order, so ``mask[perm][:, perm]`` is the mask in our order.
    """
    N, M = tokens_per_frame, num_cond
    tokens = [("cond", -1, -1)] * M  # (kind, clip, frame)
    f0 = 0
    for k, g in enumerate(clips):
        tokens += [("noisy", k, f0 + f) for f in range(g) for _ in range(N)]
        if k < len(clips) - 1:
            tokens += [("clean", k, f0 + f) for f in range(g) for _ in range(N)]
        f0 += g
    L = len(tokens)
    mask = torch.zeros(L, L, dtype=torch.bool)
    for i, (ki, ci, fi) in enumerate(tokens):
        for j, (kj, cj, fj) in enumerate(tokens):
            if kj == "cond":
                ok = True
            elif ki == "cond":
                ok = False
            elif ki == "noisy":
                ok = (kj == "noisy" and cj == ci) or (kj == "clean" and cj < ci)
            else:  # clean query
                ok = kj == "clean" and (fj <= fi if frame_causal_clean else cj <= ci)
            mask[i, j] = ok
    ours = ([i for i, t in enumerate(tokens) if t[0] == "cond"]
            + [i for i, t in enumerate(tokens) if t[0] == "clean"]
            + [i for i, t in enumerate(tokens) if t[0] == "noisy"])
    return mask, torch.tensor(ours)


# ---------------------------------------------------------------------- implementations
def _attention_math(q, k, v, layout: BlockCausalLayout) -> Tensor:
    mask = layout.dense_mask()[:, None]  # (B, 1, L, L)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _compiled_flex():
    global _FLEX_FN
    if _FLEX_FN is None:
        from torch.nn.attention.flex_attention import flex_attention
        _FLEX_FN = torch.compile(flex_attention, dynamic=False)
    return _FLEX_FN


def _compiled_create_block_mask():
    """Compiled so the mask is evaluated block-wise instead of as an L x L int tensor."""
    global _CBM_FN
    if _CBM_FN is None:
        from torch.nn.attention.flex_attention import create_block_mask
        _CBM_FN = torch.compile(create_block_mask)
    return _CBM_FN


def _note_flex_shape(q: Tensor, Lp: int) -> None:
    """Log each new padded shape: the first call at a shape compiles (seconds on CPU)."""
    sig = (Lp, q.shape[0], q.shape[1], q.shape[3], str(q.dtype))
    if sig not in FLEX_COMPILES:
        FLEX_COMPILES.append(sig)
        logger.info("FlexAttention: compiling for padded length %d (batch %d, heads %d, head dim %d, %s); "
                    "compile #%d of this process", *sig, len(FLEX_COMPILES))


def _attention_flex(q, k, v, layout: BlockCausalLayout) -> Tensor:
    L, Lp = q.shape[2], flex_len(q.shape[2])
    _note_flex_shape(q, Lp)
    if Lp > L:  # padding rows see only themselves (kind PAD) and are cut off again
        q, k, v = (F.pad(x, (0, 0, 0, Lp - L)) for x in (q, k, v))
    return _compiled_flex()(q, k, v, block_mask=layout.block_mask())[:, :, :L]


def drop_padded_cond(x: Tensor, m: int, M: int) -> Tensor:
    """x (B, H, L, D) whose first M rows are cond tokens -> without the padded cond rows [m, M)."""
    return x if m == M else torch.cat([x[:, :, :m], x[:, :, M:]], dim=2)


def _compact_index(i: int, m: int, M: int) -> int:
    """Index i of a sequence with M cond rows -> its index after :func:`drop_padded_cond`."""
    return min(i, m) if i <= M else i - (M - m)


def _put_rows(out: Tensor, ob: Tensor, sel: Tensor | None, m: int, M: int) -> None:
    """Write compacted rows ``ob`` back into ``out`` (rows of the batch ``sel``, or all);
    the padded cond rows [m, M) of ``out`` are left as they are."""
    n = ob.shape[2]
    parts = [(0, 0, n)] if m == M else [(0, 0, m), (M, m, n)]  # (out start, ob start, ob end)
    for o, a, b in parts:
        if b > a:
            if sel is None:
                out[:, :, o:o + b - a] = ob[:, :, a:b]
            else:
                out[sel, :, o:o + b - a] = ob[:, :, a:b]


def _select(x: Tensor, sel: Tensor | None) -> Tensor:
    return x if sel is None else x.index_select(0, sel)


def _group_index(idx: list[int], B: int, device) -> Tensor | None:
    return torch.tensor(idx, device=device) if len(idx) < B else None


def _attention_blocks(q, k, v, layout: BlockCausalLayout, dense_fn: Callable) -> Tensor:
    out = v.clone()  # padding queries attend only to themselves -> their own value
    M = layout.M
    for (clips, m), idx in layout.groups().items():
        sel = _group_index(idx, layout.B, q.device)
        qb, kb, vb = (drop_padded_cond(_select(x, sel), m, M) for x in (q, k, v))
        ob = torch.empty_like(qb[:, :, : layout.sample_len(clips) - (M - m)])
        for qs, qe, pe, os_, oe in layout.segments(clips, m):
            if qe == qs:
                continue
            if oe > os_:
                kk = torch.cat([kb[:, :, :pe], kb[:, :, os_:oe]], dim=2)
                vv = torch.cat([vb[:, :, :pe], vb[:, :, os_:oe]], dim=2)
            else:
                kk, vv = kb[:, :, :pe], vb[:, :, :pe]
            ob[:, :, qs:qe] = dense_fn(qb[:, :, qs:qe], kk, vv)
        _put_rows(out, ob, sel, m, M)
    return out


def block_causal_attention(q: Tensor, k: Tensor, v: Tensor, layout: BlockCausalLayout,
                           impl: str = "blocks", dense_fn: Callable | None = None) -> Tensor:
    """Block-causal attention. q, k, v: (B, H, L, D) in the layout's token order -> (B, H, L, D)."""
    assert q.shape[2] == layout.L, f"sequence length {q.shape[2]} != layout length {layout.L}"
    if impl == "blocks":
        return _attention_blocks(q, k, v, layout, dense_fn or sdpa_dense)
    if impl == "flex":
        return _attention_flex(q, k, v, layout)
    if impl == "math":
        return _attention_math(q, k, v, layout)
    raise ValueError(f"attention impl {impl!r} is unknown; use one of {IMPLS}")


def cached_prefix_attns(cache, segments: Sequence[tuple[int, int, int]], depth: int,
                        dense_fn: Callable | None = None, keep: list | None = None,
                        cond_lens: Sequence[int] | None = None, num_cond: int = 0) -> list[Callable]:
    """One ``attn(q, k, v)`` per layer: the new tokens against [cached][new] keys with
    :func:`prefix_attention` over ``segments``; ``cache`` has per-layer ``k`` / ``v`` lists (or is
    None); the concatenated (k, v) of every layer are appended to ``keep`` when given. A
    :class:`~tools.models.layers.KVCache` joins them in its preallocated room (``KVCache.join``:
    no copy of the cached rows per call; with ``keep`` the rows stay claimed for the extended cache)."""
    join = getattr(cache, "join", None)

    def make_attn(i):
        def attn(q, k, v):
            if join is not None:
                k, v = join(i, k, v, keep=keep is not None)
            elif cache is not None:
                k, v = torch.cat([cache.k[i], k], dim=2), torch.cat([cache.v[i], v], dim=2)
            if keep is not None:
                keep.append((k, v))
            return prefix_attention(q, k, v, segments, dense_fn, cond_lens=cond_lens, num_cond=num_cond)
        return attn
    return [make_attn(i) for i in range(depth)]


def prefix_attention(q: Tensor, k: Tensor, v: Tensor, segments: Sequence[tuple[int, int, int]],
                     dense_fn: Callable | None = None, cond_lens: Sequence[int] | None = None,
                     num_cond: int = 0) -> Tensor:
    """Attention where query rows [qs, qe) see keys [0, ke) (prefix-causal by segment).

    Used to encode clean history (cond + clean clips, optionally after a cached prefix
    of length ``k.shape[2] - q.shape[2]``; segment indices are in the query's frame and
    ``ke`` in the key's frame). Rows not covered by a segment are returned as v.
    The first ``num_cond`` keys are cond tokens, of which sample b has ``cond_lens[b]``
    real ones (default: all): padded cond keys are invisible; padded cond queries (when
    q starts with the cond tokens, i.e. there is no cached prefix) return their value.
    """
    dense_fn = dense_fn or sdpa_dense
    off = k.shape[2] - q.shape[2]
    M = num_cond
    plain = cond_lens is None or all(m == M for m in cond_lens)
    if plain and len(segments) == 1 and segments[0][:2] == (0, q.shape[2]):  # one segment: no copy
        ke = segments[0][2]
        return dense_fn(q, k[:, :, :ke], v[:, :, :ke])
    out = v[:, :, off:].clone()
    if plain:
        for qs, qe, ke in segments:
            out[:, :, qs:qe] = dense_fn(q[:, :, qs:qe], k[:, :, :ke], v[:, :, :ke])
        return out
    q_cond = off == 0  # the queries start with the cond tokens
    groups: dict[int, list[int]] = {}
    for b, m in enumerate(cond_lens):
        groups.setdefault(int(m), []).append(b)
    for m, idx in groups.items():
        sel = _group_index(idx, q.shape[0], q.device)
        kb, vb = (drop_padded_cond(_select(x, sel), m, M) for x in (k, v))
        qb, ob = _select(q, sel), _select(out, sel)
        if q_cond:
            qb, ob = drop_padded_cond(qb, m, M), drop_padded_cond(ob, m, M)
        for qs, qe, ke in segments:
            if q_cond:
                qs, qe = _compact_index(qs, m, M), _compact_index(qe, m, M)
            ke = _compact_index(ke, m, M)
            if qe > qs:
                ob[:, :, qs:qe] = dense_fn(qb[:, :, qs:qe], kb[:, :, :ke], vb[:, :, :ke])
        if q_cond:
            _put_rows(out, ob, sel, m, M)
        elif sel is None:
            out = ob
        else:
            out[sel] = ob
    return out
