"""Loop plumbing shared by the training engines (train_next_clip, train_autoencoder).

The engines write their step out themselves; what they share lives here, once: the launch
(backend, torch.distributed, logger, the collective guard), the global-batch data stream and
step generator, optimizer groups / LR schedule / EMA, validation of the loop settings, resume
(read, check against the model and the stored config, apply), the per-step log (progress bar,
``scalars.jsonl``, steps/s) and checkpoint saving with pruning.

Randomness: every draw of a step comes from ``step_generator(seed, step, micro)`` for the GLOBAL
batch and is sliced per rank, so N processes reproduce one process and a resumed run
reproduces an uninterrupted one.
"""
from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from tools.backends.parallel import PARALLEL_CHOICES
from tools.datasets.latent_cache import flatten
from utils import distributed as du
from utils.checkpoint import (
    CheckpointError,
    clean_checkpoint_dir,
    compare_state_dict,
    format_report,
    load_full_into_sharded,
    load_resume,
    load_sharded_checkpoint,
    save_checkpoint,
    save_sharded_checkpoint,
    set_rng_state,
)
from utils.config import ConfigError, run_dir, to_yaml
from utils.flops import mfu
from utils.io import atomic_write_text
from utils.logging import ScalarLog, setup_logger
from utils.registry import BACKEND
from utils.run_lock import run_lock

#: loop settings every training engine has, with their defaults (an engine may override them)
LOOP_DEFAULTS: dict[str, Any] = {
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
}


# ---------------------------------------------------------------------------- launch
def launch(cfg, body: Callable[..., int]) -> int:
    """Backend, process group, the run dir's lock (utils/run_lock.py) and logger, then
    ``body(cfg, backend, rank, world, out_dir, log)``
    under the collective guard (a silent rank stops the run after ``dist_timeout`` s)."""
    _, _, local_rank = du.env_rank()
    backend = BACKEND.build(cfg.backend, "backend", local_rank=local_rank)
    rank, world = du.init_distributed(backend.dist_backend, cfg.dist_timeout)
    out_dir = run_dir(cfg)
    try:
        with run_lock(out_dir, "training", rank=rank):  # before anything is written: the run owns its dir
            log = setup_logger(out_dir, rank)
            with du.collective_guard(cfg.dist_timeout, probe_timeout_s=min(10.0, max(2.0, cfg.dist_timeout))):
                return body(cfg, backend, rank, world, out_dir, log)
    finally:
        du.cleanup()


def config_yaml_of(cfg) -> str:
    """The merged config as stored next to the run and in every checkpoint."""
    return to_yaml({k: v for k, v in cfg.items() if not k.startswith("_")})


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

    def __iter__(self) -> Iterator[list[int | tuple[int, int]]]:
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


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    tensor_key = "latent" if "latent" in items[0] else "video"
    out: dict[str, Any] = {tensor_key: torch.stack([it[tensor_key] for it in items])}
    for key in items[0]:
        if key != tensor_key:
            out[key] = [it[key] for it in items]
    return out


def yields_batches(dataset) -> bool:
    if isinstance(dataset, torch.utils.data.IterableDataset):
        if not getattr(dataset, "yields_batches", False):
            raise ConfigError(f"dataset {type(dataset).__name__} is an IterableDataset that yields single items; "
                              f"the engine needs a map-style dataset or one that yields whole batches "
                              f"(yields_batches = True, like JointImageVideo).")
        return True
    return False


def make_loader(cfg, dataset, rank: int, world: int, start: int):
    """The batch iterator from (micro-)step ``start * grad_accum`` on, the same on every resume."""
    accum = int(cfg.grad_accum)
    workers = dict(num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)
    if yields_batches(dataset):
        dataset.configure(rank=rank, world_size=world, start_step=start * accum,
                          num_steps=cfg.num_steps * accum, batch_size=cfg.batch_size)
        return torch.utils.data.DataLoader(dataset, batch_size=None, **workers)
    sampler = GlobalBatchSampler(len(dataset), cfg.batch_size, rank, world, cfg.seed, start_batch=start * accum,
                                 epoch_aware=getattr(dataset, "epoch_aware", False))
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, **workers)


