"""ENGINE train_head: one training loop for every downstream task head (tools/heads).

The head (``model:``, e.g. LinearProbe or SegmentationHead) builds its backbone from
``model.backbone``; pretrained backbone weights come from ``pretrain`` (e.g. ``LoadCheckpoint``
with ``prefix: backbone.``: a ``train_next_clip`` checkpoint file, step or run folder, no
conversion). A frozen backbone (``model.freeze: true``) only runs forward; the optimizer holds
the parameters that require gradients. Each step the head turns the batch into its inputs
(``prepare``), runs ``forward`` through the wrapped module (``backend.wrap``: none / ddp) and
``loss``; the plumbing (launch, data stream, optimizer, schedule, resume, log, checkpoints) is
tools/train/loop.py's, shared with train_next_clip. Resume follows train_next_clip's rule: the
model and the data shape must match the checkpoint, every other change is logged.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict

import torch

from tools.train import loop
from utils import distributed as du
from utils.config import DEFAULT_COMPONENTS, ConfigError
from utils.registry import DATASETS, ENGINE, MODEL, PRETRAIN

DEFAULTS: Dict[str, Any] = {
    **copy.deepcopy(DEFAULT_COMPONENTS),
    "model": None,              # a head: {type: LinearProbe | SegmentationHead, backbone: {...}, ...}
    "dataset": None,
    "log_dir": "workspace/heads",
    "seed": 8888,
    "num_steps": 300,
    "batch_size": 16,           # per process
    "grad_accum": 1,
    "num_workers": 0,
    "max_frames": 12,           # frames of every item given to the head (longer items are cut)
    "lr": 1e-3,
    "weight_decay": 0.0,
    "betas": [0.9, 0.999],
    **loop.LOOP_DEFAULTS,
    "use_ema": False,           # a probe needs no EMA
    "warmup_steps": 20,
    "save_ckp_interval": 100,
    "resume": "auto",
    "progress": True,
    "dist_timeout": 600,
}

#: settings that define what the weights mean: resuming with other values is an error
MUST_MATCH = ("model", "max_frames")
STREAM_KEYS = ("seed", "batch_size", "grad_accum", "dataset")


def _must_match(key: str) -> bool:
    top = key.split(".")[0]
    return top in MUST_MATCH or (top == "dataset" and key.rsplit(".", 1)[-1] in ("resolution", "num_frames"))


def validate(cfg) -> None:
    """Contract C1: the loop settings, and a head config with a backbone."""
    loop.validate_loop(cfg, DEFAULTS, positive=("max_frames",))
    m = cfg.get("model")
    if not isinstance(m, dict) or not isinstance(m.get("backbone"), dict):
        raise ConfigError(f"model={m!r}: train_head needs a head with a backbone, e.g. model: {{type: LinearProbe, "
                          f"num_classes: 3, backbone: {{type: NextClipTransformer, preset: demo}}}}")
    if cfg.get("dataset") is None:
        raise ConfigError("dataset: is not set; add a DATASETS component (e.g. type: SyntheticPhysics)")


@ENGINE.register_class()
def train_head(cfg) -> int:
    """Train a downstream head (probe, segmentation, ...) on a frozen or fine-tuned backbone."""
    validate(cfg)
    return loop.launch(cfg, _train)


def build_head(cfg, backend):
    """The head with its pretrained backbone (``pretrain``), on the backend's device."""
    model = MODEL.build(cfg.model, "model")
    if not callable(getattr(model, "prepare", None)):
        raise ConfigError(f"model.type={cfg.model.get('type')!r} is not a task head (no prepare/loss/predict); "
                          f"use LinearProbe or SegmentationHead")
    model.set_attention(*backend.attention_kernel(training=True))
    if cfg.pretrain:
        PRETRAIN.build(cfg.pretrain, "pretrain", model=model)
    return model.to(backend.device)


