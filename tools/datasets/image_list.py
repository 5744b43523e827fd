"""Image datasets from ``path|||caption`` lists (items with T = 1)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch.utils.data import Dataset

from tools.datasets.video_list import SkipBadMixin, _as_hw, read_list_file
from utils.registry import DATASETS
from utils.video_io import read_image, resize_crop, to_tensor


@DATASETS.register_class()
class ImageList(SkipBadMixin, Dataset):
    """Images from a 'path|||caption' list, as one-frame videos (C, 1, H, W)."""

    def __init__(self, list_file: str, data_dir: str | None = None,
                 resolution: int | Sequence[int] | None = 256, crop: str = "center",
                 seed: int = 0, max_bad_fraction: float = 0.1):
        self.entries = read_list_file(list_file, data_dir)
        if crop not in ("center", "random"):
            raise ValueError(f"crop={crop!r} is not supported; use 'center' or 'random'")
        self.resolution, self.crop, self.seed = _as_hw(resolution), crop, seed
        self._init_bad(max_bad_fraction)

    def __len__(self) -> int:
        return len(self.entries)

    def describe_item(self, index: int) -> str:
        return self.entries[index][0]

    def load(self, index: int, rng: np.random.Generator) -> dict:
        path, caption, _ = self.entries[index]
        frames = read_image(path)[None]  # (1, H, W, 3)
        if self.resolution is not None:
            frames = resize_crop(frames, self.resolution, self.crop, rng)
        return dict(video=to_tensor(frames), caption=caption, meta=dict(path=path, frame_indices=[0], fps=0.0))
