"""torch.distributed helpers. Works single-process (no env vars) and under torchrun."""
from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from datetime import timedelta

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 600.0  # how long a collective waits for a silent rank before it fails
PROBE_TIMEOUT_S = 10.0     # the monitored barrier that names the silent rank(s)
_log = logging.getLogger("nextclip.distributed")
_probe_group = None        # a side gloo group for monitored_barrier (a timed-out group is broken)


class DistributedError(RuntimeError):
    """A collective failed because another rank died, hung or was stopped."""


def env_rank() -> tuple:
    """(rank, world_size, local_rank) from torchrun's environment (0, 1, 0 when absent)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed(dist_backend: str, timeout_s: float | None = None) -> tuple:
    """Initialise the process group if WORLD_SIZE > 1; returns (rank, world_size).

    ``timeout_s`` (default :data:`DEFAULT_TIMEOUT_S`) bounds every collective: a rank that
    stops answering makes the others fail after that long instead of waiting forever.
    """
    global _probe_group
    rank, world, _ = env_rank()
    if world > 1 and not dist.is_initialized():
        timeout = timedelta(seconds=float(timeout_s or DEFAULT_TIMEOUT_S))
        dist.init_process_group(backend=dist_backend, timeout=timeout)
        _probe_group = None
        try:  # monitored_barrier exists only for gloo, and a group whose collective timed out is closed
            _probe_group = dist.new_group(backend="gloo", timeout=timeout)
        except Exception as e:  # diagnosis is optional
            _log.warning("no gloo group for naming silent ranks (%s: %s)", type(e).__name__, e)
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
    global _probe_group
    _probe_group = None
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


# ---------------------------------------------------------------------------- failure diagnosis
def silent_ranks(probe_timeout_s: float = PROBE_TIMEOUT_S) -> list[int] | None:
    """Ranks that do not reach a monitored barrier within ``probe_timeout_s`` ([] = all answered,
    None = cannot tell: no gloo group, or a rank died and closed its connections).
    Collective: every live rank must call it."""
    if _probe_group is None:
        return None
    try:
        dist.monitored_barrier(group=_probe_group, timeout=timedelta(seconds=probe_timeout_s), wait_all_ranks=True)
    except Exception as e:  # the message is what we want
        return _ranks_in(str(e)) or None
    return []


def _ranks_in(message: str) -> list[int]:
    """Rank numbers named in a monitored_barrier error ("Ranks 1, 3 failed to pass ...")."""
    m = re.search(r"[Rr]anks?\s+([\d,\s]+?)\s+failed", message)
    return sorted({int(r) for r in re.findall(r"\d+", m.group(1))}) if m else []


@contextlib.contextmanager
def collective_guard(timeout_s: float, probe_timeout_s: float = PROBE_TIMEOUT_S) -> Iterator[None]:
    """Turn a failed collective into one :class:`DistributedError` naming the silent rank(s).

    A rank that dies makes the others fail at once (connection closed); one that hangs or is
    stopped makes them fail after ``timeout_s``. Either way this asks every rank to a
    monitored barrier (gloo) and names those that do not answer.
    """
    try:
        yield
    except RuntimeError as e:  # DistBackendError is one
        if not is_dist() or isinstance(e, DistributedError) or not _looks_like_collective_failure(e):
            raise
        me, world = get_rank(), get_world_size()
        ranks = silent_ranks(probe_timeout_s)  # every live rank joins, so only silent ones are named
        if ranks == [] and me == 0:
            raise  # every rank answered: the collective failed for another reason
        ranks = ranks or None  # a rank other than 0 only learns whether rank 0 answered
        who = (f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}" if ranks
               else "another rank")
        raise DistributedError(
            f"rank {me} of {world}: a collective operation failed because {who} stopped answering "
            f"(died, hung or was stopped; dist_timeout={timeout_s:g}s). Check that rank's log and "
            f"stderr; raise dist_timeout if a rank legitimately needs longer (e.g. a slow first batch). "
            f"[{type(e).__name__}: {str(e).splitlines()[0][:200]}]") from None


def _looks_like_collective_failure(err: BaseException) -> bool:
    """Errors raised by a process-group backend (not, e.g., a DataLoader timeout)."""
    if hasattr(dist, "DistBackendError") and isinstance(err, dist.DistBackendError):
        return True
    text = str(err).lower()
    return any(s in text for s in ("gloo", "c10d", "processgroup", "watchdog", "collective operation"))
