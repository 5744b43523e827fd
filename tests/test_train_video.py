"""ENGINE train_video (configs/modelscope/t2v_train.yaml) on the fixture UNet: 4 steps, killed after step 3 and
resumed, ends with exactly the weights and losses of an uninterrupted run; the checkpoint is read back for
inference; the next-clip engine's loop is shared, not copied."""
from __future__ import annotations

import json
import pathlib

import pytest
import torch
from safetensors.torch import load_file

from tools.train import train_next_clip
from utils.cli import main
from utils.registry import EMBEDDER

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURE = ROOT.parent / "shared" / "fixtures" / "modelscope_t2v_tiny"
VIDEOS = ROOT.parent / "shared" / "data" / "videos" / "vid_list.txt"
CONFIG = ROOT / "configs" / "modelscope" / "t2v_train.yaml"


class TinyTrainText(torch.nn.Module):
    """Caption -> 77 tokens of width 1024, a fixed function of the caption (stands in for OpenCLIPText)."""

    def __init__(self):
        super().__init__()
        self.dim, self.num_tokens = 1024, 77

    def forward(self, values):
        rows = [torch.randn(77, 1024, generator=torch.Generator().manual_seed(len(v or ""))) for v in values]
        return torch.stack(rows), torch.ones(len(values), 77, dtype=torch.bool)

    def null(self, n):
        return self([""] * n)


if "TinyTrainText" not in EMBEDDER:
    EMBEDDER.register_class()(TinyTrainText)


def train(log_dir, *extra):
    return main("train", ["--cfg", str(CONFIG), f"pretrain.path={FIXTURE}", f"log_dir={log_dir}",
                          "embedder={_delete_: true, type: TinyTrainText}", f"dataset.list_file={VIDEOS}",
                          "dataset.num_frames=4", "dataset.resolution=16", "max_frames=4", "num_steps=4",
                          "save_ckp_interval=2", "warmup_steps=1", "log_interval=1", "log_mfu=false", "lr=1e-3",
                          "ema_decay=0.9",
                          "backend.type=cpu", "backend.precision=fp32", "progress=false", *extra])


def losses(run_dir):
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "scalars.jsonl").read_text().splitlines())}


@pytest.mark.slow
def test_four_steps_resume_exactly_after_a_kill(tmp_path, monkeypatch):
    assert train(tmp_path / "full") == 0
    full_dir = tmp_path / "full" / "modelscope_t2v"

    class Killed(Exception):
        pass

    def kill_after_step_3(run, done, batch):  # step 3 trained, its checkpoint (every 2) not written
        if done == 3:
            raise Killed()

    monkeypatch.setattr(train_next_clip, "_visualise", kill_after_step_3)
    with pytest.raises(Killed):
        train(tmp_path / "part")
    monkeypatch.undo()
    part_dir = tmp_path / "part" / "modelscope_t2v"
    assert sorted(p.name for p in (part_dir / "checkpoints").glob("*.safetensors"))[-1].startswith("step_00000002")
    assert train(tmp_path / "part") == 0  # resume=auto: from step 2
    a, b = losses(full_dir), losses(part_dir)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4] and all(a[s] == b[s] for s in a), (a, b)
    for name in ("step_00000004.safetensors", "step_00000004.ema.safetensors"):
        wa, wb = load_file(str(full_dir / "checkpoints" / name)), load_file(str(part_dir / "checkpoints" / name))
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name
    start = torch.load(FIXTURE / "text2video_pytorch_model.pth", weights_only=True)["out.2.weight"]
    assert not torch.equal(wa["unet.conv_out.weight"], start)  # it trained from the fixture's weights


@pytest.mark.slow
def test_checkpoint_is_read_back_by_generate_video(tmp_path):
    assert train(tmp_path / "run", "num_steps=2") == 0
    ck = tmp_path / "run" / "modelscope_t2v" / "checkpoints" / "step_00000002.ema.safetensors"
    from tools.inferences.generate_video import build_video_model
    from utils.config import load_config
    from utils.registry import INFER_ENGINE

    cfg = load_config(ROOT / "configs" / "modelscope" / "t2v_infer.yaml", [f"test_model={ck}"],
                      registry=INFER_ENGINE)
    model = build_video_model(cfg, cfg.test_model)  # shape from the run's stored config, weights strict
    assert model.config["dim"] == 32
    assert torch.equal(model.state_dict()["unet.conv_out.weight"], load_file(str(ck))["unet.conv_out.weight"])


def test_train_video_shares_the_next_clip_loop():
    from tools.train import train_video

    assert train_video._train.__code__.co_names.count("_train") == 1  # delegates to train_next_clip._train
    assert "clip_sampling" not in train_video.DEFAULTS and train_video.DEFAULTS["cond_key"] == "caption"
