"""INFER_ENGINE evaluate_generation on videos the test writes: folders, test lists, a predict run's
folder (prediction-only videos through run_test_list's extra videos), FVD through a TorchScript
stand-in, and one-line errors for missing weights."""
from __future__ import annotations

import json
import os

import pytest
import torch

from tools.datasets.synthetic_physics import SyntheticPhysics
from utils.cli import main
from utils.metrics import copy_last_baseline
from utils.test_list import parse_test_list, run_test_list
from utils.video_io import to_uint8, write_video

SCENE = dict(resolution=48, num_frames=16, num_balls=[2, 3], radius=[0.08, 0.12], speed=[0.04, 0.06],
             restitution=[0.9, 1.0], seed=7101)
C = 4  # context frames


def _write(folder, videos):
    os.makedirs(folder, exist_ok=True)
    for i, v in enumerate(videos):
        write_video(os.path.join(folder, f"{i:03d}.mp4"), to_uint8(v), fps=8, quality=10)
    return str(folder)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Three scenes: references, second takes, and copy-last predictions from 4 context frames."""
    d = tmp_path_factory.mktemp("gen")
    ref = [SyntheticPhysics(**SCENE)[i]["video"] for i in range(3)]
    take = [SyntheticPhysics(**SCENE, perturbation=0.5, take=1)[i]["video"] for i in range(3)]
    copy = [torch.cat([v[:, :C], copy_last_baseline(v[:, :C], v.shape[1] - C)], 1) for v in ref]
    return {"dir": d, "reference": _write(d / "ref", ref), "takes": _write(d / "takes", take),
            "copy_last": _write(d / "copy", copy)}


def _run(tmp_path, *args) -> int:
    return main("infer", ["--cfg", "configs/demo/evaluate_generation.yaml", "log_dir", str(tmp_path), *args])


def _metrics(tmp_path, name="demo_generation"):
    return json.loads((tmp_path / name / "metrics.json").read_text())


@pytest.mark.slow  # two runs, two plots: ~5 s
def test_folders_with_references_and_second_takes(tmp_path, clips, monkeypatch):
    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))
    for method in ("copy_last", "takes"):
        assert _run(tmp_path, f"generated={clips[method]}", f"reference={clips['reference']}",
                    f"variance={clips['takes']}", f"context_frames={C}", f"name={method}") == 0
    copy, takes = _metrics(tmp_path, "copy_last"), _metrics(tmp_path, "takes")
    for m in (copy, takes):
        assert m["num_videos"] == 3 and not m["failures"] and m["context_frames"] == C
        assert set(m["aggregate"]) == {"flicker", "spatial_iou", "spatiotemporal_iou", "weighted_spatial_iou",
                                       "mse", "psnr", "ssim"}
        assert all(v["n"] == 3 for v in m["aggregate"].values())
        assert len(m["variance"]["per_video"]) == 3
        assert m["settings"]["generated"] and "fvd" not in m  # no i3d_path: no FVD
        assert (tmp_path / m["settings"]["name"] / "distributions.png").stat().st_size > 1000
    # scoring the second takes against themselves as the bound: exactly the bound
    assert takes["physics_iq"] == pytest.approx(100.0)
    # a copy of the last context frame: no motion after the context, far below the bound, no flicker
    # (but for the mp4's coding noise)
    assert copy["physics_iq"] < 50
    assert copy["aggregate"]["flicker"]["mean"] > 0.999 > takes["aggregate"]["flicker"]["mean"]
    assert copy["aggregate"]["spatiotemporal_iou"]["mean"] < takes["aggregate"]["spatiotemporal_iou"]["mean"]


def test_a_folder_alone_gets_flicker_only_and_a_test_list_works(tmp_path, clips, monkeypatch):
    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))
    assert _run(tmp_path, f"generated={clips['takes']}", "name=alone") == 0
    m = _metrics(tmp_path, "alone")
    assert m["metric_groups"] == ["flicker"] and set(m["aggregate"]) == {"flicker"}
    lst = clips["dir"] / "list.txt"
    lst.write_text("".join(f"takes/{i:03d}.mp4|||scene {i}\n" for i in range(3)))
    assert _run(tmp_path, f"generated={lst}", f"reference={clips['reference']}", "metrics=[psnr]",
                "name=listed") == 0
    m = _metrics(tmp_path, "listed")
    assert set(m["aggregate"]) == {"psnr"} and [v["prompt"] for v in m["per_video"]] == ["scene 0", "scene 1",
                                                                                          "scene 2"]


def test_a_predict_run_folder_is_scored_on_its_prediction_only_videos(tmp_path, clips, monkeypatch):
    """A run folder as predict_next_clip writes it with save_prediction: results.jsonl, config.yaml,
    side-by-side mp4s and <name>.prediction.mp4 (written by run_test_list's extra_videos)."""
    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))
    run = tmp_path / "run"
    lst = clips["dir"] / "inputs.txt"
    lst.write_text("".join(f"ref/{i:03d}.mp4|||scene {i}\n" for i in range(3)))
    items = parse_test_list(lst, kind="video")
    ref = [SyntheticPhysics(**SCENE)[i]["video"] for i in range(3)]

    def produce(item):
        pred = torch.cat([ref[item.index][:, :C], copy_last_baseline(ref[item.index][:, :C], 8)], 1)
        wide = to_uint8(torch.cat([ref[item.index][:, :12], pred], 3))  # "ground truth | prediction"
        return {"frames": wide, "extra_videos": {"prediction": to_uint8(pred)}}

    summary = run_test_list(items, str(run), produce, progress=False, extra_videos=("prediction",))
    assert summary["ok"] == 3 and sorted(p.name for p in run.glob("*.prediction.mp4")) == [
        "0000_scene_0.prediction.mp4", "0001_scene_1.prediction.mp4", "0002_scene_2.prediction.mp4"]
    (run / "config.yaml").write_text(f"test_list_kind: video\nside_by_side: true\ncontext_frames: {C}\n")
    assert _run(tmp_path, f"generated={run}", "name=from_run") == 0
    m = _metrics(tmp_path, "from_run")
    assert m["context_frames"] == C and m["num_videos"] == 3
    assert [v["generated"].endswith(".prediction.mp4") for v in m["per_video"]] == [True] * 3
    assert [v["prompt"] for v in m["per_video"]] == ["scene 0", "scene 1", "scene 2"]
    assert all(v["frames"] == 12 for v in m["per_video"])  # the 12 predicted frames, paired with the input's 16
    assert m["aggregate"]["flicker"]["mean"] > 0.999 and "spatiotemporal_iou" in m["aggregate"]
    # the same run without prediction-only files: one line saying how to make them
    for p in run.glob("*.prediction.mp4"):
        p.unlink()
    assert _run(tmp_path, f"generated={run}", "name=from_run2") == 2


