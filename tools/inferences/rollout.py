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

Guidance (one formula for every KV-cache mode, on raw predictions, affine in the velocity)::

    pred = p_full + (s_h - 1) (p_full - p_nohist) + (s_c - 1) (p_full - p_nocond)

with ``s_c = guide_scale`` and ``s_h = history_guide_scale``. ``p_full``: history + cond;
``p_nohist``: the same noisy clip with no history (cond kept); ``p_nocond``: history kept,
cond replaced by ``null_cond`` / ``null_mask`` (the caller passes ``embedder.null(B)``). A
branch is only computed when its scale != 1 (and, for history guidance, when there is a
history), so scales of 1 give exactly the unguided prediction.

Guidance interval (``guide_interval=(lo, hi)``, Kynkaanniemi et al. 2024): the condition term is
applied only at model times ``lo <= t <= hi`` (t = 0 noise, 1 clean, as ``pred_fn`` sees it for
both diffusions); outside it the step uses ``p_full`` (+ history term) and skips the ``p_nocond``
branch. At high noise the guided x1 of a rare condition (one ball) is pushed below the
unconditional mean of the layout (two balls on average) and the sample loses its only ball;
starting guidance later keeps the layout the condition drew and still sharpens it. ``(0, 1)``
(the default) = guidance at every step. ``history_guide_interval`` does the same for the history
term (and its ``p_nohist`` branch).
"""
from __future__ import annotations

import hashlib
from typing import Callable, List, Optional, Sequence

import torch
from torch import Tensor

KV_MODES = ("recompute", "rolling", "off")


def clip_seed(seed: int, clip_index: int) -> int:
    """A 63-bit seed for clip ``clip_index`` derived from one base seed (stable across runs)."""
    h = hashlib.sha256(f"{int(seed)}:{int(clip_index)}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def _clip_noise(shape, seed: int, clip_index: int, like: Tensor) -> Tensor:
    g = torch.Generator().manual_seed(clip_seed(seed, clip_index))
    return torch.randn(shape, generator=g).to(device=like.device, dtype=like.dtype)


def _noised(x: Tensor, t_in: Optional[float], seed: int, clip_index: int) -> Tensor:
    """History noise, drawn once per clip (so every cache mode sees the same history)."""
    if t_in is None or x.shape[2] == 0:
        return x
    eps = _clip_noise(x.shape, seed + 1, clip_index, x)
    return t_in * x + (1.0 - t_in) * eps


def _projected(project: Callable[[Tensor], Tensor], video: Tensor, g: int) -> Tensor:
    """The last ``g`` frames of ``project(video)``, which must keep the video's shape."""
    out = project(video)
    if tuple(out.shape) != tuple(video.shape):
        raise ValueError(f"project returned shape {tuple(out.shape)} for a video of shape {tuple(video.shape)}; "
                         f"it must return the video with the same shape")
    return out[:, :, -g:].to(video.dtype)


def check_guide_interval(interval, name: str = "guide_interval") -> tuple:
    """``(lo, hi)`` floats with 0 <= lo <= hi <= 1, else ValueError naming the value and the fix."""
    ok = isinstance(interval, (list, tuple)) and len(interval) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in interval)
    if not ok or not 0.0 <= float(interval[0]) <= float(interval[1]) <= 1.0:
        raise ValueError(f"{name}={interval!r} must be [lo, hi] model times with 0 <= lo <= hi <= 1 "
                         f"(0 = noise, 1 = clean; its guidance term acts where lo <= t <= hi); "
                         f"use e.g. [0.2, 1.0], or [0, 1] for every step")
    return float(interval[0]), float(interval[1])


def _trim_front(lens: List[int], n: int) -> List[int]:
    """Drop the ``n`` oldest frames from a clip-length list."""
    lens = list(lens)
    while n > 0 and lens:
        take = min(n, lens[0])
        lens[0] -= take
        n -= take
        if lens[0] == 0:
            lens.pop(0)
    return lens


