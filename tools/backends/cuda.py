"""CUDA backend: the only place (with npu.py) that talks to a GPU runtime."""

import torch

from utils.registry import BACKEND

from .base import Backend


def cuda_present() -> bool:
    return bool(torch.cuda.is_available() and torch.cuda.device_count() > 0)


@BACKEND.register_class("cuda")
class CUDABackend(Backend):
    """NVIDIA GPU: nccl, bf16/fp16 autocast, xformers / flex / SDPA attention."""

    device_type = "cuda"
    dist_backend = "nccl"

    def auto_precision(self) -> str:
        return "bf16" if cuda_present() and torch.cuda.is_bf16_supported() else "fp16"

    def setup(self) -> None:
        super().setup()
        if not cuda_present():
            raise RuntimeError("backend 'cuda' was requested but no CUDA device is visible; "
                               "use backend.type: cpu or auto.")
        torch.cuda.set_device(self.device)

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", self.local_rank or 0)

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def memory_stats(self) -> dict[str, float]:
        return {"max_allocated_mib": torch.cuda.max_memory_allocated(self.device) / 2 ** 20,
                "max_reserved_mib": torch.cuda.max_memory_reserved(self.device) / 2 ** 20}

    def reset_peak_memory(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def device_info(self) -> dict:
        return {**super().device_info(), "gpu": torch.cuda.get_device_name(self.device),
                "flash_sdp_enabled": torch.backends.cuda.flash_sdp_enabled()}

    def _seed_device(self, seed: int) -> None:
        torch.cuda.manual_seed_all(seed)
