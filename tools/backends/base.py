"""The backend interface: everything device-specific the engines need."""
from __future__ import annotations

import contextlib
import logging
import random
import resource
from collections.abc import Callable

import numpy as np
import torch

from . import compile as comp
from . import parallel as par
from .attention import select_attention

logger = logging.getLogger("nextclip")
_PEAKS: dict = {}  # (device, dtype, n, reps) -> GFLOP/s: matmul_peak_gflops(fresh=False)

PRECISIONS = ("fp32", "bf16", "fp16")


class Backend:
    """Base class; subclasses set ``device_type``, ``dist_backend`` and the hooks below."""

    device_type = "cpu"
    dist_backend = "gloo"
    allowed_precisions = PRECISIONS

    def __init__(self, precision: str = "auto", attention: str = "auto", local_rank: int | None = None,
                 threads: int | None = None, parallel: str = "auto", meta_init: bool = False,
                 compile: str = "off", compile_cache: str | None = comp.DEFAULT_CACHE):
        if precision == "auto":
            precision = self.auto_precision()
        elif precision not in self.allowed_precisions:
            raise ValueError(
                f"backend {type(self).__name__}: precision={precision!r} is not supported here; "
                f"choose one of {', '.join(self.allowed_precisions)} or auto."
            )
        self.precision = precision
        self.check_precision()
        self.attention = attention
        self.local_rank = local_rank
        self.threads = threads
        par.check_parallel(parallel)
        self.parallel = parallel  # none | ddp | fsdp | auto (resolved by :meth:`wrap` from the world size)
        self.meta_init = bool(meta_init)
        self.compile = comp.check_compile(compile)  # off | blocks | auto (resolved by :meth:`compile_mode`)
        self.compile_cache = compile_cache
        self._attn: tuple[str, str, Callable | None] | None = None
        self.setup()

    # -- hooks for subclasses -------------------------------------------------
    def auto_precision(self) -> str:
        """What ``precision: auto`` means on this device."""
        return "bf16"

    def check_precision(self) -> None:
        """Warn about a precision that runs but is slow on this device."""

    def auto_compile(self, training: bool) -> str:
        """What ``compile: auto`` means on this device, for training or for sampling: off | blocks."""
        return "blocks"

    def setup(self) -> None:
        if self.threads:
            torch.set_num_threads(int(self.threads))

    @property
    def device(self) -> torch.device:
        return torch.device(self.device_type)

    def synchronize(self) -> None:
        pass

    def memory_stats(self) -> dict[str, float]:
        """Peak resident memory of the process in MiB (CPU)."""
        return {"max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}

    def reset_peak_memory(self) -> None:
        pass

    def _seed_device(self, seed: int) -> None:
        pass

    # -- shared ---------------------------------------------------------------
    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]

    def autocast(self):
        """Context for the forward pass in the configured precision (no-op for fp32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.autocast_dtype)

    def grad_scaler(self):
        """A loss scaler, enabled only for fp16 (bf16 and fp32 need none)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.precision == "fp16")

    def compile_mode(self, training: bool) -> str:
        """``compile`` resolved for training or for sampling: off | blocks."""
        return self.auto_compile(training) if self.compile == "auto" else self.compile

    def compile_model(self, model: torch.nn.Module, training: bool) -> int:
        """Compile the model's transformer blocks when ``compile`` says so (tools/backends/compile.py);
        returns the number of blocks compiled."""
        mode = self.compile_mode(training)
        if mode == "off":
            return 0
        logger.info("backend %s: compile=%s -> %s for %s", type(self).__name__, self.compile, mode,
                    "training" if training else "sampling")
        return comp.compile_blocks(model, self.compile_cache)

    def cast_for_sampling(self, model: torch.nn.Module) -> bool:
        """bf16 / fp16 sampling without autocast: the model's linear layers cast once to the compute dtype
        (:func:`tools.models.layers.cast_linears`; norms, RoPE tables and time features stay fp32). Returns
        True if cast (then sample without :meth:`autocast`); fp32: nothing to do, False."""
        from tools.models.layers import cast_linears

        if self.autocast_dtype is None:
            return False
        n = cast_linears(model, self.autocast_dtype)
        logger.info("backend %s: %d linear layers cast to %s for sampling (no autocast)", type(self).__name__, n,
                    self.precision)
        return True

    def matmul_peak_gflops(self, dtype: torch.dtype | None = None, n: int = 2048, reps: int = 5,
                           fresh: bool = True) -> float:
        """The peak an MFU is a share of: the median throughput (GFLOP/s) of an ``n x n @ n x n`` matmul
        on this device with both operands already in ``dtype`` (default: the compute dtype; no autocast
        cast in the timing), measured now; ``fresh=False``: the first measurement of this process (a
        training run's start does not pay ~0.5 s again when a process trains several times)."""
        dtype = dtype or self.autocast_dtype or torch.float32
        key = (str(self.device), str(dtype), n, reps)
        if fresh or key not in _PEAKS:
            _PEAKS[key] = self._time_matmul(dtype, n, reps)
        return _PEAKS[key]

    def _time_matmul(self, dtype: torch.dtype, n: int, reps: int) -> float:
        import statistics
        import time

        a, b = (torch.randn(n, n, device=self.device).to(dtype) for _ in range(2))
        ts = []
        for i in range(reps + 1):
            self.synchronize()
            t0 = time.perf_counter()
            a @ b
            self.synchronize()
            if i:  # the first call warms up
                ts.append(time.perf_counter() - t0)
        return 2 * n ** 3 / statistics.median(ts) / 1e9

    def seed_everything(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % (2 ** 32))
        torch.manual_seed(seed)
        self._seed_device(seed)

    def attention_kernel(self, training: bool = False) -> tuple[str, Callable | None]:
        """(block impl, dense fn) for the configured ``attention`` choice (resolved once).
        ``training=True`` also requires a backward pass (no FlexAttention on CPU)."""
        if self._attn is None:
            self._attn = select_attention(self.attention, self.device_type, training)
            logger.info("backend %s: attention '%s' (impl %s)", type(self).__name__, self._attn[0], self._attn[1])
        return self._attn[1], self._attn[2]

    @property
    def attention_name(self) -> str:
        self.attention_kernel()
        return self._attn[0]

    # -- data parallelism (tools/backends/parallel.py) -------------------------
    def parallel_mode(self, world: int) -> str:
        """``parallel`` resolved for ``world`` processes: none | ddp | fsdp."""
        return par.resolve_parallel(self.parallel, world)

    def init_context(self, world: int):
        """Where the engine builds the model: on the meta device (parameters only) for
        ``parallel: fsdp`` with ``meta_init: true`` (materialised shard by shard by :meth:`wrap`)."""
        if self.meta_init and self.parallel_mode(world) == "fsdp":
            return par.meta_parameters()
        return contextlib.nullcontext()

    def wrap(self, model: torch.nn.Module, world: int) -> torch.nn.Module:
        """The module to train: the model on this device (none), in DDP, or FSDP2-sharded per block
        with bf16 compute / fp32 reduce where ``precision`` is bf16 (fp32 otherwise)."""
        return par.wrap_model(model, self.parallel_mode(world), self.device, self._fsdp_dtype(), world)

    def shard_like(self, copy: torch.nn.Module, world: int) -> torch.nn.Module:
        """A copy of the model (the EMA) sharded like :meth:`wrap` shards under fsdp; else on the device."""
        if self.parallel_mode(world) == "fsdp":
            return par.shard_like(copy, self.device, self._fsdp_dtype())
        return copy.to(self.device)

    def grad_sync(self, net: torch.nn.Module, sync: bool):
        """Context of one micro-step's backward: gradients are reduced across ranks only when
        ``sync`` (the last micro-step); DDP ``no_sync`` / FSDP2 ``set_requires_gradient_sync``."""
        return par.no_sync(net, sync)

    def _fsdp_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision == "bf16" else None

    def to_device(self, obj):
        return obj.to(self.device) if hasattr(obj, "to") else obj

    def device_info(self) -> dict:
        """What a benchmark records about the device."""
        return {"cpu_capability": torch.backends.cpu.get_cpu_capability()}

    def describe(self) -> str:
        return (f"{type(self).__name__}(device={self.device}, precision={self.precision}, dist={self.dist_backend}, "
                f"parallel={self.parallel}, compile={self.compile})")
