"""The scene analyser (tools/inferences/scene.py) on ground-truth SyntheticPhysics videos and
known renders, and the evaluate_condition engine end to end on a tiny random-weight model."""
import json
import pathlib

import numpy as np
import pytest
import torch

from tools.datasets.synthetic_physics import COLOR_NAMES, PALETTE, SyntheticPhysics
from tools.inferences.scene import analyse_video, compare, settings_from_dataset
from utils.cli import main
from utils.video_io import to_uint8

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: the demo conditional configs' dataset (configs/experiments/conditioning/train_class.yaml) with a seed no config uses
DATASET = dict(type="SyntheticPhysics", resolution=32, num_frames=8, num_balls=[1, 3], gravity=0.006,
               gravity_dirs=["none", "down", "up", "left", "right"],
               speeds={"slow": [0.01, 0.025], "fast": [0.04, 0.07]}, distinct_colors=True, seed=9001, length=150)


def _kwargs(cfg):
    return {k: v for k, v in cfg.items() if k != "type"}


@pytest.mark.slow
def test_analyser_reads_ground_truth_videos():
    ds = SyntheticPhysics(**_kwargs(DATASET))
    settings = settings_from_dataset(DATASET)
    hits = {}
    for i in range(len(ds)):
        item = ds[i]
        found = analyse_video(to_uint8(item["video"]), settings).attributes()
        for attr, ok in compare(found, item["meta"]["attributes"]).items():
            hits.setdefault(attr, []).append(ok)
    acc = {a: float(np.mean(v)) for a, v in hits.items()}
    assert set(acc) == {"num_balls", "colors", "gravity", "speed"}
    assert all(v >= 0.98 for v in acc.values()), acc
    # every class occurs, so the accuracy is not carried by one easy class
    attrs = [ds[i]["meta"]["attributes"] for i in range(len(ds))]
    assert {a["gravity"] for a in attrs} == set(DATASET["gravity_dirs"])
    assert {a["speed"] for a in attrs} == {"slow", "fast"}


def _render(pos, radii, colors, res=32):
    """Known centroids (T, n, 2) -> uint8 frames with the dataset's renderer."""
    ds = SyntheticPhysics(resolution=res, num_frames=pos.shape[0])
    img = ds.render(np.asarray(pos, np.float64), np.asarray(radii, np.float64),
                    np.asarray([PALETTE[COLOR_NAMES.index(c)] for c in colors], np.float32))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _settings(**extra):
    return settings_from_dataset(dict(DATASET, **extra))


def test_analyser_on_known_renders():
    t = np.arange(8, dtype=np.float64)[:, None]
    # red moves right, blue down, both at 1.6 px/frame (fast); no acceleration
    red = np.concatenate([8 + 1.6 * t, np.full_like(t, 8)], 1)
    blue = np.concatenate([np.full_like(t, 24), 12 + 1.6 * t], 1)
    a = analyse_video(_render(np.stack([red, blue], 1), [3.5, 3.0], ["red", "blue"]), _settings())
    assert a.attributes() == {"num_balls": 2, "colors": ["red", "blue"], "gravity": "none", "speed": "fast"}
    assert np.allclose(a.tracks[0], red, atol=0.05) and np.allclose(a.tracks[1], blue, atol=0.05)
    # one slow ball accelerating to the left with the dataset's gravity (0.006 * 32 px/frame^2)
    g = 0.006 * 32
    x = 20 + 0.4 * t - 0.5 * g * t ** 2
    a = analyse_video(_render(np.concatenate([x, np.full_like(t, 16)], 1)[:, None], [3.0], ["green"]), _settings())
    assert (a.num_balls, a.colors, a.gravity, a.speed) == (1, ["green"], "left", "slow")
    assert a.accel[0] == pytest.approx(-g, abs=0.02)
    # falling down, bouncing off the floor at frame 4: the bounce is not taken for gravity "up"
    y = np.array([18.0, 20.5, 23.2, 26.1, 27.9, 25.3, 22.9, 20.7])[:, None]
    a = analyse_video(_render(np.concatenate([np.full_like(y, 10), y], 1)[:, None], [3.5], ["white"]), _settings())
    assert a.gravity == "down"
    # empty or washed-out frames (an untrained model's grey): nothing found, nothing crashes
    for value in ([16, 16, 24], [140, 140, 136], [250, 250, 250]):
        flat = np.broadcast_to(np.array(value, np.uint8), (8, 32, 32, 3)).copy()
        assert analyse_video(flat, _settings()).attributes() == {"num_balls": 0, "colors": [], "gravity": "none",
                                                                 "speed": "slow"}, value


