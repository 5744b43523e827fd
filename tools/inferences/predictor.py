"""Shared by the inference engines: build the components, load weights, roll out one input.

Action-conditioned models (a per-frame embedder such as ``DiscreteActions``): :meth:`Predictor.predict`
takes one action per frame of the whole video (context first), and :meth:`Predictor.start` opens a
:class:`PlaySession` for interactive play: ``session.next_clip(actions)`` generates the next clip with
the KV cache kept between calls (the :class:`~tools.inferences.rollout.RolloutSession` that ``rollout``
itself drives)."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from tools import lora
from tools.autoencoders.base import frames_rule, latent_frames, nearest_frames, valid_frames
from tools.backends.parallel import PARALLEL_CHOICES
from tools.embedders.conditioning import embed, is_conditional, is_per_frame, null_condition
from tools.inferences.guidance import Condition
from tools.inferences.rollout import RolloutSession, RolloutSettings, rollout
from tools.stack import build_stack
from utils.checkpoint import (
    CheckpointError,
    checkpoint_config,
    embedder_weights_for,
    format_report,
    load_weights,
    sharded_checkpoint_of,
)
from utils.config import DEFAULT_COMPONENTS, ConfigError
from utils.logging import get_logger
from utils.registry import BACKEND, EMBEDDER, PRETRAIN
from utils.video_io import read_image, read_video, resize_crop, to_tensor

logger = get_logger()

#: settings shared by every inference engine that rolls a model out
ROLLOUT_DEFAULTS: dict[str, Any] = {
    **copy.deepcopy(DEFAULT_COMPONENTS),
    "test_model": None,         # weights file (.safetensors; legacy .pth via weights_only)
    "strict": True,
    "log_dir": "workspace/inference",
    "seed": 8888,
    "resolution": [64, 64],     # [H, W] inputs are resized (keeping aspect) and center-cropped to
    "frame_stride": 1,          # stride when reading context frames from a video
    # frame units: context_frames / max_frames count PIXEL frames (what you give and get), clip_len /
    # window count LATENT frames (what the model generates and attends to): the same for temporal_factor
    # 1; for a causal f=4 video VAE, T = 1 + 4k pixel frames are 1 + k latent frames
    "context_frames": 4,        # C: pixel frames given to the model (0 = generate from nothing)
    "max_frames": 16,           # pixel frames of every output video (context included)
    "clip_len": 4,              # G: latent frames generated per autoregressive step
    "window": 16,               # W: most latent history frames the model attends to
    # the model only knows the frame positions it was trained on: history + clip must fit in them
    "trained_frames": None,     # latent frames seen in training (null = from the checkpoint's config, if stored)
    "allow_untrained_positions": False,  # true: keep a window + clip_len beyond trained_frames (warned)
    "num_sample_steps": 25,
    "sampler": "euler",
    "shift": 1.0,
    "guide_scale": 1.0,         # CFG on the class / text condition (1 = off)
    "history_guide_scale": 1.0,  # CFG on the history (1 = off)
    "guide_interval": [0.0, 1.0],  # model times (0 noise, 1 clean) where the condition guidance acts
    "history_guide_interval": [0.0, 1.0],  # the same for the history guidance
    "history_noise": None,      # t_in of the history at inference (null = clean history)
    "kv_cache": "recompute",    # recompute | rolling | off
    "fps": 8,
    "lora": None,               # LoRA adapters on the base model: [{path, scale}] (or one path); tools/lora.py
    "lora_merge": False,        # true: fold the adapters into the base weights (the same outputs, plain model)
}


class Predictor:
    """Built once per run: model (+weights), diffusion, autoencoder, embedder, backend."""

    def __init__(self, cfg, local_rank: int = 0):
        self.cfg = cfg
        self.backend = BACKEND.build(cfg.backend, "backend", local_rank=local_rank)
        self.device = self.backend.device
        self.embedder = self._build_embedder(cfg)
        stack = build_stack(cfg, embedder=self.embedder)
        self.autoencoder = stack.autoencoder.to(self.device).eval()
        self.model, self.diffusion = stack.model, stack.diffusion
        self.model.set_attention(*self.backend.attention_kernel())
        if cfg.test_model and Path(cfg.test_model).is_dir():  # a folder in a loader's layout (validate_rollout)
            PRETRAIN.build({**cfg.pretrain, "path": str(cfg.test_model)}, "pretrain", model=self.model)
        elif cfg.test_model:
            _log_report(cfg.test_model, load_weights(self.model, Path(cfg.test_model), strict=cfg.strict))
        elif cfg.pretrain:
            PRETRAIN.build(cfg.pretrain, "pretrain", model=self.model)
        else:
            logger.warning("no test_model and no pretrain: the model has random weights")
        self.adapters = self._load_adapters(cfg)
        self.model.to(self.device).eval().requires_grad_(False)
        self.cast = self.backend.cast_for_sampling(self.model)  # bf16 weights, cast once: no autocast
        self.backend.compile_model(self.model, training=False)
        hw = cfg.resolution
        self.hw = (int(hw), int(hw)) if isinstance(hw, int) else (int(hw[0]), int(hw[1]))
        self.check_settings()
        self.window = self.fit_window()
        self.settings = RolloutSettings.from_config(cfg, window=self.window)  # validated (validate_rollout)

    def _load_adapters(self, cfg) -> list:
        """``lora`` adapters on the loaded base (checked against it), unmerged or merged (``lora_merge``)."""
        entries = lora.check_entries(cfg.get("lora"))
        if not entries:
            return []
        base_path = cfg.test_model or (cfg.pretrain or {}).get("path")
        lora.load_adapters(self.model, entries, lora.base_identity(self.model, base_path),
                           merge=bool(cfg.get("lora_merge")))
        return entries

    def _build_embedder(self, cfg):
        """The embedder, with its trained weights (e.g. a class table) from beside test_model."""
        embedder = EMBEDDER.build(cfg.embedder, "embedder")
        if cfg.test_model and embedder.state_dict():
            emb_path = embedder_weights_for(Path(cfg.test_model))
            if emb_path.is_file():
                _log_report(emb_path, load_weights(embedder, emb_path, strict=cfg.strict))
            elif cfg.strict:
                raise CheckpointError(
                    f"the embedder {cfg.embedder['type']} has trained weights but {emb_path} does not exist "
                    f"(training writes it beside the model weights). Copy it there, or set strict: false "
                    f"to run with an untrained embedder.")
        return embedder.to(self.device).eval().requires_grad_(False)

    def check_settings(self) -> None:
        """Settings that only the built components can check (ConfigError before any item)."""
        cfg, ae = self.cfg, self.autoencoder
        patch, sf, tf = int(getattr(self.model, "patch_size", 1)), int(ae.spatial_factor), int(ae.temporal_factor)
        m = patch * sf
        if self.hw[0] % m or self.hw[1] % m:
            fix = [max(m, round(x / m) * m) for x in self.hw]
            raise ConfigError(
                f"resolution={list(self.hw)}: H and W must be multiples of {m} (the model's patch_size={patch} "
                f"x the auto_encoder's spatial_factor={sf}); use e.g. resolution: {fix}")
        for key in ("context_frames", "max_frames"):
            if key == "context_frames" and int(cfg[key]) == 0:
                continue  # generate from nothing
            if not valid_frames(ae, int(cfg[key])):
                raise ConfigError(f"{key}={cfg[key]} pixel frames cannot be encoded by the auto_encoder "
                                  f"{cfg.auto_encoder['type']} (temporal_factor {tf}): it takes {frames_rule(ae)} "
                                  f"frames; use e.g. {key}: {nearest_frames(ae, int(cfg[key]))}")
        if float(cfg.guide_scale) != 1.0 and not is_conditional(self.embedder):
            raise ConfigError(self._no_guidance(cfg.guide_scale))
        if is_per_frame(self.embedder) and tf != 1:
            raise ConfigError(f"the embedder {cfg.embedder['type']} makes one token per frame, but the auto_encoder "
                              f"{cfg.auto_encoder['type']} merges {tf} frames into one latent frame; per-frame "
                              f"conditions need temporal_factor 1")

    def trained_frames(self) -> int | None:
        """Latent frames per training video: the ``trained_frames`` setting, else the ``max_frames``
        of the training config stored in ``test_model`` (None when neither is known)."""
        if self.cfg.get("trained_frames") is not None:
            return int(self.cfg.trained_frames)
        tm = self.cfg.get("test_model")
        if not tm or not Path(tm).is_file() or not str(tm).endswith(".safetensors"):
            return None
        try:
            text = checkpoint_config(Path(tm))
            train_cfg = yaml.safe_load(text) if text else None
            T = int(train_cfg["max_frames"])
        except Exception:  # no or foreign metadata: nothing to check against
            return None
        return latent_frames(self.autoencoder, T) if valid_frames(self.autoencoder, T) else None

    def fit_window(self) -> int:
        """The history window: ``window``, lowered so that window + clip_len stays within the
        trained frame positions (positions are re-based to start at 0 in every window), with a
        warning; kept as asked with ``allow_untrained_positions: true`` (also warned)."""
        cfg = self.cfg
        W, G, trained = int(cfg.window), int(cfg.clip_len), self.trained_frames()
        if trained is None or W + G <= trained:
            return W
        if G > trained:
            raise ConfigError(f"clip_len={G} is longer than the {trained} latent frames the model was trained on "
                              f"(trained_frames / the checkpoint's max_frames); use clip_len <= {trained}")
        if cfg.get("allow_untrained_positions"):
            logger.warning("window=%d + clip_len=%d = %d frames exceeds the %d frames the model was trained on: "
                           "positions %d..%d were never trained (balls tend to fade); kept because "
                           "allow_untrained_positions is true", W, G, W + G, trained, trained, W + G - 1)
            return W
        logger.warning("window=%d + clip_len=%d = %d frames exceeds the %d frames the model was trained on; "
                       "using window=%d (set window<=%d, or allow_untrained_positions=true to keep it)",
                       W, G, W + G, trained, trained - G, trained - G)
        return trained - G

    def _no_guidance(self, scale) -> str:
        return (f"guide_scale={scale!r} needs a conditional model, but the embedder {self.cfg.embedder.get('type')} "
                f"takes no condition; set guide_scale=1 (or use the embedder the model was trained with)")

    # -- inputs ------------------------------------------------------------------
    def load_video(self, path: str, num_frames: int) -> torch.Tensor:
        """First ``num_frames`` frames (at ``frame_stride``) resized/cropped -> (C, T, H, W) in [-1, 1].
        Shorter videos give what they have (at least ``context_frames``)."""
        from utils.video_io import probe_video

        info = probe_video(path)
        stride = int(self.cfg.frame_stride)
        idx = list(range(0, info.num_frames, stride))[:num_frames]
        if len(idx) < max(1, self.cfg.context_frames):
            raise ValueError(f"{path}: {info.num_frames} frames at stride {stride} gives {len(idx)}, "
                             f"fewer than context_frames={self.cfg.context_frames}")
        frames, _ = read_video(path, frame_indices=idx)
        return to_tensor(resize_crop(frames, self.hw))

    def load_image(self, path: str) -> torch.Tensor:
        return to_tensor(resize_crop(read_image(path)[None], self.hw))

    def condition(self, value, num_frames: int | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(cond (1, M, dim), cond_mask (1, M)) for one input; ``None`` gives the embedder's null
        condition (unconditional generation with a conditional model). (None, None) when the
        embedder takes no condition. Bad values raise ValueError naming what is allowed.

        A per-frame embedder (actions): ``value`` is a sequence with one entry per frame (ints, or
        names of the embedder's game; -1 / None = no action) of a video of ``num_frames`` frames ->
        (1, num_frames, dim); a shorter sequence is padded with "no action", a longer one is an error."""
        if not is_conditional(self.embedder):
            return None, None
        if is_per_frame(self.embedder) and value is not None:
            if isinstance(value, (str, int)) or not hasattr(value, "__len__"):
                raise ValueError(f"the model takes one action per frame: give a sequence of actions (ints or "
                                 f"names), not {value!r}")
            if num_frames is not None and len(value) > num_frames:
                raise ValueError(f"{len(value)} actions for a video of {num_frames} frames (context + generated): "
                                 f"give one action per frame, at most {num_frames} (fewer are padded with no action)")
        with torch.no_grad():
            return embed(self.embedder, [value], self.device, num_frames)

    def conditions(self, value, num_frames: int, guided: bool) -> Condition:
        """The :class:`Condition` of one input of a video of ``num_frames`` (latent) frames: the embedded
        ``value`` and, when guided, the embedder's null; a per-frame embedder's tokens as frame conditions."""
        cond, cond_mask = self.condition(value, num_frames)
        if not is_per_frame(self.embedder):
            null_cond, null_mask = null_condition(self.embedder, 1, self.device) if guided else (None, None)
            return Condition(cond, cond_mask, null_cond, null_mask)
        null = null_condition(self.embedder, 1, self.device, num_frames)[0] if guided else None
        return Condition(frame_cond=cond, null_frame_cond=null)

    def _context_latent(self, context: torch.Tensor | None) -> torch.Tensor:
        """Context frames (C, Tc, H, W) in [-1, 1] (or None) -> latents (1, c, tc, h, w) on the device."""
        ae = self.autoencoder
        if context is not None and context.shape[1] > 0:
            return ae.encode(context[None].to(self.device))
        sf, p = ae.spatial_factor, next(self.model.parameters())  # no frames: the shape from the contract attributes
        return torch.zeros(1, ae.latent_channels, 0, self.hw[0] // sf, self.hw[1] // sf, device=p.device, dtype=p.dtype)

    # -- rollout -----------------------------------------------------------------
    @torch.no_grad()
    def predict(self, context: torch.Tensor | None, seed: int, cond_value=None,
                num_frames: int | None = None, guide_scale: float | None = None,
                history_guide_scale: float | None = None,
                progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """context (C, Tc, H, W) in [-1, 1] or None -> video (C, T, H, W) in [-1, 1], context included.

        ``cond_value`` (a label or caption; None = the null condition) conditions a conditional
        model; for an action-conditioned model it is one action per frame of the WHOLE video (context
        frames first; ints or names of the embedder's game; shorter is padded with no action);
        ``guide_scale`` / ``history_guide_scale`` override the config for this call.
        ``progress(clip_index, num_clips)`` is called after each generated clip (see rollout).
        The unconditional branch of guidance is ``embedder.null(1)``."""
        cfg = self.cfg
        total = int(num_frames or cfg.max_frames)
        scale = float(cfg.guide_scale if guide_scale is None else guide_scale)
        h_scale = float(cfg.history_guide_scale if history_guide_scale is None else history_guide_scale)
        if scale != 1.0 and not is_conditional(self.embedder):
            raise ValueError(self._no_guidance(scale))
        ae = self.autoencoder
        condition = self.conditions(cond_value, latent_frames(ae, total), scale != 1.0)
        ctx_latent = self._context_latent(context)
        settings = dataclasses.replace(self.settings, num_frames=latent_frames(ae, total) - ctx_latent.shape[2],
                                       guide_scale=scale, history_guide_scale=h_scale, seed=int(seed))
        with self.sampling_precision():
            out = rollout(self.model, self.diffusion, ctx_latent, settings, condition, progress)
        return self.autoencoder.decode(out.float())[0].clamp(-1, 1).cpu()

    def sampling_precision(self):
        """The precision context of sampling: none when the weights were cast once for it (bf16 backends),
        else the backend's autocast."""
        return contextlib.nullcontext() if self.cast else self.backend.autocast()

    def start(self, context: torch.Tensor | None, actions=None, seed: int = 0, guide_scale: float | None = None,
              history_guide_scale: float | None = None) -> PlaySession:
        """An interactive rollout after ``context`` (C, Tc, H, W) in [-1, 1] (or None): ``actions`` are the
        context frames' (one per frame, shorter padded with no action; None = unknown); then
        ``session.next_clip(actions)`` generates clip after clip (:class:`PlaySession`)."""
        return PlaySession(self, context, seed, actions, guide_scale, history_guide_scale)


class PlaySession:
    """Interactive play: "the next clip for these actions", again and again, with the history and its KV
    cache (``kv_cache: rolling | recompute | off`` of the config) kept between calls. Made by
    :meth:`Predictor.start`; one :class:`~tools.inferences.rollout.RolloutSession` underneath (the
    mechanism ``Predictor.predict`` runs through ``rollout``), so a session fed a whole action sequence
    clip by clip generates what ``predict`` does with it. It keeps only the history window (memory stays
    bounded however long the game); the caller keeps the clips it wants."""

    def __init__(self, predictor: Predictor, context: torch.Tensor | None, seed: int, actions=None,
                 guide_scale: float | None = None, history_guide_scale: float | None = None):
        cfg, p = predictor.cfg, predictor
        self.predictor = p
        scale = float(cfg.guide_scale if guide_scale is None else guide_scale)
        h_scale = float(cfg.history_guide_scale if history_guide_scale is None else history_guide_scale)
        if scale != 1.0 and not is_conditional(p.embedder):
            raise ValueError(p._no_guidance(scale))
        self.guided = scale != 1.0
        with torch.no_grad():
            ctx = p._context_latent(context)
            condition = p.conditions(actions, ctx.shape[2], self.guided) if ctx.shape[2] else \
                self._empty_condition()
        settings = dataclasses.replace(p.settings, num_frames=None, num_clips=None, guide_scale=scale,
                                       history_guide_scale=h_scale, seed=int(seed))
        self.session = RolloutSession(p.model, p.diffusion, ctx, settings, condition, keep_video=False)

    def _empty_condition(self) -> Condition:
        """The condition of a session without context frames (zero frame conditions so far)."""
        p = self.predictor
        if not is_per_frame(p.embedder):
            return p.conditions(None, 0, self.guided) if is_conditional(p.embedder) else Condition()
        empty = torch.zeros(1, 0, int(p.embedder.dim), device=p.device)
        return Condition(frame_cond=empty, null_frame_cond=empty if self.guided else None)

    @property
    def frames_generated(self) -> int:
        return self.session.frames_generated

    @property
    def settings(self):
        """The session's rollout settings (a copy of the Predictor's made at start; replace it to change e.g.
        the sampling steps of the next clips)."""
        return self.session.settings

    @settings.setter
    def settings(self, value) -> None:
        self.session.settings = value

    @torch.no_grad()
    def next_clip(self, actions=None, num_frames: int | None = None) -> torch.Tensor:
        """The next ``num_frames`` frames (default: the config's clip_len) -> (C, G, H, W) in [-1, 1] on the CPU.

        ``actions``: one action per frame of the clip (a sequence; shorter is padded with no action, longer
        is an error), or one action (an int or a name) for every frame of it; None = no action."""
        p = self.predictor
        g = int(num_frames or p.settings.clip_len)
        if actions is not None and (isinstance(actions, (str, int)) or not hasattr(actions, "__len__")):
            actions = [actions] * g
        fc = nfc = None
        if is_per_frame(p.embedder):
            cond = p.conditions(actions, g, self.guided)
            fc, nfc = cond.frame_cond, cond.null_frame_cond
        elif actions is not None:
            raise ValueError(f"actions were given, but the embedder {p.cfg.embedder.get('type')} takes no per-frame "
                             f"conditions (the model is not action-conditioned)")
        with p.sampling_precision():
            x = self.session.next_clip(g, fc, nfc)
        return p.autoencoder.decode(x.float())[0].clamp(-1, 1).cpu()


def _log_report(path, report: dict[str, list]) -> None:
    """Log how weights loaded: info when every key matched, a loud warning on a partial load."""
    if not any(report.values()):
        logger.info("weights %s: %s", path, format_report(report))
        return
    counts = ", ".join(f"{len(report.get(k, []))} {k}" for k in ("missing", "unexpected", "mismatched"))
    logger.warning("PARTIAL LOAD of %s (strict: false): %s keys; the model's missing and mismatched "
                   "tensors keep their random initial values, so outputs may be meaningless. %s",
                   path, counts, format_report(report))


def _setting_error(key: str, value, allowed: str, fix: str) -> ConfigError:
    return ConfigError(f"{key}={value!r} is not allowed: {allowed}; {fix}")


def _check_int(cfg, key: str, lo: int) -> int:
    v = cfg.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise _setting_error(key, v, f"it must be an integer >= {lo}", f"set e.g. '{key}={max(lo, 1)}'")
    return v


def _check_number(cfg, key: str, positive: bool = False) -> float:
    v = cfg.get(key)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 or not positive)
    if not ok:
        raise _setting_error(key, v, "it must be a " + ("positive " if positive else "") + "finite number",
                             f"set e.g. '{key}={ROLLOUT_DEFAULTS[key] or 1}'")
    return float(v)


def check_list_file(path, what: str = "item") -> None:
    """ConfigError unless ``test_list_path`` names an existing file (not a directory)."""
    if not Path(path).is_file():
        why = "is a directory, not a list file" if Path(path).is_dir() else "does not exist"
        raise ConfigError(f"test_list_path={str(path)!r} {why}; give a text file with one {what} per line")


def check_eval_range(er) -> None:
    """ConfigError unless ``eval_range`` is [start, stop) dataset indices."""
    if not (isinstance(er, (list, tuple)) and len(er) == 2 and all(isinstance(x, int) for x in er)
            and 0 <= er[0] < er[1]):
        raise ConfigError(f"eval_range={er!r} must be [start, stop) dataset indices with 0 <= start < stop; "
                          f"set e.g. 'eval_range=[0,64]'")


def check_save_videos(sv) -> None:
    """ConfigError unless ``save_videos`` is a count >= 0."""
    if isinstance(sv, bool) or not isinstance(sv, int) or sv < 0:
        raise ConfigError(f"save_videos={sv!r} must be an integer >= 0 (videos to write); set e.g. 'save_videos=4'")


def validate_rollout(cfg) -> None:
    """ConfigError for a rollout setting that would fail every item (contract C1, shared by the
    inference engines' ``validate``). Checks needing built components: Predictor.check_settings."""
    hw = cfg.get("resolution")
    hw_list = [hw, hw] if isinstance(hw, int) and not isinstance(hw, bool) else hw
    if not (isinstance(hw_list, (list, tuple)) and len(hw_list) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in hw_list)):
        raise _setting_error("resolution", hw, "it must be a positive int or [H, W] of positive ints",
                             "set e.g. 'resolution=[64,64]'")
    for key, lo in (("context_frames", 0), ("max_frames", 1), ("frame_stride", 1)):
        _check_int(cfg, key, lo)
    if cfg.get("trained_frames") is not None:
        _check_int(cfg, "trained_frames", 1)
    if cfg.context_frames >= cfg.max_frames:
        raise ConfigError(f"context_frames={cfg.context_frames} must be smaller than max_frames={cfg.max_frames} "
                          f"(the frames of each output, context included); raise max_frames or lower context_frames")
    _check_number(cfg, "fps", positive=True)
    try:  # num_sample_steps, clip_len, window, sampler, shift, guidance, history_noise, kv_cache
        RolloutSettings.from_config(cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for entry in lora.check_entries(cfg.get("lora")):
        if not Path(entry["path"]).is_file():
            raise ConfigError(f"lora path {entry['path']!r}: no such adapter file; give a LoRA run's "
                              f"checkpoints/step_N.ema.safetensors")
    if not isinstance(cfg.get("lora_merge", False), bool):
        raise _setting_error("lora_merge", cfg.get("lora_merge"), "true or false", "set 'lora_merge=true'")
    par = (cfg.get("backend") or {}).get("parallel", "auto")
    if par not in PARALLEL_CHOICES:
        raise _setting_error("backend.parallel", par, f"choose one of {', '.join(PARALLEL_CHOICES)}",
                             "inference shards the test list over torchrun's processes with parallel auto")
    tm = cfg.get("test_model")
    sharded = sharded_checkpoint_of(tm) if tm else None
    if sharded is not None:
        raise ConfigError(f"test_model={tm!r} is a sharded (FSDP) checkpoint: its weights are split over the "
                          f"ranks' files in {sharded.name}.dcp. Consolidate it into one file first: python -m "
                          f"scripts.consolidate_checkpoint {sharded} {sharded}.consolidated.safetensors, then "
                          f"test_model={sharded}.consolidated.safetensors")
    if tm and Path(tm).is_dir() and not cfg.get("pretrain"):
        raise ConfigError(f"test_model={tm!r} is a folder, which needs a pretrain loader that reads its layout "
                          f"(e.g. pretrain: {{type: VideoGPTCheckpoint}} for official Video-GPT weights); set "
                          f"pretrain, or give the path of a .safetensors file")
    if tm and not Path(tm).exists():
        raise ConfigError(f"test_model={tm!r}: no such weights file or folder; give the path of a .safetensors "
                          f"file, e.g. 'test_model=data/demo/tiny_physics.safetensors'")


