"""torch.distributed helpers. Works single-process (no env vars) and under torchrun."""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def env_rank() -> tuple:
    """(rank, world_size, local_rank) from torchrun's environment (0, 1, 0 when absent)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed(dist_backend: str) -> tuple:
    """Initialise the process group if WORLD_SIZE > 1; returns (rank, world_size)."""
    rank, world, _ = env_rank()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend=dist_backend, timeout=timedelta(minutes=30))
    return rank, world


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    if is_dist():
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= dist.get_world_size()
    return x


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()


def all_reduce_grads(module: torch.nn.Module) -> None:
    """Average the gradients of a module that DDP does not wrap (e.g. a trainable embedder)."""
    if not is_dist():
        return
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= dist.get_world_size()
