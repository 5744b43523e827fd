"""INFER_ENGINE evaluate_condition: does the generated video show what its condition asks for?

For each held-out item of a dataset config (SyntheticPhysics with a seed no training run
used, ``eval_range``) a video is generated from the item's condition (``cond_key``: its
class label or caption) at every ``guide_scales`` entry, and once from the null condition
(the unconditional model: the chance level). The scene analyser (tools/inferences/scene.py)
reads ball count, colours, gravity direction and speed class from every video, including the
item's ground truth (a sanity check of the analyser). Accuracy per attribute and method goes
to metrics.json; accuracy_vs_guide.png plots it; the first ``save_videos`` items get a grid
(one row per guide scale) as mp4 and png. Bad items are recorded and the run goes on.

Generation metrics (tools/inferences/scoring.py, as evaluate_generation): every video's temporal
``flicker`` and, with ``clip_weights`` (a local OpenCLIP weights file), ``clip_t``: the CLIP
similarity of its frames to the item's caption (also for the unconditional video, whose
``clip_t`` against the caption it was not given is the chance level) -> ``generation``
{method: {metric: {mean, std, min, max, n}}} in metrics.json.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch

from tools.inferences.predictor import (ROLLOUT_DEFAULTS, Predictor, check_eval_range, check_save_videos,
                                        validate_rollout)
from tools.inferences.scoring import SCORER_DEFAULTS, build_clip, check_scorer_settings, video_scores
from tools.inferences.scoring import summarize as summarize_values
from tools.inferences.scene import ATTRIBUTES, analyse_video, compare, settings_from_dataset
from utils.config import ConfigError, run_dir, to_yaml
from utils.io import atomic_write_text
from utils.logging import setup_logger
from utils.registry import DATASETS, INFER_ENGINE
from utils.run_lock import run_lock
from utils.video_io import to_uint8, write_grid, write_video

COND_KEYS = ("label", "caption")

DEFAULTS = dict(
    ROLLOUT_DEFAULTS,
    **{k: SCORER_DEFAULTS[k] for k in ("clip_weights", "clip_arch", "clip_config_file")},
    log_dir="workspace/eval",
    dataset=None,              # a SyntheticPhysics config (held-out seed)
    eval_range=[0, 64],        # dataset item indices [start, stop)
    cond_key="label",          # label | caption: what the model was trained on
    guide_scales=[1, 2, 4],    # one generation per item and scale (+ one unconditional)
    context_frames=0,          # generate from nothing but the condition
    save_videos=4,             # grid videos of the first N items
)


def conditioned_attributes(cond_key: str, label_mode, has_speeds: bool) -> List[str]:
    """Attributes the condition determines: a caption names all of them (speed only when the
    dataset has speed classes); a 'scene' label is (num_balls, gravity), a 'num_balls' label
    the count only."""
    if cond_key == "caption":
        return [a for a in ATTRIBUTES if a != "speed" or has_speeds]
    return {"scene": ["num_balls", "gravity"], "num_balls": ["num_balls"]}.get(label_mode, [])


def method_names(guide_scales: Sequence[float]) -> List[str]:
    """metrics.json keys: guide_<s> per scale (2 -> guide_2, 1.5 -> guide_1.5), then unconditional."""
    return [f"guide_{float(s):g}" for s in guide_scales] + ["unconditional"]


def summarize(records: List[Dict], method: str, conditioned: Sequence[str]) -> Dict:
    """Accuracy per attribute of one method over the items it scored."""
    hits = [r["correct"][method] for r in records if method in r["correct"]]
    attrs = [a for a in ATTRIBUTES if any(a in h for h in hits)]
    out = {"num_videos": len(hits),
           "accuracy": {a: float(np.mean([h[a] for h in hits if a in h])) for a in attrs},
           "correct": {a: int(sum(h[a] for h in hits if a in h)) for a in attrs},
           "conditioned": [a for a in attrs if a in conditioned],
           "not_conditioned": [a for a in attrs if a not in conditioned]}
    cond = [a for a in conditioned if a in attrs]
    if cond and hits:  # every conditioned attribute right at once
        out["all_conditioned"] = float(np.mean([all(h.get(a, False) for a in cond) for h in hits]))
    return out


def plot(methods: Dict, scales: Sequence[float], conditioned: Sequence[str], path: Path, title: str) -> None:
    """Accuracy vs guide scale per attribute; the unconditional level as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from utils.io import atomic_path

    fig, ax = plt.subplots(figsize=(6, 4))
    names = method_names(scales)[:-1]
    for i, attr in enumerate(ATTRIBUTES):
        ys = [methods[n]["accuracy"].get(attr) for n in names]
        if any(y is None for y in ys):
            continue
        color = f"C{i}"
        label = attr + ("" if attr in conditioned else " (not conditioned)")
        ax.plot(list(scales), ys, marker="o", color=color, label=label)
        unc = methods["unconditional"]["accuracy"].get(attr)
        if unc is not None:
            ax.axhline(unc, color=color, linestyle="--", alpha=0.7)
    ax.set_xlabel("guide scale")
    ax.set_ylabel("accuracy (dashed: unconditional)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks(list(scales))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _check_number_list(key: str, v) -> None:
    ok = isinstance(v, (list, tuple)) and v and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x) and x > 0 for x in v)
    if not ok or len(set(float(x) for x in v)) != len(v):
        raise ConfigError(f"{key}={v!r} must be a non-empty list of distinct positive numbers (1 = no guidance); "
                          f"set e.g. '{key}=[1,2,4]'")


