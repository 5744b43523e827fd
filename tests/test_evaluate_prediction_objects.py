"""evaluate_prediction's object-level scores, baselines and metrics.json schema."""
import json
import math
import pathlib

import numpy as np
import pytest

from tools.datasets.synthetic_physics import SyntheticPhysics
from tools.inferences.evaluate_prediction import METHODS, horizons
from tools.inferences.scene import detect_objects, match_objects, settings_from_dataset
from utils.cli import main
from utils.config import ConfigError, load_config
from utils.registry import INFER_ENGINE

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _obj(color, x, y):
    return {"color": color, "x": x, "y": y, "area": 20.0}


def test_match_objects_by_colour_by_hand():
    truth = [_obj("red", 10, 10), _obj("blue", 20, 20)]
    m = match_objects([_obj("red", 13, 14), _obj("green", 20, 20)], truth, miss=16)
    assert m["position_error"] == pytest.approx((5 + 16) / 2)      # blue is missing: the miss value
    assert m["count_correct"] == 1.0                                # two balls each
    assert m["color_consistency"] == pytest.approx(1 / 3)           # {red} of {red, green, blue}
    far = match_objects([_obj("red", 100, 100)], [_obj("red", 0, 0)], miss=16)
    assert far["position_error"] == 16 and far["count_correct"] == 1.0
    assert math.isnan(match_objects([], [], 16)["position_error"])
    # two balls of one colour: optimal assignment, not greedy
    two = match_objects([_obj("red", 0, 0), _obj("red", 10, 0)], [_obj("red", 9, 0), _obj("red", 19, 0)], miss=50)
    assert two["position_error"] == pytest.approx(9.0)


def test_detect_objects_matches_masks_with_occlusion_and_obstacles():
    cfg = dict(resolution=64, num_frames=6, num_balls=[3, 6], radius=[0.05, 0.1], depth_layers=2,
               obstacles=[1, 2], distinct_colors=True, with_masks=True, seed=21)
    ds, st = SyntheticPhysics(**cfg), settings_from_dataset(cfg)
    assert st.obstacle_color is not None and st.min_blob_fraction == 0.25
    hits = total = 0
    for i in range(6):
        it = ds[i]
        frames = ((it["video"].permute(1, 2, 3, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
        for t, objs in enumerate(detect_objects(frames, st)):
            m = it["masks"][t].numpy()
            visible = [k for k in range(1, it["meta"]["num_balls"] + 1) if (m == k).sum() >= 6]
            hits += len(objs) == len(visible)
            total += 1
            for o in objs:  # every detection sits on a ball of its colour, never on an obstacle
                k = m[min(int(o["y"]), 63), min(int(o["x"]), 63)]
                assert k == 0 or it["meta"]["physics"]["colors"][k - 1] == o["color"]
    assert hits / total >= 0.9, hits / total


def test_eval_horizons_checked():
    cfg = load_config(ROOT / "configs/experiments/long_horizon/evaluate_tiny.yaml", registry=INFER_ENGINE)
    assert horizons(cfg) == [8, 64]
    ev = INFER_ENGINE.get("evaluate_prediction").validate
    for bad in ("eval_horizons=[8,65]", "eval_horizons=[0]", "position_miss=0"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            ev(load_config(ROOT / "configs/experiments/long_horizon/evaluate_tiny.yaml", [bad], registry=INFER_ENGINE))


@pytest.mark.slow
def test_metrics_schema_and_seed_override(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main("infer", ["--cfg", "configs/tiny/evaluate.yaml", "log_dir", str(tmp_path), "dataset.seed=4321",
                          "eval_range=[0,1]", "num_sample_steps=1", "save_videos=0", "max_frames=8",
                          "eval_horizons=[2,4]", "backend.attention=sdpa"]) == 0
    out = tmp_path / "demo_eval_v1"
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["methods"]) == set(METHODS) == {"model", "tracker", "empty", "copy_last", "linear"}
    for method, scores in m["methods"].items():
        for key in ("psnr", "ssim", "position_error", "count_accuracy", "color_consistency"):
            assert len(scores[key]) == 4, (method, key)
    assert set(m["horizons"]) == {"2", "4"} and set(m["horizons"]["4"]) == set(METHODS)
    assert m["window"] == 8 and m["predicted_frames"] == 4
    assert m["methods"]["empty"]["count_accuracy"] == [0.0] * 4          # the truth has balls
    assert m["methods"]["tracker"]["position_error"][0] < 1.0            # sub-pixel one frame ahead
    assert "dataset:" in (out / "config.yaml").read_text() and "seed: 4321" in (out / "config.yaml").read_text()
    assert (out / "metrics.png").stat().st_size > 1000 and (out / "psnr_ssim.png").is_file()
    assert not list(out.glob(".*.tmp*"))                                 # atomic writes left no temp files
    # the seed override picks other videos
    truth = SyntheticPhysics(resolution=32, num_frames=12, num_balls=[1, 3], seed=4321)[0]["video"]
    assert m["per_video"][0]["input"] == "SyntheticPhysics[0]" and truth.shape[1] == 12


@pytest.mark.slow
def test_a_conditional_model_predicts_with_each_items_caption(tmp_path, monkeypatch, capsys):
    """cond_key: the item's caption reaches Predictor.predict (it used to predict with the null condition
    only); a cond_key for an unconditional model or for video-list inputs is a one-line config error."""
    import tools.inferences.evaluate_prediction as ep

    real = ep.Predictor
    seen = []

    class Conditional(real):  # the demo model, with a stand-in conditional embedder
        def __init__(self, cfg):
            super().__init__(cfg)
            self.embedder.num_tokens = 1

        def predict(self, context, seed, cond_value=None, num_frames=None, **kw):
            seen.append(cond_value)
            self.embedder.num_tokens = 0  # the demo weights are unconditional: predict as they were trained
            try:
                return real.predict(self, context, seed, None, num_frames, **kw)
            finally:
                self.embedder.num_tokens = 1

    monkeypatch.chdir(ROOT)
    args = ["--cfg", "configs/tiny/evaluate.yaml", "log_dir", str(tmp_path), "eval_range=[0,2]", "num_sample_steps=1",
            "save_videos=0", "max_frames=6", "backend.attention=sdpa"]
    assert main("infer", args + ["cond_key=caption"]) == 2  # the demo model is unconditional
    assert "cond_key='caption' but the model is unconditional" in capsys.readouterr().err
    monkeypatch.setattr(ep, "Predictor", Conditional)
    assert main("infer", args + ["cond_key=caption"]) == 0
    ds = SyntheticPhysics(resolution=32, num_frames=12, num_balls=[1, 3], seed=777)
    assert seen == [ds[0]["caption"], ds[1]["caption"]]
    assert main("infer", args + ["cond_key=caption", "test_list_path=data/demo/test_list.txt"]) == 2
    assert "video lines carry no condition" in capsys.readouterr().err
