"""Ascend NPU backend. torch_npu is imported explicitly here (and never auto-loaded):
a torch_npu installed without Ascend libraries would otherwise break ``import torch``,
which is why the entry points set TORCH_DEVICE_BACKEND_AUTOLOAD=0 before importing torch."""
import importlib

import torch

from utils.registry import BACKEND

from .base import Backend


def npu_present() -> tuple[bool, str]:
    """(usable, reason): torch_npu imports and reports at least one device."""
    try:
        importlib.import_module("torch_npu")
    except Exception as e:  # ImportError, or OSError from missing Ascend libraries
        return False, f"torch_npu cannot be imported ({type(e).__name__}: {e})"
    npu = getattr(torch, "npu", None)
    if npu is None or not npu.is_available() or npu.device_count() < 1:
        return False, "torch_npu imported but no NPU device is available"
    return True, ""


@BACKEND.register_class("npu")
class NPUBackend(Backend):
    """Huawei Ascend NPU: hccl, bf16/fp16 autocast, fused NPU attention."""

    device_type = "npu"
    dist_backend = "hccl"

    def setup(self) -> None:
        super().setup()
        ok, why = npu_present()
        if not ok:
            raise RuntimeError(f"backend 'npu' was requested but {why}; install requirements-npu.txt "
                               f"on an Ascend machine, or use backend.type: cpu or auto.")
        torch.npu.set_device(self.device)

    @property
    def device(self) -> torch.device:
        return torch.device("npu", self.local_rank or 0)

    def synchronize(self) -> None:
        torch.npu.synchronize()

    def memory_stats(self) -> dict[str, float]:
        return {"max_allocated_mib": torch.npu.max_memory_allocated() / 2 ** 20}

    def reset_peak_memory(self) -> None:
        torch.npu.reset_peak_memory_stats()

    def _seed_device(self, seed: int) -> None:
        torch.npu.manual_seed_all(seed)
