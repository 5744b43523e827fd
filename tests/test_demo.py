"""The shipped demo checkpoint: strict load, a short prediction, the evaluation engine end to end."""
import json
import pathlib

import pytest
import torch

from utils.checkpoint import checkpoint_config, load_weights
from utils.cli import main
from utils.config import load_config
from utils.registry import INFER_ENGINE, MODEL

ROOT = pathlib.Path(__file__).resolve().parents[1]
CKPT = ROOT / "data/demo/tiny_physics.safetensors"


def test_shipped_checkpoint_loads_strictly():
    assert CKPT.is_file(), "the demo checkpoint is part of the repository"
    assert CKPT.stat().st_size < 30 * 2 ** 20
    cfg = load_config(ROOT / "configs/tiny/predict.yaml", registry=INFER_ENGINE)
    model = MODEL.build(cfg.model, "model")
    report = load_weights(model, CKPT, strict=True)
    assert not any(report.values())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert "TASK_TYPE: train_next_clip" in checkpoint_config(CKPT)  # how it was trained travels with it


@pytest.mark.slow
def test_short_prediction_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    lst = tmp_path / "one.txt"
    lst.write_text((ROOT / "data/demo/test_list.txt").read_text().splitlines()[0].replace(
        "physics_", str(ROOT / "data/demo/physics_"), 1) + "\n")
    assert main("infer", ["--cfg", "configs/tiny/predict.yaml", "test_list_path", str(lst), "log_dir",
                          str(tmp_path), "num_sample_steps=2", "progress=false"]) == 0
    rec = json.loads((tmp_path / "one" / "results.jsonl").read_text().splitlines()[0])
    assert rec["status"] == "ok"
    assert list((tmp_path / "one").glob("*.mp4")) and list((tmp_path / "one").glob("*.png"))


@pytest.mark.slow
def test_evaluation_writes_metrics_and_plot(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main("infer", ["--cfg", "configs/tiny/evaluate.yaml", "log_dir", str(tmp_path),
                          "eval_range=[0,2]", "num_sample_steps=2", "save_videos=1"]) == 0
    out = tmp_path / "demo_eval_v1"
    m = json.loads((out / "metrics.json").read_text())
    assert m["num_videos"] == 2 and m["predicted_frames"] == 8 and not m["failures"]
    for method in ("model", "copy_last", "linear"):
        assert len(m["mean"][method]["psnr_per_frame"]) == 8
        assert 0 < m["mean"][method]["ssim_mean"] <= 1
    assert (out / "psnr_ssim.png").stat().st_size > 1000
    assert (out / "videos" / "0000.mp4").is_file()
