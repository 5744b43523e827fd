"""Class-conditional video datasets from ``path|||label`` lists."""
from __future__ import annotations

import json
import os

import numpy as np

from tools.datasets.video_list import VideoList
from utils.config import InputError
from utils.io import atomic_path
from utils.registry import DATASETS


@DATASETS.register_class()
class LabelList(VideoList):
    """Labelled video clips from a 'path|||label' list; label ids follow sorted label names."""

    def __init__(self, list_file: str, **kwargs):
        super().__init__(list_file=list_file, **kwargs)
        for path, label, no in self.entries:
            if not label:
                raise InputError(f"{list_file}:{no}: no label for {path!r}; each line should be "
                                 f"'path/to/video.mp4|||label name'")
        self.classes = sorted({label for _, label, _ in self.entries})
        self.label_to_index = {c: i for i, c in enumerate(self.classes)}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def load(self, index: int, rng: np.random.Generator) -> dict:
        item = super().load(index, rng)
        item["label"] = self.label_to_index[item["caption"]]
        return item

    def write_label_map(self, path: str) -> str:
        """Write {label name: index} as JSON (atomically), e.g. next to a training run."""
        with atomic_path(path) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(self.label_to_index, f, ensure_ascii=False, indent=1)
        return os.fspath(path)
