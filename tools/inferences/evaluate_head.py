"""INFER_ENGINE evaluate_head: score a trained task head on held-out items; writes metrics.json.

The head and its backbone are built from ``model``, or when it is null from the ``model`` entry
of the config stored in the ``test_model`` checkpoint (a train_head checkpoint: weights file, step
or run folder; the EMA when saved), whose weights are then loaded; without ``test_model``, from ``pretrain`` (e.g. only a pretrained backbone, to score label propagation untrained).
Items come from ``dataset`` + ``eval_range`` (e.g. SyntheticPhysics with a seed no training run
uses, or a DAVIS folder). Scores, by the head's ``task``:

- classification: accuracy (and the per-class confusion counts);
- segmentation: J (region IoU), F (boundary) and J&F per video and their means (``mIoU`` = mean J),
  for the head and for the copy-first-mask baseline (the prompt repeated in every frame).

A bad item (unreadable, no object, ...) is recorded under ``failures`` and the evaluation goes on.
``metrics.json`` is written atomically.
"""
from __future__ import annotations

import copy
import json
import time
from typing import Any, Dict, List

import torch
import yaml

from tools.heads.metrics import accuracy, mean_of, vos_scores
from tools.inferences.predictor import check_eval_range
from tools.pretrain.load_checkpoint import load_into, resolve_weights
from tools.datasets.video_list import collate
from utils.checkpoint import checkpoint_config
from utils.config import DEFAULT_COMPONENTS, ConfigError, run_dir, to_yaml
from utils.io import atomic_write_text
from utils.logging import setup_logger
from utils.registry import BACKEND, DATASETS, INFER_ENGINE, MODEL, PRETRAIN
from utils.run_lock import run_lock

DEFAULTS: Dict[str, Any] = {
    **copy.deepcopy(DEFAULT_COMPONENTS),  # the engines' own copy: merged configs never share these dicts
    "model": None,
    "dataset": None,
    "eval_range": [0, 64],
    "test_model": None,     # a train_head checkpoint (file, step stem or run folder); null: pretrain only
    "strict": True,
    "max_frames": 12,
    "batch_size": 8,
    "log_dir": "workspace/eval",
    "seed": 8888,
}


def validate(cfg) -> None:
    """Contract C1: one-line ConfigError for settings that would fail the evaluation."""
    m = cfg.get("model")
    if m is None and not cfg.get("test_model"):
        raise ConfigError("model and test_model are both null: set test_model to a train_head checkpoint (its "
                          "stored config gives the head), or set model")
    if m is not None and (not isinstance(m, dict) or not isinstance(m.get("backbone"), dict)):
        raise ConfigError(f"model={m!r}: evaluate_head needs the head config the head was trained with "
                          f"(a type and a backbone), or model: null to take it from test_model")
    if not cfg.get("dataset"):
        raise ConfigError("dataset is null: evaluate_head scores items of a dataset; set dataset + eval_range")
    check_eval_range(cfg.get("eval_range"))
    bs = cfg.get("batch_size")
    if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
        raise ConfigError(f"batch_size={bs!r} must be an integer >= 1; set e.g. 'batch_size=8'")
    if not cfg.get("test_model") and not cfg.get("pretrain"):
        raise ConfigError("test_model and pretrain are both null: the head would be scored with random weights; "
                          "set test_model to a train_head checkpoint (or run folder)")


def head_config(cfg) -> Dict[str, Any]:
    """``model``, or the ``model`` of the config stored in the test_model checkpoint."""
    if cfg.model is not None:
        return dict(cfg.model)
    file = resolve_weights(cfg.test_model)
    stored = checkpoint_config(file)
    model = (yaml.safe_load(stored) or {}).get("model") if stored else None
    if not isinstance(model, dict):
        raise ConfigError(f"model is null and {file} holds no config with a model entry (not a train_head "
                          f"checkpoint?); set model to the head config it was trained with")
    return model


def load_head(cfg, backend, log):
    model = MODEL.build(cfg.model, "model")
    model.set_attention(*backend.attention_kernel())
    if cfg.test_model:
        report = load_into(model, cfg.test_model, strict=cfg.strict)
        log.info("weights %s", report["file"][0])
    else:
        PRETRAIN.build(cfg.pretrain, "pretrain", model=model)
    return model.to(backend.device).eval().requires_grad_(False)


