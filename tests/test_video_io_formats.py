"""utils/video_io.py on hostile files: header-less WebM/MKV, one decoding backend failing, both failing."""

import numpy as np
import pytest
from media import header_frame_counts, moving_frames, write_mkv, write_webm

import utils.video_io as vio
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


def _psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return 10 * np.log10(255 ** 2 / max(mse, 1e-10))


# ---------------------------------------------------------------------------- header-less WebM / MKV


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
