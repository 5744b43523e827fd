"""ENGINE train_next_clip: the generic training loop, written out step by step.

Model, diffusion, dataset, embedder and autoencoder all come from the YAML. The same
command runs single-process or under ``torchrun`` (DDP; gloo on CPU, nccl / hccl from
the backend). Every random draw of a step (clip cuts, flow times, noise) is made for the
*global* batch from a generator seeded by (seed, step, micro-step) and sliced per rank,
so N processes reproduce the single-process run on the same global batch, and a resumed
run reproduces the uninterrupted one. Datasets with ``epoch_aware = True`` receive
``(index, epoch)`` (contract C3), so their random clip windows / strides / crops change per
epoch and are the same again on resume. A dataset with ``yields_batches`` (e.g.
``JointImageVideo``: whole image or video batches per step) is told the rank, world size,
first step and number of (micro-)steps and read with ``DataLoader(batch_size=None)``;
image batches are trained as one-frame clips.

Conditioning (contracts K1/K4). ``cond_key`` names the item key fed to the embedder (label |
caption); the model's ``cond_dim`` follows the embedder's token width unless the model config
sets it. Condition dropout (``cond_dropout``, for classifier-free guidance) is drawn per sample
of the global batch from the step generator and sliced per rank like every other draw: a
dropped sample's value becomes ``None``, i.e. the embedder's null condition. A dataset with
``write_label_map`` (e.g. LabelList) gets its label map written to ``<run dir>/label_map.json``.

Resume (``resume: auto | PATH``). The checkpoint is read and checked against the built model
before anything is written to the run dir. ``auto`` takes the newest *readable* checkpoint
(warning about corrupt newer ones). Settings that differ from the checkpoint's stored config
are all logged, and the rule is:

* model / diffusion / auto_encoder / embedder / cond_key and the data shape (``max_frames``,
  any ``dataset...resolution`` / ``num_frames``) must match: otherwise a config error;
* optimizer and schedule settings (lr, weight_decay, betas, warmup_steps, lr_schedule,
  min_lr_ratio, num_steps) TAKE EFFECT: the new base lr / weight decay / betas are set in the
  resumed optimizer and the LR schedule is rebuilt at the resumed step (Adam moments are kept);
* everything else (clip_sampling, batch_size, seed, dataset content, intervals, ema_decay,
  grad_clip, backend, ...) takes effect from the resumed step; settings that change the
  data or noise stream mean the run no longer reproduces an uninterrupted one;
* ``pretrain`` is ignored on resume (the weights come from the checkpoint).

Distributed: every collective waits at most ``dist_timeout`` seconds; then the run stops with
one error naming the rank(s) that stopped answering (utils.distributed.collective_guard).
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import torch
import yaml
from torch.nn.parallel import DistributedDataParallel as DDP

from tools.datasets.latent_cache import flatten
from tools.embedders.conditioning import condition_values, embed, is_conditional, model_cfg_for
from tools.train.clip_sampling import CLIP_MODES, sample_clip_lens
from utils import distributed as du
from utils.checkpoint import (CheckpointError, clean_checkpoint_dir, compare_state_dict, format_report,
                              load_resume, save_checkpoint, set_rng_state)
from utils.config import DEFAULT_COMPONENTS, ConfigError, run_dir, to_yaml
from utils.io import atomic_write_text
from utils.logging import ScalarLog, setup_logger
from utils.registry import (AUTO_ENCODER, BACKEND, DATASETS, DIFFUSION, EMBEDDER, ENGINE, MODEL,
                            PRETRAIN, VISUAL)

DEFAULTS: Dict[str, Any] = {
    **copy.deepcopy(DEFAULT_COMPONENTS),
    "dataset": None,
    "latent_cache": None,       # dir made by `python -m utils.encode_latents`: train on cached latents
    "visual": [],
    "cond_key": None,           # item key fed to the embedder: label | caption | null
    "cond_dropout": 0.1,        # share of samples trained with the null condition (for guidance)
    "log_dir": "workspace/experiments",
    "seed": 8888,
    "num_steps": 1000,
    "batch_size": 8,            # per process (VGen's meaning)
    "grad_accum": 1,
    "num_workers": 0,
    "max_frames": 16,           # frames per training video (longer items are cut, shorter ones are an error)
    "clip_sampling": {"mode": "random", "clip_len": 4, "min_clips": 2, "max_clips": None},
    "lr": 1e-4,
    "weight_decay": 0.1,
    "betas": [0.9, 0.95],
    "warmup_steps": 100,
    "lr_schedule": "constant",  # constant | cosine
    "min_lr_ratio": 0.1,
    "grad_clip": 1.0,
    "use_ema": True,
    "ema_decay": 0.999,
    "save_ckp_interval": 500,
    "keep_last": 3,
    "viz_interval": 500,
    "log_interval": 10,
    "resume": "auto",           # auto | none | path to a checkpoint
    "progress": True,
    "dist_timeout": 600,        # seconds a collective waits for a silent rank before the run stops
}


# ---------------------------------------------------------------------------- data
class GlobalBatchSampler(torch.utils.data.Sampler):
    """Yields this rank's indices of global batch ``i`` = a seeded permutation chunk.

    Rank r of W takes the r-th slice of each global batch of ``batch_size * W`` items, so
    the union over ranks equals what one process with the global batch would read.
    Starting at ``start_batch`` resumes the exact stream. With ``epoch_aware`` (contract C3)
    each index comes as ``(index, epoch)``, so the dataset's per-item random choices change
    per epoch and are reproduced on resume.
    """

    def __init__(self, length: int, batch_size: int, rank: int, world: int, seed: int, start_batch: int = 0,
                 epoch_aware: bool = False):
        self.n, self.bs, self.rank, self.world, self.seed = length, batch_size, rank, world, seed
        self.start, self.epoch_aware = start_batch, bool(epoch_aware)

    def __iter__(self) -> Iterator[List[Union[int, Tuple[int, int]]]]:
        gbs = self.bs * self.world
        per_epoch = self.n // gbs
        if per_epoch == 0:
            raise ValueError(f"dataset has {self.n} items, fewer than one global batch ({gbs}); "
                             f"lower batch_size or add data.")
        i = self.start
        while True:
            epoch, j = divmod(i, per_epoch)
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + 7919 * epoch))
            chunk = perm[j * gbs:(j + 1) * gbs]
            mine = chunk[self.rank * self.bs:(self.rank + 1) * self.bs].tolist()
            yield [(k, epoch) for k in mine] if self.epoch_aware else mine
            i += 1


def collate(items: List[Dict[str, Any]]) -> Dict[str, Any]:
    tensor_key = "latent" if "latent" in items[0] else "video"
    out: Dict[str, Any] = {tensor_key: torch.stack([it[tensor_key] for it in items])}
    for key in items[0]:
        if key != tensor_key:
            out[key] = [it[key] for it in items]
    return out


# ---------------------------------------------------------------------------- helpers
def lr_lambda(step: int, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        frac = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac))
    raise ValueError(f"lr_schedule={schedule!r}; choose constant or cosine.")


def param_groups(model: torch.nn.Module, weight_decay: float):
    """No weight decay on norms, biases and other 1-D parameters."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach().float(), 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def step_generator(seed: int, step: int, micro: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 131 + micro) % (2 ** 63))


