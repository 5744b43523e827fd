"""LoRA under torchrun: 2-process DDP equals one process; 2-process FSDP trains, checkpoints (sharded) and
resumes exactly."""
from __future__ import annotations

import json
import pathlib

import pytest
import torch
from ports import torchrun_train
from safetensors.torch import load_file
from test_lora import train_yaml
from train_configs import cpu

from utils.checkpoint import save_weights
from utils.cli import main
from utils.registry import MODEL

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

def _losses(run):
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "scalars.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora_dist")
    torch.manual_seed(0)
    model = MODEL.build({"type": "NextClipTransformer", "preset": "tiny", "in_channels": 3, "patch_size": 4,
                         "rope": "3d"}, "model")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_weights(tmp / "base.safetensors", model.state_dict())
    cfg = tmp / "lora.yaml"
    cfg.write_text(train_yaml(tmp / "base.safetensors", backend=cpu(parallel="auto", meta_init=False)))
    assert main("train", ["--cfg", str(cfg), "log_dir", str(tmp / "single")]) == 0
    return tmp, cfg, _losses(tmp / "single" / "lora")


def test_ddp_lora_equals_one_process(single):
    tmp, cfg, ref = single
    torchrun_train(cfg, tmp / "ddp", "backend.parallel=ddp")
    got = _losses(tmp / "ddp" / "lora")
    assert sorted(got) == sorted(ref)
    for s in ref:
        assert got[s] == pytest.approx(ref[s], rel=1e-4, abs=1e-6), (s, got[s], ref[s])
    a = load_file(str(tmp / "single" / "lora" / "checkpoints" / "step_00000004.ema.safetensors"))
    b = load_file(str(tmp / "ddp" / "lora" / "checkpoints" / "step_00000004.ema.safetensors"))
    assert a.keys() == b.keys() and all(".lora_" in k or k.startswith("out.") for k in a)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_fsdp_lora_trains_and_resumes(single):
    tmp, cfg, ref = single
    torchrun_train(cfg, tmp / "fsdp", "backend.parallel=fsdp", "num_steps=2")
    assert (tmp / "fsdp" / "lora" / "checkpoints" / "step_00000002.dcp").is_dir()
    torchrun_train(cfg, tmp / "fsdp", "backend.parallel=fsdp")  # resume: auto from the sharded step 2
    got = _losses(tmp / "fsdp" / "lora")
    assert sorted(got) == [1, 2, 3, 4]
    for s in ref:
        assert got[s] == pytest.approx(ref[s], rel=1e-4, abs=1e-6), (s, got[s], ref[s])
