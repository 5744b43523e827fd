"""INFER_ENGINE evaluate_prediction: pixels and objects per predicted frame, model vs baselines.

Videos with a ground-truth continuation come from a test list (``test_list_path``, video
lines) or from a dataset config (``dataset`` + ``eval_range``, e.g. SyntheticPhysics with a
seed never used in training; ``dataset.seed=N`` on the command line picks other videos). For
each video the first ``context_frames`` frames are given and ``max_frames - context_frames``
are predicted by every method in ``METHODS``:

- ``model``: the rollout (its window kept within the trained frame positions, see Predictor);
- ``tracker``: the physics-aware tracker (tools/inferences/tracker.py);
- ``empty``: the background (with the obstacles) and no ball;
- ``copy_last`` / ``linear``: the last context frame / per-pixel linear extrapolation.

Scores per predicted frame: ``psnr``, ``ssim`` and, read by the scene analyser from predicted
and true frames (``detect_objects`` / ``match_objects``), ``position_error`` (pixels, mean over
true balls matched by colour; a missing ball counts ``position_miss`` x the shorter side, also
the cap), ``count_accuracy`` (share of videos whose predicted frame shows as many balls as the
true one) and ``color_consistency`` (Jaccard index of the colour sets). metrics.json::

    {"methods": {method: {metric: [mean over videos per predicted frame]}},
     "horizons": {"8": {method: {metric: mean over the first 8 predicted frames}}, ...},
     "mean": {method: {"psnr_per_frame", "psnr_mean", "ssim_per_frame", "ssim_mean"}},
     "per_video": [...], "failures": [...], "context_frames", "predicted_frames", "num_videos"}

``eval_horizons`` (default: all predicted frames) lists the horizons of ``horizons``; one rollout
of ``max_frames`` serves them all (a shorter rollout gives the same first frames). Plot:
metrics.png (all metrics) and psnr_ssim.png. Every output is written atomically.

Generation metrics (the functions evaluate_generation uses, tools/inferences/scoring.py): per method
and video the temporal ``flicker`` of the predicted frames and the Physics-IQ-style motion scores
(``spatial_iou``, ``spatiotemporal_iou``, ``weighted_spatial_iou``, ``mse``; masks with the
``motion`` settings over context + prediction, scored on the predicted frames) ->
``generation: {methods: {method: {metric: {mean, std, min, max, n}}}, per_video: [...]}``, plot
generation.png. ``variance_perturbation=s`` (SyntheticPhysics only) adds the physical-variance bound:
a second take of every video (``perturbation=s``, ``take=1``) scored like a method (``variance``),
and ``generation.physics_iq`` = each method's Physics-IQ aggregate against it (100 = as close to the
truth as a physically possible second take).
"""
from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from tools.embedders.conditioning import is_conditional
from tools.inferences.predictor import (ROLLOUT_DEFAULTS, Predictor, check_eval_range, check_list_file,
                                        check_save_videos, validate_rollout)
from tools.inferences.scene import detect_objects, match_objects, settings_from_dataset
from tools.inferences.scoring import MOTION_DEFAULTS, check_scorer_settings, physics_iq, plot_distributions
from tools.inferences.scoring import summarize as summarize_values
from tools.inferences.scoring import video_scores as generation_scores
from tools.inferences.tracker import empty_frames, physics_from_dataset, track_and_predict
from utils.config import ConfigError, run_dir, to_yaml
from utils.io import atomic_path, atomic_write_text
from utils.logging import setup_logger
from utils.metrics import copy_last_baseline, linear_baseline, psnr_per_frame, ssim_per_frame
from utils.registry import DATASETS, INFER_ENGINE
from utils.run_lock import run_lock
from utils.test_list import parse_test_list
from utils.video_io import side_by_side, to_uint8, write_video

METHODS = ("model", "tracker", "empty", "copy_last", "linear")
METRICS = ("psnr", "ssim", "position_error", "count_accuracy", "color_consistency")

