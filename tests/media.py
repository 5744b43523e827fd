"""Test media: WebM / MKV files whose header stores no frame count and no duration.

Such files come from streamed recordings (a browser's MediaRecorder, ffmpeg writing to a
pipe); OpenCV reports a garbage frame count for them and PyAV ``stream.frames == 0``.
They are written with the Matroska muxer's ``live`` mode, which writes neither a duration
nor a seek index. Import from a test as ``from media import write_webm, write_mkv``.
"""
from __future__ import annotations

import os

import numpy as np

CODECS = {"vp8": "libvpx", "vp9": "libvpx-vp9", "h264": "libx264"}


def moving_frames(t: int = 24, h: int = 48, w: int = 64) -> np.ndarray:
    """uint8 (T, H, W, 3) smooth frames that differ from each other (easy to tell apart)."""
    y, x = np.mgrid[0:h, 0:w]
    out = [np.stack([128 + 100 * np.sin(2 * np.pi * (x / w + i / t)),
                     128 + 100 * np.cos(2 * np.pi * (y / h)),
                     np.full((h, w), 40 + 8 * i % 200)], -1) for i in range(t)]
    return np.clip(out, 0, 255).astype(np.uint8)


def _write_live(path, frames, fps: float, codec: str, fmt: str, gop: int) -> str:
    import av

    frames = np.asarray(frames, dtype=np.uint8)
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"frame size {h}x{w} must be even (yuv420p)")
    path = os.fspath(path)
    with av.open(path, "w", format=fmt, options={"live": "1"}) as c:
        opts = {"deadline": "realtime", "cpu-used": "8"} if codec != "h264" else {"preset": "ultrafast"}
        s = c.add_stream(CODECS[codec], rate=fps, options=opts)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.codec_context.gop_size = gop  # several keyframes, so sparse reads really seek
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
    return path


def write_webm(path, frames, fps: float = 8, codec: str = "vp9", gop: int = 6) -> str:
    """WebM (``codec`` 'vp8' or 'vp9') with no frame count / duration in the header."""
    if codec not in ("vp8", "vp9"):
        raise ValueError(f"WebM holds vp8 or vp9, not {codec!r}; use write_mkv for h264")
    return _write_live(path, frames, fps, codec, "webm", gop)


def write_mkv(path, frames, fps: float = 8, codec: str = "h264", gop: int = 6) -> str:
    """Matroska (h264 by default) with no frame count / duration in the header.

    Any extension works: ``write_mkv('x.webm', ...)`` gives an h264 '.webm' like Chrome records.
    """
    return _write_live(path, frames, fps, codec, "matroska", gop)


def header_frame_counts(path) -> tuple[float, int]:
    """(OpenCV CAP_PROP_FRAME_COUNT, PyAV stream.frames): what the container itself says."""
    import av
    import cv2

    cap = cv2.VideoCapture(os.fspath(path))
    try:
        n_cv = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    finally:
        cap.release()
    with av.open(os.fspath(path)) as c:
        n_av = int(c.streams.video[0].frames)
    return n_cv, n_av
