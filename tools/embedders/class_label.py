"""Learned class-label embedding (one token per sample) with a null class for CFG."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from utils.registry import EMBEDDER


def label_index(c, name_to_id: Mapping[str, int], num_classes: int, bad: Callable[[object], str]) -> int:
    """One class label (int, int string, class name, float with an integer value, 1-element
    tensor) -> its id in 0..num_classes-1; ValueError with ``bad(c)`` otherwise."""
    if torch.is_tensor(c):
        if c.numel() != 1:
            raise ValueError(f"a class label tensor must hold one value, got shape {tuple(c.shape)}.")
        c = c.item()
    if isinstance(c, str):
        if c in name_to_id:
            return name_to_id[c]
        try:
            c = int(c.strip())
        except ValueError:
            raise ValueError(bad(c)) from None
    if isinstance(c, float) and c.is_integer():
        c = int(c)
    if isinstance(c, bool) or not isinstance(c, int) and not hasattr(c, "__index__"):
        raise ValueError(bad(c))
    c = int(c)
    if not 0 <= c < num_classes:
        raise ValueError(bad(c))
    return c


@EMBEDDER.register_class()
class ClassLabel(nn.Module):
    """Learned class-label table (num_classes + 1 rows; the extra row is the null class for CFG).

    Conds may be ints, strings that parse as ints, names from ``class_names``, 0-d tensors,
    or ``None`` (-> the null class, e.g. for condition dropout). Returns ``(tokens (B, 1, dim),
    mask (B, 1))``; the mask is all True (the null row is a real, learned token).
    """

    def __init__(self, num_classes: int, dim: int, class_names: Sequence[str] | None = None,
                 init_std: float = 0.02):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes={num_classes!r} must be a positive int.")
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim={dim!r} must be a positive int.")
        if class_names is not None:
            class_names = [str(c) for c in class_names]
            if len(class_names) != num_classes or len(set(class_names)) != num_classes:
                raise ValueError(f"class_names must list {num_classes} distinct names, got {len(class_names)}: "
                                 f"{class_names[:10]}.")
        self.num_classes, self.dim, self.num_tokens = num_classes, dim, 1
        self.class_names = class_names
        self._name_to_id = {n: i for i, n in enumerate(class_names or [])}
        self.table = nn.Embedding(num_classes + 1, dim)
        nn.init.normal_(self.table.weight, std=init_std)

    @property
    def null_id(self) -> int:
        return self.num_classes

    def label_id(self, c) -> int:
        """One condition -> row index (raises ValueError naming the valid range/names)."""
        return self.null_id if c is None else label_index(c, self._name_to_id, self.num_classes, self._bad)

    def _bad(self, c) -> str:
        names = f" or one of the names {self.class_names[:20]}{'...' if self.num_classes > 20 else ''}" \
            if self.class_names else ""
        return (f"unknown class label {c!r}: expected an int in 0..{self.num_classes - 1}{names}; "
                f"check the dataset's labels or ClassLabel(num_classes=...).")

    def forward(self, conds) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.is_tensor(conds):
            conds = conds.reshape(-1).tolist()
        ids = torch.tensor([self.label_id(c) for c in conds], dtype=torch.long, device=self.table.weight.device)
        return self._tokens(ids)

    def null(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The learned null row for every sample (= ``self([None] * batch_size)``)."""
        ids = torch.full((batch_size,), self.null_id, dtype=torch.long, device=self.table.weight.device)
        return self._tokens(ids)

    def _tokens(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = torch.ones(ids.shape[0], 1, dtype=torch.bool, device=ids.device)
        return self.table(ids)[:, None, :], mask  # (B, 1, dim), (B, 1)