@torch.no_grad()
def latents_of(batch: Dict[str, Any], autoencoder, max_frames: int, device) -> torch.Tensor:
    """Model inputs of a batch: cached ``latent`` or ``video`` encoded, cut to ``max_frames``
    (in latent frames: ``max_frames // temporal_factor`` for cached latents). Image batches
    (``kind: image``) are one-frame clips and are not held to ``max_frames``."""
    if batch.get("kind") == "image":
        key = "latent" if "latent" in batch else "video"
        x = batch[key][:, :, :1].to(device, non_blocking=True)
        return x if key == "latent" else autoencoder.encode(x)
    if "latent" in batch:
        latent = batch["latent"]
        factor = int(getattr(autoencoder, "temporal_factor", 1) or 1)
        want = max(1, max_frames // factor)
        if latent.shape[2] < want:
            raise ValueError(f"cached latents have {latent.shape[2]} frames, fewer than the {want} that "
                             f"max_frames={max_frames} needs (temporal_factor {factor}); lower max_frames "
                             f"or re-encode the cache with more frames.")
        return latent[:, :, :want].to(device, non_blocking=True)
    video = batch["video"]
    if video.shape[2] < max_frames:
        raise ValueError(f"dataset items have {video.shape[2]} frames, fewer than max_frames="
                         f"{max_frames}; lower max_frames or raise the dataset's num_frames.")
    return autoencoder.encode(video[:, :, :max_frames].to(device, non_blocking=True))


def drop_conditions(values: List[Any], p: float, generator: torch.Generator, rank: int = 0,
                    world: int = 1) -> List[Any]:
    """Condition dropout: each sample of the GLOBAL batch (``len(values) * world``) is dropped
    with probability ``p`` by one draw from ``generator`` (the step generator); this rank keeps
    its slice. A dropped value becomes ``None`` (the embedder's null condition)."""
    B = len(values)
    drop = (torch.rand(B * world, generator=generator) < p)[rank * B:(rank + 1) * B].tolist()
    return [None if d else v for v, d in zip(values, drop)]


def build_conditioning(embedder, batch: Dict[str, Any], cond_key: Optional[str], device,
                       dropout: float = 0.0, generator: Optional[torch.Generator] = None,
                       rank: int = 0, world: int = 1) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(cond, cond_mask) of a batch, after condition dropout; (None, None) for unconditional models."""
    if cond_key is None or not is_conditional(embedder):
        return None, None
    values = condition_values(batch, cond_key)
    if dropout > 0:
        values = drop_conditions(values, dropout, generator, rank, world)
    return embed(embedder, values, device)


# ---------------------------------------------------------------------------- validation
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _require(ok: bool, key: str, value: Any, allowed: str, fix: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}; {fix}.")


def validate(cfg) -> None:
    """Contract C1: check the engine's own settings; raises ConfigError naming the setting."""
    g = cfg.get
    for key in ("batch_size", "num_steps", "grad_accum", "save_ckp_interval", "log_interval", "viz_interval",
                "max_frames"):
        v = g(key, DEFAULTS[key])
        _require(_is_int(v) and v >= 1, key, v, "must be an integer >= 1", f"set {key} to 1 or more")
    v = g("num_workers", 0)
    _require(_is_int(v) and v >= 0, "num_workers", v, "must be an integer >= 0", "use 0 to load in the main process")
    v = g("warmup_steps", DEFAULTS["warmup_steps"])
    _require(_is_int(v) and v >= 0, "warmup_steps", v, "must be an integer >= 0", "use 0 for no warm-up")
    v = g("lr", DEFAULTS["lr"])
    _require(_is_num(v) and v > 0, "lr", v, "must be a number > 0", "e.g. lr=1e-4")
    v = g("weight_decay", DEFAULTS["weight_decay"])
    _require(_is_num(v) and v >= 0, "weight_decay", v, "must be a number >= 0", "e.g. weight_decay=0.1")
    v = g("betas", DEFAULTS["betas"])
    _require(isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_num(b) and 0 <= b < 1 for b in v),
             "betas", v, "must be two numbers in [0, 1)", "e.g. betas=[0.9,0.95]")
    v = g("lr_schedule", DEFAULTS["lr_schedule"])
    _require(v in ("constant", "cosine"), "lr_schedule", v, "choose constant or cosine", "fix the spelling")
    v = g("min_lr_ratio", DEFAULTS["min_lr_ratio"])
    _require(_is_num(v) and 0 <= v <= 1, "min_lr_ratio", v, "must be a number in [0, 1]", "e.g. min_lr_ratio=0.1")
    v = g("grad_clip", DEFAULTS["grad_clip"])
    _require(v is None or (_is_num(v) and v >= 0), "grad_clip", v, "must be a number >= 0 or null (0/null: no clipping)",
             "e.g. grad_clip=1.0")
    v = g("ema_decay", DEFAULTS["ema_decay"])
    _require(_is_num(v) and 0 <= v < 1, "ema_decay", v, "must be a number in [0, 1)", "e.g. ema_decay=0.999")
    v = g("keep_last", DEFAULTS["keep_last"])
    _require(v is None or (_is_int(v) and v >= 0), "keep_last", v, "must be an integer >= 0 or null (keep all)",
             "e.g. keep_last=3")
    v = g("seed", DEFAULTS["seed"])
    _require(_is_int(v) and v >= 0, "seed", v, "must be an integer >= 0", "e.g. seed=8888")
    v = g("cond_dropout", DEFAULTS["cond_dropout"])
    _require(_is_num(v) and 0 <= v < 1, "cond_dropout", v, "must be a number in [0, 1)",
             "e.g. cond_dropout=0.1 (0: never train the null condition)")
    v = g("cond_key", None)
    _require(v is None or (isinstance(v, str) and v), "cond_key", v, "must be an item key (label | caption) or null",
             "e.g. cond_key=label")
    v = g("dist_timeout", DEFAULTS["dist_timeout"])
    _require(_is_num(v) and v > 0, "dist_timeout", v, "must be a number of seconds > 0", "e.g. dist_timeout=600")
    v = g("resume", "auto")
    _require(v is None or v is False or isinstance(v, str), "resume", v, "auto, none or a checkpoint path",
             "e.g. resume=auto")
    _validate_clip_sampling(g("clip_sampling", DEFAULTS["clip_sampling"]))