def check_targets(cfg, dataset, model) -> None:
    """ConfigError before the first step when the data cannot give the head its targets: a label list
    with more labels than ``model.num_classes``, or a ``model.target`` the items do not have (the
    head's own ``prepare`` tried on the first item)."""
    n, k = getattr(dataset, "num_classes", None), getattr(model, "num_classes", None)
    if getattr(model, "classes", None) is None and loop.is_int(n) and loop.is_int(k) and n > k:
        names = list(getattr(dataset, "classes", []))
        raise ConfigError(f"model.num_classes={k} but the dataset {cfg.dataset.get('type')} has {n} labels "
                          f"({', '.join(map(str, names[:8]))}{', ...' if n > 8 else ''}): labels {k}..{n - 1} have "
                          f"no class; set model.num_classes={n}")
    if isinstance(dataset, torch.utils.data.IterableDataset) or len(dataset) == 0:
        return
    try:
        model.prepare(loop.collate([dataset[0]]), cfg.max_frames, "cpu")
    except (ValueError, KeyError) as e:
        raise ConfigError(f"model {cfg.model.get('type')} (target {getattr(model, 'target', '?')!r}) cannot use "
                          f"the items of dataset {cfg.dataset.get('type')}: {e}") from None


def _train(cfg, backend, rank, world, out_dir: Path, log) -> int:
    config_yaml = loop.config_yaml_of(cfg)
    loop.require_parallel(backend, world, "train_head", "heads and their backbones fit one device")
    backend.seed_everything(cfg.seed + rank)
    dataset = DATASETS.build(cfg.dataset, "dataset")
    model = build_head(cfg, backend)
    check_targets(cfg, dataset, model)
    ema = copy.deepcopy(model).float().eval().requires_grad_(False) if cfg.use_ema else None
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("head %s on %s: %.3fM trainable of %.2fM parameters", cfg.model.get("type"),
             cfg.model["backbone"].get("type"), n_train / 1e6, sum(p.numel() for p in model.parameters()) / 1e6)
    optimizer = loop.make_optimizer(model, cfg)
    scheduler = loop.make_scheduler(optimizer, cfg)
    scaler = backend.grad_scaler()

    ckpt_dir, start, scheduler, _ = loop.resume_run(
        cfg, out_dir, rank, log, config_yaml, model, ema, optimizer, scheduler, DEFAULTS, _must_match, STREAM_KEYS,
        "The head, its backbone and max_frames")
    net = backend.wrap(model, world)
    batches = iter(loop.make_loader(cfg, dataset, rank, world, start))
    steplog = loop.StepLog(cfg, out_dir, rank, start, desc="train_head")
    accum = int(cfg.grad_accum)
    for step in range(start, cfg.num_steps):
        net.train()
        loss_sum = 0.0
        for micro in range(accum):
            inputs = model.prepare(next(batches), cfg.max_frames, backend.device)
            with backend.grad_sync(net, micro == accum - 1):
                with backend.autocast():
                    loss = model.loss(net(**inputs["net"]), inputs)
                scaler.scale(loss / accum).backward()
            loss_sum += float(loss.detach()) / accum
        grad_norm = loop.clip_and_step(model, optimizer, scheduler, scaler, cfg.grad_clip)
        if ema is not None:
            loop.ema_update(ema, model, cfg.ema_decay)
        done = step + 1
        loss_mean = float(du.all_reduce_mean(torch.tensor(loss_sum)))
        lr_now = scheduler.get_last_lr()[0]
        steplog.step(done, lambda: {"loss": loss_mean, "lr": lr_now, "grad_norm": float(grad_norm)},
                     {"loss": f"{loss_mean:.4f}"})
        if loop.is_due(cfg, done, "save_ckp_interval"):
            loop.save_step(cfg, ckpt_dir, done, rank, model, ema,
                           lambda: {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                           config_yaml)
            if rank == 0:
                log.info("step %d: loss %.4f, checkpoint saved", done, loss_mean)
    steplog.close()
    log.info("training finished at step %d", cfg.num_steps)
    return 0


train_head.defaults = DEFAULTS
train_head.validate = validate