def step_generator(seed: int, step: int, micro: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 131 + micro) % (2 ** 63))


# ---------------------------------------------------------------------------- optimization
def lr_lambda(step: int, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        frac = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac))
    raise ValueError(f"lr_schedule={schedule!r}; choose constant or cosine.")


def param_groups(model: torch.nn.Module, weight_decay: float, fast: Sequence[torch.nn.Parameter] = (),
                 fast_mult: float = 1.0):
    """No weight decay on norms, biases and other 1-D parameters; the ``fast`` parameters (new
    layers of a fine-tune) learn at ``fast_mult`` x lr. The two extra groups exist only when
    fast_mult != 1, so optimizer states saved without them still load."""
    fast_ids = {id(p) for p in fast} if fast_mult != 1.0 else set()
    groups: dict[tuple, list] = {(True, False): [], (False, False): []}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((p.dim() >= 2, id(p) in fast_ids), []).append(p)
    if fast_ids:
        groups.setdefault((True, True), []), groups.setdefault((False, True), [])
    ordered = sorted(groups.items(), key=lambda kv: (kv[0][1], not kv[0][0]))
    return [{"params": ps, "weight_decay": weight_decay if decays else 0.0, "decays": decays,
             "lr_mult": fast_mult if is_fast else 1.0} for (decays, is_fast), ps in ordered]


def make_optimizer(module: torch.nn.Module, cfg, lr: float | None = None, fast: Sequence[torch.nn.Parameter] = (),
                   fast_mult: float = 1.0) -> torch.optim.Optimizer:
    base = cfg.lr if lr is None else lr
    groups = [dict(g, lr=base * g["lr_mult"]) for g in param_groups(module, cfg.weight_decay, fast, fast_mult)]
    return torch.optim.AdamW(groups, lr=base, betas=tuple(cfg.betas))


def make_scheduler(optimizer, cfg, last_epoch: int = -1):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, cfg.warmup_steps, cfg.num_steps, cfg.lr_schedule, cfg.min_lr_ratio),
        last_epoch=last_epoch)


