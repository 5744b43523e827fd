"""A full disk on the first item of a test list: the batch stops with the disk-full error, and
results.jsonl records that item's failure (it was left at 0 bytes)."""
from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest

import utils.test_list as tl


def test_full_disk_on_the_first_item_is_recorded(tmp_path, monkeypatch):
    items = tl.parse_test_list(["one|1", "two|2"], kind="text")

    def full_video(path, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    real_open = open

    class FullFile:  # the append of results.rank0.jsonl fails too: the disk is full
        def __init__(self, f):
            self.f = f

        def write(self, _):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def flush(self):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def full_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return FullFile(f) if "a" in mode and "results.rank" in os.fspath(path) else f

    monkeypatch.setattr(tl, "write_video", full_video)
    monkeypatch.setattr(tl, "open", full_open, raising=False)
    produce = lambda item: np.zeros((2, 8, 8, 3), np.uint8)  # noqa: E731
    with pytest.raises(OSError) as e:
        tl.run_test_list(items, str(tmp_path), produce, progress=False)
    assert e.value.errno == errno.ENOSPC
    recs = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(recs) == 1 and recs[0]["index"] == 0 and recs[0]["status"] == "error"
    assert "No space left" in recs[0]["error"] and "no space left on the device" in recs[0]["error"]
