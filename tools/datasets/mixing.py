"""Joint image + video training: whole batches, one kind per step, same rule on every rank."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from tools.datasets.video_list import collate
from utils.registry import DATASETS


def step_kind(step: int, image_ratio: float, seed: int = 0) -> str:
    """'image' or 'video' for a global step; a pure function of (seed, step), so all ranks agree."""
    return "image" if np.random.default_rng([int(seed), int(step)]).random() < image_ratio else "video"


@DATASETS.register_class()
class JointImageVideo(IterableDataset):
    """Alternates whole image and video batches by a seeded per-step rule shared by all ranks.

    It yields whole batches (``yields_batches``): the training engine calls :meth:`configure`
    with its rank, world size, first step and number of steps (micro-steps with grad_accum)
    and reads it with ``DataLoader(batch_size=None)``. ``batch_size_video`` /
    ``batch_size_image`` left null take the engine's ``batch_size``. Each batch carries
    ``kind`` ('image' | 'video') and ``step``; image items are one-frame videos (C, 1, H, W).
    """

    yields_batches = True

    def __init__(self, video, image, image_ratio: float = 0.3, batch_size_video: int | None = 1,
                 batch_size_image: int | None = 8, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start_step: int = 0, num_steps: int | None = None):
        if isinstance(video, dict):
            video = DATASETS.build(video, key_path="data.video")
        if isinstance(image, dict):
            image = DATASETS.build(image, key_path="data.image")
        if not 0 <= image_ratio <= 1:
            raise ValueError(f"image_ratio={image_ratio!r} must be in [0, 1]")
        self.data = {"video": video, "image": image}
        self.bs = {"video": batch_size_video, "image": batch_size_image}
        self.image_ratio, self.seed = float(image_ratio), int(seed)
        self.configure(rank, world_size, start_step, num_steps)

    def configure(self, rank: int = 0, world_size: int = 1, start_step: int = 0,
                  num_steps: int | None = None, batch_size: int | None = None) -> JointImageVideo:
        """Set this process's place in the run; ``batch_size`` fills unset per-kind batch sizes."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        for kind in self.bs:
            if self.bs[kind] is None and batch_size is not None:
                self.bs[kind] = int(batch_size)
        self.rank, self.world_size = int(rank), int(world_size)
        self.start_step, self.num_steps = int(start_step), num_steps
        for kind, bs in self.bs.items():
            if bs is None:
                continue  # filled in by the engine's configure(batch_size=...)
            if int(bs) < 1:
                raise ValueError(f"batch_size_{kind}={bs} must be >= 1")
            self.bs[kind] = int(bs)
            if len(self.data[kind]) < bs * world_size:
                raise ValueError(f"{kind} dataset has {len(self.data[kind])} items, fewer than one global "
                                 f"batch (batch_size_{kind} {bs} x world_size {world_size})")
        return self

    def __len__(self) -> int:
        if self.num_steps is None:
            raise TypeError("JointImageVideo is endless; pass num_steps to give it a length")
        return self.num_steps - self.start_step

    def plan(self, start: int, stop: int) -> Iterator[tuple[int, str, list[int]]]:
        """(step, kind, this rank's item indices) for steps [start, stop).

        Each kind walks its own seeded permutation (reshuffled per pass); a global batch is
        ``batch_size * world_size`` consecutive entries and rank r takes the r-th slice.
        """
        for step, kind, idx, _ in self._plan(start, stop):
            yield step, kind, idx

    def _plan(self, start: int, stop: int | None) -> Iterator[tuple[int, str, list[int], int]]:
        """:meth:`plan` plus the pass (epoch) of that kind's data each batch comes from."""
        if None in self.bs.values():
            raise ValueError("JointImageVideo: batch_size_video / batch_size_image are unset; set them "
                             "or let the training engine fill them from batch_size")
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
                yield step, kind, [int(i) for i in perm[kind][1][lo:lo + self.bs[kind]]], passes
            cursor[kind] += g
            step += 1

    def _item(self, kind: str, index: int, epoch: int) -> dict:
        """One item; epoch-aware datasets (contract C3) draw their random choices per pass."""
        ds = self.data[kind]
        return ds[(index, epoch)] if getattr(ds, "epoch_aware", False) else ds[index]

    def __iter__(self):
        worker = get_worker_info()
        wid, nw = (worker.id, worker.num_workers) if worker else (0, 1)
        stop = self.num_steps
        for step, kind, idx, passes in self._plan(self.start_step, stop):
            if (step - self.start_step) % nw != wid:  # DataLoader round-robins workers in order
                continue
            batch = collate([self._item(kind, i, passes) for i in idx])
            batch["kind"], batch["step"] = kind, step
            yield batch