def reset_optimizer_settings(optimizer, cfg, lr: float | None = None) -> None:
    """After loading a resumed optimizer: the current lr / weight decay / betas take effect."""
    base = cfg.lr if lr is None else lr
    for i, group in enumerate(optimizer.param_groups):
        decays = group.get("decays", i % 2 == 0)  # states saved before the keys existed: [decay, no decay]
        group.update(initial_lr=base * group.get("lr_mult", 1.0), weight_decay=cfg.weight_decay if decays else 0.0,
                     betas=tuple(cfg.betas))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        if e is not p:  # a LoRA EMA shares the frozen base weights
            e.lerp_(p.detach().float(), 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def grad_norm_and_clip(params: Sequence[torch.nn.Parameter], max_norm: float | None) -> torch.Tensor:
    """``clip_grad_norm_`` over a mix of FSDP-sharded (DTensor) and plain gradients: the norm of the
    sharded ones is reduced over their mesh (every rank gets the global norm), then all are scaled
    by the same factor. Without DTensors it is exactly ``torch.nn.utils.clip_grad_norm_``."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    sharded = [g for g in grads if isinstance(g, DTensor)]
    if not sharded:
        return torch.nn.utils.clip_grad_norm_(params, max_norm or float("inf"))
    plain = [g for g in grads if not isinstance(g, DTensor)]
    total = torch.nn.utils.get_total_norm(sharded).full_tensor() ** 2
    if plain:
        total = total + torch.nn.utils.get_total_norm(plain).to(total.device) ** 2
    total = total.sqrt()
    if max_norm:
        coef = float(torch.clamp(max_norm / (total + 1e-6), max=1.0))
        for g in grads:
            g.mul_(coef)
    return total


def clip_and_step(trainable: torch.nn.Module, optimizer, scheduler, scaler, grad_clip) -> torch.Tensor:
    """Unscale, clip (0 / None: no clipping), step, zero the grads, advance the LR schedule; the grad norm
    (correct under FSDP too: see :func:`grad_norm_and_clip`)."""
    scaler.unscale_(optimizer)
    grad_norm = grad_norm_and_clip(list(trainable.parameters()), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return grad_norm


# ---------------------------------------------------------------------------- validation
def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def require(ok: bool, key: str, value: Any, allowed: str, fix: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}; {fix}.")


def validate_loop(cfg, defaults: Mapping[str, Any], positive: Sequence[str] = ()) -> None:
    """ConfigError naming the first bad loop / optimizer setting (shared part of contract C1).
    ``positive``: engine-specific integer settings that must be >= 1 too."""
    g = cfg.get
    for key in ("batch_size", "num_steps", "grad_accum", "save_ckp_interval", "log_interval", "viz_interval",
                *positive):
        v = g(key, defaults[key])
        require(is_int(v) and v >= 1, key, v, "must be an integer >= 1", f"set {key} to 1 or more")
    v = g("num_workers", 0)
    require(is_int(v) and v >= 0, "num_workers", v, "must be an integer >= 0", "use 0 to load in the main process")
    v = g("warmup_steps", defaults["warmup_steps"])
    require(is_int(v) and v >= 0, "warmup_steps", v, "must be an integer >= 0", "use 0 for no warm-up")
    v = g("lr", defaults["lr"])
    require(is_num(v) and v > 0, "lr", v, "must be a number > 0", "e.g. lr=1e-4")
    v = g("weight_decay", defaults["weight_decay"])
    require(is_num(v) and v >= 0, "weight_decay", v, "must be a number >= 0", "e.g. weight_decay=0.1")
    v = g("betas", defaults["betas"])
    require(isinstance(v, (list, tuple)) and len(v) == 2 and all(is_num(b) and 0 <= b < 1 for b in v),
            "betas", v, "must be two numbers in [0, 1)", "e.g. betas=[0.9,0.95]")
    v = g("lr_schedule", defaults["lr_schedule"])
    require(v in ("constant", "cosine"), "lr_schedule", v, "choose constant or cosine", "fix the spelling")
    v = g("min_lr_ratio", defaults["min_lr_ratio"])
    require(is_num(v) and 0 <= v <= 1, "min_lr_ratio", v, "must be a number in [0, 1]", "e.g. min_lr_ratio=0.1")
    v = g("grad_clip", defaults["grad_clip"])
    require(v is None or (is_num(v) and v >= 0), "grad_clip", v, "must be a number >= 0 or null (0/null: no clipping)",
            "e.g. grad_clip=1.0")
    v = g("ema_decay", defaults["ema_decay"])
    require(is_num(v) and 0 <= v < 1, "ema_decay", v, "must be a number in [0, 1)", "e.g. ema_decay=0.999")
    v = g("keep_last", defaults["keep_last"])
    require(v is None or (is_int(v) and v >= 0), "keep_last", v, "must be an integer >= 0 or null (keep all)",
            "e.g. keep_last=3")
    v = g("seed", defaults["seed"])
    require(is_int(v) and v >= 0, "seed", v, "must be an integer >= 0", "e.g. seed=8888")
    v = g("dist_timeout", defaults["dist_timeout"])
    require(is_num(v) and v > 0, "dist_timeout", v, "must be a number of seconds > 0", "e.g. dist_timeout=600")
    v = g("resume", "auto")
    require(v is None or v is False or isinstance(v, str), "resume", v, "auto, none or a checkpoint path",
            "e.g. resume=auto")
    v = (g("backend") or {}).get("parallel", "auto")
    require(v in PARALLEL_CHOICES, "backend.parallel", v, f"choose one of {', '.join(PARALLEL_CHOICES)}",
            "auto is ddp under torchrun with more than one process, else none")


def check_data_shape(cfg, autoencoder, patch: int = 1) -> None:
    """ConfigError unless ``max_frames`` pixel frames can be encoded by ``autoencoder`` and the dataset's
    ``resolution`` (when it has one; not for a latent cache) is a multiple of its spatial factor x
    ``patch``. Called by ``validate`` on the autoencoder of :func:`probe_autoencoder` (``--dry-run``) and
    again on the built one."""
    from tools.autoencoders.base import check_frames, check_resolution

    try:
        check_frames(autoencoder, int(cfg.max_frames), "max_frames")
        res = (cfg.get("dataset") or {}).get("resolution")
        sized = is_int(res) or (isinstance(res, (list, tuple)) and len(res) == 2 and all(is_int(x) for x in res))
        if sized and not cfg.get("latent_cache"):
            check_resolution(autoencoder, res, "dataset.resolution", patch)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def validate_data_shape(cfg, patch: int = 1) -> None:
    """:func:`check_data_shape` before the run (``--dry-run`` too), on the autoencoder built without its
    weights on the meta device; a bad autoencoder size setting is a one-line BuildError."""
    from tools.autoencoders.base import probe_autoencoder

    ae = probe_autoencoder(cfg.get("auto_encoder"))
    if ae is not None:
        check_data_shape(cfg, ae, patch)


# ---------------------------------------------------------------------------- resume
OPTIM_KEYS = ("lr", "weight_decay", "betas", "warmup_steps", "lr_schedule", "min_lr_ratio", "num_steps")
NOT_COMPARED = ("resume",)


def config_changes(stored_yaml: str | None, current_yaml: str,
                   defaults: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(flattened key, checkpoint value, current value) for every setting that differs (a setting
    added to ``defaults`` since the checkpoint, at its default value, is not a change)."""
    if not stored_yaml:
        return []
    try:
        old = yaml.safe_load(stored_yaml) or {}
    except yaml.YAMLError:
        return []
    a, b = flatten(old), flatten(yaml.safe_load(current_yaml) or {})
    flat_defaults = flatten(yaml.safe_load(to_yaml(dict(defaults))))
    missing = "<unset>"
    return [(k, a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b))
            if a.get(k, missing) != b.get(k, missing) and k.split(".")[0] not in NOT_COMPARED
            and not (k not in a and k in flat_defaults and b.get(k) == flat_defaults[k])]


