"""Video datasets from ``path|||caption`` lists, plus the shared bad-data policy.

Bad data (missing, empty, truncated, corrupt or too-short files) is logged once with
the path and reason and skipped: the item at the next index is returned instead
(deterministic), never a zero tensor. When more than ``max_bad_fraction`` of the
dataset is bad (or, after 50 items were tried, of the items tried) the dataset
raises :class:`BadDataError`. With DataLoader workers each worker keeps its own count.

Epochs (contract C3): ``dataset[(index, epoch)]`` draws the item's random choices (clip
window, stride, crop) from ``(seed, epoch, index)``; a plain ``dataset[index]`` uses
epoch 0 (or the one given to :meth:`SkipBadMixin.set_epoch`). Warnings go to the
``nextclip.data`` logger, so they reach the run's console and ``log.txt``.
"""
from __future__ import annotations

import logging
import operator
import os
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from utils.config import InputError
from utils.logging import LOGGER_NAME
from utils.registry import DATASETS
from utils.video_io import VideoReadError, probe_video, read_video, resize_crop, to_tensor

log = logging.getLogger(f"{LOGGER_NAME}.data")
LINE_FORMAT = ("'path/to/video.mp4|||a caption' (the caption is optional; paths are relative to "
               "data_dir or else to the list file's folder; '#' starts a comment)")
MIN_SEEN_FOR_RUNNING_FRACTION = 50


class BadDataError(InputError, RuntimeError):
    """Too many unreadable items in a dataset: an input error (one line, exit 2), not a bug."""


def read_list_file(list_file: str, data_dir: Optional[str] = None) -> List[Tuple[str, str, int]]:
    """``path|||text`` lines -> [(absolute path, text, line_no)]; ``#`` comments and blanks skipped.

    A bare ``path`` line (no ``|||``) has an empty caption. Paths are relative to ``data_dir``
    or else to the list file's directory. A UTF-8 byte-order mark is ignored. Raises
    :class:`utils.config.InputError` for an empty list and for a line without a path.
    """
    base = data_dir if data_dir is not None else os.path.dirname(os.path.abspath(list_file))
    out = []
    for no, line in _list_lines(list_file):
        path, _, text = line.partition("|||")
        path = path.strip()
        if not path:
            raise InputError(f"{list_file}:{no}: empty path in {line!r}; each line should be {LINE_FORMAT}")
        out.append((os.path.join(base, os.path.expanduser(path)), text.strip(), no))
    if not out:
        raise InputError(f"list file {list_file!r} has no entries (only blank lines or comments); "
                         f"each line should be {LINE_FORMAT}")
    return out


def _list_lines(list_file: str) -> List[Tuple[int, str]]:
    """(line number, stripped line) for every non-blank, non-comment line of a UTF-8 text file."""
    check_list_path(list_file, "list_file")
    try:
        with open(list_file, encoding="utf-8-sig") as f:  # -sig: drop a leading byte-order mark
            lines = list(f)
    except UnicodeDecodeError as e:
        raise InputError(f"list file {list_file!r} is not UTF-8 text ({e.reason}); "
                         f"save it as UTF-8") from e
    return [(no, line.strip()) for no, line in enumerate(lines, 1)
            if line.strip() and not line.strip().startswith("#")]


def check_list_path(path: str, setting: str) -> None:
    """FileNotFoundError / InputError unless ``path`` (the dataset's ``setting``) is a regular file."""
    if os.path.isdir(path):
        raise InputError(f"{setting} {path!r} is a directory, not a list file; set {setting} "
                         f"to the text file itself")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{setting} {path!r} does not exist; check the dataset's {setting}")


def _as_hw(resolution) -> Optional[Tuple[int, int]]:
    if resolution is None:
        return None
    if isinstance(resolution, int):
        return (resolution, resolution)
    if isinstance(resolution, (list, tuple)) and len(resolution) == 2 and all(isinstance(r, int) and r > 0 for r in resolution):
        return (int(resolution[0]), int(resolution[1]))
    raise ValueError(f"resolution={resolution!r} is invalid; use an int or [H, W] of positive ints")