def _batches(ds, lo: int, hi: int, size: int, failures: List[Dict[str, str]]):
    """Lists of (index, item); an item that cannot be read is recorded and left out."""
    chunk: List = []
    for i in range(lo, hi):
        try:
            chunk.append((i, ds[i]))
        except Exception as e:  # a bad item is reported, the evaluation goes on
            failures.append({"input": f"item {i}", "error": f"{type(e).__name__}: {e}"})
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _name(index: int, item: Dict[str, Any]) -> str:
    meta = item.get("meta") or {}
    return str(meta.get("video") or meta.get("path") or f"item {index}")


def _score_batch(model, chunk, cfg, device, records: List[Dict[str, Any]]) -> None:
    batch = collate([it for _, it in chunk])
    inputs = model.prepare(batch, cfg.max_frames, device)
    with torch.no_grad():
        preds = model.predict(model(**inputs["net"]), inputs)
    for (i, item), p in zip(chunk, preds):
        rec: Dict[str, Any] = {"input": _name(i, item)}
        if model.task == "segmentation":
            copy_first = p["truth"][:1].expand_as(p["truth"])
            rec.update(model=vos_scores(p["pred"], p["truth"], p["ids"]),
                       copy_first=vos_scores(copy_first, p["truth"], p["ids"]))
        else:
            rec.update(pred=p["pred"], target=p["target"])
        records.append(rec)


def summarize(task: str, records: List[Dict[str, Any]]) -> Dict[str, Any]:
    if task == "segmentation":
        out = {}
        for method in ("model", "copy_first"):
            rows = [r[method] for r in records]
            out[method] = {"mIoU": mean_of(rows, "J"), "J": mean_of(rows, "J"), "F": mean_of(rows, "F"),
                           "JF": mean_of(rows, "JF")}
        return out
    preds, targets = [r["pred"] for r in records], [r["target"] for r in records]
    confusion: Dict[str, int] = {}
    for p, t in zip(preds, targets):
        confusion[f"{t}->{p}"] = confusion.get(f"{t}->{p}", 0) + 1
    majority = max(targets.count(t) for t in set(targets)) / len(targets)
    return {"model": {"accuracy": accuracy(preds, targets)}, "majority_class": {"accuracy": majority},
            "confusion": dict(sorted(confusion.items()))}


@INFER_ENGINE.register_class()
def evaluate_head(cfg) -> int:
    """Accuracy (probes) or mIoU / J&F per video (segmentation) of a trained head; metrics.json."""
    validate(cfg)
    cfg.model = head_config(cfg)
    out_dir = run_dir(cfg)
    with run_lock(out_dir, "evaluation"):  # the run owns its directory until it ends
        log = setup_logger(out_dir)
        atomic_write_text(out_dir / "config.yaml", to_yaml({k: v for k, v in cfg.items() if not k.startswith("_")}))
        backend = BACKEND.build(cfg.backend, "backend")
        model = load_head(cfg, backend, log)
        ds = DATASETS.build(cfg.dataset, "dataset")
        lo, hi = cfg.eval_range
        records: List[Dict[str, Any]] = []
        failures: List[Dict[str, str]] = []
        t0 = time.time()
        for chunk in _batches(ds, int(lo), min(int(hi), len(ds)), int(cfg.batch_size), failures):
            try:
                _score_batch(model, chunk, cfg, backend.device, records)
            except Exception as e:  # e.g. an item without the head's target: reported, the rest goes on
                failures += [{"input": _name(i, it), "error": f"{type(e).__name__}: {e}"} for i, it in chunk]
                log.warning("skipped items %s: %s", [i for i, _ in chunk], e)
        result: Dict[str, Any] = {"task": model.task, "head": cfg.model.get("type"),
                                  "backbone": cfg.model["backbone"].get("type"), "test_model": cfg.test_model,
                                  "num_items": len(records), "failures": failures,
                                  "seconds": round(time.time() - t0, 2)}
        if records:
            result["mean"] = summarize(model.task, records)
            log.info("%s: %s", cfg.name, json.dumps(result["mean"]))
        result["per_video" if model.task == "segmentation" else "per_item"] = records
        atomic_write_text(out_dir / "metrics.json", json.dumps(result, indent=1))
        log.info("wrote %s (%d items, %d failed)", out_dir / "metrics.json", len(records), len(failures))
        return 0 if records and not failures else 1


evaluate_head.defaults = DEFAULTS
evaluate_head.validate = validate
