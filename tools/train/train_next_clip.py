"""ENGINE train_next_clip: the generic training loop, written out step by step.

Model, diffusion, dataset, embedder and autoencoder all come from the YAML. The same
command runs single-process or under ``torchrun`` (DDP; gloo on CPU, nccl / hccl from
the backend). Every random draw of a step (clip cuts, flow times, noise) is made for the
*global* batch from a generator seeded by (seed, step, micro-step) and sliced per rank,
so N processes reproduce the single-process run on the same global batch, and a resumed
run reproduces the uninterrupted one.
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from tools.train.clip_sampling import sample_clip_lens
from utils import distributed as du
from utils.checkpoint import load_train_state, resolve_resume, save_checkpoint, set_rng_state
from utils.config import DEFAULT_COMPONENTS, run_dir, to_yaml
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
}


# ---------------------------------------------------------------------------- data
class GlobalBatchSampler(torch.utils.data.Sampler):
    """Yields this rank's indices of global batch ``i`` = a seeded permutation chunk.

    Rank r of W takes the r-th slice of each global batch of ``batch_size * W`` items, so
    the union over ranks equals what one process with the global batch would read.
    Starting at ``start_batch`` resumes the exact stream.
    """

    def __init__(self, length: int, batch_size: int, rank: int, world: int, seed: int, start_batch: int = 0):
        self.n, self.bs, self.rank, self.world, self.seed = length, batch_size, rank, world, seed
        self.start = start_batch

    def __iter__(self) -> Iterator[List[int]]:
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
            yield chunk[self.rank * self.bs:(self.rank + 1) * self.bs].tolist()
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
    """Model inputs of a batch: cached ``latent`` as is, or ``video`` (cut to max_frames) encoded."""
    if "latent" in batch:
        return batch["latent"].to(device, non_blocking=True)
    video = batch["video"]
    if video.shape[2] < max_frames:
        raise ValueError(f"dataset items have {video.shape[2]} frames, fewer than max_frames="
                         f"{max_frames}; lower max_frames or raise the dataset's num_frames.")
    return autoencoder.encode(video[:, :, :max_frames].to(device, non_blocking=True))


def build_conditioning(embedder, batch: Dict[str, Any], cond_key: Optional[str], device) -> Optional[torch.Tensor]:
    if cond_key is None or getattr(embedder, "num_tokens", 0) == 0:
        return None
    if cond_key not in batch:
        raise KeyError(f"cond_key={cond_key!r} but dataset items have only {sorted(batch)}; "
                       f"set cond_key to one of them or null.")
    return embedder(batch[cond_key]).to(device)


# ---------------------------------------------------------------------------- engine
@ENGINE.register_class()
def train_next_clip(cfg) -> int:
    """Generic next-clip diffusion training: AdamW, EMA, bf16 autocast, DDP, exact resume."""
    _, world_env, local_rank = du.env_rank()
    backend = BACKEND.build(cfg.backend, "backend", local_rank=local_rank)
    rank, world = du.init_distributed(backend.dist_backend)
    out_dir = run_dir(cfg)
    log = setup_logger(out_dir, rank)
    try:
        return _train(cfg, backend, rank, world, out_dir, log)
    finally:
        du.cleanup()


def _train(cfg, backend, rank, world, out_dir: Path, log) -> int:
    device = backend.device
    config_yaml = to_yaml({k: v for k, v in cfg.items() if not k.startswith("_")})
    if rank == 0:
        atomic_write_text(out_dir / "config.yaml", config_yaml)
    log.info("run %s on %s, %d process(es)", out_dir, backend.describe(), world)
    backend.seed_everything(cfg.seed + rank)

    # -- components
    if cfg.dataset is None:
        raise ValueError("dataset: is not set; add a DATASETS component (e.g. type: SyntheticPhysics).")
    if cfg.latent_cache:  # refuses a cache made with another autoencoder / dataset config
        from utils.encode_latents import cache_fingerprint

        dataset = DATASETS.build({"type": "LatentCache", "cache_dir": cfg.latent_cache,
                                  "expect_fingerprint": cache_fingerprint(cfg)}, "latent_cache")
    else:
        dataset = DATASETS.build(cfg.dataset, "dataset")
    autoencoder = AUTO_ENCODER.build(cfg.auto_encoder, "auto_encoder").to(device).eval()
    embedder = EMBEDDER.build(cfg.embedder, "embedder").to(device)
    model = MODEL.build(cfg.model, "model")
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
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, cfg.warmup_steps, cfg.num_steps, cfg.lr_schedule, cfg.min_lr_ratio))
    scaler = backend.grad_scaler()

    # -- resume
    ckpt_dir = out_dir / "checkpoints"
    start = 0
    stem = resolve_resume(cfg.resume, ckpt_dir)
    if stem is not None:
        from utils.checkpoint import read_state_dict

        state = load_train_state(stem)
        model.load_state_dict(read_state_dict(Path(str(stem) + ".safetensors")))
        if ema is not None and Path(str(stem) + ".ema.safetensors").is_file():
            ema.load_state_dict(read_state_dict(Path(str(stem) + ".ema.safetensors")))
        emb_path = Path(str(stem) + ".embedder.safetensors")
        if emb_path.is_file():
            embedder.load_state_dict(read_state_dict(emb_path))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start = int(state["step"])
        log.info("resumed from %s at step %d", stem, start)

    net = DDP(model, device_ids=None if device.type == "cpu" else [device]) if world > 1 else model
    accum = int(cfg.grad_accum)
    sampler = GlobalBatchSampler(len(dataset), cfg.batch_size, rank, world, cfg.seed, start_batch=start * accum)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers,
                                         collate_fn=collate, persistent_workers=cfg.num_workers > 0)
    batches = iter(loader)
    scalars = ScalarLog(out_dir, enabled=rank == 0)
    cs = cfg.clip_sampling
    bar = None
    if rank == 0 and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.num_steps, initial=start, desc="train", dynamic_ncols=True)

    t_last, steps_since = time.time(), 0
    for step in range(start, cfg.num_steps):
        net.train()
        loss_sum = 0.0
        for micro in range(accum):
            batch = next(batches)
            x1 = latents_of(batch, autoencoder, cfg.max_frames, device)
            B = x1.shape[0]
            gen = step_generator(cfg.seed, step, micro)
            # global-batch randomness, sliced for this rank
            clip_lens = sample_clip_lens(x1.shape[2], B * world, cs.mode, cs.clip_len, cs.min_clips,
                                         cs.max_clips, generator=gen)[rank * B:(rank + 1) * B]
            cond = build_conditioning(embedder, batch, cfg.cond_key, device)
            sync = micro == accum - 1 or world == 1
            ctx = net.no_sync() if (world > 1 and not sync) else contextlib.nullcontext()
            with ctx:
                with backend.autocast():
                    out = diffusion.training_losses(net, x1, clip_lens.to(device), cond=cond,
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
                scalars.write(done, {"loss": loss_mean, "lr": scheduler.get_last_lr()[0],
                                     "grad_norm": float(grad_norm), "steps_per_s": sps})
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
