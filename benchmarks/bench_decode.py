"""Decode throughput (frames/s) of PyAV, OpenCV and imageio-ffmpeg.

    python benchmarks/bench_decode.py [--data ../shared/data/videos] [--repeat 2]

For each clip: a full decode of every frame, and a sparse read of 16 frames at
stride 4 from the middle (PyAV / OpenCV through utils.video_io.read_video, which
seeks and decodes only the needed span; imageio-ffmpeg seeks with -ss and pipes
the span). Reports the best of ``--repeat`` runs, in frames returned per second.
"""
import argparse
import os
import time

import numpy as np

from utils.video_io import probe_video, read_video


def _imageio_read(path, first, last, fps, w, h):
    import imageio_ffmpeg

    params = ["-ss", f"{first / fps:.6f}"] if first > 0 else []
    gen = imageio_ffmpeg.read_frames(path, input_params=params)
    gen.__next__()  # meta
    out = []
    for i, buf in enumerate(gen):
        out.append(np.frombuffer(buf, np.uint8).reshape(h, w, 3))
        if first + i >= last:
            break
    gen.close()
    return out


def bench(path, repeat):
    info = probe_video(path)
    n = info.num_frames
    start = max(0, n // 2 - 32)
    sparse = [i for i in range(start, start + 64, 4) if i < n][:16]
    rows = []
    for mode, idx in (("full", None), ("sparse16x4", sparse)):
        count = n if idx is None else len(idx)
        for backend in ("pyav", "opencv", "imageio-ffmpeg"):
            best = float("inf")
            for _ in range(repeat):
                t = time.perf_counter()
                if backend == "imageio-ffmpeg":
                    lo, hi = (0, n - 1) if idx is None else (idx[0], idx[-1])
                    frames = _imageio_read(path, lo, hi, info.fps, info.width, info.height)
                    frames = frames if idx is None else [frames[i - lo] for i in idx]
                else:
                    frames, _ = read_video(path, idx, backend=backend)
                best = min(best, time.perf_counter() - t)
                assert len(frames) == count, (backend, len(frames), count)
            rows.append((os.path.basename(path), f"{info.height}x{info.width}", mode, backend, count, best))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "videos"))
    ap.add_argument("--clips", nargs="+", default=["cockatoo.mp4", "realshort.mp4"])
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    print(f"{'clip':<16}{'size':<10}{'mode':<12}{'backend':<16}{'frames':>7}{'sec':>9}{'fps':>10}")
    for clip in args.clips:
        for name, size, mode, backend, count, sec in bench(os.path.join(args.data, clip), args.repeat):
            print(f"{name:<16}{size:<10}{mode:<12}{backend:<16}{count:>7}{sec:>9.3f}{count / sec:>10.1f}")
    epoch_bench(os.path.join(args.data, "vid_list.txt"))


def epoch_bench(list_file: str) -> None:
    """One epoch over a video list (16 frames, 64x64) from the videos vs from a latent cache."""
    import tempfile
    import time

    from tools.autoencoders.identity import Identity
    from tools.datasets.latent_cache import LatentCache, encode_dataset
    from tools.datasets.video_list import VideoList

    ds = VideoList(list_file, num_frames=16, resolution=64)
    t0 = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    t_video = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        encode_dataset(ds, Identity(), d, fingerprint={"data": "bench"}, progress=False)
        t_encode = time.perf_counter() - t0
        cache = LatentCache(d)
        t0 = time.perf_counter()
        for i in range(len(cache)):
            cache[i]
        t_cache = time.perf_counter() - t0
    print(f"epoch over {len(ds)} videos (16 frames, 64x64): decode {t_video:.3f} s, latent cache "
          f"{t_cache * 1e3:.1f} ms (building the cache with Identity: {t_encode:.3f} s, once)")


if __name__ == "__main__":
    main()
