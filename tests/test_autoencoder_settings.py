"""Autoencoder size and shape settings give one line (exit 2) naming the setting, before the run when
possible (--dry-run): a resolution the spatial factor does not divide (CausalVAE next-clip and VAE
training, AutoencoderKL next-clip training), max_frames a causal VAE cannot encode (nearest valid count
suggested), latent_channels=0 and channel_mult=[]."""
from __future__ import annotations

import pytest
import torch

from utils.cli import main
from utils.registry import AUTO_ENCODER

VAE = ("{type: CausalVAE, latent_channels: 4, base_channels: 4, channel_mult: [1, 2, 2], "
       "temporal_downsample: [true, true]}")  # spatial 4, temporal 4 (1 + 4k frames)

NEXT_CLIP = """
TASK_TYPE: train_next_clip
name: latent
backend: {{type: cpu, precision: fp32, attention: sdpa}}
model: {{type: NextClipTransformer, preset: tiny, patch_size: 1, rope: 3d}}
diffusion: {{type: RectifiedFlow, prediction: x1}}
auto_encoder: {ae}
dataset: {{type: SyntheticPhysics, resolution: 16, num_frames: 5, length: 8, seed: 0}}
max_frames: 5
clip_sampling: {{mode: fixed, clip_len: 1}}
batch_size: 1
num_steps: 1
save_ckp_interval: 1000
viz_interval: 1000
progress: false
"""

TRAIN_VAE = f"""
TASK_TYPE: train_autoencoder
name: vae
backend: {{type: cpu, precision: fp32, attention: sdpa}}
auto_encoder: {VAE}
dataset: {{type: SyntheticPhysics, resolution: 16, num_frames: 5, length: 8, seed: 0}}
max_frames: 5
batch_size: 1
num_steps: 1
save_ckp_interval: 1000
viz_interval: 1000
progress: false
"""


def run(tmp_path, capsys, text, *overrides, dry=True):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text)
    code = main("train", ["--cfg", str(cfg), "log_dir", str(tmp_path / "runs"), *overrides]
                + (["--dry-run"] if dry else []))
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line and not line.startswith("train")]
    return code, err


@pytest.mark.parametrize("text", [NEXT_CLIP.format(ae=VAE), TRAIN_VAE], ids=["next_clip", "train_vae"])
def test_resolution_the_spatial_factor_does_not_divide(tmp_path, capsys, text):
    code, err = run(tmp_path, capsys, text, "dataset.resolution=15")
    assert code == 2 and len(err) == 1, err
    assert "dataset.resolution=15" in err[0] and "multiples of 4" in err[0] and "dataset.resolution=16" in err[0]
    assert not (tmp_path / "runs").exists()  # caught by --dry-run, before any run directory


@pytest.mark.parametrize("text", [NEXT_CLIP.format(ae=VAE), TRAIN_VAE], ids=["next_clip", "train_vae"])
def test_max_frames_a_causal_vae_cannot_encode_suggests_the_nearest(tmp_path, capsys, text):
    code, err = run(tmp_path, capsys, text, "max_frames=4", "dataset.num_frames=8")
    assert code == 2 and len(err) == 1 and "max_frames=4" in err[0] and "use e.g. max_frames=5" in err[0], err


@pytest.mark.parametrize("override,named", [("auto_encoder.latent_channels=0", "latent_channels=0"),
                                            ("auto_encoder.channel_mult=[]", "channel_mult=[]")])
def test_impossible_vae_sizes_fail_the_dry_run(tmp_path, capsys, override, named):
    code, err = run(tmp_path, capsys, TRAIN_VAE, override)
    assert code == 2 and len(err) == 1 and named in err[0], err


@pytest.mark.slow  # diffusers' import
def test_autoencoder_kl_training_with_a_bad_resolution_is_one_line(tmp_path, capsys):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                                  up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 16],
                                  layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=16)
    vae.save_pretrained(tmp_path / "kl", safe_serialization=True)
    text = NEXT_CLIP.format(ae=f"{{type: AutoencoderKL, path: {tmp_path / 'kl'}}}")
    code, err = run(tmp_path, capsys, text, "dataset.resolution=15", "max_frames=4", "dataset.num_frames=4",
                    dry=False)
    assert code == 2 and len(err) == 1, err
    assert "dataset.resolution=15" in err[0] and "AutoencoderKL's spatial_factor=2" in err[0]


def test_nearest_frames_and_the_encode_message_name_only_what_is_wrong():
    from tools.autoencoders.base import nearest_frames

    causal = AUTO_ENCODER.build({"type": "CausalVAE", "latent_channels": 4, "base_channels": 4,
                                 "channel_mult": [1, 2, 2, 2], "temporal_downsample": [True, True, False]})
    assert [nearest_frames(causal, t) for t in (1, 2, 3, 4, 6, 16, 17)] == [1, 1, 1, 5, 5, 17, 17]
    with pytest.raises(ValueError) as e:
        causal.encode(torch.zeros(1, 3, 17, 12, 12))
    assert "T=17" not in str(e.value) and "H, W=[12, 12]" in str(e.value)
    with pytest.raises(ValueError) as e:
        causal.encode(torch.zeros(1, 3, 16, 16, 16))
    assert "T=16" in str(e.value) and "use e.g. 17" in str(e.value) and "spatial_factor" not in str(e.value)
