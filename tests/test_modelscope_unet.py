"""ModelScope / VGen text-to-video UNet against the golden fixture, built the way a user's run builds it:
configs/modelscope/t2v_infer.yaml + test_model=<fixture folder> -> ModelScopeCheckpoint -> UNetSD_T2VBase."""
from __future__ import annotations

import os
import pathlib

import pytest
import torch
from safetensors.torch import load_file, save_file

import tools.pretrain.modelscope_checkpoint as msc
from tools.diffusions import schedules
from tools.diffusions.gaussian import GaussianDiffusion, timestep_input
from tools.inferences.generate_video import build_video_model, guided
from utils.checkpoint import CheckpointError
from utils.config import load_config
from utils.registry import DIFFUSION, INFER_ENGINE, PRETRAIN

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURE = ROOT.parent / "shared" / "fixtures" / "modelscope_t2v_tiny"
CONFIG = ROOT / "configs" / "modelscope" / "t2v_infer.yaml"
VGEN_DIFFUSION = ("diffusion={_delete_: true, type: GaussianDiffusion, schedule: cosine, zero_terminal_snr: true, "
                  "prediction: v, timestep_spacing: leading, steps_offset: 1, final_alpha_cumprod: first, "
                  "history_noise: null}")


def user_config(*overrides):
    return load_config(CONFIG, [f"test_model={FIXTURE}", *overrides], registry=INFER_ENGINE)


@pytest.fixture(scope="module")
def cases():
    return load_file(str(FIXTURE / "cases.safetensors"))


@pytest.fixture(scope="module")
def model():
    cfg = user_config()
    return build_video_model(cfg, cfg.test_model).eval()


def forward(model, cases, case):
    with torch.no_grad():
        return model(cases[f"{case}.x"], cases[f"{case}.t"], cases[f"{case}.y"])


@pytest.mark.parametrize("case", ["a", "b"])
def test_forward_matches_reference(model, cases, case):
    out = forward(model, cases, case)
    assert out.shape == cases[f"{case}.out"].shape
    assert (out - cases[f"{case}.out"]).abs().max() < 1e-4


def test_backend_dense_attention_keeps_parity(model, cases):
    """set_attention routes every attention through the backend's dense kernel (q, k, v) -> out."""
    from tools.backends.attention import sdpa_dense
    from tools.models.modelscope_unet import DenseAttnProcessor

    calls = []

    def kernel(q, k, v):
        calls.append(q.shape)
        return sdpa_dense(q, k, v)

    model.set_attention("blocks", kernel)
    try:
        assert sum(isinstance(getattr(m, "processor", None), DenseAttnProcessor) for m in model.modules()) == 30
        assert (forward(model, cases, "a") - cases["a.out"]).abs().max() < 1e-4
        assert len(calls) == 30
    finally:
        model.set_attention("math", None)  # diffusers' own processor again


def sample(model, cases, case, diffusion):
    pred = guided(model, {"y": cases[f"{case}.y"]}, {"y": cases[f"{case}.y_null"]}, 9.0)
    with torch.no_grad():
        return diffusion.sample(pred, cases[f"{case}.noise"], steps=5, timestep_input=timestep_input(model))


@pytest.mark.slow
@pytest.mark.parametrize("case, overrides", [("c", [VGEN_DIFFUSION]), ("d", [])])
def test_guided_ddim_matches_reference(model, cases, case, overrides):
    """c: VGen's cosine + zero terminal SNR + v; d: ModelScope's linear_sd + eps (the YAML's own diffusion)."""
    diffusion = DIFFUSION.build(user_config(*overrides).diffusion, "diffusion")
    out, ref = sample(model, cases, case, diffusion), cases[f"{case}.out"]
    assert (out - ref).abs().max() / ref.abs().max() < 1e-4


@pytest.mark.slow
def test_converter_mutation_fails_parity(model, cases, monkeypatch):
    """Swapping two temporal conv tensors in the converter's output breaks case a: the parity test can fail."""
    convert = msc.convert_unet_keys

    def swapped(*args, **kwargs):
        out, left = convert(*args, **kwargs)
        a, b = "down_blocks.0.temp_convs.0.conv1.2.weight", "down_blocks.0.temp_convs.0.conv2.3.weight"
        out[a], out[b] = out[b], out[a]
        return out, left

    monkeypatch.setattr(msc, "convert_unet_keys", swapped)
    cfg = user_config()
    mutant = build_video_model(cfg, cfg.test_model).eval()
    assert (forward(mutant, cases, "a") - cases["a.out"]).abs().max() > 1e-2


