import torch

from utils.registry import BACKEND

from .base import Backend, logger


def native_bf16() -> bool:
    """Whether oneDNN has bf16 kernels for this CPU (AVX-512 BW/VL/DQ or newer). Without them
    bf16 matmuls are emulated: measured 0.29 GFLOP/s on an AVX2 machine (fp32: 169)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


@BACKEND.register_class("cpu")
class CPUBackend(Backend):
    """CPU: gloo, bf16 autocast where the CPU has bf16 kernels (fp16 matmuls are ~1000x slower
    on CPU, so not allowed); ``precision: auto`` = bf16 with native bf16 kernels, else fp32."""

    device_type = "cpu"
    dist_backend = "gloo"
    allowed_precisions = ("fp32", "bf16")

    def auto_precision(self) -> str:
        return "bf16" if native_bf16() else "fp32"

    def auto_compile(self, training: bool) -> str:
        """``compile: auto`` on a CPU: the blocks compiled for training (an hour-long run amortises the
        compile); sampling eager (a prediction of seconds does not amortise 20 s of warm-cache compile or
        minutes of a cold one). Measured: docs/results/speed.md#compiled-blocks."""
        return "blocks" if training else "off"

    def check_precision(self) -> None:
        if self.precision == "bf16" and not native_bf16():
            logger.warning(
                "backend cpu: precision=bf16 but this CPU (capability %s) has no native bf16 kernels, so "
                "bf16 matmuls are emulated and far slower than fp32 (measured ~600x on an AVX2 machine); "
                "set backend.precision=fp32 or precision: auto", torch.backends.cpu.get_cpu_capability())
