"""The empty condition."""
from __future__ import annotations

import torch
from torch import nn

from utils.registry import EMBEDDER


@EMBEDDER.register_class()
class NoCondition(nn.Module):
    """No condition: zero tokens (B, 0, dim) for unconditional models."""

    def __init__(self, dim: int = 1):
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim={dim!r} must be a positive int.")
        self.dim, self.num_tokens = dim, 0
        self.register_buffer("_probe", torch.zeros(0), persistent=False)

    def forward(self, conds) -> torch.Tensor:
        return self.null(len(conds))

    def null(self, batch_size: int) -> torch.Tensor:
        return self._probe.new_zeros(batch_size, 0, self.dim)