def test_two_balls_of_one_colour_crossing_count_as_two():
    t = np.arange(8, dtype=np.float64)[:, None]
    one = np.concatenate([6 + 3 * t, np.full_like(t, 14)], 1)    # they overlap around frame 3-4
    two = np.concatenate([27 - 3 * t, np.full_like(t, 17)], 1)
    a = analyse_video(_render(np.stack([one, two], 1), [3.0, 3.0], ["cyan", "cyan"]), _settings())
    assert a.num_balls == 2 and a.colors == ["cyan"]


def test_compare_and_settings():
    assert compare({"num_balls": 2, "colors": ["blue", "red"], "gravity": "up", "speed": None},
                   {"num_balls": 2, "colors": ["red", "blue"], "gravity": "down", "speed": None}) == \
        {"num_balls": True, "colors": True, "gravity": False}  # speed: the truth has none
    s = _settings(colors=[[255, 0, 0], [0, 0, 255]])
    assert s.color_names == ["rgb(255, 0, 0)", "rgb(0, 0, 255)"]  # the dataset's names of custom colours
    assert _settings().gravity == 0.006 and _settings().color_names == COLOR_NAMES
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        analyse_video(np.zeros((32, 32, 3), np.uint8), _settings())


# ----------------------------------------------------------------------------- the engine
EMB_DIM = 16


def _tiny_conditional_weights(tmp_path):
    from utils.checkpoint import embedder_weights_for, save_weights
    from utils.registry import EMBEDDER, MODEL

    torch.manual_seed(0)
    emb = EMBEDDER.build({"type": "ClassLabel", "num_classes": 15, "dim": EMB_DIM})
    model = MODEL.build({"type": "NextClipTransformer", "preset": "tiny", "in_channels": 3, "patch_size": 8,
                         "cond_dim": EMB_DIM, "pooled_cond": True})  # as experiments/conditioning/evaluate_class
    path = tmp_path / "cls.safetensors"
    save_weights(path, model.state_dict())
    save_weights(embedder_weights_for(path), emb.state_dict())
    return path


def _cfg(tmp_path, extra=""):
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"""_BASE: {ROOT / 'configs/experiments/conditioning/evaluate_class.yaml'}
backend: {{type: cpu, precision: fp32, attention: sdpa}}
model: {{preset: tiny}}
embedder: {{dim: {EMB_DIM}}}
test_model: {_tiny_conditional_weights(tmp_path)}
log_dir: {tmp_path / 'out'}
eval_range: [0, 3]
guide_scales: [1, 2]
num_sample_steps: 1
save_videos: 1
{extra}""")
    return cfg


@pytest.mark.slow
def test_evaluate_condition_end_to_end(tmp_path):
    assert main("infer", ["--cfg", str(_cfg(tmp_path))]) == 0
    out = tmp_path / "out" / "demo_condition_class"
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["methods"]) == {"guide_1", "guide_2", "unconditional", "ground_truth"}
    for rec in m["methods"].values():
        assert rec["num_videos"] == 3
        assert set(rec["accuracy"]) == {"num_balls", "colors", "gravity", "speed"}
        assert all(0 <= v <= 1 for v in rec["accuracy"].values())
        assert rec["conditioned"] == ["num_balls", "gravity"]  # a scene label says count and gravity
        assert rec["not_conditioned"] == ["colors", "speed"]
    assert all(v == 1.0 for v in m["methods"]["ground_truth"]["accuracy"].values())
    assert m["settings"]["guide_scales"] == [1.0, 2.0] and m["settings"]["cond_key"] == "label"
    assert m["num_items"] == 3 and m["failures"] == [] and m["seconds"] > 0
    assert m["per_item"][0]["condition"] == SyntheticPhysics(**_kwargs(dict(DATASET, seed=4242, label_mode="scene",
                                                                         length=3)))[0]["label"]
    assert (out / "accuracy_vs_guide.png").stat().st_size > 0
    assert (out / "videos" / "0000.mp4").is_file() and (out / "videos" / "0000.png").is_file()
    assert not (out / "videos" / "0001.mp4").exists()  # save_videos: 1