def effect(key: str, stream_keys: Sequence[str]) -> str:
    """How a setting changed since the checkpoint acts on the resumed run (for the log)."""
    top = key.split(".")[0]
    if top in OPTIM_KEYS:
        return "takes effect (optimizer/LR schedule)"
    if top == "pretrain":
        return "ignored (the weights come from the checkpoint)"
    if top in stream_keys:
        return "takes effect (changes the data/noise stream: not an exact continuation)"
    return "takes effect"


def check_resume(ckpt: dict[str, Any], model: torch.nn.Module, config_yaml: str, log, defaults: Mapping[str, Any],
                 must_match: Callable[[str], bool], effect: Callable[[str], str], what: str) -> None:
    """Refuse a checkpoint of another model / shape (one line), log every other changed setting.
    ``must_match(key)``: settings that define what the weights mean (``what`` names them)."""
    stem = ckpt["stem"]
    changes = config_changes(ckpt["state"].get("config"), config_yaml, defaults)
    fatal = [(k, a, b) for k, a, b in changes if must_match(k)]
    said = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, a, b in fatal[:6])
    report = compare_state_dict(model, ckpt["model"])
    if any(report.values()):
        raise CheckpointError(
            f"cannot resume from {stem}.safetensors: it does not match this model ({format_report(report, 3)})"
            + (f"; config differs: {said}" if said else "")
            + ". It belongs to another run: use another name or log_dir, or resume=PATH to a matching checkpoint.")
    if fatal:
        raise ConfigError(
            f"cannot resume from {stem}: {said}. {what} must match the checkpoint; set them back, or start a new "
            f"run (another name or log_dir).")
    for k, a, b in changes:
        log.info("resume: %s changed since the checkpoint: %r -> %r, %s", k, a, b, effect(k))
    _log_world_change(ckpt, config_yaml, log)