class _Features(torch.nn.Module):
    def forward(self, x: torch.Tensor, rescale: bool = True, resize: bool = True,
                return_features: bool = False) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3, 4)), 10 * x.std(dim=2).mean(dim=(2, 3))], 1)  # colour, motion energy


def test_fvd_through_a_torchscript_stand_in_reports_n(tmp_path, clips, monkeypatch):
    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(_Features()).save(str(path))
    args = [f"reference={clips['reference']}", f"i3d_path={path}", "metrics=[fvd,flicker]"]
    assert _run(tmp_path, f"generated={clips['reference']}", *args, "name=same") == 0
    assert _run(tmp_path, f"generated={clips['copy_last']}", *args, "name=copy") == 0
    same, copy = _metrics(tmp_path, "same")["fvd"], _metrics(tmp_path, "copy")["fvd"]
    assert same["value"] == pytest.approx(0.0, abs=1e-6) and same["num_videos"] == same["num_reference"] == 3
    assert copy["value"] > 1e-4 and "biased" in copy["note"]


@pytest.mark.parametrize("setting, metric", [("i3d_path", "fvd"), ("clip_weights", "clip_t")])
def test_missing_weights_file_is_one_line_naming_the_setting(tmp_path, clips, monkeypatch, capsys, setting, metric):
    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))
    code = _run(tmp_path, f"generated={clips['takes']}", f"reference={clips['reference']}",
                f"{setting}={tmp_path / 'missing.pt'}", f"metrics=[{metric}]")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"{setting}=" in err[0] and "no such file" in err[0]
    assert _run(tmp_path, f"generated={clips['takes']}", f"reference={clips['reference']}", f"metrics=[{metric}]") == 2
    assert f"{setting}=null" in capsys.readouterr().err


