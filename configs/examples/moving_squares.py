"""A user component registered from outside the framework (see custom_dataset.yaml).

NextClip imports this file because the experiment lists it under ``custom_imports``;
the decorator adds ``MovingSquares`` to the DATASETS registry, and the YAML uses it by name.
"""
import torch

from utils.registry import DATASETS


@DATASETS.register_class()
class MovingSquares(torch.utils.data.Dataset):
    """A white square moving at constant speed with wrap-around (user-defined example)."""

    def __init__(self, resolution: int = 16, num_frames: int = 8, size: int = 4, length: int = 256, seed: int = 0):
        if size >= resolution:
            raise ValueError(f"size={size} must be smaller than resolution={resolution}.")
        self.res, self.frames, self.size, self.length, self.seed = resolution, num_frames, size, length, seed

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(self.seed * 100003 + i)
        pos = torch.randint(0, self.res, (2,), generator=g)
        vel = torch.randint(-2, 3, (2,), generator=g)
        video = -torch.ones(3, self.frames, self.res, self.res)
        for t in range(self.frames):
            y, x = ((pos + t * vel) % self.res).tolist()
            ys = torch.arange(y, y + self.size) % self.res
            xs = torch.arange(x, x + self.size) % self.res
            video[:, t, ys[:, None], xs[None, :]] = 1.0
        return {"video": video, "caption": "a moving square"}
