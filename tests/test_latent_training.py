"""Latent next-clip training with the causal VAE: configs/experiments/latent_tiny/train.yaml on the fly and through
scripts.encode_latents + LatentCache (1 + 4k pixel frames -> 1 + k latent frames)."""
import json
import pathlib

import pytest

from utils.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
CFG = ROOT / "configs" / "experiments" / "latent_tiny" / "train.yaml"
TINY = ["backend.type=cpu", "backend.precision=fp32", "backend.attention=sdpa", "model.preset=tiny",
        "auto_encoder.weights=null", "auto_encoder.base_channels=4", "auto_encoder.channel_mult=[1,1,1,1]",
        "auto_encoder.latent_channels=4", "dataset.resolution=16", "dataset.num_frames=9", "dataset.length=4",
        "max_frames=9", "batch_size=2", "progress=false", "save_ckp_interval=2", "visual=[]"]


def run_dir(tmp_path):
    return tmp_path / "run" / "demo_latent"


@pytest.mark.slow
def test_train_latent_on_the_fly_writes_checkpoints(tmp_path):
    assert main("train", ["--cfg", str(CFG), "log_dir", str(tmp_path / "run"), "num_steps=4", *TINY]) == 0
    ck = run_dir(tmp_path) / "checkpoints"
    assert (ck / "step_00000004.safetensors").is_file() and (ck / "step_00000004.ema.safetensors").is_file()
    cfg = (run_dir(tmp_path) / "config.yaml").read_text()
    assert "CausalVAE" in cfg


def test_encode_latents_then_train_from_the_cache(tmp_path, capsys):
    from scripts.encode_latents import main as encode
    from tools.datasets.latent_cache import LatentCache

    cache = tmp_path / "cache"
    assert encode(["--cfg", str(CFG), "--out", str(cache), *TINY]) == 0
    ds = LatentCache(str(cache))
    assert len(ds) == 4 and ds[0]["latent"].shape == (4, 3, 2, 2)  # 9 pixel frames -> 3 latent frames
    fp = json.loads((cache / "manifest.json").read_text())["fingerprint"]["autoencoder_attrs"]
    assert fp["causal"] is True and fp["temporal_factor"] == 4
    assert main("train", ["--cfg", str(CFG), "log_dir", str(tmp_path / "run"), "num_steps=2", *TINY,
                          f"latent_cache={cache}"]) == 0
    assert (run_dir(tmp_path) / "checkpoints" / "step_00000002.safetensors").is_file()
    # max_frames=5 -> 2 of the 3 cached latent frames; 8 pixel frames cannot be encoded (1 + 4k)
    assert main("train", ["--cfg", str(CFG), "log_dir", str(tmp_path / "run5"), "num_steps=1", *TINY,
                          f"latent_cache={cache}", "max_frames=5"]) == 0
    assert main("train", ["--cfg", str(CFG), "log_dir", str(tmp_path / "run8"), "num_steps=1", *TINY,
                          f"latent_cache={cache}", "max_frames=8"]) == 2
    assert "max_frames=8" in capsys.readouterr().err


def test_model_in_channels_mismatch_is_a_config_error(tmp_path, capsys):
    assert main("train", ["--cfg", str(CFG), "log_dir", str(tmp_path / "run"), "num_steps=1", *TINY,
                          "+model.in_channels=3"]) == 2
    err = capsys.readouterr().err
    assert "model.in_channels=3 but the auto_encoder CausalVAE makes 4-channel latents" in err