def validate(cfg) -> None:
    """Contract C1: one-line ConfigError for settings that would fail the evaluation."""
    ds = cfg.get("dataset")
    if not isinstance(ds, dict) or ds.get("type") != "SyntheticPhysics":
        got = ds.get("type") if isinstance(ds, dict) else ds
        raise ConfigError(f"dataset={got!r}: evaluate_condition scores scenes of SyntheticPhysics videos; set "
                          f"dataset to a SyntheticPhysics config with a held-out seed, e.g. "
                          f"'dataset={{type: SyntheticPhysics, seed: 4242, ...}}'")
    check_eval_range(cfg.get("eval_range"))
    key = cfg.get("cond_key")
    if key not in COND_KEYS:
        raise ConfigError(f"cond_key={key!r} is not allowed: use one of {list(COND_KEYS)} (what the model was "
                          f"trained on); set e.g. 'cond_key=label'")
    if key == "label" and ds.get("label_mode") not in ("scene", "num_balls"):
        raise ConfigError(f"cond_key=label but dataset.label_mode={ds.get('label_mode')!r} gives no labels; "
                          f"set dataset.label_mode to the training run's ('scene' or 'num_balls')")
    if key == "caption" and ds.get("label_mode") not in (None, "scene", "num_balls"):
        raise ConfigError(f"dataset.label_mode={ds.get('label_mode')!r} must be null, 'scene' or 'num_balls'")
    if cfg.get("embedder", {}).get("type") in (None, "NoCondition"):
        raise ConfigError("embedder is NoCondition: evaluate_condition needs the conditional model's embedder "
                          "(ClassLabel for labels, a text embedder for captions), as in its training config")
    _check_number_list("guide_scales", cfg.get("guide_scales"))
    C = cfg.get("context_frames")
    if C != 0:
        raise ConfigError(f"context_frames={C!r} must be 0: the evaluation generates videos from the condition "
                          f"alone (given frames would show the answer); set 'context_frames=0'")
    check_save_videos(cfg.get("save_videos"))
    check_scorer_settings(cfg)
    validate_rollout(cfg)


def _frames(video: torch.Tensor) -> np.ndarray:
    """(C, T, H, W) in [-1, 1] -> uint8 (T, H, W, 3), what the analyser reads."""
    return to_uint8(video)


def _write_grid_video(out_dir: Path, n: int, rows: List, fps: float) -> None:
    """One item's videos stacked as rows (ground truth, each guide scale, unconditional):
    an mp4 (white gaps between rows) and a labelled png contact sheet."""
    T = max(v.shape[0] for _, v in rows)
    gap = np.full((T, 2, rows[0][1].shape[2], 3), 255, np.uint8)
    parts = []
    for i, (_, v) in enumerate(rows):
        if v.shape[0] < T:
            v = np.concatenate([v, np.repeat(v[-1:], T - v.shape[0], 0)], 0)
        parts += [v] + ([gap] if i < len(rows) - 1 else [])
    write_video(out_dir / "videos" / f"{n:04d}.mp4", np.concatenate(parts, 1), fps=fps)
    write_grid(out_dir / "videos" / f"{n:04d}.png", rows)


