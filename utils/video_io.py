"""Reading, writing and resizing videos.

Frames on the NumPy side are ``uint8`` arrays ``(T, H, W, 3)`` in RGB order; on the
torch side they are float32 ``(C, T, H, W)`` in [-1, 1] (see docs/design.md).

Decoding uses OpenCV by default: measured faster than PyAV and imageio-ffmpeg on the
720p clip and on a small clip, for full and sparse reads (benchmarks/bench_decode.py;
~2.4x on full 720p decode). ``backend='pyav'`` is kept (and always used for GIFs).
Only the requested frames are decoded: both backends seek to the keyframe before the
first wanted frame, decode forward and stop after the last wanted one. The PyAV path
lists packet timestamps with a cheap demux pass and falls back to decoding from the
start when a seek lands on a keyframe that decodes corrupt (open-GOP files).
:func:`probe_video` demuxes with PyAV and so counts frames exactly. When the chosen
backend cannot read a file, :func:`read_video` tries the other one (OpenCV only
estimates the count from the stored duration, so it cannot read a streamed WebM/MKV
that stores none; PyAV can).

Every write goes to a temporary file in the destination directory (keeping the
extension, so ffmpeg / PIL pick the right muxer) and is moved into place with
``os.replace``: an interrupted write never leaves a half-written output.
"""
from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from utils.io import atomic_path

PathLike = str | os.PathLike
BACKENDS = ("pyav", "opencv")
DEFAULT_BACKEND = "opencv"
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


