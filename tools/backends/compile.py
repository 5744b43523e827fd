"""``backend.compile``: the transformer blocks compiled with inductor, and where the compiled artefacts are kept.

``off``: eager. ``blocks``: every block of ``model.blocks`` is compiled (``nn.Module.compile``) for training and
for sampling (the cached denoise step, encode_history, the uncached forward). ``auto``: what the backend
measured to pay (:meth:`tools.backends.base.Backend.auto_compile`).

The attention call inside a block is never traced (the block calls it through its ``attend`` hook, which is
set to a ``torch.compiler.disable`` d call here; torch's compiler is imported only when compiling): its
per-layout Python (segments, KV-cache buffers) stays eager and the compiled graphs see only the block's
dense tensors, so a new clip layout or a longer KV cache never recompiles. Shapes: the cached
denoise step has the same shapes at every clip of a rollout; the history length of ``encode_history`` grows
until the window is full, so token dimensions are compiled dynamic (``dynamic=None``: a second length
recompiles once as a dynamic graph, later lengths reuse it). Measured in docs/results/speed.md.

Cache: inductor's FX-graph and AOTAutograd caches, in ``compile_cache`` (set as ``TORCHINDUCTOR_CACHE_DIR``;
null leaves torch's choice), so a second run (or process) with the same shapes skips code generation and the
C++ build.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

logger = logging.getLogger("nextclip")

COMPILE_CHOICES = ("off", "blocks", "auto")
DEFAULT_CACHE = "workspace/compile_cache"
#: compiled variants kept per block function (dynamo's default of 8 is shared by every model of a process:
#: a training step, the cached denoise step, encode_history and the uncached forward, per dtype, each take one)
RECOMPILE_LIMIT = 64


def check_compile(value: str) -> str:
    if value not in COMPILE_CHOICES:
        raise ValueError(f"backend.compile={value!r} is not a compile mode; choose one of "
                         f"{', '.join(COMPILE_CHOICES)} (off = eager, blocks = the transformer blocks "
                         f"compiled with inductor, auto = blocks where it was measured to pay).")
    return value


def use_cache_dir(path: str | os.PathLike | None) -> str | None:
    """Keep inductor's compiled artefacts in ``path`` (created; it becomes ``TORCHINDUCTOR_CACHE_DIR``, which
    inductor reads whenever it looks up its caches). None: leave torch's choice (the environment's variable, or
    its default; importing torch's compiler already fills the variable in, so it cannot tell a user's value from
    its own). Returns the directory named (None for torch's choice)."""
    if path is None:
        return None
    p = Path(path).expanduser().resolve()
    p.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(p)
    return str(p)


def compile_blocks(model: torch.nn.Module, cache_dir: str | None, compiler: str = "inductor") -> int:
    """Compile every block of ``model.blocks`` in place (parameters and state dict unchanged) -> the
    number of blocks compiled (0 for a model without ``blocks``, with a warning). Compiling again is a no-op.
    ``compiler``: torch.compile's backend (tests check dynamo's graph and shape decisions with 'eager')."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, torch.nn.ModuleList) or not len(blocks):
        logger.warning("backend.compile=blocks: %s has no 'blocks' ModuleList; it runs eagerly",
                       type(model).__name__)
        return 0
    where = use_cache_dir(cache_dir)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    n = 0
    for blk in blocks:
        if getattr(blk, "_compiled_call_impl", None) is None:
            if hasattr(blk, "attend"):  # the attention call stays eager (the module docstring)
                blk.attend = torch.compiler.disable(type(blk).attend)
            else:
                logger.warning("backend.compile=blocks: %s has no 'attend' hook; its attention is traced too",
                               type(blk).__name__)
            blk.compile(dynamic=None, backend=compiler)
            n += 1
    if n:
        logger.info("backend.compile=blocks: %d blocks of %s compiled with inductor on first use (cache %s)",
                    n, type(model).__name__, where or "torch's default")
    return n


def compiled_blocks(model: torch.nn.Module) -> int:
    """How many of ``model.blocks`` are compiled."""
    return sum(getattr(b, "_compiled_call_impl", None) is not None for b in getattr(model, "blocks", ()))


class CompileCounter:
    """Graphs compiled by dynamo while active (``torch._dynamo`` counters): ``with CompileCounter() as c: ...``,
    then ``c.graphs`` (new graphs) and ``c.seconds`` (wall time of the block)."""

    def __enter__(self):
        from torch._dynamo.utils import counters

        self._counters = counters
        self._start = counters["stats"]["unique_graphs"]
        self._t0 = time.perf_counter()
        self.graphs, self.seconds = 0, 0.0
        return self

    def __exit__(self, *exc):
        self.graphs = self._counters["stats"]["unique_graphs"] - self._start
        self.seconds = time.perf_counter() - self._t0
        return False
