"""evaluate_prediction's generation metrics: every method scored with the functions evaluate_generation
uses (flicker, Physics-IQ-style scores), and the physical-variance bound of second takes."""
from __future__ import annotations

import json
import pathlib

import pytest

from tools.inferences import scoring
from utils.cli import main
from utils.config import ConfigError, load_config
from utils.registry import INFER_ENGINE

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARGS = ["--cfg", "configs/tiny/evaluate.yaml", "dataset.seed=7101", "eval_range=[0,2]", "num_sample_steps=1",
        "save_videos=0", "max_frames=12", "backend.attention=sdpa"]


@pytest.mark.slow  # two tiny rollouts and the plots: ~6 s
def test_every_method_gets_generation_metrics_and_a_share_of_the_variance(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    calls = []
    real = scoring.video_scores
    monkeypatch.setattr("tools.inferences.evaluate_prediction.generation_scores",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main("infer", ARGS + ["log_dir", str(tmp_path), "variance_perturbation=0.5", "motion.kernel=3"]) == 0
    m = json.loads((tmp_path / "demo_eval_v1" / "metrics.json").read_text())
    gen = m["generation"]
    methods = {"model", "tracker", "empty", "copy_last", "linear", "variance"}
    assert set(gen["methods"]) == methods and len(calls) == 2 * len(methods)  # the shared scorer, per video
    for name, scores in gen["methods"].items():
        assert set(scores) == {"flicker", "spatial_iou", "spatiotemporal_iou", "weighted_spatial_iou", "mse"}, name
        assert all(v["n"] == 2 for v in scores.values())
    piq = gen["physics_iq"]
    assert piq["variance"] == pytest.approx(100.0)
    assert piq["copy_last"] < piq["tracker"]  # the tracker moves the balls the right way, copy-last not at all
    assert gen["methods"]["copy_last"]["flicker"]["mean"] == 1.0  # a still frame
    assert (tmp_path / "demo_eval_v1" / "generation.png").stat().st_size > 1000
    assert len(gen["per_video"]) == 2 and gen["per_video"][0]["input"] == "SyntheticPhysics[0]"


def test_variance_perturbation_needs_synthetic_physics():
    ev = INFER_ENGINE.get("evaluate_prediction").validate
    cfg = load_config(ROOT / "configs/tiny/evaluate.yaml", ["variance_perturbation=0.5"], registry=INFER_ENGINE)
    ev(cfg)
    for bad, match in ((["variance_perturbation=-1"], "variance_perturbation"),
                       (["variance_perturbation=0.5", "test_list_path=data/demo/test_list.txt"], "SyntheticPhysics"),
                       (["motion.kernel=4"], "motion.kernel")):
        with pytest.raises(ConfigError, match=match):
            ev(load_config(ROOT / "configs/tiny/evaluate.yaml", bad, registry=INFER_ENGINE))
