"""predict_next_clip over test lists (bad lines recorded, re-runs skip), class CFG, strict loading,
and the evaluation's baselines against a hand computation."""
import json
import math
import pathlib

import pytest
import torch

from tools.inferences.evaluate_prediction import baselines, score
from utils.checkpoint import CheckpointError, save_weights
from utils.cli import main
from utils.config import load_config
from utils.metrics import psnr_per_frame, ssim_per_frame
from utils.registry import INFER_ENGINE, MODEL

MODEL_CFG = {"type": "NextClipTransformer", "preset": "tiny", "in_channels": 3, "patch_size": 4, "rope": "3d"}


def tiny_weights(path, **extra):
    torch.manual_seed(0)
    m = MODEL.build(dict(MODEL_CFG, **extra))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_weights(path, m.state_dict())
    return path


def write_cfg(tmp_path, lst, ckpt, kind="video", extra=""):
    cfg = tmp_path / "predict.yaml"
    cfg.write_text(f"""
TASK_TYPE: predict_next_clip
backend: {{type: cpu, precision: fp32, attention: sdpa}}
model: {json.dumps(MODEL_CFG)}
diffusion: {{type: RectifiedFlow}}
log_dir: {tmp_path / 'out'}
test_list_path: {lst}
test_list_kind: {kind}
test_model: {ckpt}
resolution: [16, 16]
context_frames: 2
max_frames: 6
clip_len: 2
window: 6
num_sample_steps: 2
progress: false
{extra}
""")
    return cfg


def results(out_dir):
    return [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines()]


def test_batch_goes_on_past_bad_items_and_rerun_skips(tmp_path, shared_data):
    ckpt = tiny_weights(tmp_path / "tiny.safetensors")
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join([
        "# a comment, then a blank line", "",
        f"{shared_data / 'videos/realshort.mp4'}|||a short real clip",
        "missing_video.mp4|||nothing here",
        f"{shared_data / 'broken_truncated.mp4'}|||corrupt",
        f"{shared_data / 'empty.mp4'}|||empty file",
    ]) + "\n")
    cfg = write_cfg(tmp_path, lst, ckpt)
    assert main("infer", ["--cfg", str(cfg)]) == 1  # some items failed
    out = tmp_path / "out" / "list"
    recs = results(out)
    assert [r["status"] for r in recs] == ["ok", "error", "error", "error"]
    assert all(r["error"] for r in recs[1:]) and "missing_video.mp4" in recs[1]["error"]
    from utils.video_io import read_video

    frames, info = read_video(out / recs[0]["output"] if not pathlib.Path(recs[0]["output"]).is_absolute()
                              else recs[0]["output"])
    assert frames.shape == (6, 16, 16 * 2 + 2, 3)  # ground truth | prediction, exact size, 6 frames
    assert info.fps == pytest.approx(8)
    # same command again: the finished item is skipped (its original ok record, with its
    # timing, is kept), the bad ones are reported again
    assert main("infer", ["--cfg", str(cfg)]) == 1
    again = results(out)
    assert [r["status"] for r in again] == ["ok", "error", "error", "error"]
    assert again[0] == recs[0]


