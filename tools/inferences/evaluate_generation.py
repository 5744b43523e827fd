"""INFER_ENGINE evaluate_generation: the metrics papers report, on any model's generated videos.

Inputs (each a folder of files, taken in name order, or a list file, taken in line order):

- ``generated``: the videos to score; a folder of videos, a test list of video lines
  (``path|||prompt``), or the output folder of a predict_next_clip run (it holds
  ``results.jsonl``): then its ``<name>.prediction.mp4`` files (``save_prediction=true``) or
  its mp4s when they are the prediction alone (``side_by_side=false``), the run's input videos as
  references, their captions as prompts and the run's ``context_frames``;
- ``reference`` (optional): real videos or the true continuations, paired with ``generated`` in
  order; ``variance`` (optional): second takes of the reference scenes, paired with
  ``reference`` (the physical-variance bound); ``condition_images`` (optional): the
  conditioning images, paired with ``generated``; ``prompts`` (optional): a text file, one
  prompt per line (else the captions of the lists).

The first ``context_frames`` frames of every video were given, not generated: per-video
metrics score the frames after them. Metrics (``metrics``; null = every one the inputs allow):

- ``flicker``: VBench's temporal flicker of the generated frames (1 = static);
- ``psnr`` / ``ssim``: against the reference, mean over the generated frames;
- ``spatial_iou``, ``spatiotemporal_iou``, ``weighted_spatial_iou``, ``mse`` (``physics_iq``):
  Physics-IQ-style motion-mask scores against the reference; with ``variance`` also the same
  scores of the second takes and the Physics-IQ aggregate (100 = the physical variance);
- ``clip_t`` / ``clip_i``: CLIP similarity of the generated frames to the prompt / the
  conditioning image (``clip_weights``: local OpenCLIP weights);
- ``fvd``: the Fréchet distance of I3D features (``i3d_path``) of the generated and the
  reference videos (the first ``fvd_frames`` frames of each, context included), one value for the
  set with its number of videos: FVD is biased upwards at small n.

Writes ``metrics.json`` (``settings``, ``num_videos``, ``aggregate`` {metric: mean, std, min,
max, n}, ``per_video``, ``failures``, and ``variance`` / ``physics_iq`` / ``fvd`` when
computed) and ``distributions.png`` (every metric's per-video values). See docs/guide/metrics.md.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from tools.inferences.scoring import (
    SCORER_DEFAULTS,
    build_clip,
    build_i3d,
    check_scorer_settings,
    motion_settings,
    physics_iq,
    plot_distributions,
    summarize,
    video_scores,
)
from utils.config import ConfigError, run_dir, to_yaml
from utils.io import atomic_write_text
from utils.logging import setup_logger
from utils.metrics import MOTION_METRICS, psnr_per_frame, ssim_per_frame
from utils.registry import INFER_ENGINE
from utils.test_list import load_results, parse_test_list
from utils.video_io import IMAGE_EXTS, read_image, read_video, resize_crop, to_tensor

VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".gif")
METRIC_GROUPS = {"flicker": ("flicker",), "psnr": ("psnr",), "ssim": ("ssim",), "physics_iq": MOTION_METRICS,
                 "clip_t": ("clip_t",), "clip_i": ("clip_i",), "fvd": ("fvd",)}
NEEDS_REFERENCE = ("psnr", "ssim", "physics_iq", "fvd")

DEFAULTS = dict(
    SCORER_DEFAULTS,
    log_dir="workspace/eval",
    generated=None,          # folder | test list | a predict_next_clip output folder (results.jsonl)
    reference=None,          # folder | test list of real videos / true continuations, paired in order
    variance=None,           # folder | test list of second takes of the reference scenes (physical variance)
    condition_images=None,   # folder | image list of conditioning images, paired in order (CLIP-I)
    prompts=None,            # text file, one prompt per line (else the lists' captions)
    context_frames=None,     # leading frames that were given (null: the run's, else 0)
    num_frames=None,         # frames scored per video (null: all that every paired video has)
    metrics=None,            # null: all the inputs allow; or a list of flicker psnr ssim physics_iq clip_t clip_i fvd
    device="cpu",            # where CLIP / I3D run (cpu | cuda | cuda:N)
)


# ---------------------------------------------------------------------------- inputs
def _is_run(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "results.jsonl"))


def _files(spec: str, kind: str) -> list[dict]:
    """``[{path, caption, error}]`` of a folder (name order) or a list file (line order)."""
    exts = VIDEO_EXTS if kind == "video" else IMAGE_EXTS
    if os.path.isdir(spec):
        names = sorted(n for n in os.listdir(spec) if n.lower().endswith(exts) and not n.startswith("."))
        return [{"path": os.path.join(spec, n), "caption": "", "error": None} for n in names]
    return [{"path": it.path, "caption": it.caption, "error": it.error}
            for it in parse_test_list(spec, kind=kind)]


def _run_files(folder: str) -> tuple[list[dict], list[dict], int]:
    """The prediction-only videos of a predict_next_clip run folder, its input videos (the
    references) and its context_frames."""
    cfg_path = os.path.join(folder, "config.yaml")
    run_cfg = yaml.safe_load(open(cfg_path, encoding="utf-8")) if os.path.isfile(cfg_path) else {}
    kind = run_cfg.get("test_list_kind", "video")
    recs = [r for _, r in sorted(load_results(folder).items()) if r.get("status") == "ok"]
    gen, ref = [], []
    for r in recs:
        out = r["output"]
        pred = out[:-4] + ".prediction.mp4"
        if os.path.isfile(pred):
            out = pred
        elif kind == "video" and run_cfg.get("side_by_side", True):
            raise ConfigError(f"generated={folder!r} is a predict_next_clip run whose mp4s are ground truth | "
                              f"prediction side by side and it saved no {os.path.basename(pred)}; re-run it with "
                              f"'save_prediction=true' (or 'side_by_side=false')")
        gen.append({"path": out, "caption": r.get("caption") or "", "error": None})
        if kind == "video":
            ref.append({"path": r.get("path"), "caption": r.get("caption") or "", "error": None})
    context = int(run_cfg.get("context_frames", 0)) if kind in ("video", "image") else 0
    return gen, ref, context


def _check_source(key: str, spec) -> None:
    if spec is not None and not os.path.exists(spec):
        hint = " (a predict_next_clip run writes it: see the config's first lines)" if key == "generated" else ""
        raise ConfigError(f"{key}={spec!r}: no such folder or list file{hint}; give a folder of files or a test list "
                          f"(one 'path|||caption' per line)")


def chosen_metrics(cfg, has_reference: bool, has_prompts: bool) -> list[str]:
    """The metric groups to compute: ``metrics``, or (null) every one the inputs allow."""
    if cfg.get("metrics") is not None:
        return list(cfg.metrics)
    out = ["flicker"]
    if has_reference:
        out += ["psnr", "ssim", "physics_iq"]
    if cfg.get("clip_weights") and has_prompts:
        out.append("clip_t")
    if cfg.get("clip_weights") and cfg.get("condition_images"):
        out.append("clip_i")
    if cfg.get("i3d_path") and has_reference:
        out.append("fvd")
    return out


def validate(cfg) -> None:
    """Contract C1: one-line ConfigError for settings that would fail the evaluation (the input
    files are checked when it starts, :func:`check_inputs`: they may be made by an earlier command)."""
    if cfg.get("generated") is None:
        raise ConfigError("generated=null: give the videos to score, e.g. 'generated=workspace/demo_v2_latent/"
                          "test_list' (a predict_next_clip output folder), a folder of videos or a test list")
    for key in ("generated", "reference", "variance", "condition_images", "prompts"):
        v = cfg.get(key)
        if v is not None and not isinstance(v, str):
            raise ConfigError(f"{key}={v!r} must be the path of a folder or a list file, or null")
    m = cfg.get("metrics")
    if m is not None:
        bad = [x for x in (m if isinstance(m, list) else [m]) if x not in METRIC_GROUPS]
        if not isinstance(m, list) or not m or bad:
            raise ConfigError(f"metrics={m!r} must be null (all the inputs allow) or a list of {list(METRIC_GROUPS)}; "
                              f"set e.g. 'metrics=[flicker,physics_iq]'")
        if "clip_i" in m and not cfg.get("condition_images"):
            raise ConfigError("metrics includes clip_i but condition_images=null; set condition_images or drop clip_i")
    c = cfg.get("context_frames")
    if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 0):
        raise ConfigError(f"context_frames={c!r} must be null (the run's, else 0) or an int >= 0")
    n = cfg.get("num_frames")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 2):
        raise ConfigError(f"num_frames={n!r} must be null (all) or an int >= 2")
    m = m or []
    check_scorer_settings(cfg, need_clip="clip_t" in m or "clip_i" in m, need_fvd="fvd" in m)


def check_inputs(cfg) -> None:
    """The input folders / lists exist and the chosen metrics have what they compare with."""
    for key in ("generated", "reference", "variance", "condition_images", "prompts"):
        _check_source(key, cfg.get(key))
    has_ref = bool(cfg.get("reference")) or _is_run(cfg.generated)
    if cfg.get("variance") and not has_ref:
        raise ConfigError(f"variance={cfg.variance!r} needs reference: the second takes are scored against the "
                          f"first takes; set reference")
    for x in cfg.get("metrics") or []:
        if x in NEEDS_REFERENCE and not has_ref:
            raise ConfigError(f"metrics includes {x}, which compares with reference videos, but reference=null; "
                              f"set reference or drop {x}")


def _pair(key: str, items: list, n: int, other: str = "generated") -> list:
    if items and len(items) != n:
        raise ConfigError(f"{key} has {len(items)} files but {other} has {n}; they pair in order, so give as many "
                          f"(or fix the folder / list)")
    return items


def _entries(cfg) -> tuple[list[dict], int]:
    """One dict per video: name, generated, reference, variance, prompt, image paths; and the
    context frame count."""
    run = _is_run(cfg.generated)
    if run:
        gen, ref, context = _run_files(cfg.generated)
    else:
        gen, ref, context = _files(cfg.generated, "video"), [], 0
    if cfg.get("reference"):
        ref = _files(cfg.reference, "video")
    if cfg.get("context_frames") is not None:
        context = int(cfg.context_frames)
    n = len(gen)
    if n == 0:
        raise ConfigError(f"generated={cfg.generated!r} holds no videos ({', '.join(VIDEO_EXTS)})")
    ref = _pair("reference", ref, n)
    var = _pair("variance", _files(cfg.variance, "video") if cfg.get("variance") else [], n)
    imgs = _pair("condition_images", _files(cfg.condition_images, "image") if cfg.get("condition_images") else [], n)
    prompts = None
    if cfg.get("prompts"):
        lines = [x.strip() for x in open(cfg.prompts, encoding="utf-8-sig").read().splitlines()]
        prompts = _pair("prompts", [x for x in lines if x and not x.startswith("#")], n)
    out = []
    for i, g in enumerate(gen):
        prompt = prompts[i] if prompts else (g["caption"] or (ref[i]["caption"] if ref else ""))
        out.append({"name": os.path.basename(g["path"] or f"line {i + 1}"), "generated": g,
                    "reference": ref[i] if ref else None, "variance": var[i] if var else None,
                    "image": imgs[i] if imgs else None, "prompt": prompt})
    return out, context


def _load(entry: dict | None, hw: tuple | None = None) -> torch.Tensor | None:
    """A video file as (C, T, H, W) in [-1, 1], resized and centre-cropped to ``hw``."""
    if entry is None:
        return None
    if entry["error"]:
        raise ValueError(entry["error"])
    frames, _ = read_video(entry["path"])
    if hw is not None and frames.shape[1:3] != hw:
        frames = resize_crop(frames, hw)
    return to_tensor(frames)


def _load_image(entry: dict, hw: tuple) -> torch.Tensor:
    if entry["error"]:
        raise ValueError(entry["error"])
    img = read_image(entry["path"])[None]
    if img.shape[1:3] != hw:
        img = resize_crop(img, hw)
    return to_tensor(img)[:, 0]


# ---------------------------------------------------------------------------- engine
@INFER_ENGINE.register_class()
def evaluate_generation(cfg) -> int:
    """Score generated videos (and optional references, second takes, prompts, images)."""
    validate(cfg)
    check_inputs(cfg)
    start = time.time()
    entries, context = _entries(cfg)
    has_prompts = any(e["prompt"] for e in entries)
    groups = chosen_metrics(cfg, any(e["reference"] for e in entries), has_prompts)
    wanted = {k for g in groups for k in METRIC_GROUPS[g]}
    out_dir = run_dir(cfg)
    log = setup_logger(out_dir)
    atomic_write_text(out_dir / "config.yaml", to_yaml({k: v for k, v in cfg.items() if not k.startswith("_")}))
    device = str(cfg.device)
    clip = build_clip(cfg, device) if {"clip_t", "clip_i"} & wanted else None
    i3d = build_i3d(cfg, device) if "fvd" in wanted else None
    motion = motion_settings(cfg)

    per_video, variance_rows, failures, feats, ref_feats = [], [], [], [], []
    for e in entries:
        try:
            gen = _load(e["generated"])
            hw = tuple(gen.shape[2:])
            ref, var = _load(e["reference"], hw), _load(e["variance"], hw)
            T = min(v.shape[1] for v in (gen, ref, var) if v is not None)
            if cfg.get("num_frames"):
                if T < cfg.num_frames:
                    raise ValueError(f"has {T} frames (with its reference), fewer than num_frames={cfg.num_frames}")
                T = int(cfg.num_frames)
            if context >= T - (1 if "flicker" in wanted else 0):
                raise ValueError(f"has {T} frames, not more than context_frames={context}: nothing generated to "
                                 f"score")
            gen, ref, var = (None if v is None else v[:, :T] for v in (gen, ref, var))
            image = _load_image(e["image"], hw) if e["image"] and "clip_i" in wanted else None
            use_ref = ref if wanted & set(MOTION_METRICS) else None
            scores = video_scores(gen, use_ref, context, motion, clip, e["prompt"], image)
            if ref is not None and {"psnr", "ssim"} & wanted:
                scores["psnr"] = float(psnr_per_frame(gen[:, context:], ref[:, context:]).mean())
                scores["ssim"] = float(ssim_per_frame(gen[:, context:], ref[:, context:]).mean())
            scores = {k: v for k, v in scores.items() if k in wanted}
            if var is not None and ref is not None:
                variance_rows.append({k: v for k, v in video_scores(var, ref, context, motion).items()
                                      if k in MOTION_METRICS})
            if i3d is not None:
                feats.append(i3d([gen]))
                if ref is not None:
                    ref_feats.append(i3d([ref]))
        except Exception as err:  # a bad video is reported and the evaluation goes on
            failures.append({"video": e["name"], "error": f"{type(err).__name__}: {err}"})
            log.warning("skipped %s: %s", e["name"], err)
            continue
        per_video.append({"name": e["name"], "generated": e["generated"]["path"],
                          "reference": e["reference"]["path"] if e["reference"] else None,
                          "prompt": e["prompt"] or None, "frames": T, **scores})
        log.info("%s: %s", e["name"], "  ".join(f"{k} {v:.4f}" for k, v in scores.items()))

    rows = [{k: v for k, v in r.items() if k in wanted} for r in per_video]
    result = {"settings": {k: v for k, v in cfg.items() if not k.startswith("_")},
              "context_frames": context, "metric_groups": groups, "num_videos": len(per_video),
              "aggregate": summarize(rows), "per_video": per_video, "failures": failures}
    if variance_rows:
        result["variance"] = {"aggregate": summarize(variance_rows), "per_video": variance_rows}
        result["physics_iq"] = physics_iq(result["aggregate"], result["variance"]["aggregate"])
    if i3d is not None and len(feats) >= 2 and len(ref_feats) >= 2:
        from tools.scorers.i3d import fvd

        value = fvd(torch.cat(feats), torch.cat(ref_feats))
        result["fvd"] = {"value": value, "num_videos": len(feats), "num_reference": len(ref_feats),
                         "frames": int(cfg.fvd_frames),
                         "note": "FVD is biased upwards at small n: compare values at equal n only"}
        log.info("FVD %.2f over %d videos (biased at small n)", value, len(feats))
    elif i3d is not None:
        log.warning("no FVD: it needs at least 2 generated and 2 reference videos (got %d and %d)", len(feats),
                    len(ref_feats))
    result["seconds"] = round(time.time() - start, 2)
    if per_video:
        per_method = {"generated": rows}
        if variance_rows:
            per_method["second take"] = variance_rows
        bounds = {k: v["mean"] for k, v in result.get("variance", {}).get("aggregate", {}).items()}
        plot_distributions(per_method, out_dir / "distributions.png",
                           f"{cfg.name}: {len(per_video)} videos, context {context}", bounds)
        for k, v in result["aggregate"].items():
            log.info("%-22s mean %.4f  std %.4f  (n %d)", k, v["mean"], v["std"], v["n"])
        if result.get("physics_iq") is not None:
            log.info("Physics-IQ-style score %.1f%% of the physical variance", result["physics_iq"])
    atomic_write_text(out_dir / "metrics.json", json.dumps(result, indent=1, default=_plain, allow_nan=False))
    log.info("wrote %s (%d videos, %d failed, %.1f s)", out_dir / "metrics.json", len(per_video), len(failures),
             result["seconds"])
    return 0 if per_video and not failures else 1


def _plain(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    return str(x)


evaluate_generation.defaults = DEFAULTS
evaluate_generation.validate = validate