DEFAULTS = dict(
    ROLLOUT_DEFAULTS,
    log_dir="workspace/eval",
    test_list_path=None,
    dataset=None,
    eval_range=[0, 64],    # dataset item indices [start, stop)
    save_videos=4,         # write GT | model | tracker | copy-last | linear for the first N videos
    eval_horizons=None,    # predicted-frame horizons summarised in metrics.json (null = all predicted frames)
    position_miss=0.5,     # position error of a missing ball (and the cap), fraction of the shorter side
    cond_key=None,         # dataset item key a conditional model predicts with (caption | label); null: the null condition
    motion=dict(MOTION_DEFAULTS),  # motion-mask settings of the Physics-IQ-style scores (utils.metrics.motion_masks)
    variance_perturbation=None,  # pixels: a second take of each SyntheticPhysics video, the physical-variance bound
)


def score(pred: torch.Tensor, truth: torch.Tensor) -> Dict[str, List[float]]:
    return {"psnr": psnr_per_frame(pred, truth).tolist(), "ssim": ssim_per_frame(pred, truth).tolist()}


def baselines(context: torch.Tensor, n: int) -> Dict[str, torch.Tensor]:
    return {"copy_last": copy_last_baseline(context, n), "linear": linear_baseline(context, n)}


def object_scores(pred: np.ndarray, truth_objects: List[List[Dict]], settings, miss: float) -> Dict[str, List[float]]:
    """Object metrics per frame of uint8 ``pred`` (T, H, W, 3) against the true frames' objects."""
    rows = [match_objects(p, t, miss) for p, t in zip(detect_objects(pred, settings), truth_objects)]
    return {"position_error": [r["position_error"] for r in rows], "count_accuracy": [r["count_correct"] for r in rows],
            "color_consistency": [r["color_consistency"] for r in rows]}


def object_baselines(context: torch.Tensor, n: int, settings, physics) -> Dict[str, torch.Tensor]:
    """The tracker's and the empty scene's predictions of ``n`` frames after ``context`` (C, T, H, W)."""
    ctx = to_uint8(context)
    return {"tracker": _from_uint8(track_and_predict(ctx, n, settings, physics)),
            "empty": _from_uint8(empty_frames(ctx, n, settings))}


