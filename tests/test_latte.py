"""Latte against the reference's golden fixture (../shared/fixtures/latte_tiny), loaded the way a user runs it:
configs/latte/ucf101_infer.yaml with overrides for the tiny shape, LatteCheckpoint on the released-format .pt,
the class table in the ClassLabel embedder, the engine's guidance and the GaussianDiffusion settings of the YAML."""
from __future__ import annotations

import logging
import pathlib

import pytest
import torch
from safetensors.torch import load_file

from tools import load_components
from tools.diffusions import learned_variance as lv
from tools.diffusions.gaussian import timestep_input
from tools.inferences.generate_video import build_video_model, guided
from utils.checkpoint import CheckpointError
from utils.config import load_config
from utils.registry import DIFFUSION, EMBEDDER, INFER_ENGINE

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURE = ROOT.parent / "shared" / "fixtures" / "latte_tiny"
CONFIG = ROOT / "configs" / "latte" / "ucf101_infer.yaml"
TINY = ["model={_delete_: true, type: Latte, input_size: 8, patch_size: 2, hidden: 64, depth: 4, heads: 4, "
        "num_frames: 4, learn_sigma: true}", "embedder.dim=64", "backend.type=cpu", "backend.precision=fp32"]


def build(weights: str = "latte.pt", extra=()):
    """(cfg, model, embedder, diffusion) of the YAML with the tiny overrides, weights through the engine's loader."""
    load_components()
    cfg = load_config(CONFIG, [*TINY, f"test_model={FIXTURE / weights}", *extra], registry=INFER_ENGINE)
    embedder = EMBEDDER.build(cfg.embedder, "embedder").eval()
    model = build_video_model(cfg, cfg.test_model, embedder).eval()
    return cfg, model, embedder, DIFFUSION.build(cfg.diffusion, "diffusion")


@pytest.fixture(scope="module")
def latte():
    return build()


@pytest.fixture(scope="module")
def cases():
    return {k: v for k, v in load_file(str(FIXTURE / "cases.safetensors")).items()}


def ours(x):  # the reference's (B, F, C, H, W) <-> the project's (B, C, F, H, W)
    return x.transpose(1, 2)


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max())


def guided_fn(latte, scale=7.0, combine=None):
    _, model, embedder, diffusion = latte
    cond, uncond = {"y": embedder([5])[0]}, {"y": embedder.null(1)[0]}
    return guided(model, cond, uncond, scale, combine or diffusion.guide)


@torch.no_grad()
def case_a(latte, cases):
    _, model, embedder, _ = latte
    y = embedder([3, None])[0]  # class 3 and the null class (the reference's id 101)
    return ours(model(ours(cases["a.x"]), cases["a.t"], y=y))


@torch.no_grad()
def case_c(latte, cases, combine=None):
    _, model, _, diffusion = latte
    tables = lv.chain_tables(diffusion.alphas_cumprod, diffusion.timesteps(5))
    j = cases["c.t_index"]
    x = ours(cases["c.x"])
    k = tables["timesteps"][j]
    assert int(k) == 500
    out = guided_fn(latte, combine=combine)(x, diffusion.model_time(k, timestep_input(model), x.dtype))
    return {key: ours(v) for key, v in diffusion.p_mean_variance(out, x, j, tables).items()}


def test_loader_puts_the_class_table_in_the_embedder(caplog):
    with caplog.at_level(logging.INFO, logger="nextclip"):
        _, model, embedder, _ = build()
    table = load_file(str(FIXTURE / "latte.safetensors"))["y_embedder.embedding_table.weight"]
    assert torch.equal(embedder.table.weight, table) and embedder.null_id == 101
    assert "class table into the embedder" in caplog.text and "all keys matched" in caplog.text
    assert model.timestep_input == "index" and model.conditions == ("y",)


def test_case_a_forward_matches_the_reference(latte, cases):
    err = float((case_a(latte, cases) - cases["a.out"]).abs().max())
    assert err < 1e-5, err


def test_case_a_from_safetensors_matches_too(cases):
    latte = build("latte.safetensors")
    assert float((case_a(latte, cases) - cases["a.out"]).abs().max()) < 1e-5