def test_converter_maps_every_key_onto_the_diffusers_layout(model):
    sd = torch.load(FIXTURE / "text2video_pytorch_model.pth", weights_only=True)
    converted, left = msc.convert_unet_keys(sd, 2, 1, [True, True])
    own = model.unet.state_dict()
    assert left == [] and len(converted) == len(sd) == 622
    assert set(converted) == set(own)
    assert all(converted[k].shape == own[k].shape for k in own)
    blocks = msc.block_prefixes(2, 1, [True, True])
    assert blocks["input_blocks.1.0."] == ("down_blocks.0.|0", "res") and blocks["input_blocks.2.op."][1] == "down"
    assert blocks["output_blocks.1.3."] == ("up_blocks.0.upsamplers.0.", "up")  # after res, spatial, temporal


@pytest.mark.slow
def test_grad_checkpointing_changes_no_number_and_no_key():
    cfg = dict(msc.model_config(str(FIXTURE)), dropout=0.0)
    results = []
    for ckpt in (False, True):
        m = build_video_model(user_config(*(["+model.grad_checkpointing=true"] if ckpt else [])), str(FIXTURE))
        assert m.grad_checkpointing is ckpt and m.config["dim"] == cfg["dim"]
        torch.manual_seed(0)
        x, y = torch.randn(1, 4, 4, 16, 16), torch.randn(1, 77, 1024)
        m.train()
        for mod in m.modules():  # no dropout: the two runs must agree exactly
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
        out = m(x, torch.tensor([500]), y)
        out.square().mean().backward()
        results.append((out.detach(), [p.grad for p in m.parameters()], list(m.state_dict())))
    (o0, g0, k0), (o1, g1, k1) = results
    assert torch.equal(o0, o1) and k0 == k1
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g0, g1))


def test_model_config_comes_from_the_folder():
    cfg = msc.model_config(str(FIXTURE))
    assert cfg["dim"] == 32 and cfg["dim_mult"] == [1, 2] and cfg["num_res_blocks"] == 1 and cfg["head_dim"] == 16
    assert cfg["temporal_attention"] is True
    from utils.config import ConfigError

    with pytest.raises(ConfigError, match="model.dim=64 but the checkpoint"):
        c = user_config("+model.dim=64")
        build_video_model(c, c.test_model)


@pytest.mark.slow
def test_a_repo_id_in_the_modelscope_cache_is_the_folder(model, cases, tmp_path, monkeypatch):
    from tools.pretrain.model_config import model_folder

    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    (tmp_path / "models" / "damo").mkdir(parents=True)
    (tmp_path / "models" / "damo" / "text-to-video-synthesis").symlink_to(FIXTURE)
    cfg = load_config(CONFIG, ["test_model=damo/text-to-video-synthesis"], registry=INFER_ENGINE)
    folder = model_folder(cfg)
    assert pathlib.Path(folder).resolve() == FIXTURE.resolve()
    cached = build_video_model(cfg, folder).eval()
    assert torch.equal(forward(cached, cases, "b"), forward(model, cases, "b"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "empty"))
    with pytest.raises(CheckpointError, match="modelscope download --model damo/text-to-video-synthesis"):
        msc.unet_file("damo/text-to-video-synthesis")


