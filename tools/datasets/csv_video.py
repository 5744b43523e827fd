"""Video datasets from OpenVid-1M style CSV files."""
from __future__ import annotations

import csv
import os

from tools.datasets.video_list import VideoList, check_list_path
from utils.config import InputError
from utils.registry import DATASETS


@DATASETS.register_class()
class CsvVideo(VideoList):
    """Video clips from a CSV (OpenVid-1M style) with a video-path and a caption column."""

    def __init__(self, csv_file: str, video_column: str = "video", caption_column: str = "caption", **kwargs):
        self.video_column, self.caption_column = video_column, caption_column
        super().__init__(list_file=csv_file, **kwargs)

    def _entries(self, csv_file, data_dir):
        check_list_path(csv_file, "csv_file")
        base = data_dir if data_dir is not None else os.path.dirname(os.path.abspath(csv_file))
        with open(csv_file, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's byte-order mark
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            for want, name in ((self.video_column, "video_column"), (self.caption_column, "caption_column")):
                if want not in cols:
                    raise ValueError(f"{csv_file}: {name}={want!r} is not a column; columns are {cols}. "
                                     f"Set {name} to one of them.")
            out = []
            for no, row in enumerate(reader, 2):
                path = (row[self.video_column] or "").strip()
                if path:
                    out.append((os.path.join(base, path), (row[self.caption_column] or "").strip(), no))
        if not out:
            raise InputError(f"csv_file {csv_file!r} has no rows with a {self.video_column!r} value; "
                             f"expected a header line such as '{self.video_column},{self.caption_column}' "
                             f"and one row per video")
        return out