@torch.no_grad()
def rollout(model, diffusion, context: Optional[Tensor], num_clips: Optional[int] = None,
            num_frames: Optional[int] = None, clip_len: int = 4, window: int = 80, steps: int = 50,
            sampler: str = "euler", shift: float = 1.0, history_guide_scale: float = 1.0,
            guide_scale: float = 1.0, cond: Optional[Tensor] = None, cond_mask: Optional[Tensor] = None,
            null_cond: Optional[Tensor] = None, null_mask: Optional[Tensor] = None,
            history_noise: Optional[float] = None, seed: int = 0, kv_cache: str = "recompute",
            guide_interval: Sequence[float] = (0.0, 1.0),
            history_guide_interval: Sequence[float] = (0.0, 1.0),
            project: Optional[Callable[[Tensor], Tensor]] = None,
            shape: Optional[Sequence[int]] = None, progress: Optional[Callable[[int, int], None]] = None
            ) -> Tensor:
    """Generate a video after ``context`` clip by clip.

    Args:
        context: (B, C, C0, H, W) clean context frames (C0 may be 0), or None; then
            ``shape=(B, C, H, W)`` must be given (and a tensor for device / dtype is
            taken from the model's parameters).
        num_clips / num_frames: how much to generate (exactly one of them); with
            ``num_frames`` the last clip is shorter when needed.
        clip_len: G frames per generated clip; window: max history frames W.
        cond / cond_mask: condition tokens (B, M, cond_dim) and their mask (B, M) bool
            (True = real, None = all real), or None (unconditional model).
        null_cond / null_mask: the null condition (``embedder.null(B)``), needed when
            ``guide_scale != 1``.
        guide_scale / history_guide_scale: s_c / s_h of the guidance formula
            ``pred = p_full + (s_h - 1)(p_full - p_nohist) + (s_c - 1)(p_full - p_nocond)``
            (every kv_cache mode; a scale of 1 switches its branch off).
        guide_interval: (lo, hi) model times (0 noise, 1 clean) at which the condition term is
            applied (see the module docstring); (0, 1) = every step.
        history_guide_interval: the same for the history term (``history_guide_scale``).
        history_noise: t_in applied to the history at inference (x <- t_in x + (1-t_in) eps),
            None = clean history.
        project: optional ``project(video) -> video`` called after each clip with the whole
            video so far (B, C, T, H, W), context included; the new clip is replaced by the
            last frames of its result (e.g. a VAE round trip that puts generated latents back
            on the autoencoder's manifold, ``Predictor``'s ``reencode``). None = keep the clip.
        seed: base seed; clip i uses a generator seeded with ``clip_seed(seed, i)``.
        kv_cache: 'recompute' | 'rolling' | 'off' (see the module docstring).
        progress: optional ``progress(clip_index, num_clips)`` called after each clip.
    Returns:
        (B, C, C0 + generated, H, W): context followed by the generated frames.
    """
    if kv_cache not in KV_MODES:
        raise ValueError(f"kv_cache={kv_cache!r} is unknown; use one of {KV_MODES}")
    if (num_clips is None) == (num_frames is None):
        raise ValueError(f"give exactly one of num_clips / num_frames (got {num_clips}, {num_frames})")
    if context is None:
        if shape is None:
            raise ValueError("context is None: pass shape=(B, C, H, W) of the frames to generate")
        B, C, H, W = shape
        p = next(model.parameters())
        context = torch.zeros(B, C, 0, H, W, device=p.device, dtype=p.dtype)
    B, C, C0, H, W = context.shape
    G = int(clip_len)
    assert G > 0 and window >= 0, f"clip_len={clip_len} must be > 0 and window={window} >= 0"
    lens = [G] * num_clips if num_clips is not None else \
        [G] * (num_frames // G) + ([num_frames % G] if num_frames % G else [])
    use_h = history_guide_scale != 1.0
    use_c = guide_scale != 1.0
    g_lo, g_hi = check_guide_interval(guide_interval)
    h_lo, h_hi = check_guide_interval(history_guide_interval, "history_guide_interval")
    if use_c and (cond is None or null_cond is None):
        raise ValueError(f"guide_scale={guide_scale} needs cond and null_cond (pass the embedder's null "
                         f"condition, embedder.null(B), as null_cond / null_mask), got "
                         f"cond={'None' if cond is None else 'a tensor'}, "
                         f"null_cond={'None' if null_cond is None else 'a tensor'}; or use guide_scale=1")
    frames = [context]
    seen = [_noised(context, history_noise, seed, -1)]  # the history as the model sees it
    hist_lens: List[int] = [C0] if C0 else []  # clip structure of the whole video so far
    video_len = C0
    rolling = {}  # branch name -> KVCache (rolling mode)

    for ci, g in enumerate(lens):
        noise = _clip_noise((B, C, g, H, W), seed, ci, context)
        n_hist = min(video_len, window)
        win_lens = _trim_front(hist_lens, video_len - n_hist)
        hist = torch.cat(seen, dim=2)[:, :, video_len - n_hist:]  # (B, C, n_hist, H, W)
        branches = {"full": (cond, cond_mask)}
        if use_c:
            branches["nocond"] = (null_cond, null_mask)
        use_h_now = use_h and n_hist > 0

        # ---- history keys/values, once per clip
        caches = {}
        if kv_cache == "recompute" and n_hist:
            caches = {k: model.encode_history(hist, 0, cond=c, cond_mask=m, clip_lens=win_lens)
                      for k, (c, m) in branches.items()}
        elif kv_cache == "rolling" and n_hist:
            for k, (c, m) in branches.items():
                cache = rolling.get(k)
                if cache is None:  # first use: encode the whole (noised) window
                    cache = model.encode_history(hist, video_len - n_hist, cond=c, cond_mask=m, clip_lens=win_lens)
                cache.drop_frames(cache.num_frames - n_hist)  # the window slides
                rolling[k] = caches[k] = cache
        pos = n_hist if kv_cache != "rolling" else video_len  # position of the new clip

        def branch(z, t, name, with_hist):
            c, m = branches[name]
            if kv_cache == "off":
                if with_hist:
                    t_all = torch.cat([torch.ones(B, len(win_lens), device=z.device, dtype=z.dtype),
                                       t.reshape(B, 1).to(z.dtype)], 1)
                    cl = torch.tensor([win_lens + [g]] * B, device=z.device)
                    out = model(torch.cat([hist, z], 2), torch.cat([hist, torch.zeros_like(z)], 2), cl, t_all,
                                cond=c, cond_mask=m)
                    return out[:, :, n_hist:]
                return model(z, torch.zeros_like(z), torch.full((B, 1), g, device=z.device),
                             t.reshape(B, 1).to(z.dtype), cond=c, cond_mask=m)
            return model.denoise(z, t, **denoise_kw(name, with_hist))

        def denoise_args(name, with_hist):
            """(cache, frame_offset, cond, cond_mask) of a cached-mode branch."""
            c, m = branches[name]
            return (caches[name], pos, None, None) if with_hist else (None, 0, c, m)

        def denoise_kw(name, with_hist):
            return dict(zip(("cache", "frame_offset", "cond", "cond_mask"), denoise_args(name, with_hist)))

        def pred_fn(z, t):
            t_now = float(t.reshape(-1)[0])  # one time per step
            guide_now = use_c and g_lo <= t_now <= g_hi
            hist_now = use_h_now and h_lo <= t_now <= h_hi
            terms = [("full", n_hist > 0)] + ([("full", False)] if hist_now else []) \
                + ([("nocond", n_hist > 0)] if guide_now else [])
            batched = kv_cache != "off" and len(terms) > 1 and hasattr(model, "denoise_many")
            if batched:  # every term of the guided prediction in one batched pass
                preds = dict(zip(terms, model.denoise(z, t, **denoise_kw(*terms[0]),
                                                      branches=[denoise_args(*k) for k in terms[1:]])))
            else:
                preds = {k: branch(z, t, *k) for k in terms}
            full = preds[terms[0]]
            out = full
            if hist_now:
                out = out + (history_guide_scale - 1.0) * (full - preds[("full", False)])
            if guide_now:
                out = out + (guide_scale - 1.0) * (full - preds[("nocond", n_hist > 0)])
            return out

        x = diffusion.sample(pred_fn, noise, steps=steps, sampler=sampler, shift=shift)
        if project is not None:
            x = _projected(project, torch.cat(frames + [x], dim=2), g)
        frames.append(x)
        x_in = _noised(x, history_noise, seed, ci)
        seen.append(x_in)
        hist_lens.append(g)
        video_len += g
        if kv_cache == "rolling":
            for k, (c, m) in branches.items():
                if k in rolling:
                    rolling[k] = model.encode_history(x_in, cache=rolling[k], clip_lens=[g])
                else:  # no history yet: start the cache with this clip
                    rolling[k] = model.encode_history(x_in, video_len - g, cond=c, cond_mask=m, clip_lens=[g])
        if progress is not None:
            progress(ci, len(lens))
    return torch.cat(frames, dim=2)
