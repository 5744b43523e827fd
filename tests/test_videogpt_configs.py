"""The paper-scale configs resolve and their 3.8B-shape model builds on the meta device."""
import pathlib

import pytest

from utils.config import load_config
from utils.registry import ENGINE, INFER_ENGINE, MODEL

ROOT = pathlib.Path(__file__).resolve().parents[1]
STAGES = sorted((ROOT / "configs" / "videogpt").glob("stage*.yaml"))


def test_four_stages_exist():
    assert [p.stem for p in STAGES] == ["stage1", "stage2", "stage3", "stage4"]


@pytest.mark.parametrize("path", STAGES + [ROOT / "configs/videogpt/predict.yaml"], ids=lambda p: p.stem)
def test_paper_model_builds_on_meta(path):
    """Every paper config runs the reference architecture (VideoGPT, 3.8B) built on the meta
    device and filled by the official-layout loader."""
    cfg = load_config(path, registry=INFER_ENGINE if path.stem == "predict" else ENGINE)
    assert cfg.model.type == "VideoGPT" and cfg.model.empty_weights and cfg.pretrain.type == "VideoGPTCheckpoint"
    model = MODEL.build(cfg.model, "model")
    n = sum(p.numel() for p in model.parameters())
    assert 3.5e9 < n < 3.9e9, n
    assert len(model.llm.layers) == 32 and model.hidden == 3072
    assert next(model.parameters()).device.type == "meta"


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


def test_stages_use_the_sdxl_vae_like_the_paper(tmp_path, monkeypatch):
    """SDXL-VAE latents (4 ch, 8x) in 2x2 patches: 176x320 -> 11x20 = 220 tokens per frame; the VAE
    path is the user's (a local dir / file / cached repo id) and a missing one fails at once, clearly."""
    from utils.registry import AUTO_ENCODER

    for p in STAGES + [ROOT / "configs/videogpt/predict.yaml"]:
        c = load_config(p, registry=INFER_ENGINE if p.stem == "predict" else ENGINE)
        ae = c.auto_encoder
        assert (ae.type, ae.variant, ae.path) == ("AutoencoderKL", "sdxl", "stabilityai/sdxl-vae")
        if p.stem != "predict":
            assert (c.model.in_channels, c.model.patch_size) == (4, 2)
            h, w = c.dataset.resolution
            assert (h // 16) * (w // 16) == 220
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    with pytest.raises(Exception, match="stabilityai/sdxl-vae.*never downloaded.*auto_encoder.path"):
        AUTO_ENCODER.build(dict(load_config(STAGES[0], registry=ENGINE).auto_encoder), "auto_encoder")