def test_bad_inputs_are_one_line(tmp_path, clips, monkeypatch, capsys):
    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))
    assert _run(tmp_path, "generated=/no/such/folder") == 2
    assert _run(tmp_path, f"generated={clips['takes']}", "metrics=[psnr]") == 2  # psnr needs a reference
    assert _run(tmp_path, f"generated={clips['takes']}", "metrics=[nope]") == 2
    os.makedirs(tmp_path / "two", exist_ok=True)
    _write(tmp_path / "two", [SyntheticPhysics(**SCENE)[0]["video"]] * 2)
    assert _run(tmp_path, f"generated={tmp_path / 'two'}", f"reference={clips['reference']}") == 2  # 2 vs 3
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(lines) == 4 and "generated=" in lines[0] and "metrics" in lines[1] and "nope" in lines[2]
    assert "pair in order" in lines[3]


@pytest.mark.slow  # the shipped demo model on the 4 demo videos (2 sampler steps), then the evaluation: ~20 s
def test_the_demo_config_scores_the_demos_prediction_only_videos(tmp_path, monkeypatch):
    """configs/demo/evaluate_generation.yaml reads the folder configs/demo/predict.yaml writes with
    save_prediction=true (here under tmp_path: generated= points there)."""
    import yaml

    root = os.path.dirname(os.path.dirname(__file__))
    monkeypatch.chdir(root)
    predict = yaml.safe_load(open("configs/demo/predict.yaml"))
    evaluate = yaml.safe_load(open("configs/demo/evaluate_generation.yaml"))
    stem = os.path.splitext(os.path.basename(predict["test_list_path"]))[0]
    assert evaluate["generated"] == f"{predict['log_dir']}/{stem}"  # the config points at the demo's folder
    assert main("infer", ["--cfg", "configs/demo/predict.yaml", "log_dir", str(tmp_path / "demo"),
                          "save_prediction=true", "num_sample_steps=2", "progress=false"]) == 0
    run = tmp_path / "demo" / stem
    assert len(list(run.glob("*.prediction.mp4"))) == 4
    assert _run(tmp_path, f"generated={run}") == 0
    m = _metrics(tmp_path)
    assert m["num_videos"] == 4 and m["context_frames"] == predict["context_frames"] == 5
    assert all(v["frames"] == predict["max_frames"] for v in m["per_video"])  # 13: 5 given + 8 predicted
    assert set(m["aggregate"]) == {"flicker", "psnr", "ssim", "spatial_iou", "spatiotemporal_iou",
                                   "weighted_spatial_iou", "mse"}
    assert all(v["prompt"] for v in m["per_video"])  # the captions of the demo list


@pytest.mark.slow  # trains the tiny CLIP stand-in (~5 s)
def test_clip_t_and_clip_i_with_prompts_and_condition_images(tmp_path, monkeypatch):
    import clip_stand_in as cs
    from PIL import Image

    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))
    clip = cs.tiny_clip(tmp_path)
    videos = [cs.frames(c, 6, seed=10 + i).transpose(0, 1) for i, c in enumerate(cs.COLORS)]  # red, blue
    gen = _write(tmp_path / "gen", videos)
    os.makedirs(tmp_path / "img")
    for i, c in enumerate(cs.COLORS):
        Image.fromarray(to_uint8(cs.frames(c, 1, seed=50 + i).transpose(0, 1))[0]).save(tmp_path / "img" / f"{i}.png")
    weights = [f"clip_weights={clip['pretrained']}", f"clip_arch={clip['arch']}",
               f"clip_config_file={clip['config_file']}"]
    (tmp_path / "right.txt").write_text("a red ball\na blue ball\n")
    (tmp_path / "wrong.txt").write_text("a blue ball\na red ball\n")
    for name in ("right", "wrong"):
        assert _run(tmp_path, f"generated={gen}", f"prompts={tmp_path / name}.txt",
                    f"condition_images={tmp_path / 'img'}", *weights, f"name={name}") == 0
    right, wrong = _metrics(tmp_path, "right"), _metrics(tmp_path, "wrong")
    assert right["metric_groups"] == ["flicker", "clip_t", "clip_i"]
    for r, w in zip(right["per_video"], wrong["per_video"]):
        assert r["clip_t"] > w["clip_t"]  # each video's own prompt scores higher than the other one
        assert r["clip_i"] == pytest.approx(w["clip_i"]) and r["clip_i"] > 0.5  # the matching image
