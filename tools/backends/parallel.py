"""Data parallelism of a training engine: none | ddp | fsdp (the backend's ``parallel`` setting).

``Backend.wrap(model)`` calls :func:`wrap_model`; the engine then trains the returned module.

- ``none``: the model on the backend's device (one process).
- ``ddp``: ``DistributedDataParallel`` (every rank holds the whole model, gradients all-reduced).
- ``fsdp``: FSDP2 ``fully_shard`` on every transformer block (:func:`block_modules`) and then on
  the root, so each rank holds 1 / world of every parameter, gradient and AdamW moment; a
  block's parameters are all-gathered just for its forward / backward. Mixed precision
  (``MixedPrecisionPolicy``): bf16 backends compute in bf16 from fp32 master weights and reduce
  gradients in fp32; fp32 backends keep everything fp32. Activation checkpointing per block is
  the model's own ``grad_checkpointing`` setting (it recomputes each block in the backward).
  A model built on the meta device (``backend.meta_init``, or VideoGPT ``empty_weights`` without a
  pretrain) is sharded first and then materialised shard by shard (``to_empty`` allocates only this
  rank's shards; :func:`init_materialised` then runs the modules' ``reset_parameters`` and the
  model's ``_init_weights`` on them).

The EMA copy is sharded the same way (:func:`shard_like`), so its update is shard-local.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn

PARALLEL_CHOICES = ("auto", "none", "ddp", "fsdp")


def resolve_parallel(parallel: str | None, world: int) -> str:
    """``auto`` / None -> ddp when world > 1, else none; fsdp / ddp with one process run as given."""
    if parallel in (None, "auto"):
        return "ddp" if world > 1 else "none"
    if parallel not in PARALLEL_CHOICES:
        raise ValueError(f"backend.parallel={parallel!r} is unknown; choose one of {', '.join(PARALLEL_CHOICES)} "
                         f"(auto: ddp under torchrun with >1 process, else none)")
    return parallel


def check_parallel(parallel: str | None) -> None:
    resolve_parallel(parallel, 1)


# ---------------------------------------------------------------------------- meta device
@contextlib.contextmanager
def meta_parameters() -> Iterator[None]:
    """Build modules with their *parameters* on the meta device (no memory); buffers such as RoPE
    frequencies stay real, so only parameters need materialising later."""
    original = nn.Module.register_parameter

    def register(module, name, param):
        if param is not None and not param.is_meta:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def has_meta(model: nn.Module) -> bool:
    return any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))


@torch.no_grad()
def init_materialised(model: nn.Module) -> None:
    """Fresh weights for a model whose storage was just allocated by ``to_empty``: every module's
    own ``reset_parameters`` (norm weights to 1, ...), then the model's ``_init_weights`` (its
    fresh-start rule), and buffers the model can recompute (``compute_pos_embed``)."""
    for m in model.modules():
        if callable(getattr(m, "reset_parameters", None)) and any(True for _ in m.parameters(recurse=False)):
            m.reset_parameters()
    if callable(getattr(model, "_init_weights", None)):
        model._init_weights()
    if callable(getattr(model, "compute_pos_embed", None)) and hasattr(model, "pos_embed"):
        model.pos_embed.copy_(model.compute_pos_embed().to(model.pos_embed.device))


@torch.no_grad()
def materialise(model: nn.Module, device: torch.device) -> None:
    """Allocate the meta tensors of ``model`` on ``device`` (only this rank's shards once sharded) and
    initialise them; real buffers (RoPE frequencies) keep their values (``to_empty`` drops them)."""
    keep = {n: b.detach().clone() for n, b in model.named_buffers() if not b.is_meta}
    model.to_empty(device=device)
    for n, b in model.named_buffers():
        if n in keep:
            b.copy_(keep[n].to(b.device))
    init_materialised(model)


# ---------------------------------------------------------------------------- fsdp
def block_modules(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks FSDP shards one by one: ``model.blocks`` (NextClipTransformer) or
    ``model.llm.layers`` (VideoGPT); otherwise every ModuleList child of the largest ModuleList."""
    for path in ("blocks", "llm.layers", "layers"):
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, nn.ModuleList) and len(obj):
            return list(obj)
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


def mixed_precision(dtype: torch.dtype | None):
    """FSDP2 policy: parameters all-gathered (compute) in ``dtype`` (None: fp32), gradients reduced in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)


def fully_shard_model(model: nn.Module, device: torch.device, compute_dtype: torch.dtype | None,
                      sync: bool = True) -> nn.Module:
    """``fully_shard`` per block, then the root (it owns the embeddings and the output layer);
    a meta model is then materialised on ``device``, shard by shard, with fresh weights.
    ``sync``: start from rank 0's weights (False for a copy that is overwritten next)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    kw = dict(mesh=mesh, mp_policy=mixed_precision(compute_dtype))
    meta = has_meta(model)
    if not meta:
        model.to(device)
        if sync:
            broadcast_from_rank0(model)
    for block in block_modules(model):
        fully_shard(block, **kw)
    fully_shard(model, **kw)
    if meta:
        materialise(model, device)
    return model


@torch.no_grad()
def broadcast_from_rank0(model: nn.Module) -> None:
    """Rank 0's weights on every rank before sharding (as DDP does at construction): ranks are seeded
    differently, and each keeps its own shard of what it holds."""
    for t in list(model.parameters()) + list(model.buffers()):
        torch.distributed.broadcast(t.data, src=0)


def shard_like(copy: nn.Module, device: torch.device, compute_dtype: torch.dtype | None) -> nn.Module:
    """Shard a copy of the model (the EMA) with the same units, so its parameters are DTensors
    with the model's placements and ``ema_update`` stays shard-local (the caller copies the
    model's shards into it)."""
    return fully_shard_model(copy, device, compute_dtype, sync=False)


def is_sharded(module: nn.Module) -> bool:
    """Whether ``module`` has FSDP2-sharded (DTensor) parameters."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


def wrap_model(model: nn.Module, parallel: str, device: torch.device, compute_dtype: torch.dtype | None,
               world: int) -> nn.Module:
    """The module to train for ``parallel`` (resolved: none | ddp | fsdp)."""
    if parallel == "fsdp":
        if world < 2 and not torch.distributed.is_initialized():
            raise ValueError("backend.parallel=fsdp needs torch.distributed (run under torchrun with "
                             "--nproc_per_node >= 2), or use backend.parallel=none for one process")
        return fully_shard_model(model, device, compute_dtype)
    if has_meta(model):
        materialise(model, device)
    model.to(device)
    if parallel == "ddp" and world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=None if device.type == "cpu" else [device])
    return model


def no_sync(net: nn.Module, sync: bool):
    """Context of one micro-step: gradients are reduced across ranks only when ``sync`` (the last
    micro-step of a step); DDP's ``no_sync`` or FSDP2's ``set_requires_gradient_sync``."""
    if sync:
        return contextlib.nullcontext()
    if callable(getattr(net, "no_sync", None)):
        return net.no_sync()
    if callable(getattr(net, "set_requires_gradient_sync", None)):
        return _fsdp_no_sync(net)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(net) -> Iterator[None]:
    net.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        net.set_requires_gradient_sync(True)