def global_batch(cfg: Mapping[str, Any], world: int) -> int:
    """Items per optimizer step over every process: batch_size x processes x grad_accum."""
    return int(cfg.get("batch_size", 1)) * int(world) * int(cfg.get("grad_accum", 1) or 1)


def _log_world_change(ckpt: dict[str, Any], config_yaml: str, log) -> None:
    """A checkpoint written by another number of processes: the global batch (batch_size is per process)
    may have changed, and with it the data / noise stream, although no setting did."""
    old_world, world = ckpt["state"].get("world_size"), du.get_world_size()
    if old_world is None or int(old_world) == world:
        return
    try:
        old_cfg, new_cfg = yaml.safe_load(ckpt["state"].get("config") or "") or {}, yaml.safe_load(config_yaml) or {}
    except yaml.YAMLError:
        old_cfg, new_cfg = {}, {}
    old, new = global_batch(old_cfg, old_world), global_batch(new_cfg, world)
    if old != new:
        log.info("resume: world_size changed since the checkpoint: %d -> %d processes, global batch %d -> %d "
                 "(batch_size x processes x grad_accum), takes effect (changes the data/noise stream: not an exact "
                 "continuation)", int(old_world), world, old, new)
    else:
        log.info("resume: world_size changed since the checkpoint: %d -> %d processes with the same global batch "
                 "%d: the data/noise stream continues exactly", int(old_world), world, new)


def open_run(cfg, out_dir: Path, rank: int, log, config_yaml: str,
             check: Callable[[dict[str, Any]], None]) -> tuple[Path, dict[str, Any] | None]:
    """Read and ``check`` the checkpoint to resume from BEFORE anything is written to the run dir;
    then (rank 0) write ``config.yaml`` and remove partial checkpoint files. (ckpt_dir, ckpt or None)."""
    ckpt_dir = out_dir / "checkpoints"
    ckpt = load_resume(cfg.resume, ckpt_dir, warn=log.warning)
    if ckpt is not None:
        check(ckpt)
    if rank == 0:
        atomic_write_text(out_dir / "config.yaml", config_yaml)
        for path in clean_checkpoint_dir(ckpt_dir):
            log.info("removed %s (left by an interrupted or failed checkpoint write)", path)
    return ckpt_dir, ckpt


def resume_run(cfg, out_dir: Path, rank: int, log, config_yaml: str, model, ema, optimizer, scheduler,
               defaults: Mapping[str, Any], must_match: Callable[[str], bool], stream_keys: Sequence[str],
               what: str) -> tuple[Path, int, Any, dict[str, Any] | None]:
    """:func:`open_run` with :func:`check_resume` against ``model``, then :func:`apply_resume`: the resume
    stage of an engine whose model is one module. Returns (ckpt_dir, start step, scheduler, ckpt or
    None; the engine reads its own extra state, e.g. a discriminator, from ``ckpt["state"]``)."""
    ckpt_dir, ckpt = open_run(cfg, out_dir, rank, log, config_yaml, lambda c: check_resume(
        c, model, config_yaml, log, defaults, must_match, lambda k: effect(k, stream_keys), what))
    start = 0
    if ckpt is not None:
        start, scheduler = apply_resume(ckpt, cfg, model, ema, optimizer)
        log.info("resumed from %s at step %d", ckpt["stem"], start)
    return ckpt_dir, start, scheduler, ckpt