def _score_item(predictor, ds, settings, index: int, seed: int, cfg, names, clip=None) -> tuple:
    """Generate and analyse one item at every scale + unconditionally -> (record, grid rows); the
    generation metrics of every video in ``record["generation"]``."""
    item = ds[index]
    truth = item["meta"]["attributes"]
    cond_value = item[cfg.cond_key]
    if torch.is_tensor(cond_value):
        cond_value = cond_value.item()
    T = int(cfg.max_frames)
    gt = _frames(item["video"][:, :T])
    rec = {"index": index, "seed": seed, "condition": cond_value, "truth": truth,
           "found": {}, "correct": {}, "seconds": {}, "generation": {}}
    prompt = item.get("caption") if clip is not None else None
    rows = [("ground truth", gt)]
    videos = [("ground_truth", None, None)] + [(n, cond_value, float(s)) for n, s in zip(names, cfg.guide_scales)]
    videos.append(("unconditional", None, 1.0))
    for name, value, scale in videos:
        t0 = time.time()
        video = item["video"][:, :T] if scale is None else predictor.predict(None, seed, value, T, guide_scale=scale)
        frames = gt if scale is None else _frames(video)
        rec["generation"][name] = video_scores(video, clip=clip, prompt=prompt)
        found = analyse_video(frames, settings).attributes()
        rec["found"][name], rec["correct"][name] = found, compare(found, truth)
        rec["seconds"][name] = round(time.time() - t0, 3)
        if scale is not None:
            rows.append((name.replace("_", " "), frames))
    return rec, rows


@INFER_ENGINE.register_class()
def evaluate_condition(cfg) -> int:
    """Attribute accuracy of conditional generations per guide scale vs the unconditional model."""
    validate(cfg)
    start = time.time()
    ds = DATASETS.build(cfg.dataset, "dataset")
    lo, hi = cfg.eval_range
    if hi > len(ds):
        raise ConfigError(f"eval_range={list(cfg.eval_range)} goes past the dataset's length={len(ds)}; "
                          f"raise dataset.length or lower eval_range")
    if ds.num_frames < int(cfg.max_frames):
        raise ConfigError(f"max_frames={cfg.max_frames} but the dataset's videos have num_frames={ds.num_frames}; "
                          f"the ground truth must be as long as the generations: lower max_frames or raise "
                          f"dataset.num_frames")
    settings = settings_from_dataset(cfg.dataset)
    conditioned = conditioned_attributes(cfg.cond_key, cfg.dataset.get("label_mode"), bool(cfg.dataset.get("speeds")))
    names = method_names(cfg.guide_scales)
    out_dir = run_dir(cfg)
    with run_lock(out_dir, "evaluation"):  # the run owns its directory until it ends
        log = setup_logger(out_dir)
        atomic_write_text(out_dir / "config.yaml", to_yaml({k: v for k, v in cfg.items() if not k.startswith("_")}))
        predictor = Predictor(cfg)
        clip = build_clip(cfg, predictor.device)

        records, failures = [], []
        for n, i in enumerate(range(int(lo), int(hi))):
            try:
                rec, rows = _score_item(predictor, ds, settings, i, int(cfg.seed) + i, cfg, names, clip)
                if n < cfg.save_videos:
                    _write_grid_video(out_dir, n, rows, cfg.fps)
            except Exception as e:  # a bad item is reported and the evaluation goes on
                failures.append({"index": i, "error": f"{type(e).__name__}: {e}"})
                log.warning("skipped item %d: %s", i, e)
                continue
            records.append(rec)
            log.info("item %d (%s): %s", i, rec["condition"],
                     ", ".join(f"{m} {sum(c.values())}/{len(c)}" for m, c in rec["correct"].items()))

        methods = {m: summarize(records, m, conditioned) for m in names + ["ground_truth"]}
        generation = {m: summarize_values([r["generation"][m] for r in records])
                      for m in ["ground_truth"] + names} if records else {}
        result = {"methods": methods, "generation": generation,
                  "settings": {"cond_key": cfg.cond_key, "conditioned_attributes": conditioned,
                               "guide_scales": [float(s) for s in cfg.guide_scales],
                               "guide_interval": [float(v) for v in cfg.guide_interval], "eval_range": list(cfg.eval_range),
                               "dataset": dict(cfg.dataset), "test_model": cfg.test_model,
                               "num_sample_steps": cfg.num_sample_steps, "max_frames": cfg.max_frames,
                               "seed": cfg.seed},
                  "num_items": len(records), "failures": failures, "seconds": round(time.time() - start, 2),
                  "per_item": records}
        if records:
            plot(methods, cfg.guide_scales, conditioned, out_dir / "accuracy_vs_guide.png",
                 f"{cfg.name}: {len(records)} items, condition = {cfg.cond_key}")
            for m in names + ["ground_truth"]:
                log.info("%-13s %s  %s", m, "  ".join(f"{a} {v:.3f}" for a, v in methods[m]["accuracy"].items()),
                         "  ".join(f"{k} {v['mean']:.4f}" for k, v in generation[m].items()))
        atomic_write_text(out_dir / "metrics.json", json.dumps(result, indent=1, default=str))
        log.info("wrote %s (%d items, %d failed, %.1f s)", out_dir / "metrics.json", len(records), len(failures),
                 result["seconds"])
        return 0 if records and not failures else 1


evaluate_condition.defaults = DEFAULTS
evaluate_condition.validate = validate