def _from_uint8(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (3, T, H, W) in [-1, 1] (the inverse of to_uint8)."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0


def _nanmean(rows: np.ndarray, axis=None):
    """Mean ignoring NaN (frames without true balls); NaN where nothing is finite."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "mean of empty slice"
        return np.nanmean(rows, axis)


def summarize(per_video: List[Dict]) -> Dict:
    """Mean over videos of PSNR / SSIM at each predicted frame index, and overall (legacy "mean")."""
    out = {}
    for m in METHODS:
        out[m] = {}
        for metric in ("psnr", "ssim"):
            rows = torch.tensor([v[m][metric] for v in per_video])  # (N, T_pred)
            out[m][metric + "_per_frame"] = rows.mean(0).tolist()
            out[m][metric + "_mean"] = float(rows.mean())
    return out


def summarize_methods(per_video: List[Dict], horizons: List[int]) -> Dict:
    """``methods``: per predicted frame the mean over videos of every metric; ``horizons``: the
    mean over the first h predicted frames (and videos) for each h."""
    methods, by_h = {}, {str(h): {} for h in horizons}
    for m in METHODS:
        methods[m] = {}
        for metric in METRICS:
            rows = np.array([v[m][metric] for v in per_video], np.float64)  # (N, T_pred)
            methods[m][metric] = [_json_float(x) for x in _nanmean(rows, 0)]
            for h in horizons:
                by_h[str(h)].setdefault(m, {})[metric] = _json_float(_nanmean(rows[:, :h]))
    return {"methods": methods, "horizons": by_h}


def _json_float(x) -> float:
    x = float(x)
    return x if math.isfinite(x) else None


def plot_methods(methods: Dict, path: Path, title: str) -> None:
    """Every metric per predicted frame for every method (one panel per metric)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = {"psnr": "PSNR (dB)", "ssim": "SSIM", "position_error": "position error (px, lower is better)",
             "count_accuracy": "ball count accuracy", "color_consistency": "colour consistency"}
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.8))
    for ax, metric in zip(axes, METRICS):
        for m in METHODS:
            ys = [np.nan if y is None else y for y in methods[m][metric]]
            ax.plot(range(1, len(ys) + 1), ys, marker="o" if len(ys) <= 16 else None, label=m)
        ax.set_xlabel("predicted frame index")
        ax.set_ylabel(units[metric])
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def plot(summary: Dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("psnr", "ssim")):
        for m in METHODS:
            ys = summary[m][metric + "_per_frame"]
            ax.plot(range(1, len(ys) + 1), ys, marker="o", label=m)
        ax.set_xlabel("predicted frame index")
        ax.set_ylabel(metric.upper() + (" (dB)" if metric == "psnr" else ""))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def validate(cfg) -> None:
    """Contract C1: one-line ConfigError for settings that would fail the evaluation."""
    path, ds = cfg.get("test_list_path"), cfg.get("dataset")
    if not path and not ds:
        raise ConfigError("test_list_path and dataset are both null: evaluate_prediction needs videos with a "
                          "continuation; set 'test_list_path LIST' (video lines) or a dataset + eval_range")
    if path:
        check_list_file(path, "video")
    if not path:
        check_eval_range(cfg.get("eval_range"))
    C = cfg.get("context_frames")
    if isinstance(C, int) and not isinstance(C, bool) and C < 1:
        raise ConfigError(f"context_frames={C} must be >= 1: the evaluation scores predictions from given frames; "
                          f"set e.g. 'context_frames=4'")
    check_save_videos(cfg.get("save_videos"))
    validate_rollout(cfg)
    horizons(cfg)
    key = cfg.get("cond_key")
    if key is not None and (not isinstance(key, str) or not key):
        raise ConfigError(f"cond_key={key!r} must be a dataset item key (caption | label) or null; set e.g. "
                          f"'cond_key=caption'")
    if key is not None and path:
        raise ConfigError(f"cond_key={key!r} reads the condition from dataset items, but the videos come from "
                          f"test_list_path (video lines carry no condition); use a dataset or set cond_key=null")
    check_scorer_settings(cfg)
    vp = cfg.get("variance_perturbation")
    if vp is not None:
        ds = cfg.get("dataset") or {}
        if path or ds.get("type") != "SyntheticPhysics":
            raise ConfigError(f"variance_perturbation={vp!r} makes second takes of SyntheticPhysics scenes, but the "
                              f"videos come from {'test_list_path' if path else ds.get('type')}; use a SyntheticPhysics "
                              f"dataset or set variance_perturbation=null")
        if isinstance(vp, bool) or not isinstance(vp, (int, float)) or not 0 < vp < 10:
            raise ConfigError(f"variance_perturbation={vp!r} must be a number of pixels in (0, 10) (e.g. 0.5) or null")
    pm = cfg.get("position_miss")
    if isinstance(pm, bool) or not isinstance(pm, (int, float)) or not 0 < pm <= 2:
        raise ConfigError(f"position_miss={pm!r} must be a number in (0, 2] (fraction of the shorter side); "
                          f"set e.g. 'position_miss=0.5'")


def horizons(cfg) -> List[int]:
    """``eval_horizons`` checked against the predicted frames (default: [all predicted frames])."""
    n = int(cfg.max_frames) - int(cfg.context_frames)
    hs = cfg.get("eval_horizons")
    if hs is None:
        return [n]
    if not (isinstance(hs, (list, tuple)) and hs and all(isinstance(h, int) and not isinstance(h, bool)
                                                          and 1 <= h <= n for h in hs)):
        raise ConfigError(f"eval_horizons={hs!r} must be a list of predicted-frame counts in 1..{n} "
                          f"(max_frames - context_frames); raise max_frames (and the dataset's num_frames) "
                          f"or set e.g. 'eval_horizons=[{min(8, n)},{n}]'")
    return sorted(set(int(h) for h in hs))


def scene_settings(cfg):
    """Scene analyser settings and tracker physics of the evaluated videos: the dataset's when it
    is SyntheticPhysics, else the SyntheticPhysics defaults (palette, background)."""
    ds = dict(cfg.dataset) if cfg.get("dataset") and cfg.dataset.get("type") == "SyntheticPhysics" else {}
    return settings_from_dataset(ds), physics_from_dataset(ds)


