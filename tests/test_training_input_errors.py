"""Training input errors are one line (exit 2), found at start when they can be: a video list with too
many bad items (BadDataError, also through DataLoader workers), a probe target the data does not
provide, and label lists with more labels than the probe's or the class embedder's num_classes."""
from __future__ import annotations

import pathlib

import pytest

from utils.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
VIDEOS = sorted((ROOT / "data" / "demo").glob("physics_4242_*.mp4"))

BASE = """
backend: {type: cpu, precision: fp32, attention: sdpa}
batch_size: 1
num_steps: 2
save_ckp_interval: 1000
viz_interval: 1000
progress: false
"""

NEXT_CLIP = """
TASK_TYPE: train_next_clip
name: run
model: {type: NextClipTransformer, preset: tiny, in_channels: 3, patch_size: 4, rope: 3d}
diffusion: {type: RectifiedFlow, prediction: x1}
max_frames: 8
"""

PROBE = """
TASK_TYPE: train_head
name: run
model: {type: LinearProbe, num_classes: 2, target: TARGET, backbone: {type: PixelFeatures, patch_size: 4}}
max_frames: 4
"""


def train(tmp_path, capsys, text, *overrides, workers=0):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text + BASE + f"num_workers: {workers}\n")
    code = main("train", ["--cfg", str(cfg), "log_dir", str(tmp_path / "runs"), *overrides])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line and not line.startswith("train")]
    return code, err


def write_list(tmp_path, lines) -> pathlib.Path:
    lst = tmp_path / "list.txt"
    lst.write_text("".join(line + "\n" for line in lines))
    return lst


@pytest.mark.parametrize("workers", [0, 1])
def test_too_many_bad_items_is_one_input_error_line(tmp_path, capsys, workers):
    assert VIDEOS, "data/demo/physics_4242_*.mp4 are missing (python -m scripts.make_demo_data)"
    lst = write_list(tmp_path, [str(VIDEOS[0])] + [str(tmp_path / f"missing{i}.mp4") for i in range(3)])
    text = NEXT_CLIP + f"dataset: {{type: VideoList, list_file: {lst}, num_frames: 8, resolution: 16, " \
                       f"max_bad_fraction: 0.1}}\n"
    code, err = train(tmp_path, capsys, text, workers=workers)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("input error: VideoList:") and "exceeds max_bad_fraction=0.1" in err[0], err
    assert "Traceback" not in err[0]


def test_probe_target_the_data_does_not_provide_is_found_at_start(tmp_path, capsys):
    text = PROBE.replace("TARGET", "colour") + \
        "dataset: {type: SyntheticPhysics, resolution: 16, num_frames: 4, length: 8, seed: 0}\n"
    code, err = train(tmp_path, capsys, text)
    assert code == 2 and len(err) == 1 and "'colour'" in err[0] and "model.target" in err[0], err
    assert not (tmp_path / "runs" / "run" / "scalars.jsonl").exists()  # no step was taken


def _label_list(tmp_path):
    return write_list(tmp_path, [f"{VIDEOS[i % len(VIDEOS)]}|||{name}" for i, name in
                                 enumerate(["cat", "dog", "owl", "cat", "dog", "owl"])])


def test_label_list_with_more_labels_than_the_probe_has_classes(tmp_path, capsys):
    lst = _label_list(tmp_path)
    text = PROBE.replace("TARGET", "label") + \
        f"dataset: {{type: LabelList, list_file: {lst}, num_frames: 4, resolution: 16}}\n"
    code, err = train(tmp_path, capsys, text)
    assert code == 2 and len(err) == 1, err
    assert "model.num_classes=2" in err[0] and "3 labels (cat, dog, owl)" in err[0] and "num_classes=3" in err[0]


def test_label_list_with_more_labels_than_the_class_embedder(tmp_path, capsys):
    lst = _label_list(tmp_path)
    text = NEXT_CLIP + "embedder: {type: ClassLabel, num_classes: 2, dim: 32}\ncond_key: label\n" + \
        f"dataset: {{type: LabelList, list_file: {lst}, num_frames: 8, resolution: 16}}\n"
    code, err = train(tmp_path, capsys, text)
    assert code == 2 and len(err) == 1, err
    assert "embedder.num_classes=2" in err[0] and "3 labels" in err[0], err
    assert not (tmp_path / "runs" / "run" / "scalars.jsonl").exists()