class VideoReadError(RuntimeError):
    """A video (or image) could not be read: missing, empty, corrupt, truncated, too short."""

    def __init__(self, path: PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read {self.path!r}: {reason}")

    def __reduce__(self):  # picklable across DataLoader workers
        return (type(self), (self.path, self.reason))


@dataclass
class VideoInfo:
    """What :func:`probe_video` finds without decoding pixels."""

    path: str
    num_frames: int
    fps: float
    height: int
    width: int
    codec: str

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)."""
        return (self.height, self.width)

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else 0.0

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------- reading
def _check_file(path: PathLike, what: str = "video file") -> str:
    path = os.fspath(path)
    if os.path.isdir(path):
        raise VideoReadError(path, f"is a directory, not a {what}; list the files inside it instead")
    if not os.path.exists(path):
        raise VideoReadError(path, "file not found; check the path and the data_dir it is relative to")
    if not os.path.isfile(path):
        raise VideoReadError(path, f"not a regular file (a device, pipe or socket?), not a {what}")
    if os.path.getsize(path) == 0:
        raise VideoReadError(path, "file is empty (0 bytes); re-download or remove it from the list")
    return path


@contextlib.contextmanager
def _open_av(path: str) -> Iterator:
    import av

    try:
        container = av.open(path)
    except Exception as e:  # av.error.InvalidDataError and friends
        raise VideoReadError(path, f"corrupt or truncated file ({type(e).__name__}: {e})") from e
    try:
        if not container.streams.video:
            raise VideoReadError(path, "the file has no video stream")
        yield container
    finally:
        container.close()


def _frame_table(container, path: str):
    """Demux (no decoding) -> (sorted pts list, keyframe flags, fps)."""
    stream = container.streams.video[0]
    pts, key = [], []
    try:
        for pkt in container.demux(stream):
            if pkt.size == 0 or pkt.pts is None:
                continue
            pts.append(pkt.pts)
            key.append(bool(pkt.is_keyframe))
    except Exception as e:
        raise VideoReadError(path, f"corrupt stream while demuxing ({type(e).__name__}: {e})") from e
    order = np.argsort(pts, kind="stable")
    pts = [pts[i] for i in order]
    key = [key[i] for i in order]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    if fps <= 0 and len(pts) > 1 and stream.time_base:
        fps = (len(pts) - 1) / float((pts[-1] - pts[0]) * stream.time_base)
    return pts, key, fps


def probe_video(path: PathLike) -> VideoInfo:
    """Frame count, fps and size of a video (demuxes packets; decodes nothing).

    Raises :class:`VideoReadError` for missing, empty, corrupt or frameless files.
    """
    path = _check_file(path)
    with _open_av(path) as c:
        s = c.streams.video[0]
        pts, _, fps = _frame_table(c, path)
        if not pts:
            raise VideoReadError(path, "no video frames in the file")
        return VideoInfo(path, len(pts), fps, int(s.height), int(s.width), s.codec_context.name)


def _normalise_indices(path: str, frame_indices, num_frames: int) -> list:
    if frame_indices is None:
        return list(range(num_frames))
    idx = [int(i) for i in frame_indices]
    if not idx:
        raise ValueError(f"frame_indices is empty for {path!r}; pass None to read every frame")
    if min(idx) < 0:
        raise ValueError(f"frame_indices must be >= 0, got {min(idx)} for {path!r}")
    if max(idx) >= num_frames:
        raise VideoReadError(
            path, f"too few frames: frame {max(idx)} requested but the video has {num_frames} "
                  f"(valid indices 0..{num_frames - 1})")
    return idx


def _decode_span(c, s, path, pts, k, wanted, last_pts):
    """Seek to packet ``k`` (a keyframe) and decode up to ``last_pts``; None if frames are corrupt."""
    try:
        if k > 0:
            c.seek(pts[k], stream=s, backward=True, any_frame=False)
        else:
            c.seek(0)  # the demux pass consumed the file; rewind
        got = {}
        for frame in c.decode(s):
            if frame.pts is None:
                continue
            if frame.pts in wanted:
                if frame.is_corrupt:
                    return None
                got[wanted[frame.pts]] = frame.to_ndarray(format="rgb24")
                if len(got) == len(wanted):
                    break
            if frame.pts > last_pts:
                break
    except Exception as e:
        raise VideoReadError(path, f"corrupt data while decoding ({type(e).__name__}: {e})") from e
    return got


def _read_pyav(path: str, frame_indices) -> tuple[np.ndarray, VideoInfo]:
    with _open_av(path) as c:
        s = c.streams.video[0]
        pts, key, fps = _frame_table(c, path)
        if not pts:
            raise VideoReadError(path, "no video frames in the file")
        info = VideoInfo(path, len(pts), fps, int(s.height), int(s.width), s.codec_context.name)
        idx = _normalise_indices(path, frame_indices, len(pts))
        wanted = {pts[i]: i for i in set(idx)}
        first, last = min(idx), max(idx)
        k = first
        while k > 0 and not key[k]:  # keyframe at or before the first wanted frame
            k -= 1
        s.thread_type = "AUTO"
        got = _decode_span(c, s, path, pts, k, wanted, pts[last])
        if got is None and k > 0:
            # Some files flag open-GOP I-frames as keyframes; decoding from them yields
            # corrupt frames. Fall back to decoding from the start of the file.
            got = _decode_span(c, s, path, pts, 0, wanted, pts[last])
        if got is None:
            raise VideoReadError(path, "corrupt data: the decoder flagged requested frames as corrupt")
        missing = sorted(set(idx) - set(got))
        if missing:
            raise VideoReadError(
                path, f"truncated or corrupt: {len(missing)} of the requested frames could not be "
                      f"decoded (first missing index {missing[0]}, container lists {len(pts)} frames)")
        return np.stack([got[i] for i in idx]), info


def _read_opencv(path: str, frame_indices) -> tuple[np.ndarray, VideoInfo]:
    import cv2

    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise VideoReadError(path, "OpenCV could not open it (corrupt, truncated or unsupported)")
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        h, w = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        if n <= 0:  # OpenCV estimates the count from the duration; none stored -> garbage
            raise VideoReadError(
                path, "OpenCV cannot tell the frame count: the container stores no frame count or "
                      "duration (e.g. a streamed or browser-recorded WebM/MKV), and its frame seeking "
                      "is unreliable in such files")
        info = VideoInfo(path, n, fps, h, w, "opencv")
        idx = _normalise_indices(path, frame_indices, n)
        wanted = set(idx)
        first, last = min(idx), max(idx)
        if first > 0:
            cap.set(cv2.CAP_PROP_POS_FRAMES, first)
        got = {}
        for i in range(first, last + 1):
            if i in wanted:
                ok, bgr = cap.read()
                if ok:
                    got[i] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            else:
                ok = cap.grab()
            if not ok:
                raise VideoReadError(path, f"truncated or corrupt: decoding stopped at frame {i} of {n}")
        return np.stack([got[i] for i in idx]), info
    finally:
        cap.release()


def read_video(path: PathLike, frame_indices: Sequence[int] | None = None,
               backend: str = DEFAULT_BACKEND) -> tuple[np.ndarray, VideoInfo]:
    """Decode ``frame_indices`` (default: all) -> (uint8 (T, H, W, 3) RGB, :class:`VideoInfo`).

    Frames come back in the order of ``frame_indices`` (repeats allowed). Only the span
    between the keyframe before the first and the last requested frame is decoded.
    Raises :class:`VideoReadError` for missing / empty / corrupt / truncated files and
    when an index is past the end ("too few frames"). When the chosen backend cannot read
    the file the other one is tried (e.g. OpenCV cannot count or seek in a WebM/MKV whose
    header stores no duration; PyAV counts by demuxing); if both fail the error gives both
    reasons.
    """
    if backend not in BACKENDS:
        raise ValueError(f"read_video: backend={backend!r} is not supported; use one of {BACKENDS}")
    path = _check_file(path)
    if backend == "opencv" and not path.lower().endswith(".gif"):
        order = ("opencv", "pyav")
    else:
        order = ("pyav", "opencv")  # GIFs first via PyAV (checked against PIL)
    readers = {"opencv": _read_opencv, "pyav": _read_pyav}
    failed = []
    for name in order:
        try:
            return readers[name](path, frame_indices)
        except VideoReadError as e:
            failed.append((name, e.reason))
    raise VideoReadError(path, _failure_reasons(failed))


def _failure_reasons(failed: Sequence[tuple[str, str]]) -> str:
    """One reason from every backend tried, e.g. ``OpenCV: ...; PyAV (fallback): ...``."""
    if len({reason for _, reason in failed}) == 1:
        return failed[0][1]
    names = {"opencv": "OpenCV", "pyav": "PyAV"}
    return "; ".join(f"{names[n]}{' (fallback)' if k else ''}: {r}" for k, (n, r) in enumerate(failed))


def read_image(path: PathLike) -> np.ndarray:
    """One image -> uint8 (H, W, 3) RGB (first frame for animated formats)."""
    from PIL import Image

    path = _check_file(path, what="image file")
    try:
        with Image.open(path) as im:
            im.seek(0)
            return np.asarray(im.convert("RGB")).copy()
    except Exception as e:
        raise VideoReadError(path, f"not a readable image ({type(e).__name__}: {e})") from e


# ---------------------------------------------------------------------------- writing
def _check_frames(frames, what="frames") -> np.ndarray:
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] == 0:
        raise ValueError(
            f"{what}: expected uint8 array (T, H, W, 3) with T >= 1, got {frames.dtype} {tuple(frames.shape)}. "
            f"Convert a (C, T, H, W) tensor in [-1, 1] with utils.video_io.to_uint8().")
    return np.ascontiguousarray(frames)


def _ffmpeg_exe() -> str:
    """The ffmpeg binary that imageio-ffmpeg ships (or finds)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _ffmpeg_error(tmp: str, returncode: int, stderr: str) -> OSError:
    """An OSError for a failed ffmpeg run: ENOSPC when ffmpeg ran out of space, else EIO."""
    import errno

    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    why = "; ".join(lines[-3:]) or "no message"
    full = "no space left on device" in stderr.lower() or "disk quota exceeded" in stderr.lower()
    code = errno.ENOSPC if full else errno.EIO
    return OSError(code, f"ffmpeg could not write the video (exit code {returncode}: {why})", tmp)