def _validate_clip_sampling(cs: Any) -> None:
    _require(isinstance(cs, dict), "clip_sampling", cs, "must be a mapping",
             "e.g. clip_sampling: {mode: random, min_clips: 2}")
    mode = cs.get("mode", "random")
    _require(mode in CLIP_MODES, "clip_sampling.mode", mode, f"choose one of {', '.join(CLIP_MODES)}",
             "fix the spelling")
    for key, lo in (("clip_len", 1), ("min_clips", 1)):
        v = cs.get(key, DEFAULTS["clip_sampling"][key])
        _require(_is_int(v) and v >= lo, f"clip_sampling.{key}", v, f"must be an integer >= {lo}",
                 f"set clip_sampling.{key} to {lo} or more")
    v = cs.get("max_clips")
    _require(v is None or (_is_int(v) and v >= 1), "clip_sampling.max_clips", v,
             "must be an integer >= 1 or null (up to one clip per frame)", "e.g. clip_sampling.max_clips=4")
    extra = sorted(set(cs) - set(DEFAULTS["clip_sampling"]))
    _require(not extra, "clip_sampling", dict(cs), f"unknown key(s) {', '.join(extra)}; known: "
             f"{', '.join(DEFAULTS['clip_sampling'])}", "remove or rename them")


# ---------------------------------------------------------------------------- resume checks
#: settings that define what the weights mean: resuming with other values is an error
MUST_MATCH = ("model", "diffusion", "auto_encoder", "embedder", "cond_key", "max_frames")
OPTIM_KEYS = ("lr", "weight_decay", "betas", "warmup_steps", "lr_schedule", "min_lr_ratio", "num_steps")
NOT_COMPARED = ("resume",)


