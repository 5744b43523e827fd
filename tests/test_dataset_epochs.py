"""Datasets and epochs (contract C3: (index, epoch) tuples) and bad-item logging (C4)."""
import logging

import pytest
import torch
from media import moving_frames

from tools.datasets.csv_video import CsvVideo
from tools.datasets.image_list import ImageList
from tools.datasets.label_list import LabelList
from tools.datasets.video_list import VideoList, collate

T, FPS = 30, 10

class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def nextclip_log():
    """Records reaching a handler on the "nextclip" logger (as setup_logger's console / log.txt)."""
    handler = _Records()
    logger = logging.getLogger("nextclip")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)



def _clip_list(tmp_path, shared_data, names):
    (tmp_path / "l.txt").write_text("".join(f"{n}|||clip {i}\n" for i, n in enumerate(names)))
    return str(tmp_path / "l.txt")


def test_epoch_tuples_change_draws_and_are_reproducible(tmp_path, shared_data):
    lst = _clip_list(tmp_path, shared_data, ["videos/realshort.mp4"])
    kw = dict(data_dir=str(shared_data), num_frames=4, stride=[1, 5], resolution=[16, 16], crop="random", seed=3)
    ds = VideoList(lst, **kw)
    assert ds.epoch_aware and all(c.epoch_aware for c in (CsvVideo, LabelList, ImageList))
    draws = [tuple(ds[(0, e)]["meta"]["frame_indices"]) for e in range(6)]
    assert len(set(draws)) > 1  # the clip window / stride changes between epochs
    a = ds[(0, 4)]
    resumed = VideoList(lst, **kw)  # a fresh process after a resume
    b = resumed[(0, 4)]
    assert a["meta"]["frame_indices"] == b["meta"]["frame_indices"] and torch.equal(a["video"], b["video"])
    assert a["meta"]["epoch"] == 4
    assert ds[0]["meta"]["frame_indices"] == ds[(0, 0)]["meta"]["frame_indices"]
    with pytest.raises(TypeError, match=r"\(index, epoch\)"):
        ds[(0, 1, 2)]
    with pytest.raises(ValueError, match="epoch=-1"):
        ds[(0, -1)]


def test_epoch_random_crop_changes_for_images(tmp_path):
    from PIL import Image

    Image.fromarray(moving_frames(1, 40, 60)[0]).save(tmp_path / "a.png")
    (tmp_path / "i.txt").write_text("a.png\n")
    ds = ImageList(str(tmp_path / "i.txt"), resolution=16, crop="random", seed=0)
    crops = [ds[(0, e)]["video"] for e in range(6)]
    assert any(not torch.equal(crops[0], c) for c in crops[1:])
    assert torch.equal(ds[(0, 2)]["video"], crops[2])


def test_bad_item_skip_with_epoch_tuple(tmp_path, shared_data):
    lst = _clip_list(tmp_path, shared_data, ["videos/realshort.mp4", "missing.mp4", "videos/1066674877.mp4"])
    ds = VideoList(lst, data_dir=str(shared_data), num_frames=4, stride=[1, 3], resolution=8,
                   crop="random", max_bad_fraction=0.5)
    it = ds[(1, 7)]
    ref = VideoList(lst, data_dir=str(shared_data), num_frames=4, stride=[1, 3], resolution=8,
                    crop="random", max_bad_fraction=0.5)[(2, 7)]
    assert it["meta"]["index"] == 2 and it["meta"]["epoch"] == 7
    assert it["meta"]["frame_indices"] == ref["meta"]["frame_indices"] and torch.equal(it["video"], ref["video"])
    loader = torch.utils.data.DataLoader(ds, sampler=[(0, 1), (1, 1)], batch_size=2, collate_fn=collate)
    assert [m["index"] for m in next(iter(loader))["meta"]] == [0, 2]


# ---------------------------------------------------------------------------- logging (C4)
def test_bad_item_warning_goes_through_nextclip_logger(tmp_path, shared_data, nextclip_log):
    lst = _clip_list(tmp_path, shared_data, ["empty.mp4", "videos/realshort.mp4"])
    ds = VideoList(lst, data_dir=str(shared_data), num_frames=2, resolution=8, max_bad_fraction=0.5)
    ds[0]
    recs = [r for r in nextclip_log.records if "skipping bad item" in r.getMessage()]
    assert len(recs) == 1 and recs[0].name == "nextclip.data" and recs[0].levelno == logging.WARNING
    assert "empty.mp4" in recs[0].getMessage()
