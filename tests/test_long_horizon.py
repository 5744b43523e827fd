"""64 predicted frames with the shipped demo checkpoint and configs/tiny/predict.yaml (window 12,
lowered to 8 by the predictor): the balls are kept and do not fade. Runtime ~8 s (2 videos,
4 sample steps); with window 12 kept (allow_untrained_positions) they vanish by frame ~24."""
import pathlib

import numpy as np
import pytest

from tools.datasets.synthetic_physics import SyntheticPhysics
from tools.inferences.predictor import Predictor
from tools.inferences.scene import detect_objects, settings_from_dataset
from utils.config import load_config
from utils.registry import INFER_ENGINE
from utils.video_io import to_uint8

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_64_frame_rollout_keeps_balls(monkeypatch):
    monkeypatch.chdir(ROOT)
    # fp32 as trained: precision auto picks bf16 on CPUs with bf16 kernels, where this 4-step rollout
    # of the v1 checkpoint loses one of a video's two balls from frame ~44 on (measured)
    cfg = load_config(ROOT / "configs/tiny/predict.yaml",
                      ["num_sample_steps=4", "backend.attention=sdpa", "backend.precision=fp32"],
                      registry=INFER_ENGINE)
    p = Predictor(cfg)
    data = dict(resolution=32, num_frames=68, num_balls=[1, 3], seed=31337)  # a seed no config uses
    ds, st = SyntheticPhysics(**data), settings_from_dataset(data)
    for i in range(2):
        truth = ds[i]["video"]
        out = to_uint8(p.predict(truth[:, :4], 5, None, 68))[4:]          # (64, H, W, 3)
        counts = np.array([len(o) for o in detect_objects(out, st)])
        n = ds[i]["meta"]["num_balls"]
        assert (counts >= n).mean() >= 0.9, (n, counts.tolist())          # no ball lost ...
        assert (counts[-8:] >= n).all(), (n, counts.tolist())             # ... still there at the end
        assert (counts == n).mean() >= 0.6, (n, counts.tolist())          # (this checkpoint adds spurious blobs)
        fg = (np.abs(out.astype(np.float32) - [16, 16, 24]).max(-1) > 100).sum((1, 2))  # bright pixels
        ref = (np.abs(to_uint8(truth[:, :4]).astype(np.float32) - [16, 16, 24]).max(-1) > 100).sum((1, 2)).mean()
        assert fg[-16:].mean() > 0.6 * ref, (fg.tolist(), ref)             # no fading


@pytest.mark.slow
def test_demo_64_frame_rollout_neither_fades_nor_blows_up(monkeypatch):
    """The shipped demo model (configs/demo/predict.yaml: window 4 + clip 1 latent frames, 10 steps) over
    64 predicted frames of 3 videos of a seed no config uses, each with its caption: no frame is empty,
    no spurious balls pile up, the foreground neither fades nor floods and the obstacles are mostly still
    drawn. Measured: ball counts in the last 16 frames 2-3 of 4, 1-3 of 2, 1-4 of 6 (the count is NOT
    kept), foreground 0.71 / 0.99 / 0.57 of the context's, obstacles 1.0 / 0.96 / 1.0 (at 4 steps spurious
    blobs pile up to 6 of 2). A model whose errors pile up fills its frames with coloured blobs by frame ~32
    and fails it."""
    import yaml

    monkeypatch.chdir(ROOT)
    context = 5
    cfg = load_config(ROOT / "configs/demo/predict.yaml", ["num_sample_steps=10", "backend.attention=sdpa"],
                      registry=INFER_ENGINE)
    p = Predictor(cfg)
    data = {k: v for k, v in yaml.safe_load((ROOT / "configs/_base_/demo.yaml").read_text())["dataset"].items()
            if k != "type"}
    data.update(num_frames=64 + context, seed=31337, length=3)      # a seed no config uses
    ds, st = SyntheticPhysics(**data), settings_from_dataset(data)
    fg = lambda x: (np.abs(x.astype(np.float32) - ds.background).max(-1) > 60).sum((1, 2))
    for i in range(3):
        item = ds[i]
        truth, n = item["video"], item["meta"]["num_balls"]
        out = to_uint8(p.predict(truth[:, :context], 5, item["caption"], 64 + context))[context:]  # (64, H, W, 3)
        counts = np.array([len(o) for o in detect_objects(out, st)])
        assert (counts >= 1).all(), (i, n, counts.tolist())                 # never an empty scene
        assert (counts[-16:] <= n + 2).all(), (i, n, counts.tolist())       # no pile-up of spurious blobs
        ratio = fg(out[-16:]).mean() / fg(to_uint8(truth[:, :context])).mean()
        assert 0.25 < ratio < 2.0, (i, ratio)                              # no fading, no flooding
        kept = [(np.abs(out[-16:, int(y0) + 1:int(np.ceil(y1)) - 1, int(x0) + 1:int(np.ceil(x1)) - 1]
                        .astype(np.float32) - ds.obstacle_color).max(-1) < 40).mean()
                for x0, y0, x1, y1 in item["meta"]["physics"]["obstacles"]]  # balls never enter them
        assert not kept or np.mean(kept) >= 0.3, (i, kept)