def test_class_conditional_cfg(tmp_path):
    from utils.registry import EMBEDDER

    emb_dim = 8
    ckpt = tiny_weights(tmp_path / "cls.safetensors", cond_dim=emb_dim)
    emb = EMBEDDER.build({"type": "ClassLabel", "num_classes": 3, "dim": emb_dim})
    save_weights(tmp_path / "cls.embedder.safetensors", emb.state_dict())
    lst = tmp_path / "classes.txt"
    lst.write_text("0|5\n2\n7\n")
    extra = (f"embedder: {{type: ClassLabel, num_classes: 3, dim: {emb_dim}}}\n"
             f"model: {json.dumps(dict(MODEL_CFG, cond_dim=emb_dim))}\ncontext_frames: 0\nguide_scale: 3.0\n")
    cfg_path = write_cfg(tmp_path, lst, ckpt, kind="class", extra=extra.replace("model:", "model:"))
    text = cfg_path.read_text().replace(f"model: {json.dumps(MODEL_CFG)}\n", "")
    cfg_path.write_text(text)
    assert main("infer", ["--cfg", str(cfg_path)]) == 1  # label 7 is unknown
    recs = results(tmp_path / "out" / "classes")
    assert [r["status"] for r in recs] == ["ok", "ok", "error"]
    assert "7" in recs[2]["error"]

    from tools.inferences.predictor import Predictor

    def gen(scale, label):
        cfg = load_config(cfg_path, [f"guide_scale={scale}"], registry=INFER_ENGINE)
        return Predictor(cfg).predict(None, seed=3, cond_value=label, num_frames=4)

    plain = gen(1.0, 1)
    (tmp_path / "cls.embedder.safetensors").unlink()  # the trained class table must be found
    with pytest.raises(CheckpointError, match="cls.embedder.safetensors does not exist"):
        gen(1.0, 1)
    save_weights(tmp_path / "cls.embedder.safetensors", emb.state_dict())
    assert torch.equal(plain, gen(1.0, 1))            # deterministic
    assert not torch.allclose(plain, gen(3.0, 1), atol=1e-4)  # guidance changes the output
    assert not torch.allclose(plain, gen(1.0, 2), atol=1e-4)  # the label matters


def test_strict_loading_reports_mismatch(tmp_path):
    ckpt = tiny_weights(tmp_path / "other.safetensors", cond_dim=4)  # extra keys
    lst = tmp_path / "list.txt"
    lst.write_text("x.mp4\n")
    cfg = write_cfg(tmp_path, lst, ckpt)
    from tools.inferences.predictor import Predictor

    with pytest.raises(CheckpointError, match=r"unexpected: .*cond_proj"):
        Predictor(load_config(cfg, registry=INFER_ENGINE))
    assert main("infer", ["--cfg", str(cfg)]) == 2


def test_baselines_match_hand_computation():
    # context: 3 frames of a 1x1 RGB "video" with values -1, -0.5, 0 (a ramp)
    ctx = torch.tensor([-1.0, -0.5, 0.0]).view(1, 3, 1, 1).expand(3, 3, 2, 2).clone()
    b = baselines(ctx, 3)
    assert torch.allclose(b["copy_last"], torch.zeros(3, 3, 2, 2))
    lin = b["linear"][0, :, 0, 0]
    assert torch.allclose(lin, torch.tensor([0.5, 1.0, 1.0]))  # 0 + k * 0.5, clipped at 1
    truth = torch.full((3, 3, 2, 2), 0.5)
    s = score(b["copy_last"], truth)
    # [0, 1] scale: copy-last is 0.5, truth 0.75 -> MSE 0.0625 -> PSNR = 10 log10(16)
    assert s["psnr"] == pytest.approx([10 * math.log10(16)] * 3, rel=1e-5)
    s_lin = score(b["linear"], truth)
    assert s_lin["psnr"][0] > 90  # exact at the first frame
    assert s_lin["psnr"][1] == pytest.approx(10 * math.log10(1 / 0.25 ** 2), rel=1e-5)


def test_ssim_matches_hand_computation_on_constant_frames():
    # constant frames: sigma = 0, so SSIM = (2 mu_x mu_y + c1) / (mu_x^2 + mu_y^2 + c1)
    x = torch.full((3, 1, 12, 12), 0.0)   # 0.5 on the [0, 1] scale
    y = torch.full((3, 1, 12, 12), 0.5)   # 0.75
    c1 = 0.01 ** 2
    want = (2 * 0.5 * 0.75 + c1) / (0.5 ** 2 + 0.75 ** 2 + c1)
    assert ssim_per_frame(x, y).item() == pytest.approx(want, rel=1e-5)
    assert ssim_per_frame(y, y).item() == pytest.approx(1.0, abs=1e-6)
    r = torch.rand(3, 2, 12, 12) * 2 - 1
    assert psnr_per_frame(r, r).min() > 90
