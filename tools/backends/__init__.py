"""Compute backends: the only code that names a device runtime (CUDA, Ascend NPU)."""
