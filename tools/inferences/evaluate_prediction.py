"""INFER_ENGINE evaluate_prediction: PSNR / SSIM per predicted frame, model vs two baselines.

Videos with a ground-truth continuation come from a test list (``test_list_path``, video
lines) or from a dataset config (``dataset`` + ``eval_range``, e.g. SyntheticPhysics with a
seed never used in training). For each video the first ``context_frames`` frames are
given, ``max_frames - context_frames`` are predicted by the model, by copying the last
context frame and by per-pixel linear extrapolation of the last two; all three are scored
against the truth in the same run. Writes metrics.json and psnr_ssim.png.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Dict, List

import torch

from tools.inferences.predictor import (ROLLOUT_DEFAULTS, Predictor, check_eval_range, check_list_file,
                                        check_save_videos, validate_rollout)
from utils.config import ConfigError, run_dir, to_yaml
from utils.io import atomic_path, atomic_write_text
from utils.logging import setup_logger
from utils.metrics import copy_last_baseline, linear_baseline, psnr_per_frame, ssim_per_frame
from utils.registry import DATASETS, INFER_ENGINE
from utils.test_list import parse_test_list
from utils.video_io import side_by_side, write_video

METHODS = ("model", "copy_last", "linear")

DEFAULTS = dict(
    ROLLOUT_DEFAULTS,
    log_dir="workspace/eval",
    test_list_path=None,
    dataset=None,
    eval_range=[0, 64],    # dataset item indices [start, stop)
    save_videos=4,         # write GT | model | copy-last | linear for the first N videos
)


def score(pred: torch.Tensor, truth: torch.Tensor) -> Dict[str, List[float]]:
    return {"psnr": psnr_per_frame(pred, truth).tolist(), "ssim": ssim_per_frame(pred, truth).tolist()}


def baselines(context: torch.Tensor, n: int) -> Dict[str, torch.Tensor]:
    return {"copy_last": copy_last_baseline(context, n), "linear": linear_baseline(context, n)}


def summarize(per_video: List[Dict]) -> Dict:
    """Mean over videos of each metric at each predicted frame index, and overall."""
    out = {}
    for m in METHODS:
        out[m] = {}
        for metric in ("psnr", "ssim"):
            rows = torch.tensor([v[m][metric] for v in per_video])  # (N, T_pred)
            out[m][metric + "_per_frame"] = rows.mean(0).tolist()
            out[m][metric + "_mean"] = float(rows.mean())
    return out


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


def _sources(cfg) -> List:
    """(name, seed, loader(predictor) returning (C, T, H, W) or raising) for every video to score."""
    T, sources = int(cfg.max_frames), []
    if cfg.test_list_path:
        for item in parse_test_list(Path(cfg.test_list_path), kind="video", rounds=1, base_seed=cfg.seed):
            if item.error:
                sources.append((f"line {item.line_no}", item.seed, _raiser(item.error)))
            else:
                sources.append((item.path, item.seed, lambda p, it=item: p.load_video(it.path, T)))
    elif cfg.dataset:
        ds = DATASETS.build(cfg.dataset, "dataset")
        lo, hi = cfg.eval_range
        for i in range(int(lo), int(hi)):
            sources.append((f"{cfg.dataset['type']}[{i}]", cfg.seed + i, lambda p, i=i: ds[i]["video"]))
    else:
        raise ConfigError("evaluate_prediction needs test_list_path (video lines) or dataset + eval_range.")
    return sources


@INFER_ENGINE.register_class()
def evaluate_prediction(cfg) -> int:
    """PSNR/SSIM per predicted frame for the model and copy-last / linear baselines."""
    C, T = int(cfg.context_frames), int(cfg.max_frames)
    if C < 1 or T <= C:
        raise ConfigError(f"evaluate_prediction needs 1 <= context_frames < max_frames, got {C} and {T}.")
    sources = _sources(cfg)  # the list is read before anything is created
    out_dir = run_dir(cfg)
    log = setup_logger(out_dir)  # before the Predictor, so its start-up lines are kept
    atomic_write_text(out_dir / "config.yaml", to_yaml({k: v for k, v in cfg.items() if not k.startswith("_")}))
    predictor = Predictor(cfg)

    per_video, failures = [], []
    for n, (name, seed, load) in enumerate(sources):
        t0 = time.time()
        try:
            truth = load(predictor)
            if truth.shape[1] < T:
                raise ValueError(f"has {truth.shape[1]} frames, needs max_frames={T}")
            truth = truth[:, :T]
            pred = predictor.predict(truth[:, :C], seed, None, T)
        except Exception as e:  # a bad video is reported and the evaluation goes on
            failures.append({"input": name, "error": f"{type(e).__name__}: {e}"})
            log.warning("skipped %s: %s", name, e)
            continue
        future = truth[:, C:]
        preds = {"model": pred[:, C:T], **baselines(truth[:, :C], T - C)}
        rec = {"input": name, "seed": seed, **{m: score(p, future) for m, p in preds.items()}}
        rec["seconds"] = round(time.time() - t0, 3)
        per_video.append(rec)
        if n < cfg.save_videos:
            panel = side_by_side(truth, pred, torch.cat([truth[:, :C], preds["copy_last"]], 1),
                                 torch.cat([truth[:, :C], preds["linear"]], 1))
            write_video(out_dir / "videos" / f"{n:04d}.mp4", panel, fps=cfg.fps)
        log.info("%s: model PSNR %.2f dB, copy-last %.2f, linear %.2f", name,
                 _mean(rec["model"]["psnr"]), _mean(rec["copy_last"]["psnr"]), _mean(rec["linear"]["psnr"]))

    result = {"context_frames": C, "predicted_frames": T - C, "num_videos": len(per_video),
              "failures": failures, "per_video": per_video}
    if per_video:
        result["mean"] = summarize(per_video)
        plot(result["mean"], out_dir / "psnr_ssim.png", f"{cfg.name}: {len(per_video)} videos, C={C}")
        for m in METHODS:
            log.info("mean %-9s PSNR %.2f dB  SSIM %.4f", m, result["mean"][m]["psnr_mean"],
                     result["mean"][m]["ssim_mean"])
    atomic_write_text(out_dir / "metrics.json", json.dumps(result, indent=1))
    log.info("wrote %s (%d videos, %d failed)", out_dir / "metrics.json", len(per_video), len(failures))
    return 0 if per_video and not failures else 1


def _mean(xs):
    finite = [x for x in xs if math.isfinite(x)]
    return sum(finite) / max(1, len(finite))


def _raiser(msg):
    def f(predictor):
        raise ValueError(msg)
    return f


evaluate_prediction.defaults = DEFAULTS
evaluate_prediction.validate = validate
