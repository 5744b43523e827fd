"""The scripts (encode_latents, consolidate_checkpoint, export_weights) go through the guarded entry path:
a bad override, a missing config, a sharded checkpoint missing a rank's shard, a state.pt given to
export_weights and a full disk are each one line, exit 2. Sharded checkpoints missing a shard are
skipped by ``resume: auto``; ``test_model`` naming a sharded checkpoint says how to consolidate it."""
from __future__ import annotations

import errno
import json
import os
import pathlib

import pytest
import torch
from train_configs import tiny_train_yaml

from scripts.consolidate_checkpoint import main as consolidate
from scripts.encode_latents import main as encode
from scripts.export_weights import main as export
from utils.checkpoint import save_checkpoint, save_sharded_checkpoint
from utils.cli import main
from utils.registry import MODEL

MODEL_CFG = {"type": "NextClipTransformer", "preset": "tiny", "in_channels": 3, "patch_size": 4, "rope": "3d"}

TRAIN = tiny_train_yaml(batch_size=1, keep_last=5)


def one_line(capsys) -> list:
    return [line for line in capsys.readouterr().err.strip().splitlines() if line and not line.startswith("encode:")]


def sharded(ckpt_dir: pathlib.Path, step: int, config_yaml: str = "a: 1\n") -> pathlib.Path:
    """A sharded (DCP) checkpoint of the tiny model written by one process, like an FSDP run's."""
    torch.manual_seed(0)
    model = MODEL.build(MODEL_CFG)
    opt = torch.optim.AdamW(torch.nn.ModuleList([model]).parameters(), lr=1e-3)
    return save_sharded_checkpoint(ckpt_dir, step, model, None, None, opt, {}, config_yaml)


# ---------------------------------------------------------------------------- encode_latents
def test_encode_latents_bad_override_and_missing_config(tmp_path, capsys):
    cfg = tmp_path / "t.yaml"
    cfg.write_text(TRAIN)
    assert encode(["--cfg", str(cfg), "--out", str(tmp_path / "c"), "dataset.no_such_key=3"]) == 2
    err = one_line(capsys)
    assert len(err) == 1 and "dataset.no_such_key" in err[0], err
    assert encode(["--cfg", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "c")]) == 2
    err = one_line(capsys)
    assert len(err) == 1 and "missing.yaml" in err[0], err
    assert not (tmp_path / "c").exists()


# ---------------------------------------------------------------------------- consolidate_checkpoint
def test_consolidate_a_checkpoint_missing_a_rank_shard(tmp_path, capsys):
    stem = sharded(tmp_path, 4)
    shards = list((tmp_path / "step_00000004.dcp").glob("__*.distcp"))
    assert shards
    shards[0].unlink()
    assert consolidate([str(stem), str(tmp_path / "out.safetensors"), "--part", "model"]) == 2
    err = one_line(capsys)
    assert len(err) == 1 and shards[0].name in err[0] and "is missing" in err[0] and "rank 0" in err[0], err
    assert not (tmp_path / "out.safetensors").exists()


# ---------------------------------------------------------------------------- export_weights
def test_export_weights_refuses_a_state_file(tmp_path, capsys):
    save_checkpoint(tmp_path, 1, {"w": torch.zeros(2)}, {"w": torch.zeros(2)}, {}, "a: 1\n")
    assert export([str(tmp_path / "step_00000001.state.pt"), str(tmp_path / "o.safetensors")]) == 2
    err = one_line(capsys)
    assert len(err) == 1 and "the training state" in err[0] and "step_00000001.ema.safetensors" in err[0], err


def test_export_weights_full_disk_is_one_line(tmp_path, capsys, monkeypatch):
    import safetensors

    import utils.checkpoint as ck

    save_checkpoint(tmp_path, 1, {"w": torch.zeros(2)}, None, {}, "a: 1\n")

    def full(*a, **k):  # what the safetensors writer raises on ENOSPC
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(ck, "save_file", full)
    dst = tmp_path / "o.safetensors"
    assert export([str(tmp_path / "step_00000001.safetensors"), str(dst)]) == 2
    err = one_line(capsys)
    assert len(err) == 1 and os.strerror(errno.ENOSPC) in err[0] and str(dst) in err[0], err
    assert not dst.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------------------- resume / test_model
def test_resume_auto_falls_back_past_a_sharded_checkpoint_missing_a_shard(tmp_path):
    cfg = tmp_path / "t.yaml"
    cfg.write_text(TRAIN)
    assert main("train", ["--cfg", str(cfg), "log_dir", str(tmp_path)]) == 0
    ck = tmp_path / "tiny" / "checkpoints"
    config_yaml = (tmp_path / "tiny" / "config.yaml").read_text()
    sharded(ck, 4, config_yaml)  # a newer sharded checkpoint of this run ...
    for shard in (ck / "step_00000004.dcp").glob("__*.distcp"):
        shard.unlink()  # ... whose shard files did not all arrive
    assert main("train", ["--cfg", str(cfg), "log_dir", str(tmp_path), "num_steps=4"]) == 0
    log = (tmp_path / "tiny" / "log.txt").read_text()
    assert "skipping unreadable checkpoint step_00000004" in log and "is missing" in log
    assert "at step 2" in log
    steps = [json.loads(line)["step"] for line in (tmp_path / "tiny" / "scalars.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


@pytest.mark.parametrize("name", ["step_00000004", "step_00000004.dcp", "step_00000004.ema.safetensors",
                                  "step_00000004.state.pt"])
def test_test_model_naming_a_sharded_checkpoint_says_how_to_consolidate(tmp_path, capsys, name):
    sharded(tmp_path / "ck", 4)
    lst = tmp_path / "list.txt"
    lst.write_text("balls|1\n")
    cfg = tmp_path / "p.yaml"
    cfg.write_text(f"TASK_TYPE: predict_next_clip\nmodel: {json.dumps(MODEL_CFG)}\ntest_list_path: {lst}\n"
                   f"test_list_kind: text\nresolution: [16, 16]\n")
    assert main("infer", ["--cfg", str(cfg), f"test_model={tmp_path / 'ck' / name}", "--dry-run"]) == 2
    err = one_line(capsys)
    assert len(err) == 1 and "sharded (FSDP) checkpoint" in err[0], err
    assert f"python -m scripts.consolidate_checkpoint {tmp_path / 'ck' / 'step_00000004'} " in err[0]
