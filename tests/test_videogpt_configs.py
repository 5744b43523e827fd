"""The paper-scale configs resolve and their 3.8B-shape model builds on the meta device."""
import pathlib

import pytest
import torch

from utils.config import load_config
from utils.registry import ENGINE, INFER_ENGINE, MODEL

ROOT = pathlib.Path(__file__).resolve().parents[1]
STAGES = sorted((ROOT / "configs" / "videogpt").glob("stage*.yaml"))


def test_four_stages_exist():
    assert [p.stem for p in STAGES] == ["stage1", "stage2", "stage3", "stage4"]


@pytest.mark.parametrize("path", STAGES + [ROOT / "configs/videogpt/predict.yaml"], ids=lambda p: p.stem)
def test_paper_model_builds_on_meta(path):
    cfg = load_config(path, registry=INFER_ENGINE if path.stem == "predict" else ENGINE)
    with torch.device("meta"):
        model = MODEL.build(cfg.model, "model")
    n = sum(p.numel() for p in model.parameters())
    assert 3.5e9 < n < 3.9e9, n
    blk = model.blocks[0]
    assert len(model.blocks) == 32 and model.hidden == 3072 and model.heads == 32
    assert blk.mlp is not None and next(model.parameters()).device.type == "meta"


def test_stage_settings_follow_the_paper():
    s = {p.stem: load_config(p, registry=ENGINE) for p in STAGES}
    assert s["stage1"].clip_sampling.mode == "single_frame" and s["stage1"].dataset.num_frames == 16
    assert s["stage2"].dataset.num_frames == 48 and s["stage2"].dataset.stride == 4
    assert s["stage3"].dataset.stride == [4, 12] and s["stage4"].dataset.num_frames == 80
    for c in s.values():
        assert c.lr == 1e-4 and c.weight_decay == 0.1 and c.betas == [0.9, 0.95] and c.grad_clip == 1.0
        assert c.max_frames == c.dataset.num_frames
    p = load_config(ROOT / "configs/videogpt/predict.yaml", registry=INFER_ENGINE)
    assert (p.clip_len, p.window, p.num_sample_steps, p.history_guide_scale) == (24, 80, 50, 1.5)