@pytest.mark.slow
def test_evaluate_condition_goes_on_past_a_bad_item(tmp_path, monkeypatch):
    from tools.inferences.predictor import Predictor

    real = Predictor.predict

    def flaky(self, context, seed, cond_value=None, num_frames=None, **kw):
        if seed == self.cfg.seed + 1:
            raise RuntimeError("simulated failure")
        return real(self, context, seed, cond_value, num_frames, **kw)

    monkeypatch.setattr(Predictor, "predict", flaky)
    assert main("infer", ["--cfg", str(_cfg(tmp_path)), "save_videos=0"]) == 1
    m = json.loads((tmp_path / "out" / "demo_condition_class" / "metrics.json").read_text())
    assert m["num_items"] == 2 and [f["index"] for f in m["failures"]] == [1]
    assert "simulated failure" in m["failures"][0]["error"]


@pytest.mark.parametrize("override, words", [
    ("cond_key=colour", "cond_key='colour'"),
    ("context_frames=2", "context_frames=2 must be 0"),
    ("guide_scales=[]", "guide_scales=[]"),
    ("guide_scales=[1,1]", "distinct positive"),
    ("dataset.label_mode=null", "gives no labels"),
    ("eval_range=[5,2]", "eval_range"),
])
def test_evaluate_condition_config_errors(tmp_path, capsys, override, words):
    assert main("infer", ["--cfg", str(_cfg(tmp_path)), "--dry-run", override]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_analyser_reads_v2_ground_truth_with_gravity_strength_range():
    """v2 scenes (any-angle gravity of a strength range, 1-6 balls, 2 depth layers, obstacles): the
    analyser takes the expected strength from gravity_strength (it read every video as "none")."""
    cfg = dict(type="SyntheticPhysics", resolution=64, num_frames=16, num_balls=[1, 6], radius=[0.05, 0.1],
               gravity_angle=[0, 360], gravity_strength=[0.002, 0.004], restitution=[0.8, 1.0],
               friction=[0.0, 0.01], density=[0.5, 2.0], depth_layers=2, obstacles=[0, 2],
               distinct_colors=True, seed=4343, length=24)
    assert settings_from_dataset(cfg).gravity == 0.002
    assert settings_from_dataset(dict(cfg, gravity_strength=[0.0, 0.004])).gravity == 0.001
    ds, settings = SyntheticPhysics(**_kwargs(cfg)), settings_from_dataset(cfg)
    hits = {}
    for i in range(len(ds)):
        item = ds[i]
        for attr, ok in compare(analyse_video(to_uint8(item["video"]), settings).attributes(),
                                item["meta"]["attributes"]).items():
            hits.setdefault(attr, []).append(ok)
    acc = {a: float(np.mean(v)) for a, v in hits.items()}
    assert acc["num_balls"] >= 0.95 and acc["colors"] >= 0.95 and acc["gravity"] >= 0.95, acc


def test_condition_signal_bench_swaps_only_the_named_attribute():
    """benchmarks/bench_condition_signal.py --swap: each caption keeps its own attributes but one,
    taken from the next item that differs in it; an attribute all items share is refused."""
    from benchmarks.bench_condition_signal import swapped_captions
    from tools.datasets.synthetic_physics import caption

    attrs = [{"num_balls": 2, "colors": ["red", "blue"], "gravity": "down", "speed": "fast"},
             {"num_balls": 1, "colors": ["green"], "gravity": "down", "speed": "slow"},
             {"num_balls": 3, "colors": ["red", "cyan", "white"], "gravity": "left", "speed": "slow"}]
    out = swapped_captions(attrs, "gravity")
    assert out == [caption({**attrs[0], "gravity": "left"}), caption({**attrs[1], "gravity": "left"}),
                   caption({**attrs[2], "gravity": "down"})]
    assert out[0] == "two balls, red and blue, falling to the left, moving fast"
    assert swapped_captions(attrs, "speed")[1] == caption({**attrs[1], "speed": "fast"})
    with pytest.raises(ValueError, match="every item has the same gravity='up'"):
        swapped_captions([{**a, "gravity": "up"} for a in attrs], "gravity")