def _sources(cfg) -> List:
    """(name, seed, loader(predictor) returning ((C, T, H, W) video, condition value or None) or raising)
    for every video to score; the condition is the item's ``cond_key`` value (datasets only)."""
    T, sources = int(cfg.max_frames), []
    if cfg.test_list_path:
        for item in parse_test_list(Path(cfg.test_list_path), kind="video", rounds=1, base_seed=cfg.seed):
            if item.error:
                sources.append((f"line {item.line_no}", item.seed, _raiser(item.error)))
            else:
                sources.append((item.path, item.seed, lambda p, it=item: (p.load_video(it.path, T), None)))
    elif cfg.dataset:
        ds = DATASETS.build(cfg.dataset, "dataset")
        lo, hi = cfg.eval_range
        for i in range(int(lo), int(hi)):
            sources.append((f"{cfg.dataset['type']}[{i}]", cfg.seed + i, lambda p, i=i: _item(ds[i], cfg.cond_key)))
    else:
        raise ConfigError("evaluate_prediction needs test_list_path (video lines) or dataset + eval_range.")
    return sources


def _item(item: Dict, cond_key: Optional[str]):
    """(video, condition value) of a dataset item; KeyError naming the keys it has."""
    if cond_key is None:
        return item["video"], None
    if cond_key not in item:
        raise KeyError(f"cond_key={cond_key!r} but the dataset's items have only {sorted(item)}; set cond_key to one "
                       f"of them (caption | label) or null")
    value = item[cond_key]
    return item["video"], (value.item() if torch.is_tensor(value) else value)