def _write_mp4(tmp: str, frames: np.ndarray, fps: float, quality: int) -> None:
    """Encode with ffmpeg (libx264); raises OSError when ffmpeg fails (disk full, ...)."""
    import subprocess
    import tempfile

    t, h, w, _ = frames.shape
    # libx264 + yuv420p needs even sizes; 4:4:4 keeps any size exactly.
    pix = "yuv420p" if h % 2 == 0 and w % 2 == 0 else "yuv444p"
    cmd = [_ffmpeg_exe(), "-y", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
           "-r", repr(float(fps)), "-i", "-", "-an", "-c:v", "libx264", "-pix_fmt", pix, "-crf", str(quality),
           "-preset", "veryfast", "-movflags", "+faststart", "-f", "mp4", tmp]
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: ffmpeg can never block on it
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
        try:
            try:
                for f in frames:
                    p.stdin.write(f.tobytes())
                p.stdin.close()
            except BrokenPipeError:  # ffmpeg quit early; its exit code and message say why
                pass
            rc = p.wait()
        finally:
            with contextlib.suppress(OSError):
                p.stdin.close()
            if p.poll() is None:  # interrupted: do not leave ffmpeg running
                p.kill()
                p.wait()
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
    if rc != 0:
        raise _ffmpeg_error(tmp, rc, stderr)


def _write_gif(tmp: str, frames: np.ndarray, fps: float) -> None:
    from PIL import Image

    ims = [Image.fromarray(f).convert("P", palette=Image.Palette.ADAPTIVE, colors=256) for f in frames]
    ims[0].save(tmp, format="GIF", save_all=True, append_images=ims[1:], loop=0,
                duration=max(20, int(round(1000.0 / fps))), disposal=1)


