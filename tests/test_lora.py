"""LoRA (tools/lora.py): adapters from the config on every model family, frozen base, adapter-only
checkpoints with the base identity, exact resume, merged = unmerged, a mismatched base refused."""
from __future__ import annotations

import copy
import json
import pathlib

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from train_configs import physics, tiny_train_yaml

from tools import lora
from tools.train import loop
from utils.checkpoint import CheckpointError, save_weights
from utils.cli import main
from utils.config import ConfigError
from utils.registry import MODEL

TINY = {"type": "NextClipTransformer", "preset": "tiny", "in_channels": 3, "patch_size": 4, "rope": "3d"}
VGPT = {"type": "VideoGPT", "preset": "tiny", "in_channels": 4, "patch_size": 2, "pos_embed_max_size": 8,
        "pos_embed_base_size": 8}
FAMILIES = {"NextClipTransformer": (TINY, 3, 16), "VideoGPT": (VGPT, 4, 8)}


def _inputs(C: int, S: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, C, 4, S, S, generator=g)
    return x, torch.randn(x.shape, generator=g), torch.tensor([[2, 2], [2, 2]]), torch.rand(2, 2, generator=g)


def _out(model, C, S):
    with torch.no_grad():
        return model(*_inputs(C, S))


def _randomize(model, seed=0):
    """Non-zero weights everywhere (a fresh model zero-inits its output and adaLN layers)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def _perturb(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_adapters_start_as_the_base_and_merge_exactly(family):
    cfg, C, S = FAMILIES[family]
    torch.manual_seed(0)
    base = _randomize(MODEL.build(cfg, "model").eval())
    model = copy.deepcopy(base)
    ad = lora.apply_lora(model, lora.check_lora({"rank": 4, "target": "default"}), [])
    assert ad.lora["targets"] and all(".lora_" in k for k in ad.keys)
    assert torch.equal(_out(model, C, S), _out(base, C, S))  # B = 0 at init
    _perturb(model)
    unmerged = _out(model, C, S)
    assert (unmerged - _out(base, C, S)).abs().max() > 1e-3  # the adapters act
    merged = lora.merge_adapters(copy.deepcopy(model))
    assert not lora._lora_layers(merged)
    assert torch.allclose(_out(merged, C, S), unmerged, atol=1e-5, rtol=0)
    # the merged model is the plain architecture again: its weights load into a fresh base model
    fresh = MODEL.build(cfg, "model").eval()
    fresh.load_state_dict(merged.state_dict())
    assert not torch.allclose(fresh.state_dict()[lora.target_names(base, "default")[0] + ".weight"],
                              base.state_dict()[lora.target_names(base, "default")[0] + ".weight"])
    assert torch.allclose(_out(fresh, C, S), unmerged, atol=1e-5, rtol=0)


#: the whole-video families: (model config, inputs of a forward call)
def _video_inputs(in_ch, F, S, ctx=None, extra=()):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, in_ch, F, S, S, generator=g)
    out = [x, torch.tensor([500])]
    if ctx is not None:
        out.append(torch.randn(1, 3, ctx, generator=g))
    return out


UNET = dict(in_dim=4, dim=32, y_dim=32, context_dim=32, out_dim=4, dim_mult=[1, 2], head_dim=8, num_res_blocks=1,
            attn_scales=[1.0, 0.5], dropout=0.0)
VIDEO_FAMILIES = {
    "UNetSD_T2VBase": ({"type": "UNetSD_T2VBase", **UNET}, lambda: _video_inputs(4, 2, 8, 32)),
    "UNetSD_I2VGen": ({"type": "UNetSD_I2VGen", **UNET}, lambda: [
        *_video_inputs(4, 2, 8, 32), torch.randn(1, 32, generator=torch.Generator().manual_seed(1)),
        torch.randn(1, 4, 1, 8, 8, generator=torch.Generator().manual_seed(2)), torch.tensor([8])]),
    "Latte": ({"type": "Latte", "input_size": 8, "patch_size": 2, "hidden": 32, "depth": 2, "heads": 2,
               "num_frames": 2}, lambda: _video_inputs(4, 2, 8)),
}


@pytest.mark.parametrize("family", [pytest.param(f, marks=pytest.mark.slow) if f == "UNetSD_I2VGen" else f
                                    for f in sorted(VIDEO_FAMILIES)])
def test_lora_applies_to_the_whole_video_families(family):
    cfg, inputs = VIDEO_FAMILIES[family]
    torch.manual_seed(0)
    base = _randomize(MODEL.build(cfg, "model").eval())
    model = copy.deepcopy(base)
    ad = lora.apply_lora(model, lora.check_lora({"rank": 4, "target": "default"}), [])
    assert len(ad.lora["targets"]) >= 4
    with torch.no_grad():
        y0, y = base(*inputs()), model(*inputs())
        assert torch.allclose(y, y0, atol=1e-5, rtol=0)  # B = 0 at init (diffusers' UNets: fp32 roundoff)
        _perturb(model)
        unmerged = model(*inputs())
        assert (unmerged - y0).abs().max() > 1e-3
        merged = lora.merge_adapters(copy.deepcopy(model))
        assert not lora._lora_layers(merged)
        assert torch.allclose(merged(*inputs()), unmerged, atol=1e-5, rtol=0)
    sd = merged.state_dict()
    fresh = MODEL.build(cfg, "model")
    assert fresh.load_state_dict(sd) is not None and set(sd) == set(fresh.state_dict())


def test_frozen_weights_get_no_gradient_and_no_optimizer_state():
    torch.manual_seed(0)
    model = MODEL.build(TINY, "model")
    ad = lora.apply_lora(model, lora.check_lora({"rank": 2, "target": ["qkv"]}), ["out"])
    assert set(ad.keys) == {k for k, p in model.named_parameters() if p.requires_grad}
    assert {"out.weight", "out.bias"} <= set(ad.keys)
    opt = loop.make_optimizer(model, type("C", (), {"lr": 1e-2, "weight_decay": 0.1, "betas": [0.9, 0.95]}))
    model(*_inputs(3, 16)).square().mean().backward()
    opt.step()
    trained = {id(p) for p in ad.parameters()}
    for n, p in model.named_parameters():
        assert (p.grad is not None) == (id(p) in trained), n
    assert {id(p) for p in opt.state} == trained


def test_targets_presets_and_bad_settings():
    model = MODEL.build(TINY, "model")
    names = lora.target_names(model, "default")
    assert names and all(n.startswith("blocks.") for n in names)
    assert lora.target_names(model, ["blocks.0.qkv"]) == ["blocks.0.qkv"]
    assert "time_embed.mlp.0" in lora.target_names(model, ["mlp"])  # a bare part matches anywhere
    with pytest.raises(ConfigError, match="matches no linear layer"):
        lora.target_names(model, ["nope"])
    with pytest.raises(ConfigError, match="not a LoRA preset"):
        lora.target_names(model, "huge")
    with pytest.raises(ConfigError, match="lora.rank"):
        lora.check_lora({"rank": 0})
    with pytest.raises(ConfigError, match="unknown key"):
        lora.check_lora({"rnak": 4})
    with pytest.raises(ConfigError, match="lora is not set"):
        lora.check_lora(None, ["out"])


# ---------------------------------------------------------------------------- the engine


def train_yaml(base, **overrides) -> str:
    """A LoRA training (rank 4, the default targets plus the output layer) on the tiny model saved at ``base``."""
    return tiny_train_yaml(name="lora", auto_encoder=None, dataset=physics(length=32),
                           pretrain={"type": "LoadCheckpoint", "path": str(base)},
                           lora={"rank": 4, "alpha": 8, "target": "default"}, trainable=["out"],
                           clip_sampling={"mode": "random", "min_clips": 2}, num_steps=4, lr=1.0e-2, warmup_steps=1,
                           viz_interval=None, ema_decay=0.5, **overrides)



def _base_file(path: pathlib.Path, seed: int) -> pathlib.Path:
    torch.manual_seed(seed)
    save_weights(path, _randomize(MODEL.build(TINY, "model"), seed).state_dict())
    return path


def _losses(run):
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "scalars.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora")
    cfg = tmp / "lora.yaml"
    cfg.write_text(train_yaml(_base_file(tmp / "base.safetensors", 0)))
    assert main("train", ["--cfg", str(cfg), "log_dir", str(tmp / "full")]) == 0
    return tmp, cfg


def test_checkpoint_holds_only_adapters_with_the_base_identity(trained):
    tmp, _ = trained
    ck = tmp / "full" / "lora" / "checkpoints" / "step_00000004.safetensors"
    sd = load_file(str(ck))
    assert sd and all(".lora_" in k or k in ("out.weight", "out.bias") for k in sd)
    assert not (tmp / "full" / "lora" / "checkpoints" / "step_00000004.embedder.safetensors").exists()
    with safe_open(str(ck), framework="pt") as f:
        base = json.loads(f.metadata()["base"])
    model = MODEL.build(TINY, "model")
    model.load_state_dict(load_file(str(tmp / "base.safetensors")))
    assert base == lora.base_identity(model, str(tmp / "base.safetensors"))
    state = torch.load(str(ck)[: -len(".safetensors")] + ".state.pt", weights_only=True)
    assert len(state["optimizer"]["state"]) == len(sd)  # AdamW moments for the trained tensors only
    assert (tmp / "base.safetensors").stat().st_size > 10 * ck.stat().st_size


def test_resume_after_kill_is_exact(trained, monkeypatch):
    from tools.train import train_next_clip as engine

    tmp, cfg = trained

    class Killed(Exception):
        pass

    def kill_after_step_3(run, done, batch):  # step 3 trained, its checkpoint (every 2) not written
        if done == 3:
            raise Killed()

    monkeypatch.setattr(engine, "_visualise", kill_after_step_3)
    with pytest.raises(Killed):
        main("train", ["--cfg", str(cfg), "log_dir", str(tmp / "part")])
    monkeypatch.undo()
    assert main("train", ["--cfg", str(cfg), "log_dir", str(tmp / "part")]) == 0  # resume: auto from step 2
    full, part = _losses(tmp / "full" / "lora"), _losses(tmp / "part" / "lora")
    assert sorted(part) == [1, 2, 3, 4]
    for s in (3, 4):
        assert part[s] == pytest.approx(full[s], rel=1e-6, abs=1e-8)
    a = load_file(str(tmp / "full" / "lora" / "checkpoints" / "step_00000004.ema.safetensors"))
    b = load_file(str(tmp / "part" / "lora" / "checkpoints" / "step_00000004.ema.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_trained_adapter_merged_equals_unmerged_and_other_base_is_refused(trained):
    tmp, _ = trained
    ck = tmp / "full" / "lora" / "checkpoints" / "step_00000004.ema.safetensors"
    base_path = tmp / "base.safetensors"

    def loaded(path):
        m = MODEL.build(TINY, "model").eval()
        m.load_state_dict(load_file(str(path)))
        return m

    base = loaded(base_path)
    ident = lora.base_identity(base, str(base_path))
    unmerged, merged = copy.deepcopy(base), copy.deepcopy(base)
    lora.load_adapters(unmerged, [{"path": str(ck)}], ident)
    lora.load_adapters(merged, [{"path": str(ck)}], ident, merge=True)
    assert not lora._lora_layers(merged)
    y = _out(unmerged, 3, 16)
    assert (y - _out(base, 3, 16)).abs().max() > 1e-4  # training moved it
    assert torch.allclose(_out(merged, 3, 16), y, atol=1e-5, rtol=0)
    off = copy.deepcopy(base)
    lora.load_adapters(off, [{"path": str(ck), "scale": 0.0}], ident)
    sd = load_file(str(ck))
    off.load_state_dict({k: v for k, v in base.state_dict().items() if k.startswith("out.")}, strict=False)
    assert torch.allclose(_out(off, 3, 16), _out(base, 3, 16), atol=1e-6)  # scale 0 = the adapters off
    assert "out.weight" in sd
    other = _base_file(tmp / "other.safetensors", 1)
    with pytest.raises(CheckpointError, match=r"does not fit this base model: checksum") as e:
        lora.load_adapters(loaded(other), [{"path": str(ck)}], lora.base_identity(loaded(other), str(other)))
    assert "\n" not in str(e.value)


def test_resume_onto_another_base_is_refused(trained, capsys):
    tmp, cfg = trained
    other = _base_file(tmp / "other2.safetensors", 2)
    code = main("train", ["--cfg", str(cfg), "log_dir", str(tmp / "full"), "num_steps=6",
                          f"pretrain.path={other}"])
    assert code != 0
    err = capsys.readouterr().err
    assert "does not fit this base model" in err and "checksum" in err


# ---------------------------------------------------------------------------- inference
PREDICT = """
TASK_TYPE: predict_next_clip
backend: {{type: cpu, precision: fp32, attention: sdpa}}
model: {{type: NextClipTransformer, preset: tiny, in_channels: 3, patch_size: 4, rope: 3d}}
diffusion: {{type: RectifiedFlow, prediction: x1}}
test_model: {base}
test_list_path: {root}/data/demo/test_list.txt
log_dir: {out}
resolution: [16, 16]
context_frames: 2
max_frames: 6
clip_len: 2
window: 4
num_sample_steps: 2
progress: false
"""


def test_inference_unmerged_merged_and_exported_agree(trained):
    from tools.inferences.predictor import Predictor
    from utils.config import load_config
    from utils.registry import INFER_ENGINE

    tmp, _ = trained
    ck = tmp / "full" / "lora" / "checkpoints" / "step_00000004.ema.safetensors"
    cfg_path = tmp / "predict.yaml"
    root = pathlib.Path(__file__).resolve().parents[1]
    cfg_path.write_text(PREDICT.format(base=tmp / "base.safetensors", root=root, out=tmp / "pred"))
    ctx = torch.rand(3, 2, 16, 16) * 2 - 1

    def video(*overrides):
        p = Predictor(load_config(cfg_path, list(overrides), registry=INFER_ENGINE))
        return p.predict(ctx, seed=5), p

    base, _ = video()
    unmerged, p = video(f"lora={ck}")
    assert p.adapters == [{"path": str(ck), "scale": 1.0}] and lora._lora_layers(p.model)
    merged, p = video(f"lora={ck}", "lora_merge=true")
    assert not lora._lora_layers(p.model)
    assert (unmerged - base).abs().max() > 1e-3
    assert torch.allclose(merged, unmerged, atol=1e-5, rtol=0)
    from scripts.export_weights import main as export

    assert export([str(tmp / "base.safetensors"), str(tmp / "merged.safetensors"), "--dtype", "float32",
                   "--lora", f"{ck}:1.0"]) == 0
    exported, _ = video(f"test_model={tmp / 'merged.safetensors'}")
    assert torch.allclose(exported, unmerged, atol=1e-5, rtol=0)
    # batch inference takes the adapter as a setting
    assert main("infer", ["--cfg", str(cfg_path), f"lora={ck}"]) == 0
    recs = [json.loads(line) for line in (tmp / "pred" / "test_list" / "results.jsonl").read_text().splitlines()]
    assert len(recs) == 4 and all(r["status"] == "ok" for r in recs)
    assert main("infer", ["--cfg", str(cfg_path), f"lora={tmp / 'nope.safetensors'}"]) == 2
    # the web page takes it as an override too, and says so
    from tools.inferences.web_app import load_app

    page = load_app(str(cfg_path), [f"lora={ck}"], 1 << 20)
    assert lora._lora_layers(page.predictor.model) and f"LoRA `{ck}` x1" in page.describe()


def test_bf16_run_keeps_frozen_weights_in_bf16_and_adapters_in_fp32(trained, monkeypatch):
    from tools.train import train_next_clip as engine

    tmp, cfg = trained
    seen = {}
    real = engine._apply_lora

    def spy(run, model):
        real(run, model)
        seen["frozen"] = {p.dtype for p in model.parameters() if not p.requires_grad}
        seen["trained"] = {p.dtype for p in model.parameters() if p.requires_grad}

    monkeypatch.setattr(engine, "_apply_lora", spy)
    assert main("train", ["--cfg", str(cfg), "log_dir", str(tmp / "bf16"), "num_steps=2",
                          "backend.precision=bf16"]) == 0
    assert seen == {"frozen": {torch.bfloat16}, "trained": {torch.float32}}
    loss = _losses(tmp / "bf16" / "lora")
    assert all(v == v and v < 10 for v in loss.values())


def test_memory_plan_prints_lora_rows_and_what_fits(capsys):
    import train_net

    stage1 = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "videogpt" / "stage1.yaml")
    assert train_net.run(["--cfg", stage1, "--dry-run", "lora={rank: 16, target: default}"]) == 0
    out = capsys.readouterr().out
    rows = {line[4:27].strip(): line[27:].split() for line in out.splitlines() if line.startswith("#   ")}
    assert float(rows["frozen weights (bf16)"][0]) == pytest.approx(3.76e9 * 2 / 2 ** 30, rel=0.02)
    assert float(rows["AdamW moments (fp32)"][0]) < 0.5  # moments of the adapters only
    assert "weights (fp32)" not in rows
    table = out.split("# fits per rank")[1]
    fits = [line.split() for line in table.splitlines() if line.startswith(("#   full", "#   LoRA"))]
    assert [f[1:3] for f in fits] == [["full", "off"], ["full", "on"], ["LoRA", "off"], ["LoRA", "on"]]
    assert fits[1][-3:] == ["no", "no", "no"] and fits[3][-3:] == ["yes", "yes", "yes"]


@pytest.mark.slow
def test_memory_plan_of_the_modelscope_unet_with_and_without_lora(capsys):
    import train_net

    cfg = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "modelscope" / "t2v_train.yaml")
    assert train_net.run(["--cfg", cfg, "--dry-run", "lora={rank: 16}"]) == 0
    out = capsys.readouterr().out
    assert "LoRA: 6.6M trained parameters" in out and "frozen weights (bf16)" in out
    full = next(line for line in out.splitlines() if "full fine-tune:" in line)
    low = next(line for line in out.splitlines() if "LoRA fine-tune:" in line)
    assert "24 GB no" in full and "24 GB yes" in low


@pytest.mark.slow
def test_latte_lora_fine_tune_with_train_video_and_generation(tmp_path):
    """configs/latte/train.yaml (the whole-video engine) with lora on the tiny golden fixture: adapter-only
    checkpoints; the generation engine takes the adapter unmerged and merged, with the same videos."""
    diffusers = pytest.importorskip("diffusers")
    root = pathlib.Path(__file__).resolve().parents[1]
    fixture, videos = root.parent / "shared" / "fixtures" / "latte_tiny", root.parent / "shared" / "data" / "videos"
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                                  up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 8],
                                  layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=16,
                                  scaling_factor=0.18215)
    vae.save_pretrained(tmp_path / "vae", safe_serialization=True)
    listing = tmp_path / "videos.txt"
    listing.write_text(f"{videos / 'cat_walking.mp4'}|||ApplyEyeMakeup\n{videos / '1066674877.mp4'}|||5\n")
    tiny = ["model={_delete_: true, type: Latte, input_size: 8, patch_size: 2, hidden: 64, depth: 4, heads: 4, "
            "num_frames: 4, learn_sigma: true}", "backend.type=cpu", "backend.precision=fp32", "progress=false",
            "embedder.dim=64", f"auto_encoder.path={tmp_path / 'vae'}"]
    train_cfg = str(root / "configs" / "latte" / "train.yaml")
    assert main("train", ["--cfg", train_cfg, f"pretrain.path={fixture / 'latte.pt'}", *tiny,
                          f"log_dir={tmp_path / 'run'}", f"dataset.list_file={listing}", "dataset.num_frames=4",
                          "dataset.stride=1", "dataset.resolution=16", "max_frames=4", "batch_size=2", "num_steps=2",
                          "save_ckp_interval=2", "lr=1e-2", "lora={rank: 4, target: default}"]) == 0
    ck = next((tmp_path / "run").glob("*/checkpoints/step_00000002.ema.safetensors"))
    sd = load_file(str(ck))
    assert sd and all(".lora_" in k for k in sd)
    assert not list(ck.parent.glob("*.embedder.safetensors"))  # the class table is frozen with the base

    from tools.inferences.generate_video import VideoGenerator
    from utils.config import load_config
    from utils.registry import INFER_ENGINE

    def model(*extra):
        cfg = load_config(root / "configs" / "latte" / "ucf101_infer.yaml",
                          [*tiny, f"test_model={fixture / 'latte.pt'}", *extra], registry=INFER_ENGINE)
        return VideoGenerator(cfg).model

    x, t, y = torch.randn(1, 4, 4, 8, 8), torch.tensor([400]), torch.randn(1, 1, 64)
    with torch.no_grad():
        base, unmerged = model()(x, t, y), model(f"lora={ck}")(x, t, y)
        merged = model(f"lora={ck}", "lora_merge=true")(x, t, y)
    assert (unmerged - base).abs().max() > 1e-5
    assert torch.allclose(merged, unmerged, atol=1e-5, rtol=0)