@INFER_ENGINE.register_class()
def evaluate_prediction(cfg) -> int:
    """PSNR/SSIM per predicted frame for the model and copy-last / linear baselines."""
    C, T = int(cfg.context_frames), int(cfg.max_frames)
    if C < 1 or T <= C:
        raise ConfigError(f"evaluate_prediction needs 1 <= context_frames < max_frames, got {C} and {T}.")
    sources = _sources(cfg)  # the list is read before anything is created
    out_dir = run_dir(cfg)
    with run_lock(out_dir, "evaluation"):  # the run owns its directory until it ends
        log = setup_logger(out_dir)  # before the Predictor, so its start-up lines are kept
        atomic_write_text(out_dir / "config.yaml", to_yaml({k: v for k, v in cfg.items() if not k.startswith("_")}))
        predictor = Predictor(cfg)
        if cfg.cond_key is not None and not is_conditional(predictor.embedder):
            raise ConfigError(f"cond_key={cfg.cond_key!r} but the model is unconditional (embedder "
                              f"{cfg.embedder.get('type')}); set cond_key=null or use the embedder it was trained with")
        if cfg.cond_key is None and is_conditional(predictor.embedder):
            log.warning("a conditional model (embedder %s) predicts with the null condition: set "
                        "cond_key=caption|label "
                        "to give it each item's condition", cfg.embedder.get("type"))

        settings, physics = scene_settings(cfg)
        miss = float(cfg.position_miss) * min(predictor.hw)
        per_video, failures, generation = [], [], []
        takes = None
        if cfg.get("variance_perturbation") is not None:  # second takes of the same scenes (physical variance)
            takes = DATASETS.build({**cfg.dataset, "perturbation": float(cfg.variance_perturbation), "take": 1}, "dataset")
        motion = {**MOTION_DEFAULTS, **dict(cfg.motion)}
        for n, (name, seed, load) in enumerate(sources):
            t0 = time.time()
            try:
                truth, cond_value = load(predictor)
                if truth.shape[1] < T:
                    raise ValueError(f"has {truth.shape[1]} frames, needs max_frames={T}")
                truth = truth[:, :T]
                pred = predictor.predict(truth[:, :C], seed, cond_value, T)
            except Exception as e:  # a bad video is reported and the evaluation goes on
                failures.append({"input": name, "error": f"{type(e).__name__}: {e}"})
                log.warning("skipped %s: %s", name, e)
                continue
            future = truth[:, C:]
            preds = {"model": pred[:, C:T], **object_baselines(truth[:, :C], T - C, settings, physics),
                     **baselines(truth[:, :C], T - C)}
            truth_objects = detect_objects(to_uint8(future), settings)
            rec = {"input": name, "seed": seed}
            for m, p in preds.items():
                rec[m] = {**score(p, future), **object_scores(to_uint8(p), truth_objects, settings, miss)}
            gen = {m: generation_scores(torch.cat([truth[:, :C], p], 1), truth, C, motion) for m, p in preds.items()}
            if takes is not None:
                gen["variance"] = generation_scores(takes[int(cfg.eval_range[0]) + n]["video"][:, :T], truth, C, motion)
            generation.append({"input": name, **gen})
            rec["seconds"] = round(time.time() - t0, 3)
            per_video.append(rec)
            if n < cfg.save_videos:
                panel = side_by_side(truth, pred, *(torch.cat([truth[:, :C], preds[m]], 1)
                                                    for m in ("tracker", "copy_last", "linear")))
                write_video(out_dir / "videos" / f"{n:04d}.mp4", panel, fps=cfg.fps)
            log.info("%s: PSNR model %.2f dB, tracker %.2f, empty %.2f; position error model %.2f px, tracker %.2f",
                     name, _mean(rec["model"]["psnr"]), _mean(rec["tracker"]["psnr"]), _mean(rec["empty"]["psnr"]),
                     _mean(rec["model"]["position_error"]), _mean(rec["tracker"]["position_error"]))

        result = {"context_frames": C, "predicted_frames": T - C, "num_videos": len(per_video),
                  "window": predictor.window, "failures": failures, "per_video": _finite(per_video)}
        if per_video:
            result.update(summarize_methods(per_video, horizons(cfg)))
            result["mean"] = summarize(per_video)
            title = f"{cfg.name}: {len(per_video)} videos, C={C}"
            plot(result["mean"], out_dir / "psnr_ssim.png", title)
            plot_methods(result["methods"], out_dir / "metrics.png", title)
            result["generation"] = summarize_generation(generation)
            per_method = {m: [g[m] for g in generation] for m in generation[0] if m != "input"}
            plot_distributions(per_method, out_dir / "generation.png", title)
            for m, ms in result["generation"]["methods"].items():
                log.info("%-9s %s  Physics-IQ %s", m, "  ".join(f"{k} {v['mean']:.4f}" for k, v in ms.items()),
                         _fmt(result["generation"].get("physics_iq", {}).get(m)))
            for h, per in result["horizons"].items():
                for m in METHODS:
                    log.info("first %3s frames %-9s PSNR %.2f dB  SSIM %.4f  position error %s px  count accuracy %.3f",
                             h, m, per[m]["psnr"], per[m]["ssim"], _fmt(per[m]["position_error"]),
                             per[m]["count_accuracy"])
        atomic_write_text(out_dir / "metrics.json", json.dumps(result, indent=1, allow_nan=False))
        log.info("wrote %s (%d videos, %d failed)", out_dir / "metrics.json", len(per_video), len(failures))
        return 0 if per_video and not failures else 1


def summarize_generation(generation: List[Dict]) -> Dict:
    """Per method the summary of its generation metrics over the videos, and with a ``variance``
    method each method's Physics-IQ aggregate against it."""
    methods = [m for m in generation[0] if m != "input"]
    out = {"methods": {m: summarize_values([g[m] for g in generation]) for m in methods}, "per_video": generation}
    if "variance" in out["methods"]:
        var = out["methods"]["variance"]
        out["physics_iq"] = {m: physics_iq(out["methods"][m], var) for m in methods}
    return out


def _finite(obj):
    """NaN (a frame without true balls) -> None, so metrics.json is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _mean(xs):
    finite = [x for x in xs if math.isfinite(x)]
    return sum(finite) / max(1, len(finite))


def _raiser(msg):
    def f(predictor):
        raise ValueError(msg)
    return f


evaluate_prediction.defaults = DEFAULTS
evaluate_prediction.validate = validate
