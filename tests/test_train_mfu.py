"""The training log's MFU (tools/train/loop.StepLog with utils/flops.py): the FLOPs of the logged step at the
interval's pace, as a share of the matmul peak measured at the start of the run."""
import json
import types

import pytest

from tools.train import loop
from tools.train.loop import StepLog
from utils.cli import main

CFG = """
TASK_TYPE: train_next_clip
name: tiny
backend: {type: cpu, precision: fp32, attention: sdpa}
model: {type: NextClipTransformer, preset: tiny, in_channels: 3, patch_size: 4, rope: 3d}
diffusion: {type: RectifiedFlow, prediction: x1}
auto_encoder: {type: Identity}
dataset: {type: SyntheticPhysics, resolution: 16, num_frames: 8, length: 16, seed: 0}
max_frames: 8
clip_sampling: {mode: fixed, clip_len: 4}
batch_size: 2
num_steps: 2
save_ckp_interval: 100
viz_interval: 100
log_interval: 1
use_ema: false
progress: false
"""


def test_steplog_mfu_is_the_logged_steps_flops_at_the_intervals_pace(tmp_path, monkeypatch):
    cfg = types.SimpleNamespace(log_interval=2, num_steps=4, progress=False)
    log = StepLog(cfg, tmp_path, 0, 0, peak_gflops=100.0)
    log.t_last = 10.0
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(time=lambda: 14.0))  # two steps in 4 s: 0.5 steps/s
    assert not log.due(1) and log.due(2)
    log.step(1, lambda: {"loss": 1.0}, {})
    log.step(2, lambda: {"loss": 1.0}, {}, flops=400e9)  # 400 GFLOP at 0.5 steps/s = 200 GFLOP/s
    log.close()
    rec = json.loads((tmp_path / "scalars.jsonl").read_text().splitlines()[0])
    assert rec["steps_per_s"] == pytest.approx(0.5) and rec["model_tflops"] == pytest.approx(0.2)
    assert rec["mfu"] == pytest.approx(2.0)  # 200 GFLOP/s of a 100 GFLOP/s peak


@pytest.mark.slow
def test_training_logs_mfu_unless_switched_off(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(CFG)
    assert main("train", ["--cfg", str(cfg), "log_dir", str(tmp_path / "on")]) == 0
    recs = [json.loads(x) for x in (tmp_path / "on/tiny/scalars.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2]
    for r in recs:
        assert 0 < r["mfu"] < 1.5 and r["model_tflops"] > 0, r
    assert main("train", ["--cfg", str(cfg), "log_dir", str(tmp_path / "off"), "log_mfu=false"]) == 0
    recs = [json.loads(x) for x in (tmp_path / "off/tiny/scalars.jsonl").read_text().splitlines()]
    assert recs and not any("mfu" in r for r in recs)
    assert main("train", ["--cfg", str(cfg), "log_dir", str(tmp_path / "bad"), "log_mfu=2"]) == 2
