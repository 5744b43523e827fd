"""Data-side hardening: header-less WebM/MKV, backend fallback, epochs (C3), list files, logging (C4)."""
import logging

import numpy as np
import pytest
import torch

import utils.video_io as vio
from media import header_frame_counts, moving_frames, write_mkv, write_webm
from tools.datasets.csv_video import CsvVideo
from tools.datasets.image_list import ImageList
from tools.datasets.label_list import LabelList
from tools.datasets.video_list import VideoList, collate, read_list_file
from utils.config import InputError
from utils.video_io import VideoReadError, probe_video, read_video

T, FPS = 30, 10

WRITERS = {
    "vp8.webm": lambda p, f: write_webm(p, f, FPS, codec="vp8"),
    "vp9.webm": lambda p, f: write_webm(p, f, FPS, codec="vp9"),
    "h264.mkv": lambda p, f: write_mkv(p, f, FPS),
    "h264.webm": lambda p, f: write_mkv(p, f, FPS),  # h264 in a .webm name, as Chrome records
}


@pytest.fixture(scope="module")
def headerless(tmp_path_factory):
    """name -> (path, source frames) for WebM/MKV files with no frame count in the header."""
    d = tmp_path_factory.mktemp("headerless")
    frames = moving_frames(T, 48, 64)
    return {name: (WRITERS[name](str(d / name), frames), frames) for name in WRITERS}


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


def _psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return 10 * np.log10(255 ** 2 / max(mse, 1e-10))


# ---------------------------------------------------------------------------- header-less WebM / MKV
@pytest.mark.parametrize("name", sorted(WRITERS))
def test_headerless_webm_mkv_probe_and_read(headerless, name):
    path, src = headerless[name]
    n_cv, n_av = header_frame_counts(path)
    assert n_cv <= 0 and n_av == 0  # the case: the container does not say how many frames
    info = probe_video(path)
    assert (info.num_frames, info.height, info.width) == (T, 48, 64) and abs(info.fps - FPS) < 1e-6
    full, finfo = read_video(path)  # default backend (OpenCV) used to raise "no video frames"
    assert full.shape == (T, 48, 64, 3) and finfo.num_frames == T
    assert _psnr(full, src) > 25
    idx = [20, 3, T - 1, 20]
    for backend in ("opencv", "pyav"):
        part, _ = read_video(path, idx, backend=backend)
        assert np.array_equal(part, full[idx]), backend
    with pytest.raises(VideoReadError, match="too few frames"):
        read_video(path, [T])


@pytest.mark.parametrize("ext,codec", [(".webm", "libvpx-vp9"), (".mkv", "libx264")])
def test_imageio_ffmpeg_webm_mkv(tmp_path, ext, codec):
    import imageio_ffmpeg

    path = str(tmp_path / f"a{ext}")
    src = moving_frames(12, 48, 64)
    w = imageio_ffmpeg.write_frames(path, (64, 48), fps=12, codec=codec, macro_block_size=1,
                                    ffmpeg_log_level="error")
    w.send(None)
    for f in src:
        w.send(f)
    w.close()
    assert probe_video(path).num_frames == 12
    for backend in ("opencv", "pyav"):
        part, info = read_video(path, [9, 2], backend=backend)
        assert part.shape == (2, 48, 64, 3) and info.num_frames == 12 and _psnr(part, src[[9, 2]]) > 25


def test_opencv_failure_falls_back_to_pyav(shared_data, monkeypatch):
    p = shared_data / "videos" / "realshort.mp4"
    want, _ = read_video(p, [3, 31], backend="pyav")

    def broken(path, idx):
        raise VideoReadError(path, "opencv says no")
    monkeypatch.setattr(vio, "_read_opencv", broken)
    got, info = read_video(p, [3, 31], backend="opencv")
    assert np.array_equal(got, want) and info.num_frames == 36


def test_pyav_failure_falls_back_to_opencv(shared_data, monkeypatch):
    p = shared_data / "videos" / "realshort.mp4"

    def broken(path, idx):
        raise VideoReadError(path, "pyav says no")
    monkeypatch.setattr(vio, "_read_pyav", broken)
    got, info = read_video(p, [3, 31], backend="pyav")
    assert got.shape == (2, 240, 320, 3) and info.num_frames == 36


