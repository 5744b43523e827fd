"""The training engine: loss falls, exact resume, checkpoint round trip, 2-process DDP."""
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch
from ports import free_port
from train_configs import physics, tiny_train_yaml

from utils.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]



def write_cfg(tmp_path, name="tiny.yaml", length=64, batch=2, steps=6, save=3, lr=1e-3):
    p = tmp_path / name
    p.write_text(tiny_train_yaml(dataset=physics(length=length), clip_sampling={"mode": "random", "min_clips": 2},
                                 batch_size=batch, num_steps=steps, lr=lr, warmup_steps=2, lr_schedule="constant",
                                 save_ckp_interval=save, use_ema=True, ema_decay=0.9))
    return p


def losses(run_dir):
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "scalars.jsonl").read_text().splitlines())}


@pytest.mark.slow
def test_exact_resume_and_checkpoint_round_trip(tmp_path):
    cfg = write_cfg(tmp_path)
    assert main("train", ["--cfg", str(cfg), "log_dir", str(tmp_path / "full")]) == 0
    full = losses(tmp_path / "full" / "tiny")
    # interrupted run: stop at step 3, then resume (auto) to 6
    assert main("train", ["--cfg", str(cfg), "log_dir", str(tmp_path / "part"), "num_steps=3"]) == 0
    assert main("train", ["--cfg", str(cfg), "log_dir", str(tmp_path / "part")]) == 0
    part = losses(tmp_path / "part" / "tiny")
    assert sorted(full) == list(range(1, 7)) and sorted(part) == list(range(1, 7))
    for s in range(4, 7):
        assert part[s] == pytest.approx(full[s], rel=1e-5, abs=1e-7), (s, part[s], full[s])
    # checkpoint round trip: weights load strictly into a fresh model and match
    from safetensors.torch import load_file

    from utils.checkpoint import checkpoint_config, load_weights
    from utils.registry import MODEL

    ck = tmp_path / "full" / "tiny" / "checkpoints" / "step_00000006.safetensors"
    model = MODEL.build({"type": "NextClipTransformer", "preset": "tiny", "in_channels": 3, "patch_size": 4,
                         "rope": "3d"})
    report = load_weights(model, ck, strict=True)
    assert not any(report.values())
    saved = load_file(str(ck))
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k])
    assert "TASK_TYPE: train_next_clip" in checkpoint_config(ck)
    assert (tmp_path / "full" / "tiny" / "config.yaml").is_file()
    assert (tmp_path / "full" / "tiny" / "checkpoints" / "step_00000006.ema.safetensors").is_file()


@pytest.mark.slow
def test_loss_falls_on_tiny_overfit(tmp_path):
    cfg = write_cfg(tmp_path, length=4, batch=4, steps=60, save=1000, lr=3e-3)
    assert main("train", ["--cfg", str(cfg), "log_dir", str(tmp_path)]) == 0
    ls = losses(tmp_path / "tiny")
    first = sum(ls[s] for s in range(1, 11)) / 10
    last = sum(ls[s] for s in range(51, 61)) / 10
    assert last < 0.5 * first, (first, last)


@pytest.mark.slow
def test_ddp_two_processes_match_single_process(tmp_path):
    cfg = write_cfg(tmp_path, length=32, batch=2, steps=4, save=1000)
    assert main("train", ["--cfg", str(cfg), "log_dir", str(tmp_path / "single")]) == 0
    single = losses(tmp_path / "single" / "tiny")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--master_port", free_port(), str(ROOT / "train_net.py"), "--cfg", str(cfg),
                        "log_dir", str(tmp_path / "ddp"), "batch_size", "1"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ddp = losses(tmp_path / "ddp" / "tiny")
    assert sorted(ddp) == sorted(single)
    for s in single:
        assert ddp[s] == pytest.approx(single[s], rel=1e-4, abs=1e-6), (s, ddp[s], single[s])


@pytest.mark.slow
def test_train_from_latent_cache_and_refuse_a_mismatched_one(tmp_path, capsys):
    from scripts.encode_latents import main as encode

    cfg = write_cfg(tmp_path, length=8, batch=2, steps=2, save=1000)
    cache = tmp_path / "cache"
    assert encode(["--cfg", str(cfg), "--out", str(cache)]) == 0
    assert (cache / "manifest.json").is_file()
    assert main("train", ["--cfg", str(cfg), "log_dir", str(tmp_path / "run"), f"latent_cache={cache}"]) == 0
    assert sorted(losses(tmp_path / "run" / "tiny")) == [1, 2]
    # the experiment's preprocessing changed since the cache was made -> refused, clearly
    assert main("train", ["--cfg", str(cfg), "log_dir", str(tmp_path / "run2"), f"latent_cache={cache}",
                          "dataset.resolution=8"]) == 2
    err = capsys.readouterr().err
    assert "different autoencoder/preprocessing" in err and "resolution" in err


@pytest.mark.slow
def test_custom_component_example_trains(tmp_path):
    """configs/examples/custom_dataset.yaml registers MovingSquares from its own file."""
    assert main("train", ["--cfg", str(ROOT / "configs/examples/custom_dataset.yaml"), "log_dir", str(tmp_path),
                          "num_steps=3", "progress=false", "visual=[]"]) == 0
    run = tmp_path / "custom_squares"
    assert list(losses(run)) == [3]  # logged at the last step
    assert "MovingSquares" in (run / "config.yaml").read_text()
