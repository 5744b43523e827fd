"""Autoregressive next-clip rollout with a KV cache of the history.

``rollout`` generates a video clip by clip: each clip starts from fresh noise (seeded per
clip from one base seed), is integrated by ``diffusion.sample`` with the model's
prediction (plus guidance), and is appended to the history. At most ``window`` frames of
history are seen.

KV-cache modes (``kv_cache``):
- ``'off'``: every denoising step runs the full training ``forward`` on [history, clip].
  The reference; cost steps x (history + clip).
- ``'recompute'``: once per clip the current window is encoded (``encode_history``) and
  every step runs only the clip against the cached keys/values (``denoise``). Exactly
  equals ``'off'`` (up to float rounding), always.
- ``'rolling'``: the cache is kept across clips; each new clip is encoded once against the
  cached history and the oldest frames are dropped when the window slides. Exact until the
  window first slides; afterwards it differs from ``'off'``: the cached deep-layer keys of
  the remaining frames were computed while the dropped frames were still visible, whereas
  a re-encode would compute them without those frames. Positions stay absolute (RoPE is
  relative, so only the offset differs from a re-encode). Cheapest: history is encoded once.

Positions. ``'recompute'`` and ``'off'`` re-base every window: the history starts at frame
position 0 and the new clip sits at ``n_hist <= window``, so a rollout of any length only uses
positions ``0 .. window + clip_len - 1``. The model only knows the positions it was trained on
(its ``max_frames``): ``Predictor.fit_window`` lowers ``window`` to keep window + clip_len within
them (beyond them, balls fade within ~20 frames).

Guidance: tools/inferences/guidance.py (named branches, one formula for every KV-cache mode).
Settings: one :class:`RolloutSettings`, validated when it is made.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from tools.inferences.guidance import FULL, NO_CONDITION, NO_HISTORY, Condition, active_branches, guided
from tools.models.kv_rollout import DenoiseCall

KV_MODES = ("recompute", "rolling", "off")


def clip_seed(seed: int, clip_index: int) -> int:
    """A 63-bit seed for clip ``clip_index`` derived from one base seed (stable across runs)."""
    h = hashlib.sha256(f"{int(seed)}:{int(clip_index)}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def _clip_noise(shape, seed: int, clip_index: int, like: Tensor) -> Tensor:
    g = torch.Generator().manual_seed(clip_seed(seed, clip_index))
    return torch.randn(shape, generator=g).to(device=like.device, dtype=like.dtype)


def _noised(x: Tensor, t_in: float | None, seed: int, clip_index: int) -> Tensor:
    """History noise, drawn once per clip (so every cache mode sees the same history)."""
    if t_in is None or x.shape[2] == 0:
        return x
    eps = _clip_noise(x.shape, seed + 1, clip_index, x)
    return t_in * x + (1.0 - t_in) * eps


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class RolloutSettings:
    """How a rollout generates, apart from its inputs: one typed object, validated once, when it is
    made (a ValueError naming the setting, its value, what is allowed and a fix). Field names are
    the config keys, so :meth:`from_config` takes them from an inference config.

    Attributes:
        num_frames / num_clips: how much to generate, at most one of them given here (a call of
            :func:`rollout` needs exactly one); with ``num_frames`` the last clip is shorter when needed.
        clip_len: G frames per generated clip. window: at most W history frames are attended to.
        num_sample_steps / sampler / shift: the diffusion's sampling of each clip.
        guide_scale / history_guide_scale: s_c / s_h of the guidance formula (tools/inferences/guidance.py),
            >= 0; 1 switches a term off.
        guide_interval / history_guide_interval: [lo, hi] model times (0 noise, 1 clean) where a term acts.
        history_noise: t_in applied to the history at inference (x <- t_in x + (1 - t_in) eps), None = clean.
        seed: base seed; clip i draws its noise from ``clip_seed(seed, i)``.
        kv_cache: 'recompute' | 'rolling' | 'off' (module docstring).
    """
    num_frames: int | None = None
    num_clips: int | None = None
    clip_len: int = 4
    window: int = 80
    num_sample_steps: int = 50
    sampler: str = "euler"
    shift: float = 1.0
    guide_scale: float = 1.0
    history_guide_scale: float = 1.0
    guide_interval: tuple[float, float] = (0.0, 1.0)
    history_guide_interval: tuple[float, float] = (0.0, 1.0)
    history_noise: float | None = None
    seed: int = 0
    kv_cache: str = "recompute"

    def __post_init__(self):
        def bad(key, allowed, fix):
            raise ValueError(f"{key}={getattr(self, key)!r} is not allowed: {allowed}; {fix}")

        for key in ("num_frames", "num_clips"):
            v = getattr(self, key)
            if v is not None and not (_is_int(v) and v >= 1):
                bad(key, "it must be an integer >= 1 (or null)", f"set e.g. '{key}=8'")
        if self.num_frames is not None and self.num_clips is not None:
            raise ValueError(f"give at most one of num_clips / num_frames (got {self.num_clips}, {self.num_frames})")
        for key, lo in (("clip_len", 1), ("window", 0), ("num_sample_steps", 1)):
            if not (_is_int(getattr(self, key)) and getattr(self, key) >= lo):
                bad(key, f"it must be an integer >= {lo}", f"set e.g. '{key}={max(lo, 4)}'")
        if not _is_int(self.seed):
            bad("seed", "it must be an integer", "set e.g. 'seed=8888'")
        if not isinstance(self.sampler, str):
            bad("sampler", "it must be a sampler name", "set e.g. 'sampler=euler'")
        if not (_is_number(self.shift) and self.shift > 0):
            bad("shift", "it must be a positive finite number (1 = no shift)", "set e.g. 'shift=1.0'")
        for key in ("guide_scale", "history_guide_scale"):
            if not (_is_number(getattr(self, key)) and getattr(self, key) >= 0):
                bad(key, "it must be a finite number >= 0 (1 = no guidance)", f"set e.g. '{key}=1.0'")
        for key in ("guide_interval", "history_guide_interval"):
            v = getattr(self, key)
            ok = isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(x) for x in v)
            if not ok or not 0.0 <= float(v[0]) <= float(v[1]) <= 1.0:
                raise ValueError(f"{key}={v!r} must be [lo, hi] model times with 0 <= lo <= hi <= 1 "
                                 f"(0 = noise, 1 = clean; its guidance term acts where lo <= t <= hi); "
                                 f"use e.g. [0.2, 1.0], or [0, 1] for every step")
            object.__setattr__(self, key, (float(v[0]), float(v[1])))
        hn = self.history_noise
        if hn is not None and not (_is_number(hn) and 0 <= hn <= 1):
            bad("history_noise", "it must be null (clean history) or a number in [0, 1]",
                "set e.g. 'history_noise=0.95' or 'history_noise=null'")
        if self.kv_cache not in KV_MODES:
            bad("kv_cache", f"use one of {list(KV_MODES)}", "set e.g. 'kv_cache=recompute'")

    @classmethod
    def from_config(cls, cfg, **overrides) -> RolloutSettings:
        """The settings of an inference config (keys of the same names), ``overrides`` on top."""
        names = {f.name for f in fields(cls)}
        return cls(**{**{k: cfg[k] for k in names if k in cfg}, **overrides})

    def clip_lengths(self) -> list[int]:
        """Frames of each clip to generate."""
        G = self.clip_len
        if self.num_clips is not None:
            return [G] * self.num_clips
        if self.num_frames is None:
            raise ValueError("a rollout needs num_clips or num_frames (how much to generate); set one of them")
        return [G] * (self.num_frames // G) + ([self.num_frames % G] if self.num_frames % G else [])


def _trim_front(lens: list[int], n: int) -> list[int]:
    """Drop the ``n`` oldest frames from a clip-length list."""
    lens = list(lens)
    while n > 0 and lens:
        take = min(n, lens[0])
        lens[0] -= take
        n -= take
        if lens[0] == 0:
            lens.pop(0)
    return lens


def _frame_kw(frame_cond: Tensor | None) -> dict:
    """``frame_cond`` as a model keyword, only when there is one (models without frame conditions keep
    their signature)."""
    return {} if frame_cond is None else {"frame_cond": frame_cond}


def _sample_clip(model, diffusion, s: RolloutSettings, variants: dict, noise: Tensor, hist: Tensor,
                 win_lens: list[int], caches: dict, pos: int, frames: dict) -> Tensor:
    """One clip sampled from ``noise`` (B, C, G, H, W) after the (noised) history window ``hist``
    (B, C, n_hist, H, W) of clips ``win_lens``, with the guided prediction of every step. ``caches``:
    condition variant -> KVCache of the window (cached modes); ``pos``: the clip's frame position;
    ``frames``: condition variant -> (history frame conditions, the clip's frame conditions) (None: none)."""
    B, _, g = noise.shape[:3]
    n_hist = hist.shape[2]

    def call(branch: str) -> DenoiseCall:
        """What the model sees in a branch: the cached history (its condition inside), or the
        clip alone with the condition tokens; and the clip's frame conditions."""
        variant = NO_CONDITION if branch == NO_CONDITION else FULL
        c, m = variants[variant]
        clip_fc = frames[variant][1]
        if branch != NO_HISTORY and n_hist:
            return DenoiseCall(cache=caches[variant], frame_offset=pos, cond=None,
                               cond_mask=None).with_frame_cond(clip_fc)
        return DenoiseCall(cache=None, frame_offset=0, cond=c, cond_mask=m).with_frame_cond(clip_fc)

    def uncached(z, t, branch: str) -> Tensor:
        """A branch through the training ``forward`` on [history, clip] (kv_cache 'off')."""
        variant = NO_CONDITION if branch == NO_CONDITION else FULL
        (c, m), (hist_fc, clip_fc) = variants[variant], frames[variant]
        if branch != NO_HISTORY and n_hist:
            t_all = torch.cat([torch.ones(B, len(win_lens), device=z.device, dtype=z.dtype),
                               t.reshape(B, 1).to(z.dtype)], 1)
            cl = torch.tensor([win_lens + [g]] * B, device=z.device)
            fc = None if clip_fc is None else torch.cat([hist_fc, clip_fc], 1)
            out = model(torch.cat([hist, z], 2), torch.cat([hist, torch.zeros_like(z)], 2), cl, t_all,
                        cond=c, cond_mask=m, **_frame_kw(fc))
            return out[:, :, n_hist:]
        return model(z, torch.zeros_like(z), torch.full((B, 1), g, device=z.device),
                     t.reshape(B, 1).to(z.dtype), cond=c, cond_mask=m, **_frame_kw(clip_fc))

    def pred_fn(z, t):
        names = active_branches(s, float(t.reshape(-1)[0]), n_hist > 0)  # one time per step
        if s.kv_cache == "off":
            preds = [uncached(z, t, n) for n in names]
        elif len(names) > 1 and model.batches_branches:  # every branch in one batched pass
            first, *rest = [call(n) for n in names]
            preds = model.denoise(z, t, **first.kwargs(), branches=rest)
        else:
            preds = [model.denoise(z, t, **call(n).kwargs()) for n in names]
        return guided(dict(zip(names, preds)), s)

    return diffusion.sample(pred_fn, noise, steps=s.num_sample_steps, sampler=s.sampler, shift=s.shift)


class RolloutSession:
    """A rollout that generates one clip per :meth:`next_clip` call, keeping its history, KV caches and
    noise stream between calls: interactive play (a new action sequence per clip, decided after seeing
    the last clip) and :func:`rollout` (which calls it for every clip) are one mechanism.

    Args:
        model, diffusion, settings: as :func:`rollout` (``settings.num_frames`` / ``num_clips`` are not
            needed: each call says how many frames it generates).
        context: (B, C, C0, H, W) clean context frames; C0 may be 0.
        condition: the condition and its null (guidance); for a frame-conditioned model its ``frame_cond``
            / ``null_frame_cond`` hold the CONTEXT frames' conditions (B, C0, D) (the clips' come with
            each :meth:`next_clip`).
    Only the frames of the history window are kept for the model; the generated clips are returned by
    :meth:`next_clip` and, with ``keep_video`` (default), collected for :meth:`video` (an endless game
    passes False, so its memory stays bounded).
    """

    def __init__(self, model, diffusion, context: Tensor, settings: RolloutSettings,
                 condition: Condition | None = None, keep_video: bool = True):
        cond = condition or Condition()
        s = settings
        if context.dim() != 5:
            raise ValueError(f"context must be (B, C, C0, H, W) frames (C0 may be 0), got shape {tuple(context.shape)}")
        self.framed = cond.frame_cond is not None
        if s.guide_scale != 1.0 and not (cond.cond is not None and cond.null_cond is not None
                                         or self.framed and cond.null_frame_cond is not None):
            given = ", ".join(f"{k}={'None' if getattr(cond, k) is None else 'a tensor'}"
                              for k in ("cond", "null_cond", "frame_cond", "null_frame_cond"))
            raise ValueError(f"guide_scale={s.guide_scale} needs cond and null_cond (pass the embedder's null "
                             f"condition, embedder.null(B), as null_cond / null_mask; per-frame conditions: "
                             f"frame_cond and null_frame_cond), got {given}; or use guide_scale=1")
        self.model, self.diffusion, self.settings = model, diffusion, s
        B, C, C0, H, W = context.shape
        self.shape = (B, C, H, W)
        self.variants = {FULL: (cond.cond, cond.cond_mask)}  # condition variant -> (tokens, mask)
        self.frame_conds = {FULL: cond.frame_cond}  # condition variant -> frame conditions of the window
        if s.guide_scale != 1.0:
            self.variants[NO_CONDITION] = (cond.null_cond, cond.null_mask)
            self.frame_conds[NO_CONDITION] = cond.null_frame_cond
        for k, fc in self.frame_conds.items():
            if self.framed and (fc is None or fc.dim() != 3 or tuple(fc.shape[:2]) != (B, C0)):
                raise ValueError(f"frame conditions of the context ({k}) must be (B, C0, D) = ({B}, {C0}, D): one "
                                 f"per context frame, got {None if fc is None else tuple(fc.shape)}")
        self.context, self.keep_video = context, bool(keep_video)
        self.clips: list[Tensor] = []  # generated clips, in order (with keep_video)
        self.frames_generated = 0
        self.seen = _noised(context, s.history_noise, s.seed, -1)  # the history window as the model sees it
        self.hist_lens: list[int] = [C0] if C0 else []  # clip structure of the whole video so far
        self.video_len = C0
        self.clip_index = 0
        self.rolling: dict = {}  # condition variant -> KVCache (rolling mode)

    def _clip_frame_conds(self, g: int, frame_cond: Tensor | None, null_frame_cond: Tensor | None) -> dict:
        """Condition variant -> the clip's frame conditions (B, g, D), checked."""
        if not self.framed:
            if frame_cond is not None or null_frame_cond is not None:
                raise ValueError("frame_cond was given for a clip, but the session has no frame conditions (start "
                                 "it with Condition(frame_cond=...) of the context frames)")
            return {k: None for k in self.variants}
        out = {FULL: frame_cond}
        if NO_CONDITION in self.variants:
            out[NO_CONDITION] = null_frame_cond
        B = self.shape[0]
        for k, fc in out.items():
            if fc is None or fc.dim() != 3 or tuple(fc.shape[:2]) != (B, g):
                raise ValueError(f"frame conditions of the clip ({k}) must be (B, G, D) = ({B}, {g}, D): one per "
                                 f"frame to generate, got {None if fc is None else tuple(fc.shape)}")
        return out

    @torch.no_grad()
    def next_clip(self, num_frames: int | None = None, frame_cond: Tensor | None = None,
                  null_frame_cond: Tensor | None = None) -> Tensor:
        """Generate the next clip of ``num_frames`` frames (default ``settings.clip_len``) -> (B, C, G, H, W).

        ``frame_cond`` (B, G, D): the clip's frame conditions (frame-conditioned models), and
        ``null_frame_cond`` the null ones of the no-condition branch (when ``guide_scale != 1``)."""
        s, model = self.settings, self.model
        g = s.clip_len if num_frames is None else int(num_frames)
        if g < 1:
            raise ValueError(f"num_frames={num_frames!r} must be >= 1 (frames of the next clip)")
        clip_fc = self._clip_frame_conds(g, frame_cond, null_frame_cond)
        B, C, H, W = self.shape
        ci, video_len = self.clip_index, self.video_len
        noise = _clip_noise((B, C, g, H, W), s.seed, ci, self.context)
        n_hist = min(video_len, s.window)
        win_lens = _trim_front(self.hist_lens, video_len - n_hist)
        hist = self.seen[:, :, self.seen.shape[2] - n_hist:]  # (B, C, n_hist, H, W)
        hist_fc = {k: None if fc is None else fc[:, fc.shape[1] - n_hist:] for k, fc in self.frame_conds.items()}

        # ---- history keys/values, once per clip and condition variant
        caches = {}
        if s.kv_cache == "recompute" and n_hist:
            caches = {k: model.encode_history(hist, 0, cond=c, cond_mask=m, clip_lens=win_lens, **_frame_kw(hist_fc[k]))
                      for k, (c, m) in self.variants.items()}
        elif s.kv_cache == "rolling" and n_hist:
            for k, (c, m) in self.variants.items():
                cache = self.rolling.get(k)
                if cache is None:  # first use: encode the whole (noised) window
                    cache = model.encode_history(hist, video_len - n_hist, cond=c, cond_mask=m, clip_lens=win_lens,
                                                 **_frame_kw(hist_fc[k]))
                cache.drop_frames(cache.num_frames - n_hist)  # the window slides
                self.rolling[k] = caches[k] = cache
        pos = n_hist if s.kv_cache != "rolling" else video_len  # position of the new clip

        x = _sample_clip(model, self.diffusion, s, self.variants, noise, hist, win_lens, caches, pos,
                         {k: (hist_fc[k], clip_fc[k]) for k in self.variants})
        x_in = _noised(x, s.history_noise, s.seed, ci)
        keep = max(0, s.window - g)  # the history frames a later clip can still see
        self.seen = torch.cat([self.seen[:, :, self.seen.shape[2] - min(keep, self.seen.shape[2]):], x_in], dim=2)
        if self.framed:
            self.frame_conds = {k: torch.cat([fc[:, fc.shape[1] - min(keep, fc.shape[1]):], clip_fc[k]], 1)
                                for k, fc in self.frame_conds.items()}
        self.hist_lens.append(g)
        self.video_len += g
        self.clip_index += 1
        if s.kv_cache == "rolling":
            for k, (c, m) in self.variants.items():
                if k in self.rolling:
                    self.rolling[k] = model.encode_history(x_in, cache=self.rolling[k], clip_lens=[g],
                                                           **_frame_kw(clip_fc[k]))
                else:  # no history yet: start the cache with this clip
                    self.rolling[k] = model.encode_history(x_in, self.video_len - g, cond=c, cond_mask=m,
                                                           clip_lens=[g], **_frame_kw(clip_fc[k]))
        self.frames_generated += g
        if self.keep_video:
            self.clips.append(x)
        return x

    def video(self) -> Tensor:
        """(B, C, C0 + generated, H, W): the context followed by every clip generated so far."""
        if not self.keep_video:
            raise ValueError("this session was made with keep_video=False: it keeps no video; collect the clips "
                             "next_clip returns")
        return torch.cat([self.context, *self.clips], dim=2)


@torch.no_grad()
def rollout(model, diffusion, context: Tensor, settings: RolloutSettings, condition: Condition | None = None,
            progress: Callable[[int, int], None] | None = None) -> Tensor:
    """Generate a video after ``context`` clip by clip (a :class:`RolloutSession` called once per clip).

    Args:
        model: a next-clip model with ``forward``, ``encode_history`` / ``denoise`` (the KV-cache API,
            tools/models/kv_rollout.py) and the capability flag ``batches_branches``.
        context: (B, C, C0, H, W) clean context frames; C0 may be 0 (generate from nothing).
        settings: a :class:`RolloutSettings` with ``num_frames`` or ``num_clips``.
        condition: the condition and its null (guidance), or None for an unconditional model. Per-frame
            conditions (``frame_cond`` / ``null_frame_cond``) cover the WHOLE video: (B, C0 + generated, D).
        progress: optional ``progress(clip_index, num_clips)`` called after each clip.
    Returns:
        (B, C, C0 + generated, H, W): context followed by the generated frames.
    """
    lens = settings.clip_lengths()
    cond = condition or Condition()
    C0, total = context.shape[2] if context.dim() == 5 else 0, sum(lens)
    frames = {}
    for key in ("frame_cond", "null_frame_cond"):
        fc = getattr(cond, key)
        if fc is not None and (fc.dim() != 3 or fc.shape[1] != C0 + total):
            raise ValueError(f"{key} must hold one token per frame of the whole video: (B, {C0} context + {total} "
                             f"generated = {C0 + total}, D), got {tuple(fc.shape)}; pad the actions with 'no action' "
                             f"(the embedder's num_frames) or shorten them")
        frames[key] = fc
    at = dataclasses.replace(cond, **{k: None if v is None else v[:, :C0] for k, v in frames.items()})
    session = RolloutSession(model, diffusion, context, settings, at)
    start = C0
    for ci, g in enumerate(lens):
        clip = {k: None if v is None else v[:, start:start + g] for k, v in frames.items()}
        session.next_clip(g, clip["frame_cond"], clip["null_frame_cond"])
        start += g
        if progress is not None:
            progress(ci, len(lens))
    return session.video()