def test_both_backends_fail_reports_both(shared_data):
    with pytest.raises(VideoReadError) as e:
        read_video(shared_data / "broken_truncated.mp4", backend="opencv")
    msg = str(e.value)
    assert "OpenCV: " in msg and "PyAV (fallback): " in msg and "corrupt" in msg


def test_mp4_with_count_is_read_by_opencv_only(shared_data, monkeypatch):
    """The fallback costs nothing on normal files: PyAV is never touched."""
    def must_not_run(path, idx):
        raise AssertionError("PyAV must not be used for an mp4 OpenCV can read")
    monkeypatch.setattr(vio, "_read_pyav", must_not_run)
    frames, info = read_video(shared_data / "videos" / "realshort.mp4", [33, 2])
    assert frames.shape == (2, 240, 320, 3) and info.num_frames == 36 and info.codec == "opencv"


# ---------------------------------------------------------------------------- directories
def test_directory_is_named_a_directory(tmp_path, shared_data):
    for fn in (read_video, probe_video, vio.read_image):
        with pytest.raises(VideoReadError, match="is a directory, not a (video|image) file"):
            fn(tmp_path)
    (tmp_path / "l.txt").write_text(f"{shared_data / 'videos'}|||a folder\nvideos/realshort.mp4|||ok\n")
    ds = VideoList(str(tmp_path / "l.txt"), data_dir=str(shared_data), num_frames=2, resolution=8,
                   max_bad_fraction=0.5)
    assert ds[0]["meta"]["index"] == 1
    assert "is a directory, not a video file" in ds.bad[0]
    with pytest.raises(InputError, match="is a directory"):
        VideoList(str(tmp_path), num_frames=2)


# ---------------------------------------------------------------------------- list files
def test_bare_path_line_has_empty_caption(tmp_path, shared_data):
    (tmp_path / "l.txt").write_text("videos/realshort.mp4\nvideos/cat_walking.mp4 ||| a cat\n")
    rows = read_list_file(str(tmp_path / "l.txt"), data_dir=str(shared_data))
    assert [(r[1], r[2]) for r in rows] == [("", 1), ("a cat", 2)]
    ds = VideoList(str(tmp_path / "l.txt"), data_dir=str(shared_data), num_frames=2, resolution=8)
    assert ds[0]["caption"] == "" and ds[0]["video"].shape == (3, 2, 8, 8)


def test_utf8_bom_is_not_part_of_the_first_path(tmp_path, shared_data):
    (tmp_path / "l.txt").write_bytes("\ufeffvideos/realshort.mp4|||caf\u00e9\n".encode("utf-8"))
    rows = read_list_file(str(tmp_path / "l.txt"), data_dir=str(shared_data))
    assert rows[0][0] == str(shared_data / "videos" / "realshort.mp4") and rows[0][1] == "caf\u00e9"
    ds = VideoList(str(tmp_path / "l.txt"), data_dir=str(shared_data), num_frames=2, resolution=8,
                   max_bad_fraction=0.0)
    assert ds[0]["meta"]["index"] == 0
    (tmp_path / "v.csv").write_bytes("\ufeffvideo,caption\nvideos/realshort.mp4,x\n".encode("utf-8"))
    assert CsvVideo(str(tmp_path / "v.csv"), data_dir=str(shared_data), num_frames=2).entries[0][1] == "x"


@pytest.mark.parametrize("text", ["", "# only a comment\n\n   \n"])
def test_empty_list_is_an_input_error(tmp_path, text):
    p = tmp_path / "empty.txt"
    p.write_text(text)
    with pytest.raises(InputError, match=r"empty\.txt.*no entries.*\|\|\|"):
        read_list_file(str(p))
    for cls in (VideoList, ImageList, LabelList):
        with pytest.raises(InputError, match="no entries"):
            cls(str(p))
    (tmp_path / "e.csv").write_text("video,caption\n")
    with pytest.raises(InputError, match=r"e\.csv"):
        CsvVideo(str(tmp_path / "e.csv"))


# ---------------------------------------------------------------------------- epochs (C3)
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
