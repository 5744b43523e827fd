from utils.registry import BACKEND

from .base import Backend


@BACKEND.register_class("cpu")
class CPUBackend(Backend):
    """CPU: gloo, bf16 autocast (fp16 matmuls are ~1000x slower on CPU, so not allowed)."""

    device_type = "cpu"
    dist_backend = "gloo"
    allowed_precisions = ("fp32", "bf16")