def _must_match(key: str) -> bool:
    top = key.split(".")[0]
    if top in MUST_MATCH:
        return True
    return top == "dataset" and key.rsplit(".", 1)[-1] in ("resolution", "num_frames")


def config_changes(stored_yaml: Optional[str], current_yaml: str) -> List[Tuple[str, Any, Any]]:
    """(flattened key, checkpoint value, current value) for every setting that differs."""
    if not stored_yaml:
        return []
    try:
        old = yaml.safe_load(stored_yaml) or {}
    except yaml.YAMLError:
        return []
    a, b = flatten(old), flatten(yaml.safe_load(current_yaml) or {})
    defaults = flatten(yaml.safe_load(to_yaml(DEFAULTS)))
    missing = "<unset>"
    return [(k, a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b))
            if a.get(k, missing) != b.get(k, missing) and k.split(".")[0] not in NOT_COMPARED
            and not (k not in a and k in defaults and b.get(k) == defaults[k])]  # a setting added since


def _effect(key: str) -> str:
    top = key.split(".")[0]
    if top in OPTIM_KEYS:
        return "takes effect (optimizer/LR schedule)"
    if top == "pretrain":
        return "ignored (the weights come from the checkpoint)"
    if top in ("seed", "batch_size", "grad_accum", "dataset", "latent_cache", "clip_sampling"):
        return "takes effect (changes the data/noise stream: not an exact continuation)"
    return "takes effect"


