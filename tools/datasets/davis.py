"""DATASETS DAVIS: video object segmentation data in the DAVIS folder layout (read offline).

Layout under ``root`` (the 480p / Full-Resolution level is optional, picked by ``quality``)::

    JPEGImages[/480p]/<video>/00000.jpg ...     frames
    Annotations[/480p]/<video>/00000.png ...    palette (indexed) PNGs: 0 = background, k = object k
    ImageSets[/2017]/<split>.txt                one video name per line

``split`` is a list name (``val``; ``2017/val`` when several years hold one). Items are
``{"video": (3, T, H, W) in [-1, 1], "masks": uint8 (T, H, W) object ids, "meta": {...}}``: the
first ``num_frames`` frames at ``stride`` (null: every frame; then use batch_size 1), frames
resized and center-cropped to ``resolution`` (masks with nearest-neighbour, so ids stay ids).
A video with missing or unreadable frames / annotations is skipped with a warning like every
list dataset (tools/datasets/video_list.py SkipBadMixin); too many bad videos stop the run.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from tools.datasets.video_list import SkipBadMixin, _as_hw
from utils.config import InputError
from utils.registry import DATASETS
from utils.video_io import VideoReadError, read_image, resize_crop, to_tensor


def read_palette_png(path: Path) -> np.ndarray:
    """An indexed (palette) or grayscale PNG -> uint8 (H, W) ids; VideoReadError otherwise."""
    from PIL import Image

    if not path.is_file():
        raise VideoReadError(path, "annotation file does not exist")
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise VideoReadError(path, f"annotation is a {im.mode} image; DAVIS masks are palette (P) PNGs "
                                           f"whose pixel values are object ids")
            return np.asarray(im).astype(np.uint8).copy()
    except VideoReadError:
        raise
    except Exception as e:
        raise VideoReadError(path, f"not a readable PNG ({type(e).__name__}: {e})") from e


@DATASETS.register_class()
class DAVIS(SkipBadMixin, Dataset):
    """DAVIS-layout VOS videos with per-frame object masks (JPEGImages / Annotations / ImageSets)."""

    def __init__(self, root: str, split: str = "val", quality: str = "480p", num_frames: int | None = 12,
                 stride: int = 1, resolution: int | Sequence[int] | None = 32, max_bad_fraction: float = 0.5,
                 seed: int = 0):
        self.root = Path(str(root)).expanduser()
        if not (self.root / "JPEGImages").is_dir() or not (self.root / "Annotations").is_dir():
            raise FileNotFoundError(f"DAVIS root {str(root)!r} has no JPEGImages/ and Annotations/ folders; set root "
                                    f"to the folder that holds JPEGImages, Annotations and ImageSets")
        if num_frames is not None and (isinstance(num_frames, bool) or not isinstance(num_frames, int)
                                       or num_frames < 1):
            raise ValueError(f"num_frames={num_frames!r} must be a positive int or null (every frame)")
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride={stride!r} must be a positive int")
        self.images, self.annotations = (self._level(self.root / d, quality) for d in ("JPEGImages", "Annotations"))
        self.videos = self._read_split(split)
        self.num_frames, self.stride, self.seed = num_frames, stride, int(seed)
        self.resolution = _as_hw(resolution)
        self._init_bad(max_bad_fraction)

    @staticmethod
    def _level(folder: Path, quality: str) -> Path:
        return folder / quality if quality and (folder / quality).is_dir() else folder

    def _read_split(self, split: str) -> list[str]:
        sets = self.root / "ImageSets"
        found = sorted({p for p in (sets / f"{split}.txt", *sets.glob(f"*/{split}.txt")) if p.is_file()}) \
            if sets.is_dir() else []
        if len(found) != 1:
            have = (sorted(str(p.relative_to(sets).with_suffix("")) for p in sets.rglob("*.txt"))
                    if sets.is_dir() else [])
            why = "several lists match" if found else "no list matches"
            raise InputError(f"DAVIS split={split!r}: {why} in {sets} (lists: {have or 'none'}); set split to one "
                             f"of them, e.g. split: {have[0] if have else 'val'}")
        names = [ln.strip() for ln in found[0].read_text(encoding="utf-8-sig").splitlines()
                 if ln.strip() and not ln.strip().startswith("#")]
        if not names:
            raise InputError(f"{found[0]} lists no video; write one video folder name per line")
        return names

    def __len__(self) -> int:
        return len(self.videos)

    def describe_item(self, index: int) -> str:
        return self.videos[index]

    def _frames(self, name: str) -> list[Path]:
        folder = self.images / name
        frames = sorted(p for p in folder.glob("*.jpg")) if folder.is_dir() else []
        if not frames:
            raise VideoReadError(folder, "no .jpg frames (missing video folder?)")
        idx = list(range(0, len(frames), self.stride))
        if self.num_frames is not None:
            if len(idx) < self.num_frames:
                raise VideoReadError(folder, f"{len(frames)} frames at stride {self.stride} give {len(idx)}, fewer "
                                             f"than num_frames={self.num_frames}")
            idx = idx[: self.num_frames]
        return [frames[i] for i in idx]

    def load(self, index: int, rng: np.random.Generator) -> dict:
        name = self.videos[index]
        frames = self._frames(name)
        images = np.stack([read_image(p) for p in frames])  # (T, H, W, 3)
        masks = np.stack([read_palette_png(self.annotations / name / (p.stem + ".png")) for p in frames])
        if masks.shape[1:] != images.shape[1:3]:
            raise VideoReadError(self.annotations / name, f"annotations are {masks.shape[1:]}, frames "
                                                          f"{images.shape[1:3]}: they must have the same size")
        if self.resolution is not None:
            images, masks = resize_crop(images, self.resolution), resize_crop(masks, self.resolution, nearest=True)
        return {"video": to_tensor(images), "masks": torch.from_numpy(masks),
                "meta": {"video": name, "frames": [p.name for p in frames],
                         "num_objects": int(len(set(np.unique(masks[0]).tolist()) - {0}))}}
