"""ENGINE train_autoencoder on a tiny CausalVAE: runs from the demo YAML, checkpoints, exact resume, GAN, errors."""
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from utils.checkpoint import read_state_dict
from utils.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
CFG = ROOT / "configs" / "experiments" / "latent_tiny" / "train_vae.yaml"
TINY = ["backend.type=cpu", "backend.precision=fp32", "auto_encoder.base_channels=4",
        "auto_encoder.channel_mult=[1,1,1,1]", "auto_encoder.latent_channels=4", "dataset.resolution=16",
        "dataset.num_frames=5", "dataset.length=16", "max_frames=5", "batch_size=2", "progress=false",
        "warmup_steps=0", "lr_schedule=constant", "log_interval=1", "viz_interval=1000"]


def train(tmp_path, *extra):
    return main("train", ["--cfg", str(CFG), "log_dir", str(tmp_path), *TINY, *extra])


def ckpt(tmp_path, step, suffix=".safetensors"):
    return tmp_path / "demo_vae" / "checkpoints" / f"step_{step:08d}{suffix}"


def scalars(tmp_path):
    return [json.loads(x) for x in (tmp_path / "demo_vae" / "scalars.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_trains_writes_checkpoints_and_the_weights_load_as_an_auto_encoder(tmp_path):
    from utils.registry import AUTO_ENCODER

    assert train(tmp_path, "num_steps=4", "save_ckp_interval=2", "viz_interval=4") == 0
    for step in (2, 4):
        assert ckpt(tmp_path, step).is_file() and ckpt(tmp_path, step, ".ema.safetensors").is_file()
    recs = scalars(tmp_path)
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert {"loss", "l1", "ssim", "kl", "psnr", "latent_std", "lr", "grad_norm", "steps_per_s"} <= set(recs[0])
    assert (tmp_path / "demo_vae" / "visuals" / "vae_step_00000004.mp4").is_file()
    ae = AUTO_ENCODER.build({"type": "CausalVAE", "base_channels": 4, "channel_mult": [1, 1, 1, 1],
                             "latent_channels": 4, "weights": str(ckpt(tmp_path, 4, ".ema.safetensors"))})
    assert ae.encode(torch.zeros(1, 3, 5, 16, 16)).shape == (1, 4, 2, 2, 2)


@pytest.mark.slow
def test_exact_resume_with_gan(tmp_path):
    gan = ["gan.weight=0.1", "gan.start_step=1", "gan.channels=4"]
    assert train(tmp_path / "a", "num_steps=4", "save_ckp_interval=4", *gan) == 0
    assert train(tmp_path / "b", "num_steps=2", "save_ckp_interval=2", *gan) == 0
    assert train(tmp_path / "b", "num_steps=4", "save_ckp_interval=2", *gan) == 0  # resumes at step 2
    a, b = read_state_dict(ckpt(tmp_path / "a", 4)), read_state_dict(ckpt(tmp_path / "b", 4))
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = scalars(tmp_path / "a"), scalars(tmp_path / "b")
    assert [r["step"] for r in rb] == [1, 2, 3, 4] and "d_loss" in ra[2] and "g_loss" in ra[2]
    assert "d_loss" not in ra[0]  # the GAN starts after gan.start_step
    assert [r["loss"] for r in ra] == [r["loss"] for r in rb]


@pytest.mark.slow
def test_freeze_encoder_fine_tunes_the_decoder_and_keeps_the_latents(tmp_path, capsys):
    """freeze: [encoder] from trained weights: the encoder (so every latent) stays bit-identical, the
    decoder learns; a name that is not a submodule, or freezing everything, is a config error."""
    from utils.registry import AUTO_ENCODER

    assert train(tmp_path / "base", "num_steps=2", "save_ckp_interval=2") == 0
    start = ckpt(tmp_path / "base", 2)
    ft = [f"+auto_encoder.weights={start}", "freeze=[encoder]", "num_steps=3", "save_ckp_interval=3"]
    assert train(tmp_path / "ft", *ft) == 0
    a, b = read_state_dict(start), read_state_dict(ckpt(tmp_path / "ft", 3))
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("encoder."))
    assert not all(torch.equal(a[k], b[k]) for k in a if k.startswith("decoder."))
    kw = {"type": "CausalVAE", "base_channels": 4, "channel_mult": [1, 1, 1, 1], "latent_channels": 4}
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    ae0, ae1 = (AUTO_ENCODER.build({**kw, "weights": str(w)}) for w in (start, ckpt(tmp_path / "ft", 3)))
    assert torch.equal(ae0.encode(x), ae1.encode(x))
    assert train(tmp_path / "bad", "num_steps=1", "freeze=[encodr]") == 2
    assert "'encodr' is not a submodule of the auto_encoder; it has encoder, decoder" in capsys.readouterr().err
    assert train(tmp_path / "bad", "num_steps=1", "freeze=[encoder,decoder]") == 2
    assert "nothing to train" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_refuses_another_vae(tmp_path, capsys):
    assert train(tmp_path, "num_steps=1", "save_ckp_interval=1") == 0
    assert train(tmp_path, "num_steps=2", "auto_encoder.latent_channels=8") == 2
    assert "cannot resume" in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ("max_frames=4", "max_frames=4: CausalVAE (temporal_factor 4, causal) encodes 1 + 4 k"),
    ("gan.weight=-1", "gan.weight=-1"),
    ("+loss.lpips=1.0", "loss="),
    ("backend.parallel=fsdp", "backend.parallel='fsdp': train_autoencoder runs parallel none | ddp"),
])
def test_bad_settings_are_one_line_config_errors(tmp_path, capsys, override, message):
    assert train(tmp_path, "num_steps=1", override) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_an_untrainable_auto_encoder_is_refused(tmp_path, capsys):
    cfg = tmp_path / "identity.yaml"
    cfg.write_text(f"_BASE: {CFG}\nauto_encoder: {{_delete_: true, type: Identity}}\n")
    assert main("train", ["--cfg", str(cfg), "log_dir", str(tmp_path), *TINY[:2], "num_steps=1"]) == 2
    assert "Identity cannot be trained by train_autoencoder" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_command_runs(tmp_path):
    """The README command (tiny sizes): exit 0 and a checkpoint."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "train_net.py", "--cfg", str(CFG), "num_steps=2", "log_dir", str(tmp_path),
                        *TINY], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert ckpt(tmp_path, 2).is_file()


def _fit_one_frame(loss_weights, lr, init_logvar=-6.0, steps=80):
    """PSNR after fitting ONE 32x32 ball frame with the engine's defaults, and the empty frame's PSNR."""
    from tools.autoencoders.causal_vae import CausalVAE
    from tools.datasets.synthetic_physics import SyntheticPhysics
    from tools.train.train_autoencoder import DEFAULTS, recon_losses
    from utils.metrics import psnr_per_frame

    torch.manual_seed(0)
    vae = CausalVAE(latent_channels=4, base_channels=8, channel_mult=[1, 2, 2], temporal_downsample=[False, False],
                    init_logvar=init_logvar)
    ds = SyntheticPhysics(resolution=32, num_frames=1, num_balls=2, radius=0.15, seed=3, length=1)
    x = ds[0]["video"][None]
    weights = {**DEFAULTS["loss"], **loss_weights, "ssim": 0.0}
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, betas=DEFAULTS["betas"], weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        recon, mean, logvar = vae(x, generator=gen)
        loss = recon_losses(recon, x, mean, logvar, weights)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        y = vae.decode(vae.encode(x)).clamp(-1, 1)
    empty = torch.as_tensor(ds.background / 127.5 - 1.0, dtype=x.dtype).view(1, 3, 1, 1, 1).expand_as(x)
    return psnr_per_frame(y[0], x[0]).item(), psnr_per_frame(empty[0], x[0]).item()


@pytest.mark.slow
def test_defaults_learn_the_objects_not_only_the_background():
    """Regression: with L1 only, lr 1e-3 and torch's logvar init the CausalVAE stayed at the empty
    background for hundreds of steps. The engine's default loss and lr must draw the balls quickly."""
    from tools.train.train_autoencoder import DEFAULTS

    psnr, empty = _fit_one_frame({}, DEFAULTS["lr"])
    assert psnr > empty + 4.0, (psnr, empty)