def check_resume(ckpt: Dict[str, Any], model: torch.nn.Module, config_yaml: str, log) -> None:
    """Refuse a checkpoint of another model / shape (one line), log every other changed setting."""
    stem = ckpt["stem"]
    changes = config_changes(ckpt["state"].get("config"), config_yaml)
    fatal = [(k, a, b) for k, a, b in changes if _must_match(k)]
    said = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, a, b in fatal[:6])
    report = compare_state_dict(model, ckpt["model"])
    if any(report.values()):
        raise CheckpointError(
            f"cannot resume from {stem}.safetensors: it does not match this model ({format_report(report, 3)})"
            + (f"; config differs: {said}" if said else "")
            + ". It belongs to another run: use another name or log_dir, or resume=PATH to a matching checkpoint.")
    if fatal:
        raise ConfigError(
            f"cannot resume from {stem}: {said}. Model, diffusion, autoencoder, embedder and data shape settings "
            f"must match the checkpoint; set them back, or start a new run (another name or log_dir).")
    for k, a, b in changes:
        log.info("resume: %s changed since the checkpoint: %r -> %r, %s", k, a, b, _effect(k))


# ---------------------------------------------------------------------------- engine
@ENGINE.register_class()
def train_next_clip(cfg) -> int:
    """Generic next-clip diffusion training: AdamW, EMA, bf16 autocast, DDP, exact resume."""
    validate(cfg)
    _, world_env, local_rank = du.env_rank()
    backend = BACKEND.build(cfg.backend, "backend", local_rank=local_rank)
    rank, world = du.init_distributed(backend.dist_backend, cfg.dist_timeout)
    out_dir = run_dir(cfg)
    log = setup_logger(out_dir, rank)
    try:
        with du.collective_guard(cfg.dist_timeout, probe_timeout_s=min(10.0, max(2.0, cfg.dist_timeout))):
            return _train(cfg, backend, rank, world, out_dir, log)
    finally:
        du.cleanup()


train_next_clip.validate = validate


def _build_dataset(cfg):
    if cfg.dataset is None:
        raise ValueError("dataset: is not set; add a DATASETS component (e.g. type: SyntheticPhysics).")
    if cfg.latent_cache:  # refuses a cache made with another autoencoder / dataset config
        from utils.encode_latents import cache_fingerprint

        if cfg.dataset.get("type") == "JointImageVideo":
            raise ConfigError("latent_cache is set but dataset is JointImageVideo; latent caches hold one "
                              "dataset: set latent_cache=null to train on the image/video mix.")
        return DATASETS.build({"type": "LatentCache", "cache_dir": cfg.latent_cache,
                               "expect_fingerprint": cache_fingerprint(cfg)}, "latent_cache")
    return DATASETS.build(cfg.dataset, "dataset")


def _check_cond_key(cfg, embedder, log) -> None:
    """A conditional embedder needs cond_key; an unconditional one ignores it (logged)."""
    if is_conditional(embedder) and not cfg.cond_key:
        raise ConfigError(f"embedder {cfg.embedder.get('type')} makes condition tokens but cond_key is null; "
                          f"set cond_key to the item key it reads (label | caption)")
    if cfg.cond_key and not is_conditional(embedder):
        log.warning("cond_key=%r is ignored: the embedder %s takes no condition (the model is unconditional)",
                    cfg.cond_key, cfg.embedder.get("type"))


def _use_cached_text_features(dataset, embedder, log) -> None:
    """Caption features stored with a latent cache (its fingerprint matched this embedder's config)."""
    stored = dataset.text_features() if callable(getattr(dataset, "text_features", None)) else None
    if stored is None or not callable(getattr(embedder, "add_features", None)):
        return
    embedder.add_features(*stored)
    log.info("using the latent cache's features of %d captions (not re-encoded)", len(stored[0]))


def _yields_batches(dataset) -> bool:
    if isinstance(dataset, torch.utils.data.IterableDataset):
        if not getattr(dataset, "yields_batches", False):
            raise ConfigError(f"dataset {type(dataset).__name__} is an IterableDataset that yields single items; "
                              f"the engine needs a map-style dataset or one that yields whole batches "
                              f"(yields_batches = True, like JointImageVideo).")
        return True
    return False


def _make_loader(cfg, dataset, rank: int, world: int, start: int):
    """The batch iterator from (micro-)step ``start * grad_accum`` on, the same on every resume."""
    accum = int(cfg.grad_accum)
    workers = dict(num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)
    if _yields_batches(dataset):
        dataset.configure(rank=rank, world_size=world, start_step=start * accum,
                          num_steps=cfg.num_steps * accum, batch_size=cfg.batch_size)
        return torch.utils.data.DataLoader(dataset, batch_size=None, **workers)
    sampler = GlobalBatchSampler(len(dataset), cfg.batch_size, rank, world, cfg.seed, start_batch=start * accum,
                                 epoch_aware=getattr(dataset, "epoch_aware", False))
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, **workers)