def require_parallel(backend, world: int, engine: str, why: str) -> None:
    """ConfigError unless ``backend.parallel`` resolves to none | ddp for ``world`` processes (engines
    whose models fit one device and whose checkpoints are whole files)."""
    mode = backend.parallel_mode(world)
    if mode not in ("none", "ddp"):
        raise ConfigError(f"backend.parallel={mode!r}: {engine} runs parallel none | ddp ({why}); set "
                          f"backend.parallel=ddp or auto.")


def apply_resume(ckpt, cfg, model, ema, optimizer, embedder=None) -> tuple[int, Any]:
    """Load weights, optimizer state and the RNG state; the current optimizer/schedule settings take
    effect. Returns (step, scheduler rebuilt at that step). A sharded (DCP) checkpoint is resharded
    into this run's modules, sharded or not (collective: every rank calls this)."""
    state = ckpt["state"]
    current = [(g.get("lr_mult", 1.0), g.get("decays")) for g in optimizer.param_groups]
    if "dcp" in ckpt:
        load_sharded_checkpoint(ckpt, model, ema, embedder, optimizer)
    else:
        _load_full(ckpt, model, ema, embedder, optimizer, len(current))
    for g, (mult, decays) in zip(optimizer.param_groups, current):  # this run's multipliers take effect
        g["lr_mult"] = mult
        if decays is not None:
            g["decays"] = decays
    reset_optimizer_settings(optimizer, cfg)
    step = int(state["step"])
    set_rng_state(state["rng"])
    return step, make_scheduler(optimizer, cfg, last_epoch=step - 1)


def _load_full(ckpt, model, ema, embedder, optimizer, groups: int) -> None:
    """Weights and optimizer state of a safetensors checkpoint (into FSDP-sharded modules too)."""
    from tools.backends.parallel import is_sharded

    saved = len(ckpt["state"]["optimizer"]["param_groups"])
    if saved != groups:
        raise CheckpointError(f"the checkpoint's optimizer has {saved} parameter groups, this run builds "
                              f"{groups} (a learning-rate multiplier such as cond_lr_mult != 1 adds groups); resume "
                              f"with the checkpoint's settings, or start a new run (pretrain from its weights)")
    if is_sharded(model):  # written without sharding (e.g. one process), resumed by fsdp ranks
        load_full_into_sharded(ckpt, model, ema, embedder, optimizer)
        return
    model.load_state_dict(ckpt["model"])
    if ema is not None:
        ema.load_state_dict(ckpt["ema"] if ckpt["ema"] is not None else model.state_dict())
    if embedder is not None and ckpt["embedder"] is not None:
        embedder.load_state_dict(ckpt["embedder"])
    optimizer.load_state_dict(ckpt["state"]["optimizer"])


# ---------------------------------------------------------------------------- log and save
def lazy_scalars(**values) -> Callable[[], dict[str, Any]]:
    """A step's scalars for :class:`StepLog`, evaluated only when it logs: tensors become floats then
    (a device sync, so not on every step)."""
    return lambda: {k: float(v) if torch.is_tensor(v) else v for k, v in values.items()}


