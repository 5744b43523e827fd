"""The empty condition."""
from __future__ import annotations

import torch
from torch import nn

from utils.registry import EMBEDDER


@EMBEDDER.register_class()
class NoCondition(nn.Module):
    """No condition (unconditional models): ``dim = num_tokens = 0``; engines never call it.

    Called anyway, it returns zero tokens ``(B, 0, 0)`` and an empty mask ``(B, 0)``.
    """

    def __init__(self):
        super().__init__()
        self.dim, self.num_tokens = 0, 0
        self.register_buffer("_probe", torch.zeros(0), persistent=False)

    def forward(self, conds) -> tuple[torch.Tensor, torch.Tensor]:
        return self.null(len(conds))

    def null(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (self._probe.new_zeros(batch_size, 0, 0),
                torch.zeros(batch_size, 0, dtype=torch.bool, device=self._probe.device))