class SkipBadMixin:
    """``__getitem__`` with the bad-data policy; subclasses implement ``load(index, rng)``.

    Keys are an int ``index`` or an ``(index, epoch)`` tuple (contract C3; the training
    sampler yields tuples because ``epoch_aware`` is True).
    """

    max_bad_fraction: float
    seed: int
    epoch: int = 0
    epoch_aware = True

    def _init_bad(self, max_bad_fraction: float) -> None:
        if not 0 <= max_bad_fraction <= 1:
            raise ValueError(f"max_bad_fraction={max_bad_fraction!r} must be in [0, 1]")
        self.max_bad_fraction = float(max_bad_fraction)
        self.bad = {}  # index -> reason
        self.seen = set()

    def set_epoch(self, epoch: int) -> None:
        """The epoch used for plain int keys; ``(index, epoch)`` keys need no shared state."""
        self.epoch = self._check_epoch(epoch)

    def describe_item(self, index: int) -> str:
        return str(index)

    def _check_epoch(self, epoch) -> int:
        epoch = operator.index(epoch)
        if epoch < 0:
            raise ValueError(f"{type(self).__name__}: epoch={epoch} must be >= 0")
        return epoch

    def _split_key(self, key) -> Tuple[int, int]:
        """``index`` or ``(index, epoch)`` -> (index, epoch)."""
        try:
            if isinstance(key, (tuple, list)):
                if len(key) != 2:
                    raise TypeError
                return operator.index(key[0]), self._check_epoch(key[1])
            return operator.index(key), int(self.epoch)
        except TypeError:
            raise TypeError(f"{type(self).__name__}: key {key!r} must be an int index or an "
                            f"(index, epoch) tuple of ints") from None

    def _rng(self, index: int, epoch: Optional[int] = None) -> np.random.Generator:
        epoch = self.epoch if epoch is None else epoch
        return np.random.default_rng([int(self.seed), int(epoch), int(index)])

    def _mark_bad(self, index: int, err: Exception) -> None:
        n = len(self)
        if index not in self.bad:
            self.bad[index] = str(err)
            log.warning("%s: skipping bad item %d (%s): %s", type(self).__name__, index,
                        self.describe_item(index), err)
        nbad, nseen = len(self.bad), len(self.seen)
        too_many = nbad > self.max_bad_fraction * n or (
            nseen >= MIN_SEEN_FOR_RUNNING_FRACTION and nbad / nseen > self.max_bad_fraction)
        if too_many:
            worst = "; ".join(f"{self.describe_item(i)}: {r}" for i, r in list(self.bad.items())[:5])
            raise BadDataError(
                f"{type(self).__name__}: {nbad} bad items out of {n} ({nseen} tried) exceeds "
                f"max_bad_fraction={self.max_bad_fraction}. First bad items: {worst}. "
                f"Fix or remove them from the list, or raise max_bad_fraction.")

    def __getitem__(self, key: Union[int, Tuple[int, int]]) -> dict:
        index, epoch = self._split_key(key)
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {n}")
        index %= n
        for k in range(n):
            i = (index + k) % n
            if i in self.bad:
                continue
            self.seen.add(i)
            try:
                item = self.load(i, self._rng(i, epoch))
            except VideoReadError as e:
                self._mark_bad(i, e)
                continue  # the next index, same epoch
            item.setdefault("meta", {}).update(index=i, epoch=epoch)
            return item
        raise BadDataError(f"{type(self).__name__}: every one of the {n} items is unreadable; "
                           f"first reasons: {list(self.bad.values())[:3]}")


@DATASETS.register_class()
class VideoList(SkipBadMixin, Dataset):
    """Video clips from a 'path|||caption' list; decodes only the sampled frames."""

    def __init__(self, list_file: str, data_dir: Optional[str] = None, num_frames: int = 16,
                 stride: Union[int, Sequence[int]] = 1, target_fps: Optional[float] = None,
                 resolution: Union[int, Sequence[int], None] = 256, crop: str = "center",
                 seed: int = 0, max_bad_fraction: float = 0.1, backend: str = "opencv"):
        self.entries = self._entries(list_file, data_dir)
        if not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames={num_frames!r} must be a positive int")
        if isinstance(stride, int):
            stride = (stride, stride)
        stride = tuple(int(s) for s in stride)
        if len(stride) != 2 or not 1 <= stride[0] <= stride[1]:
            raise ValueError(f"stride={stride!r} must be a positive int or [min, max] with 1 <= min <= max")
        if target_fps is not None and target_fps <= 0:
            raise ValueError(f"target_fps={target_fps!r} must be positive (or null to use stride)")
        if crop not in ("center", "random"):
            raise ValueError(f"crop={crop!r} is not supported; use 'center' or 'random'")
        self.num_frames, self.stride, self.target_fps = num_frames, stride, target_fps
        self.resolution, self.crop, self.seed, self.backend = _as_hw(resolution), crop, seed, backend
        self._init_bad(max_bad_fraction)

    def _entries(self, list_file, data_dir):
        return read_list_file(list_file, data_dir)

    def __len__(self) -> int:
        return len(self.entries)

    def describe_item(self, index: int) -> str:
        return self.entries[index][0]

    def sample_indices(self, num_available: int, fps: float, rng: np.random.Generator, path: str) -> List[int]:
        """Frame indices of one clip: ``num_frames`` frames at the chosen stride, random start."""
        if self.target_fps is not None:
            s = max(1, int(round(fps / self.target_fps))) if fps > 0 else 1
            lo = hi = s
        else:
            lo, hi = self.stride
        hi = min(hi, (num_available - 1) // max(1, self.num_frames - 1)) if self.num_frames > 1 else hi
        if hi < lo:
            need = (self.num_frames - 1) * lo + 1
            raise VideoReadError(path, f"too few frames: {num_available} available, {need} needed "
                                       f"for num_frames={self.num_frames} at stride {lo}")
        s = int(rng.integers(lo, hi + 1))
        span = (self.num_frames - 1) * s + 1
        start = int(rng.integers(0, num_available - span + 1))
        return list(range(start, start + span, s))

    def load(self, index: int, rng: np.random.Generator) -> dict:
        path, caption, _ = self.entries[index]
        info = probe_video(path)
        idx = self.sample_indices(info.num_frames, info.fps, rng, path)
        frames, _ = read_video(path, idx, backend=self.backend)
        if self.resolution is not None:
            frames = resize_crop(frames, self.resolution, self.crop, rng)
        stride = idx[1] - idx[0] if len(idx) > 1 else 1
        return dict(video=to_tensor(frames), caption=caption,
                    meta=dict(path=path, frame_indices=idx, fps=info.fps / stride))


def collate(items: List[dict]) -> dict:
    """Stack tensors (video / latent / label); keep captions and meta as lists."""
    out = {}
    for k in items[0]:
        vals = [it[k] for it in items]
        if isinstance(vals[0], torch.Tensor):
            out[k] = torch.stack(vals)
        elif k == "label":
            out[k] = torch.tensor(vals, dtype=torch.long)
        else:
            out[k] = vals
    return out
