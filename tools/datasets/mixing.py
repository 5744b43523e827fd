"""Joint image + video training: whole batches, one kind per step, same rule on every rank."""
from __future__ import annotations

from typing import Iterator, List, Optional, Tuple

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from tools.datasets.video_list import collate
from utils.registry import DATASETS


def step_kind(step: int, image_ratio: float, seed: int = 0) -> str:
    """'image' or 'video' for a global step; a pure function of (seed, step), so all ranks agree."""
    return "image" if np.random.default_rng([int(seed), int(step)]).random() < image_ratio else "video"


@DATASETS.register_class()
class JointImageVideo(IterableDataset):
    """Alternates whole image and video batches by a seeded per-step rule shared by all ranks."""

    def __init__(self, video, image, image_ratio: float = 0.3, batch_size_video: int = 1,
                 batch_size_image: int = 8, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start_step: int = 0, num_steps: Optional[int] = None):
        if isinstance(video, dict):
            video = DATASETS.build(video, key_path="data.video")
        if isinstance(image, dict):
            image = DATASETS.build(image, key_path="data.image")
        if not 0 <= image_ratio <= 1:
            raise ValueError(f"image_ratio={image_ratio!r} must be in [0, 1]")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.data = {"video": video, "image": image}
        self.bs = {"video": int(batch_size_video), "image": int(batch_size_image)}
        for kind, bs in self.bs.items():
            if bs < 1:
                raise ValueError(f"batch_size_{kind}={bs} must be >= 1")
            if len(self.data[kind]) < bs * world_size:
                raise ValueError(f"{kind} dataset has {len(self.data[kind])} items, fewer than one global "
                                 f"batch (batch_size_{kind} {bs} x world_size {world_size})")
        self.image_ratio, self.seed = float(image_ratio), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.start_step, self.num_steps = int(start_step), num_steps

    def __len__(self) -> int:
        if self.num_steps is None:
            raise TypeError("JointImageVideo is endless; pass num_steps to give it a length")
        return self.num_steps - self.start_step

    def plan(self, start: int, stop: int) -> Iterator[Tuple[int, str, List[int]]]:
        """(step, kind, this rank's item indices) for steps [start, stop).

        Each kind walks its own seeded permutation (reshuffled per pass); a global batch is
        ``batch_size * world_size`` consecutive entries and rank r takes the r-th slice.
        """
        cursor = {"video": 0, "image": 0}
        perm = {}
        step = 0
        while stop is None or step < stop:
            kind = step_kind(step, self.image_ratio, self.seed)
            n, g = len(self.data[kind]), self.bs[kind] * self.world_size
            passes, pos = divmod(cursor[kind], n // g * g)  # drop the ragged tail of each pass
            if perm.get(kind, (None,))[0] != passes:
                rng = np.random.default_rng([self.seed, 0 if kind == "video" else 1, passes])
                perm[kind] = (passes, rng.permutation(n))
            if step >= start:
                lo = pos + self.rank * self.bs[kind]
                yield step, kind, [int(i) for i in perm[kind][1][lo:lo + self.bs[kind]]]
            cursor[kind] += g
            step += 1

    def __iter__(self):
        worker = get_worker_info()
        wid, nw = (worker.id, worker.num_workers) if worker else (0, 1)
        stop = self.num_steps
        for step, kind, idx in self.plan(self.start_step, stop):
            if (step - self.start_step) % nw != wid:  # DataLoader round-robins workers in order
                continue
            batch = collate([self.data[kind][i] for i in idx])
            batch["kind"], batch["step"] = kind, step
            yield batch