def test_mutation_temporal_table_at_every_block_fails_case_a(cases):
    latte = build()
    model = latte[1]
    for i in range(3, len(model.blocks), 2):  # the reference adds it before the first temporal block only
        model.blocks[i].register_forward_pre_hook(lambda m, args: (args[0] + model.temp_embed, *args[1:]))
    assert float((case_a(latte, cases) - cases["a.out"]).abs().max()) > 1e-3


@torch.no_grad()
def test_case_b_guided_ddim_matches_the_reference(latte, cases):
    _, model, _, diffusion = latte
    assert diffusion.timesteps(5).tolist() == [999, 749, 500, 250, 0]
    out = diffusion.sample(guided_fn(latte), ours(cases["b.z"]), steps=5, sampler="ddim",
                           timestep_input=timestep_input(model))
    assert rel_err(ours(out), cases["b.out"]) < 1e-4


def test_case_c_ddpm_step_mean_and_learned_variance_match(latte, cases):
    got = case_c(latte, cases)
    for key, ref in (("mean", "c.mean"), ("log_variance", "c.log_variance"), ("pred_xstart", "c.pred_xstart")):
        assert rel_err(got[key], cases[ref]) < 1e-4, key


def test_mutation_guidance_on_the_variance_channels_fails_case_c(latte, cases):
    got = case_c(latte, cases, combine=lambda c, u, s: u + s * (c - u))
    assert rel_err(got["log_variance"], cases["c.log_variance"]) > 1e-3


def test_strict_loader_reports_missing_and_unexpected_keys(tmp_path):
    sd = load_file(str(FIXTURE / "latte.safetensors"))
    sd.pop("blocks.0.attn.qkv.weight")
    sd["blocks.9.extra"] = torch.zeros(1)
    torch.save({"ema": sd}, tmp_path / "bad.pt")
    with pytest.raises(Exception) as e:
        build(extra=[f"test_model={tmp_path / 'bad.pt'}"])
    msg = str(e.value)
    assert isinstance(e.value.__cause__, CheckpointError)
    assert "1 missing: blocks.0.attn.qkv.weight" in msg and "1 unexpected: blocks.9.extra" in msg


def test_unconditional_model_without_embedder_reports_the_class_table(tmp_path):
    load_components()
    from tools.models.latte import Latte
    from tools.pretrain.latte_checkpoint import load_latte

    model = Latte(input_size=8, patch_size=2, hidden=64, depth=4, heads=4, num_frames=4)
    report = load_latte(model, str(FIXTURE / "latte.pt"), strict=False)
    assert report["unexpected"][0].startswith("y_embedder.embedding_table.weight")
    assert not report["missing"] and not report["embedder"] and model.conditions == ()


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (pathlib.Path.touch, (tmp_path / "ran",))

    torch.save({"ema": {"x": Payload()}}, tmp_path / "evil.pt")
    with pytest.raises(Exception) as e:
        build(extra=[f"test_model={tmp_path / 'evil.pt'}"])
    assert "weights_only" in str(e.value) and not (tmp_path / "ran").exists()


def count_calls(module) -> list:
    """A list that grows by one at every run of ``module.forward`` (also the recomputation in the backward)."""
    calls, forward = [], module.forward

    def counted(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    module.forward = counted
    return calls


def test_grad_checkpointing_gives_the_same_gradients(cases):
    from tools.models.latte import Latte

    grads, calls = [], []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = Latte(input_size=8, patch_size=2, hidden=64, depth=4, heads=4, num_frames=4, cond_dim=64,
                      grad_checkpointing=ckpt).train()
        torch.nn.init.normal_(model.final_layer.linear.weight, std=0.02)  # zero-init would hide the blocks
        for b in model.blocks:
            torch.nn.init.normal_(b.adaLN_modulation[-1].weight, std=0.02)
        n = count_calls(model.blocks[0])
        y = torch.randn(2, 1, 64, generator=torch.Generator().manual_seed(1))
        model(ours(cases["a.x"]), cases["a.t"], y=y).square().mean().backward()
        grads.append(model.blocks[0].attn.qkv.weight.grad.clone())
        calls.append(len(n))
    assert grads[0].abs().max() > 0 and torch.allclose(grads[0], grads[1], atol=1e-6)
    assert calls == [1, 2]  # with checkpointing the block runs again in the backward