def write_video(path: PathLike, frames, fps: float = 8.0, quality: int = 18) -> str:
    """Write uint8 (T, H, W, 3) frames to ``.mp4`` (H.264) or ``.gif``, atomically. Returns ``path``.

    The exact frame size is kept (no macroblock padding; odd sizes use yuv444p).
    ``quality`` is the x264 CRF (lower = better, 18 ~ visually lossless).
    A failed write (ffmpeg's exit code, an empty result, a full disk) raises ``OSError``
    naming ``path`` and leaves nothing under that name.
    """
    path = os.fspath(path)
    frames = _check_frames(frames)
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"write_video: fps must be a positive number, got {fps!r}")
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".mp4", ".gif"):
        raise ValueError(f"write_video: unsupported extension {ext!r} in {path!r}; use .mp4 or .gif "
                         f"(or write_grid for a .png contact sheet)")
    try:
        with atomic_path(path, require_nonempty=True) as tmp:
            if ext == ".mp4":
                _write_mp4(tmp, frames, float(fps), quality)
            else:
                _write_gif(tmp, frames, float(fps))
    except OSError as e:  # name the final file, not the temp one
        raise OSError(e.errno, f"could not write {ext[1:]} ({e.strerror or e})", path) from e
    return path


def make_grid(frames, ncols: int | None = None, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile frames (T, H, W, 3) into one uint8 image (contact sheet)."""
    frames = _check_frames(frames)
    t, h, w, _ = frames.shape
    ncols = ncols or int(math.ceil(math.sqrt(t)))
    nrows = int(math.ceil(t / ncols))
    grid = np.full((nrows * h + (nrows + 1) * pad, ncols * w + (ncols + 1) * pad, 3), pad_value, np.uint8)
    for i, f in enumerate(frames):
        r, c = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y:y + h, x:x + w] = f
    return grid


#: frame of the context (given) columns in a labelled contact sheet
CONTEXT_COLOR = (255, 128, 0)


def _label_font():
    """PIL's built-in bitmap font (no font file needed)."""
    from PIL import ImageFont

    load = getattr(ImageFont, "load_default_imagefont", ImageFont.load_default)
    return load()


def _text_size(draw, text: str, font) -> tuple[int, int]:
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    return x1 - x0, y1 - y0


def make_labeled_grid(rows: Sequence[tuple[str, np.ndarray]], context_frames: int = 0, pad: int = 3,
                      pad_value: int = 255) -> np.ndarray:
    """Rows of videos (``(label, uint8 (T, H, W, 3))``, same H, W) as one labelled image.

    Each row is one video with its label at the left; column ``t`` holds frame ``t`` of
    every row, headed by its index. The first ``context_frames`` columns (the frames the
    model was given) are framed in orange and headed ``ctx t``. Rows shorter than the
    longest one leave their last cells grey.
    """
    from PIL import Image, ImageDraw

    vids = [(str(label), _check_frames(v, f"row {label!r}")) for label, v in rows]
    if not vids:
        raise ValueError("make_labeled_grid: no rows given")
    h, w = vids[0][1].shape[1:3]
    if any(v.shape[1:3] != (h, w) for _, v in vids):
        raise ValueError(f"make_labeled_grid: rows differ in frame size "
                         f"{[tuple(v.shape[1:3]) for _, v in vids]}; resize them to one size first")
    t = max(v.shape[0] for _, v in vids)
    font = _label_font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    headers = [f"ctx {i}" if i < context_frames and _text_size(probe, f"ctx {i}", font)[0] <= w + pad
               else str(i) for i in range(t)]
    th = max(_text_size(probe, s, font)[1] for s in headers + [v[0] for v in vids]) + 2 * pad
    lw = max(_text_size(probe, label, font)[0] for label, _ in vids) + 3 * pad
    cw, ch = w + pad, h + pad                      # cell pitch
    img = Image.new("RGB", (lw + t * cw + pad, th + len(vids) * ch + pad), (pad_value,) * 3)
    draw = ImageDraw.Draw(img)
    for i, text in enumerate(headers):
        color = CONTEXT_COLOR if i < context_frames else (0, 0, 0)
        draw.text((lw + i * cw + pad, pad), text, fill=color, font=font)
    for r, (label, v) in enumerate(vids):
        y = th + r * ch + pad
        draw.text((pad, y + (h - _text_size(probe, label, font)[1]) // 2), label, fill=(0, 0, 0), font=font)
        for i in range(t):
            x = lw + i * cw + pad
            if i < context_frames:  # the frame around a given frame
                draw.rectangle([x - pad, y - pad, x + w + pad - 1, y + h + pad - 1], outline=CONTEXT_COLOR,
                               width=max(1, pad - 1))
            if i < v.shape[0]:
                img.paste(Image.fromarray(v[i]), (x, y))
            else:
                draw.rectangle([x, y, x + w - 1, y + h - 1], fill=(200, 200, 200))
    return np.asarray(img)


def write_grid(path: PathLike, frames, ncols: int | None = None, pad: int = 2,
               context_frames: int = 0) -> str:
    """Write a PNG contact sheet, atomically. Returns ``path``.

    ``frames``: uint8 (T, H, W, 3) for a plain grid (:func:`make_grid`), or a list of
    ``(label, frames)`` rows for a labelled sheet (:func:`make_labeled_grid`, which marks
    the first ``context_frames`` columns).
    """
    from PIL import Image

    path = os.fspath(path)
    if os.path.splitext(path)[1].lower() != ".png":
        raise ValueError(f"write_grid: {path!r} must end with .png")
    if isinstance(frames, (list, tuple)) and frames and isinstance(frames[0], tuple):
        grid = make_labeled_grid(frames, context_frames=context_frames)
    else:
        grid = make_grid(frames, ncols=ncols, pad=pad)
    try:
        with atomic_path(path, require_nonempty=True) as tmp:
            Image.fromarray(grid).save(tmp, format="PNG")
    except OSError as e:  # name the final file, not the temp one
        raise OSError(e.errno, f"could not write png ({e.strerror or e})", path) from e
    return path


# ---------------------------------------------------------------------------- transforms
def _as_hw(size) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"resolution must be an int or [H, W] of positive ints, got {size!r}")
    return size


def resize_crop(frames: np.ndarray, size, crop: str = "center",
                rng: np.random.Generator | None = None, nearest: bool = False) -> np.ndarray:
    """Resize (keeping aspect) so the frames cover ``size`` = (H, W), then crop to it.

    ``frames``: (T, H, W, C) images, or (T, H, W) maps. ``crop`` is ``'center'`` or ``'random'``
    (uses ``rng``; same offset for every frame). ``nearest``: nearest-neighbour resizing, for label /
    object-id maps (default: area when shrinking, cubic when enlarging).
    """
    import cv2

    th, tw = _as_hw(size)
    if crop not in ("center", "random"):
        raise ValueError(f"crop={crop!r} is not supported; use 'center' or 'random'")
    h, w = frames.shape[1:3]
    scale = max(th / h, tw / w)
    nh, nw = max(th, int(round(h * scale))), max(tw, int(round(w * scale)))
    if (nh, nw) != (h, w):
        interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        frames = np.stack([cv2.resize(f, (nw, nh), interpolation=interp) for f in frames])
    if crop == "random":
        rng = rng if rng is not None else np.random.default_rng()
        y, x = int(rng.integers(0, nh - th + 1)), int(rng.integers(0, nw - tw + 1))
    else:
        y, x = (nh - th) // 2, (nw - tw) // 2
    return np.ascontiguousarray(frames[:, y:y + th, x:x + tw])


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 (C, T, H, W) in [-1, 1]."""
    frames = _check_frames(frames)
    x = torch.from_numpy(frames).permute(3, 0, 1, 2).float()
    return x.div_(127.5).sub_(1.0)


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """float (C, T, H, W) in [-1, 1] -> uint8 (T, H, W, 3) (values clamped)."""
    if not isinstance(video, torch.Tensor) or video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"to_uint8: expected a (3, T, H, W) tensor, got "
                         f"{type(video).__name__} {tuple(getattr(video, 'shape', ()))}")
    x = ((video.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).contiguous().numpy()


def side_by_side(*videos: torch.Tensor, gap: int = 2) -> np.ndarray:
    """(C, T, H, W) videos in [-1, 1] -> uint8 (T, H, sum W + gaps, 3), white gaps; shorter
    videos are padded with their last frame."""
    T = max(v.shape[1] for v in videos)
    parts = []
    for i, v in enumerate(videos):
        if v.shape[1] < T:
            v = torch.cat([v, v[:, -1:].expand(-1, T - v.shape[1], -1, -1)], 1)
        parts.append(to_uint8(v))
        if i < len(videos) - 1:
            parts.append(np.full((T, v.shape[2], gap, 3), 255, np.uint8))
    return np.concatenate(parts, axis=2)