def _scheduler(optimizer, cfg, last_epoch: int = -1):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, cfg.warmup_steps, cfg.num_steps, cfg.lr_schedule, cfg.min_lr_ratio),
        last_epoch=last_epoch)


def _apply_resume(ckpt, cfg, model, ema, embedder, optimizer) -> Tuple[int, Any]:
    """Load weights and optimizer state; the current optimizer/schedule settings take effect.
    Returns (step, scheduler rebuilt at that step)."""
    model.load_state_dict(ckpt["model"])
    if ema is not None:
        ema.load_state_dict(ckpt["ema"] if ckpt["ema"] is not None else model.state_dict())
    if ckpt["embedder"] is not None:
        embedder.load_state_dict(ckpt["embedder"])
    state = ckpt["state"]
    optimizer.load_state_dict(state["optimizer"])
    for group, wd in zip(optimizer.param_groups, (cfg.weight_decay, 0.0)):
        group.update(initial_lr=cfg.lr, weight_decay=wd, betas=tuple(cfg.betas))
    step = int(state["step"])
    return step, _scheduler(optimizer, cfg, last_epoch=step - 1)


def _train(cfg, backend, rank, world, out_dir: Path, log) -> int:
    device = backend.device
    config_yaml = to_yaml({k: v for k, v in cfg.items() if not k.startswith("_")})
    log.info("run %s on %s, %d process(es)", out_dir, backend.describe(), world)
    backend.seed_everything(cfg.seed + rank)

    # -- components
    dataset = _build_dataset(cfg)
    autoencoder = AUTO_ENCODER.build(cfg.auto_encoder, "auto_encoder").to(device).eval()
    factor = int(getattr(autoencoder, "temporal_factor", 1) or 1)
    if cfg.max_frames % factor:
        raise ConfigError(f"max_frames={cfg.max_frames} is not a multiple of the autoencoder's temporal_factor "
                          f"{factor}; use a multiple of {factor}.")
    if factor > 1 and isinstance(dataset, torch.utils.data.IterableDataset):
        raise ConfigError(f"dataset {type(dataset).__name__} mixes one-frame image batches, but the autoencoder "
                          f"compresses time (temporal_factor {factor}); use an autoencoder with temporal_factor 1.")
    embedder = EMBEDDER.build(cfg.embedder, "embedder").to(device)
    _check_cond_key(cfg, embedder, log)
    _use_cached_text_features(dataset, embedder, log)
    model = MODEL.build(model_cfg_for(cfg.model, embedder, cfg.embedder.get("type", "")), "model")
    model.set_attention(*backend.attention_kernel(training=True))
    if cfg.pretrain:
        PRETRAIN.build(cfg.pretrain, "pretrain", model=model)
    model.to(device)
    diffusion = DIFFUSION.build(cfg.diffusion, "diffusion")
    visuals = [VISUAL.build(v, f"visual[{i}]") for i, v in enumerate(cfg.visual or [])]
    ema = copy.deepcopy(model).float().eval().requires_grad_(False) if cfg.use_ema else None
    trainable = torch.nn.ModuleList([model, embedder])
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model %s: %.2fM parameters", cfg.model.get("type"), n_params / 1e6)

    optimizer = torch.optim.AdamW(param_groups(trainable, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas))
    scheduler = _scheduler(optimizer, cfg)
    scaler = backend.grad_scaler()

    # -- resume: read and check the checkpoint before anything is written to the run dir
    ckpt_dir = out_dir / "checkpoints"
    ckpt = load_resume(cfg.resume, ckpt_dir, warn=log.warning)
    if ckpt is not None:
        check_resume(ckpt, model, config_yaml, log)
    if rank == 0:
        atomic_write_text(out_dir / "config.yaml", config_yaml)
        if callable(getattr(dataset, "write_label_map", None)):
            log.info("label map written to %s", dataset.write_label_map(out_dir / "label_map.json"))
        for path in clean_checkpoint_dir(ckpt_dir):
            log.info("removed %s (left by an interrupted or failed checkpoint write)", path)
    start = 0
    if ckpt is not None:
        start, scheduler = _apply_resume(ckpt, cfg, model, ema, embedder, optimizer)
        set_rng_state(ckpt["state"]["rng"])
        log.info("resumed from %s at step %d", ckpt["stem"], start)
        del ckpt

    net = DDP(model, device_ids=None if device.type == "cpu" else [device]) if world > 1 else model
    accum = int(cfg.grad_accum)
    mixed = isinstance(dataset, torch.utils.data.IterableDataset)
    batches = iter(_make_loader(cfg, dataset, rank, world, start))
    scalars = ScalarLog(out_dir, enabled=rank == 0, resume_step=start if start else None)
    cs = cfg.clip_sampling
    bar = None
    if rank == 0 and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.num_steps, initial=start, desc="train", dynamic_ncols=True)

    t_last, steps_since = time.time(), 0
    for step in range(start, cfg.num_steps):
        net.train()
        loss_sum, images = 0.0, 0
        for micro in range(accum):
            batch = next(batches)
            images += batch.get("kind") == "image"
            x1 = latents_of(batch, autoencoder, cfg.max_frames, device)
            B = x1.shape[0]
            gen = step_generator(cfg.seed, step, micro)
            # global-batch randomness, sliced for this rank
            clip_lens = sample_clip_lens(x1.shape[2], B * world, cs.mode, cs.clip_len, cs.min_clips,
                                         cs.max_clips, generator=gen)[rank * B:(rank + 1) * B]
            cond, cond_mask = build_conditioning(embedder, batch, cfg.cond_key, device, cfg.cond_dropout, gen,
                                                 rank, world)
            sync = micro == accum - 1 or world == 1
            ctx = net.no_sync() if (world > 1 and not sync) else contextlib.nullcontext()
            with ctx:
                with backend.autocast():
                    out = diffusion.training_losses(net, x1, clip_lens.to(device), cond=cond, cond_mask=cond_mask,
                                                    generator=gen, rank_slice=(rank, world))
                scaler.scale(out["loss"] / accum).backward()
            loss_sum += float(out["loss"].detach()) / accum
        du.all_reduce_grads(embedder)  # DDP only syncs the model's gradients
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable.parameters(), cfg.grad_clip or float("inf"))
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        if ema is not None:
            ema_update(ema, model, cfg.ema_decay)

        done = step + 1
        steps_since += 1
        loss_mean = float(du.all_reduce_mean(torch.tensor(loss_sum)))
        if rank == 0:
            if done % cfg.log_interval == 0 or done == cfg.num_steps:
                now = time.time()
                sps = steps_since / max(now - t_last, 1e-9)
                t_last, steps_since = now, 0
                record = {"loss": loss_mean, "lr": scheduler.get_last_lr()[0],
                          "grad_norm": float(grad_norm), "steps_per_s": sps}
                if mixed:
                    record["image_frac"] = images / accum  # share of this step's batches that were images
                scalars.write(done, record)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_mean:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if done % cfg.save_ckp_interval == 0 or done == cfg.num_steps:
            if rank == 0:
                state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
                save_checkpoint(ckpt_dir, done, model.state_dict(), ema.state_dict() if ema is not None else None,
                                state, config_yaml, embedder_sd=embedder.state_dict())
                _prune(ckpt_dir, cfg.keep_last)
                log.info("step %d: loss %.4f, checkpoint saved", done, loss_mean)
            du.barrier()
        if visuals and rank == 0 and (done % cfg.viz_interval == 0 or done == cfg.num_steps):
            vstate = {"model": ema if ema is not None else model, "diffusion": diffusion,
                      "autoencoder": autoencoder, "embedder": embedder, "batch": batch, "step": done,
                      "run_dir": out_dir, "backend": backend, "cfg": cfg}
            for hook in visuals:
                for path in hook(vstate):
                    log.info("step %d: wrote %s", done, path)
    if bar is not None:
        bar.close()
    scalars.close()
    log.info("training finished at step %d; memory %s", cfg.num_steps, backend.memory_stats())
    return 0


def _prune(ckpt_dir: Path, keep: int) -> None:
    if not keep or keep <= 0:
        return
    stems = sorted({p.name.split(".")[0] for p in ckpt_dir.glob("step_*.state.pt")})
    for old in stems[:-keep]:
        for p in ckpt_dir.glob(old + ".*"):
            os.unlink(p)


train_next_clip.defaults = DEFAULTS
