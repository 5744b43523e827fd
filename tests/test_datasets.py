import json
import logging

import pytest
import torch

from tools.datasets.csv_video import CsvVideo
from tools.datasets.image_list import ImageList
from tools.datasets.mixing import JointImageVideo, step_kind
from tools.datasets.video_list import BadDataError, VideoList
from utils.registry import DATASETS

GOOD = ["videos/realshort.mp4", "videos/cat_walking.mp4", "videos/1066674877.mp4"]


def _list(tmp_path, shared_data, names, name="l.txt", sep="|||", texts=None):
    p = tmp_path / name
    p.write_text("# comment\n\n" + "\n".join(
        f"{n}{sep}{texts[i] if texts else 'clip ' + str(i)}" for i, n in enumerate(names)) + "\n")
    return str(p)


def test_video_list_item(tmp_path, shared_data):
    ds = VideoList(_list(tmp_path, shared_data, GOOD), data_dir=str(shared_data), num_frames=8,
                   stride=[1, 3], resolution=[32, 48], crop="random", seed=1)
    assert len(ds) == 3
    it = ds[0]
    assert it["video"].shape == (3, 8, 32, 48) and it["video"].dtype == torch.float32
    assert -1 <= it["video"].min() and it["video"].max() <= 1
    assert it["caption"] == "clip 0"
    idx = it["meta"]["frame_indices"]
    s = idx[1] - idx[0]
    assert 1 <= s <= 3 and idx == list(range(idx[0], idx[0] + 8 * s, s))
    assert abs(it["meta"]["fps"] - 30.02 / s) < 0.01
    assert torch.equal(ds[0]["video"], it["video"])  # deterministic per (seed, epoch, index)


def test_target_fps_and_relative_paths(tmp_path, shared_data):
    lst = shared_data / "videos" / "vid_list.txt"  # paths relative to the list's dir
    ds = VideoList(str(lst), num_frames=4, target_fps=10, resolution=16)
    it = ds[2]  # realshort, 30 fps -> stride 3
    idx = it["meta"]["frame_indices"]
    assert idx[1] - idx[0] == 3 and it["video"].shape == (3, 4, 16, 16)


def test_bad_items_skipped_not_zeroed(tmp_path, shared_data, caplog):
    names = [GOOD[0], "empty.mp4", "broken_truncated.mp4", GOOD[1], "missing.mp4", "videos/cat_walking.mp4"]
    ds = VideoList(_list(tmp_path, shared_data, names), data_dir=str(shared_data), num_frames=16,
                   resolution=16, max_bad_fraction=0.5)
    run_log = logging.getLogger("nextclip")  # as after setup_logger: own handlers, no propagation
    propagate, run_log.propagate = run_log.propagate, False
    run_log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="nextclip"):
            items = [ds[i] for i in range(len(ds))]
            again = ds[1]
    finally:
        run_log.removeHandler(caplog.handler)
        run_log.propagate = propagate
    assert [it["meta"]["index"] for it in items] == [0, 3, 3, 3, 5, 5]
    assert again["meta"]["index"] == 3
    assert set(ds.bad) == {1, 2, 4}
    assert all(it["video"].abs().sum() > 0 for it in items)
    warnings = [r.getMessage() for r in caplog.records if "skipping bad item" in r.getMessage()]
    assert len(warnings) == 3 and any("empty.mp4" in w and "empty" in w for w in warnings)


def test_too_short_is_bad_and_fraction_raises(tmp_path, shared_data):
    # cat_walking has 16 frames: too short for 16 frames at stride 2
    ds = VideoList(_list(tmp_path, shared_data, [GOOD[1], GOOD[0]] * 2), data_dir=str(shared_data),
                   num_frames=16, stride=2, resolution=16, max_bad_fraction=0.1)
    with pytest.raises(BadDataError, match="max_bad_fraction=0.1"):
        ds[0]
    assert "too few frames" in ds.bad[0]


def test_invalid_args_messages(tmp_path, shared_data):
    lst = _list(tmp_path, shared_data, GOOD)
    with pytest.raises(ValueError, match="resolution"):
        VideoList(lst, resolution=[1, 2, 3])
    with pytest.raises(ValueError, match="stride"):
        VideoList(lst, stride=[3, 1])
    with pytest.raises(FileNotFoundError, match="nope"):
        VideoList(str(tmp_path / "nope.txt"))


def test_image_list(tmp_path, shared_data):
    import numpy as np
    from PIL import Image
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "i.txt").write_text(f"a.png|||white\n{shared_data / 'odd_palette.gif'}\n")
    ds = ImageList(str(tmp_path / "i.txt"), resolution=16)
    assert ds[0]["video"].shape == (3, 1, 16, 16) and ds[0]["caption"] == "white"
    assert ds[1]["caption"] == ""


def test_csv_video(tmp_path, shared_data):
    p = tmp_path / "v.csv"
    p.write_text('video,caption,extra\nvideos/realshort.mp4,"a, quoted caption",1\n')
    ds = CsvVideo(str(p), data_dir=str(shared_data), num_frames=2, resolution=8)
    assert ds[0]["caption"] == "a, quoted caption"
    with pytest.raises(ValueError, match="columns are"):
        CsvVideo(str(p), video_column="path")


def test_label_list(tmp_path, shared_data):
    lst = _list(tmp_path, shared_data, GOOD, texts=["zebra", "cat", "zebra"])
    ds = DATASETS.build({"type": "LabelList", "list_file": lst, "data_dir": str(shared_data),
                         "num_frames": 2, "resolution": 8})
    assert ds.classes == ["cat", "zebra"]
    assert ds[0]["label"] == 1 and ds[1]["label"] == 0
    ds.write_label_map(str(tmp_path / "run" / "labels.json"))
    assert json.loads((tmp_path / "run" / "labels.json").read_text()) == {"cat": 0, "zebra": 1}


class _Toy(torch.utils.data.Dataset):
    def __init__(self, n, t):
        self.n, self.t = n, t

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"video": torch.full((3, self.t, 4, 4), float(i)), "caption": str(i)}


def test_joint_image_video_ranks_agree():
    kinds = [step_kind(s, 0.3, seed=5) for s in range(200)]
    assert 0.15 < kinds.count("image") / 200 < 0.45
    ranks = [JointImageVideo(_Toy(12, 4), _Toy(20, 1), image_ratio=0.3, batch_size_video=2,
                             batch_size_image=3, seed=5, rank=r, world_size=2, num_steps=30) for r in range(2)]
    plans = [list(j.plan(0, 30)) for j in ranks]
    for s in range(30):
        (_, k0, i0), (_, k1, i1) = plans[0][s], plans[1][s]
        assert k0 == k1 == kinds[s]
        assert not set(i0) & set(i1)  # ranks take disjoint slices
    batches = list(ranks[0])
    assert len(batches) == 30
    b = batches[0]
    t = 1 if b["kind"] == "image" else 4
    assert b["video"].shape == ((3 if t == 1 else 2), 3, t, 4, 4)
    # resuming at step 10 reproduces the same plan
    resumed = JointImageVideo(_Toy(12, 4), _Toy(20, 1), image_ratio=0.3, batch_size_video=2,
                              batch_size_image=3, seed=5, rank=0, world_size=2, start_step=10, num_steps=30)
    assert list(resumed.plan(10, 30)) == plans[0][10:]
    loader = torch.utils.data.DataLoader(resumed, batch_size=None, num_workers=2)
    assert [b["step"] for b in loader] == list(range(10, 30))