@pytest.mark.slow
def test_vgen_wrapping_and_safetensors_load_the_same(model, cases, tmp_path):
    sd = torch.load(FIXTURE / "text2video_pytorch_model.pth", weights_only=True)
    torch.save({"state_dict": sd, "step": 123}, tmp_path / "wrapped.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "unet.safetensors"))
    want = forward(model, cases, "b")
    cfg = user_config()
    other = build_video_model(cfg, cfg.test_model).eval()
    for f in ("wrapped.pth", "unet.safetensors"):
        with torch.no_grad():
            for p in other.parameters():
                p.zero_()
        PRETRAIN.build({"type": "ModelScopeCheckpoint", "path": str(tmp_path / f)}, "pretrain", model=other)
        assert torch.equal(forward(other, cases, "b"), want), f


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {_RunsCode.marker}",))


def test_pickle_that_runs_code_is_refused_in_one_line(model, tmp_path):
    _RunsCode.marker = tmp_path / "ran"
    sd = {"time_embed.0.weight": torch.zeros(1)}
    torch.save({"state_dict": sd, "payload": _RunsCode()}, tmp_path / "text2video_pytorch_model.pth")
    with pytest.raises(CheckpointError) as err:
        msc.load_reference_unet(model, str(tmp_path / "text2video_pytorch_model.pth"))
    msg = str(err.value)
    assert "refused" in msg and "posix.system" in msg and "\n" not in msg
    assert not _RunsCode.marker.exists()


def test_reference_ddim_settings_are_named():
    assert schedules.ddim_timesteps(1000, 5, "leading", 1).tolist() == [801, 601, 401, 201, 1]
    assert schedules.ddim_timesteps(1000, 4).tolist() == [999, 749, 499, 249]  # the project's default stays
    betas = schedules.make_betas("linear_sd", 1000, beta_start=0.00085, beta_end=0.012)
    assert betas[0].item() == pytest.approx(0.00085) and betas[-1].item() == pytest.approx(0.012)
    assert betas[500].item() == pytest.approx(((0.00085 ** 0.5 + 0.012 ** 0.5) / 2) ** 2, rel=1e-2)
    with pytest.raises(ValueError, match="timestep_spacing"):
        GaussianDiffusion(timestep_spacing="middle")
    with pytest.raises(ValueError, match="final_alpha_cumprod"):
        GaussianDiffusion(final_alpha_cumprod="zero")


def test_final_alpha_first_stops_at_alpha_bar_zero():
    """With final_alpha_cumprod 'first' the last DDIM step lands on alpha_bar[0], not on x0_hat."""
    g1 = GaussianDiffusion(num_timesteps=10, schedule="linear_sd", beta_start=0.1, beta_end=0.2,
                           timestep_spacing="leading", steps_offset=1, final_alpha_cumprod="first")
    g0 = GaussianDiffusion(num_timesteps=10, schedule="linear_sd", beta_start=0.1, beta_end=0.2,
                           timestep_spacing="leading", steps_offset=1)
    z = torch.ones(1, 1, 1, 1, 1)
    eps = 0.5

    def pred(x, t):
        assert t.dtype == torch.long  # timestep_input index: the integer timestep
        return torch.full_like(x, eps)

    out1 = g1.sample(pred, z, steps=1, timestep_input="index")
    out0 = g0.sample(pred, z, steps=1, timestep_input="index")
    a1, a0 = g1.alphas_cumprod[1], g1.alphas_cumprod[0]
    x0 = (1 - (1 - a1).sqrt() * eps) / a1.sqrt()
    assert out0.item() == pytest.approx(x0.item(), rel=1e-5)
    assert out1.item() == pytest.approx((a0.sqrt() * x0 + (1 - a0).sqrt() * eps).item(), rel=1e-5)


def test_vae_of_the_folder_reproduces_case_e():
    from tools.autoencoders.kl import AutoencoderKL

    c = load_file(str(FIXTURE / "vae_cases.safetensors"))
    ae = AutoencoderKL(path=str(FIXTURE), variant="sd", chunk_size=1)
    x = c["e.x"][:, :, None]  # images as one-frame videos
    with torch.no_grad():
        mean, logvar = ae._encode_frames(x).chunk(2, dim=1)
        dec = ae.decode(ae.encode(x))  # normalized latents (x 0.18215) and back
    assert (mean[:, :, 0] - c["e.mean"]).abs().max() < 1e-4
    assert (logvar[:, :, 0] - c["e.logvar"]).abs().max() < 1e-4
    assert (dec[:, :, 0] - c["e.dec"]).abs().max() < 1e-4
    assert ae.scale_factor == pytest.approx(0.18215)


def test_vae_pickle_that_runs_code_is_refused(tmp_path):
    from tools.autoencoders.kl import AutoencoderKL

    _RunsCode.marker = tmp_path / "ran"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "p": _RunsCode()}, tmp_path / "VQGAN_autoencoder.pth")
    with pytest.raises(CheckpointError, match="refused"):
        AutoencoderKL(path=str(tmp_path / "VQGAN_autoencoder.pth"), variant="sd")
    assert not _RunsCode.marker.exists()


def test_timestep_input_is_a_class_attribute_read_in_one_place(model):
    class Unit(torch.nn.Module):
        pass

    class Wrapped(torch.nn.Module):  # like DDP: the model under .module
        def __init__(self, inner):
            super().__init__()
            self.module = inner

    assert timestep_input(model) == "index" and timestep_input(Wrapped(model)) == "index"
    assert timestep_input(Unit()) == "unit"  # absent: the project's 1 - k / T
    Unit.timestep_input = "seconds"
    with pytest.raises(ValueError, match="timestep_input='seconds'"):
        timestep_input(Unit())
    seen = []
    g = GaussianDiffusion(num_timesteps=10, history_noise=None)
    g.video_losses(lambda x, t: seen.append(t) or x, torch.zeros(2, 1, 1, 2, 2), torch.Generator().manual_seed(0))
    assert seen[0].dtype.is_floating_point and ((seen[0] > 0) & (seen[0] <= 1)).all()  # unit time for a plain fn