class StepLog:
    """Rank 0's per-step output: a tqdm bar (``progress``) and ``scalars.jsonl`` every ``log_interval``
    steps (and at the last step) with ``steps_per_s`` added; resumed runs trim later records."""

    def __init__(self, cfg, out_dir: Path, rank: int, start: int, desc: str = "train",
                 peak_gflops: float | None = None):
        self.cfg, self.rank, self.peak_gflops = cfg, rank, peak_gflops
        self.scalars = ScalarLog(out_dir, enabled=rank == 0, resume_step=start if start else None)
        self.bar = None
        if rank == 0 and cfg.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=cfg.num_steps, initial=start, desc=desc, dynamic_ncols=True)
        self.t_last, self.steps_since = time.time(), 0

    def due(self, done: int) -> bool:
        """Whether step ``done`` writes a record (rank 0, every ``log_interval`` steps and the last one)."""
        return self.rank == 0 and (done % self.cfg.log_interval == 0 or done == self.cfg.num_steps)

    def step(self, done: int, record: Callable[[], dict[str, float]], postfix: dict[str, str],
             flops: float | None = None) -> None:
        """After step ``done``: ``record()`` is called (and written) only on logging steps. ``flops``: the
        FLOPs of step ``done`` (utils/flops.py); with ``peak_gflops`` the record gets ``model_tflops`` (those
        FLOPs at the interval's steps/s) and ``mfu`` (its share of the peak). With random clip cuts the steps of
        an interval differ in FLOPs: the figure is the logged step's layout at the interval's pace."""
        self.steps_since += 1
        if self.rank != 0:
            return
        if self.due(done):
            now = time.time()
            sps = self.steps_since / max(now - self.t_last, 1e-9)
            self.t_last, self.steps_since = now, 0
            extra = {}
            if flops and self.peak_gflops:
                extra = {"model_tflops": flops * sps / 1e12, "mfu": mfu(flops, 1 / sps, self.peak_gflops)}
            self.scalars.write(done, {**record(), "steps_per_s": sps, **extra})
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(**postfix)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.scalars.close()


def is_due(cfg, done: int, interval_key: str) -> bool:
    return done % cfg[interval_key] == 0 or done == cfg.num_steps


def save_step(cfg, ckpt_dir: Path, done: int, rank: int, model, ema, state: Callable[[], dict[str, Any]],
              config_yaml: str, embedder_sd=None, optimizer=None, embedder=None,
              metadata: dict[str, str] | None = None) -> None:
    """Rank 0 writes checkpoint ``done`` (weights, EMA, ``state()`` = scheduler etc.) and prunes to
    ``keep_last``; every rank waits for it. Call when ``is_due(cfg, done, "save_ckp_interval")``.
    ``optimizer`` / ``embedder``: their state is saved too (the optimizer's under ``"optimizer"``, unless
    ``state()`` already holds it; the embedder's as ``embedder_sd``). A sharded model (FSDP) is saved by
    every rank together as a DCP checkpoint (``optimizer`` must then be given: its state is sharded).
    ``metadata``: extra metadata of the safetensors files (a LoRA adapter's identity)."""
    from tools.backends.parallel import is_sharded

    if is_sharded(model):
        if optimizer is None:
            raise ValueError("save_step: a sharded model needs optimizer= (its state is saved sharded)")
        extra = {k: v for k, v in state().items() if k != "optimizer"}
        extra["world_size"] = du.get_world_size()
        save_sharded_checkpoint(ckpt_dir, done, model, ema, embedder, optimizer, extra, config_yaml)
        if rank == 0:
            prune(ckpt_dir, cfg.keep_last)
        du.barrier()
        return
    if rank == 0:
        train_state = dict(state(), world_size=du.get_world_size())  # the global batch of a resume depends on it
        if optimizer is not None:
            train_state.setdefault("optimizer", optimizer.state_dict())
        if embedder_sd is None and embedder is not None:
            embedder_sd = embedder.state_dict()
        save_checkpoint(ckpt_dir, done, model.state_dict(), ema.state_dict() if ema is not None else None,
                        train_state, config_yaml, embedder_sd=embedder_sd, metadata=metadata)
        prune(ckpt_dir, cfg.keep_last)
    du.barrier()


def prune(ckpt_dir: Path, keep: int) -> None:
    if not keep or keep <= 0:
        return
    stems = sorted({p.name.split(".")[0] for p in ckpt_dir.glob("step_*.state.pt")})
    for old in stems[:-keep]:
        for p in ckpt_dir.glob(old + ".*"):
            shutil.rmtree(p) if p.is_dir() else os.unlink(p)
