import os

import numpy as np
import pytest
import torch

from utils.video_io import (
    VideoReadError,
    make_grid,
    probe_video,
    read_image,
    read_video,
    resize_crop,
    to_tensor,
    to_uint8,
    write_grid,
    write_video,
)


def _smooth_video(t=8, h=37, w=51):
    y, x = np.mgrid[0:h, 0:w]
    frames = []
    for i in range(t):
        r = 128 + 100 * np.sin(2 * np.pi * (x / w + i / t))
        g = 128 + 100 * np.cos(2 * np.pi * (y / h))
        b = np.full_like(r, 60 + 20 * i)
        frames.append(np.stack([r, g, b], -1))
    return np.clip(frames, 0, 255).astype(np.uint8)


def _psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return 10 * np.log10(255 ** 2 / max(mse, 1e-10))


def test_probe_and_full_read(shared_data):
    p = shared_data / "videos" / "realshort.mp4"
    info = probe_video(p)
    assert (info.num_frames, info.height, info.width) == (36, 240, 320)
    assert abs(info.fps - 30.02) < 0.01
    frames, info2 = read_video(p)
    assert frames.shape == (36, 240, 320, 3) and frames.dtype == np.uint8
    assert info2.num_frames == 36


@pytest.mark.parametrize("backend", ["pyav", "opencv"])
def test_sparse_read_matches_full(shared_data, backend):
    p = shared_data / "videos" / "realshort.mp4"
    full, _ = read_video(p, backend="pyav")
    idx = [31, 33, 35, 2]  # after the second keyframe (30), plus one before it
    part, _ = read_video(p, idx, backend=backend)
    assert np.array_equal(part, full[idx])


def test_sparse_read_open_gop_720p(shared_data):
    """cockatoo.mp4 flags open-GOP I-frames as keyframes; PyAV must fall back, not return garbage."""
    p = shared_data / "videos" / "cockatoo.mp4"
    idx = [150, 154]
    a, _ = read_video(p, idx, backend="pyav")
    b, _ = read_video(p, idx, backend="opencv")
    assert a.shape == (2, 720, 1280, 3)
    assert np.abs(a.astype(int) - b).mean() < 1.0


def test_gif_reads(shared_data):
    frames, info = read_video(shared_data / "odd_palette.gif")
    from PIL import Image
    ref = np.asarray(Image.open(shared_data / "odd_palette.gif").convert("RGB"))
    assert frames.shape == (1, 24, 30, 3) and np.array_equal(frames[0], ref)
    assert read_image(shared_data / "odd_palette.gif").shape == (24, 30, 3)


@pytest.mark.parametrize("name,reason", [("empty.mp4", "empty"), ("broken_truncated.mp4", "corrupt"),
                                         ("missing.mp4", "not found")])
def test_bad_files_raise_typed_errors(shared_data, name, reason):
    for backend in ("pyav", "opencv"):
        with pytest.raises(VideoReadError) as e:
            read_video(shared_data / name, backend=backend)
        assert e.value.path.endswith(name)
        assert reason in str(e.value) or backend == "opencv"
    with pytest.raises(VideoReadError):
        probe_video(shared_data / name)


def test_too_few_frames(shared_data):
    with pytest.raises(VideoReadError, match="too few frames"):
        read_video(shared_data / "videos" / "cat_walking.mp4", [0, 16])


def test_bad_backend_message():
    with pytest.raises(ValueError, match="pyav"):
        read_video(__file__, backend="ffmpeg")


@pytest.mark.parametrize("h,w", [(37, 51), (32, 48)])
def test_mp4_round_trip_exact_size(tmp_path, h, w):
    frames = _smooth_video(8, h, w)
    out = write_video(tmp_path / "a.mp4", frames, fps=12)
    back, info = read_video(out)
    assert back.shape == frames.shape
    assert abs(info.fps - 12) < 1e-6
    assert _psnr(back, frames) > 30
    assert os.listdir(tmp_path) == ["a.mp4"]  # no temp files left


def test_gif_and_grid(tmp_path):
    frames = _smooth_video(4, 20, 30)
    write_video(tmp_path / "a.gif", frames, fps=10)
    back, info = read_video(tmp_path / "a.gif")
    assert back.shape == frames.shape and _psnr(back, frames) > 25
    write_grid(tmp_path / "g.png", frames, ncols=2)
    assert read_image(tmp_path / "g.png").shape == make_grid(frames, ncols=2).shape == (2 * 20 + 6, 2 * 30 + 6, 3)
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "b.mp4", frames.astype(np.float32))


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    import utils.video_io as vio

    def boom(tmp, frames, fps, q):
        open(tmp, "wb").write(b"partial")
        raise KeyboardInterrupt
    monkeypatch.setattr(vio, "_write_mp4", boom)
    with pytest.raises(KeyboardInterrupt):
        write_video(tmp_path / "x.mp4", _smooth_video(2, 8, 8))
    assert os.listdir(tmp_path) == []


def test_resize_crop_and_tensor_conversion():
    frames = _smooth_video(3, 40, 80)
    c = resize_crop(frames, (32, 32), "center")
    assert c.shape == (3, 32, 32, 3)
    r1 = resize_crop(frames, 32, "random", np.random.default_rng(0))
    r2 = resize_crop(frames, 32, "random", np.random.default_rng(0))
    assert np.array_equal(r1, r2)
    x = to_tensor(c)
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert np.array_equal(to_uint8(x), c)
