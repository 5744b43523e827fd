import logging

from utils.registry import BACKEND

from .compile import DEFAULT_CACHE
from .cpu import CPUBackend
from .cuda import CUDABackend, cuda_present
from .npu import NPUBackend, npu_present

logger = logging.getLogger("nextclip")


def detect_device_type() -> str:
    """'npu' if torch_npu imports and a device is present, else 'cuda' if a GPU is, else 'cpu'."""
    if npu_present()[0]:
        return "npu"
    if cuda_present():
        return "cuda"
    return "cpu"


@BACKEND.register_class("auto")
def AutoBackend(precision: str = "auto", attention: str = "auto", local_rank=None, threads=None, parallel: str = "auto",
                meta_init: bool = False, compile: str = "off", compile_cache: str | None = DEFAULT_CACHE):
    """Pick NPU, else CUDA, else CPU, and build that backend with the same settings."""
    kind = detect_device_type()
    cls = {"npu": NPUBackend, "cuda": CUDABackend, "cpu": CPUBackend}[kind]
    logger.info("backend auto -> %s", kind)
    return cls(precision=precision, attention=attention, local_rank=local_rank, threads=threads, parallel=parallel,
               meta_init=meta_init, compile=compile, compile_cache=compile_cache)
