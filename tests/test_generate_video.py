"""INFER_ENGINE generate_video: `inference.py --cfg configs/modelscope/t2v_infer.yaml test_model=<fixture folder>`
writes one mp4 per prompt with the folder's UNet and autoencoder; results.jsonl; a re-run skips what is done."""
from __future__ import annotations

import hashlib
import json
import pathlib

import pytest
import torch
from torch import nn

from utils.cli import main
from utils.registry import EMBEDDER

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURE = ROOT.parent / "shared" / "fixtures" / "modelscope_t2v_tiny"
CONFIG = ROOT / "configs" / "modelscope" / "t2v_infer.yaml"


class TinyText77(nn.Module):
    """A stand-in text encoder with OpenCLIPText's output layout: 77 tokens of width 1024 per caption."""

    def __init__(self, dim: int = 1024, num_tokens: int = 77):
        super().__init__()
        self.dim, self.num_tokens = dim, num_tokens
        self.calls: list[str] = []

    def forward(self, values):
        self.calls.extend(values)
        rows = []
        for v in values:
            seed = int(hashlib.sha256((v or "").encode()).hexdigest()[:8], 16)
            rows.append(torch.randn(self.num_tokens, self.dim, generator=torch.Generator().manual_seed(seed)))
        return torch.stack(rows), torch.ones(len(values), self.num_tokens, dtype=torch.bool)

    def null(self, batch_size):
        return self([""] * batch_size)


if "TinyText77" not in EMBEDDER:
    EMBEDDER.register_class()(TinyText77)


def run(tmp_path, *extra):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red ball rolls\na blue cube falls|7\n")
    return main("infer", ["--cfg", str(CONFIG), f"test_model={FIXTURE}", "embedder={_delete_: true, type: TinyText77}",
                          f"test_list_path={prompts}", f"log_dir={tmp_path / 'out'}", "resolution=[16,16]",
                          "max_frames=4", "ddim_timesteps=2", "backend.type=cpu", "backend.precision=fp32",
                          "progress=false", *extra])


@pytest.mark.slow
def test_t2v_infer_yaml_writes_one_mp4_per_prompt_and_resumes(tmp_path):
    assert run(tmp_path) == 0
    out = tmp_path / "out" / "prompts"
    mp4s = sorted(out.glob("*.mp4"))
    assert len(mp4s) == 2 and all(p.stat().st_size > 0 for p in mp4s)
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in recs] == ["ok", "ok"] and {r["seed"] for r in recs} == {8888, 7}
    from utils.video_io import read_video

    frames, _ = read_video(str(mp4s[0]))
    assert frames.shape[0] == 4 and frames.shape[1:3] == (16, 16)
    before = [p.stat().st_mtime_ns for p in mp4s]
    assert run(tmp_path) == 0  # same model and settings: both items are skipped, nothing rewritten
    assert [p.stat().st_mtime_ns for p in sorted(out.glob("*.mp4"))] == before


@pytest.mark.slow
def test_generator_uses_the_negative_prompt_as_unconditional_context():
    from tools.inferences.generate_video import VideoGenerator
    from utils.config import load_config
    from utils.registry import INFER_ENGINE

    cfg = load_config(CONFIG, [f"test_model={FIXTURE}", "embedder={_delete_: true, type: TinyText77}",
                               "negative_prompt=blurry", "backend.type=cpu", "resolution=[16,16]", "max_frames=2"],
                      registry=INFER_ENGINE)
    gen = VideoGenerator(cfg)
    cond, uncond = gen.conditions_of("a cat")
    assert cond["y"].shape == (1, 77, 1024)
    assert torch.equal(uncond["y"], gen.text_tokens("blurry")) and not torch.equal(cond["y"], uncond["y"])
    assert gen.autoencoder.path == str(FIXTURE)  # auto_encoder.path null: the model folder's VQGAN_autoencoder.pth


@pytest.mark.slow
def test_wrong_embedder_width_is_one_config_error(tmp_path, capsys):
    assert run(tmp_path, "+embedder.dim=512") == 2
    err = capsys.readouterr().err
    assert "context_dim is 1024" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("bad, what", [("ddim_timesteps=0", "ddim_timesteps"),
                                       ("test_list_kind=video", "text or image")])
def test_bad_settings_fail_in_one_line(tmp_path, capsys, bad, what):
    assert run(tmp_path, bad) == 2
    assert what in capsys.readouterr().err

