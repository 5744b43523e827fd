"""AUTO_ENCODER AutoencoderKL against diffusers' own encode/decode on tiny random VAEs (no weights shipped)."""
import json
import shutil
import time

import pytest
import torch

from utils.registry import AUTO_ENCODER

diffusers = pytest.importorskip("diffusers")


def tiny_vae(latent_channels=4, scaling_factor=0.5, shift_factor=0.1, groups=8, channels=(8, 16)):
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                                   up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=list(channels),
                                   layers_per_block=1, latent_channels=latent_channels, norm_num_groups=groups,
                                   sample_size=16, scaling_factor=scaling_factor, shift_factor=shift_factor).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(diffusers VAE, its save_pretrained directory)."""
    vae = tiny_vae()
    d = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(d, safe_serialization=True)
    return vae, d


def frames_of(x):  # (B, C, T, H, W) -> (B*T, C, H, W)
    return x.permute(0, 2, 1, 3, 4).reshape(-1, *x.shape[1:2], *x.shape[3:])


def test_parity_with_diffusers_encode_decode(saved):
    ref, d = saved
    ae = AUTO_ENCODER.build({"type": "AutoencoderKL", "path": str(d), "chunk_size": 2})
    assert (ae.latent_channels, ae.spatial_factor, ae.temporal_factor) == (4, 2, 1)
    assert (ae.scale_factor, ae.shift_factor) == (0.5, 0.1)
    x = torch.rand(2, 3, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        z = ae.encode(x)
        want = (ref.encode(frames_of(x)).latent_dist.mode() - 0.1) * 0.5  # (B*T, 4, 8, 8)
        assert z.shape == (2, 4, 3, 8, 8)
        torch.testing.assert_close(frames_of(z), want, atol=1e-5, rtol=1e-5)
        y = ae.decode(z)
        want_y = ref.decode(want / 0.5 + 0.1).sample
        torch.testing.assert_close(frames_of(y), want_y, atol=1e-5, rtol=1e-5)
        whole = AUTO_ENCODER.build({"type": "AutoencoderKL", "path": str(d), "chunk_size": None})
        torch.testing.assert_close(whole.encode(x), z, atol=1e-5, rtol=1e-5)  # chunking changes nothing


def test_posterior_sample_uses_the_passed_generator(saved):
    _, d = saved
    ae = AUTO_ENCODER.build({"type": "AutoencoderKL", "path": str(d), "sample_posterior": True})
    x = torch.rand(2, 3, 2, 16, 16) * 2 - 1
    with torch.no_grad():
        a = ae.encode(x, generator=torch.Generator().manual_seed(1))
        torch.manual_seed(123)  # the global RNG plays no part
        b = ae.encode(x, generator=torch.Generator().manual_seed(1))
        c = ae.encode(x, generator=torch.Generator().manual_seed(2))
        # rank 1 of 2 draws the second half of the global batch's noise
        r1 = ae.encode(x[1:], generator=torch.Generator().manual_seed(1), rank_slice=(1, 2))
        mean = AUTO_ENCODER.build({"type": "AutoencoderKL", "path": str(d)}).encode(x)
        no_gen = ae.encode(x)  # no generator: the posterior mean, never the global RNG
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert torch.equal(no_gen, mean) and not torch.allclose(a, mean)
    torch.testing.assert_close(r1, a[1:], atol=1e-5, rtol=1e-5)


def test_single_safetensors_file_shapes_inferred(tmp_path):
    vae = tiny_vae(groups=32, channels=(32, 32), shift_factor=None)
    vae.save_pretrained(tmp_path / "d", safe_serialization=True)
    single = tmp_path / "my_vae.safetensors"
    shutil.copy(tmp_path / "d" / "diffusion_pytorch_model.safetensors", single)
    with pytest.raises(Exception, match="set variant"):  # no config: the scale is unknown
        AUTO_ENCODER.build({"type": "AutoencoderKL", "path": str(single)})
    ae = AUTO_ENCODER.build({"type": "AutoencoderKL", "path": str(single), "variant": "sdxl"})
    assert (ae.scale_factor, ae.shift_factor) == (0.13025, 0.0)
    x = torch.rand(1, 3, 2, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(frames_of(ae.encode(x)),
                                   vae.encode(frames_of(x)).latent_dist.mode() * 0.13025, atol=1e-5, rtol=1e-5)
    with pytest.raises(Exception, match="16-channel"):
        AUTO_ENCODER.build({"type": "AutoencoderKL", "path": str(single), "variant": "flux"})


def test_sixteen_channels_shift_from_variant_and_config(tmp_path):
    vae = tiny_vae(latent_channels=16, scaling_factor=1.5305, shift_factor=None)
    vae.save_pretrained(tmp_path, safe_serialization=True)
    ae = AUTO_ENCODER.build({"type": "AutoencoderKL", "path": str(tmp_path), "variant": "sd3"})
    assert (ae.latent_channels, ae.scale_factor, ae.shift_factor) == (16, 1.5305, 0.0609)  # config lacks shift
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["shift_factor"] = 0.25
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    ae = AUTO_ENCODER.build({"type": "AutoencoderKL", "path": str(tmp_path), "variant": "flux"})
    assert (ae.scale_factor, ae.shift_factor) == (1.5305, 0.25)  # the checkpoint config wins over the variant
    ae = AUTO_ENCODER.build({"type": "AutoencoderKL", "path": str(tmp_path), "scale_factor": 2.0, "shift_factor": 0.0})
    assert (ae.scale_factor, ae.shift_factor) == (2.0, 0.0)
    x = torch.rand(1, 3, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        assert ae.decode(ae.encode(x)).shape == x.shape


def test_repo_id_from_local_caches_only(saved, tmp_path, monkeypatch):
    _, d = saved
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    t0 = time.time()
    with pytest.raises(Exception, match="not in the Hugging Face cache .* never downloaded") as e:
        AUTO_ENCODER.build({"type": "AutoencoderKL", "path": "someorg/missing-vae"})
    assert time.time() - t0 < 5 and "huggingface-cli download someorg/missing-vae" in str(e.value)
    # a ModelScope cache entry (pipeline layout: the VAE under vae/)
    shutil.copytree(d, tmp_path / "ms" / "models" / "someorg" / "sdxl-vae" / "vae")
    ae = AUTO_ENCODER.build({"type": "AutoencoderKL", "path": "someorg/sdxl-vae"})
    assert ae.latent_channels == 4
    # a Hugging Face cache entry
    snap = tmp_path / "hf" / "models--someorg--hf-vae" / "snapshots" / ("0" * 40)
    shutil.copytree(d, snap)
    (tmp_path / "hf" / "models--someorg--hf-vae" / "refs").mkdir()
    (tmp_path / "hf" / "models--someorg--hf-vae" / "refs" / "main").write_text("0" * 40)
    assert AUTO_ENCODER.build({"type": "AutoencoderKL", "path": "someorg/hf-vae"}).scale_factor == 0.5


def test_bad_paths_are_clear(tmp_path):
    with pytest.raises(Exception, match="does not exist"):
        AUTO_ENCODER.build({"type": "AutoencoderKL", "path": str(tmp_path / "nope")})
    (tmp_path / "w.ckpt").write_bytes(b"x")  # a pickled checkpoint is read with weights_only: not a pickle
    with pytest.raises(Exception, match="refused: cannot be loaded with torch.load"):
        AUTO_ENCODER.build({"type": "AutoencoderKL", "path": str(tmp_path / "w.ckpt")})
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(Exception, match="read are .safetensors files"):
        AUTO_ENCODER.build({"type": "AutoencoderKL", "path": str(tmp_path / "w.onnx")})
    with pytest.raises(Exception, match="without config.json"):
        AUTO_ENCODER.build({"type": "AutoencoderKL", "path": str(tmp_path)})


def to_ldm(sd, n_blocks):
    """A diffusers AutoencoderKL state dict in the original LDM key layout (as in SD/SDXL single-file VAEs)."""
    import re

    out = {}
    for k, v in sd.items():
        k = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2.", k)
        k = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", k)
        k = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
                   lambda m: f"decoder.up.{n_blocks - 1 - int(m[1])}.block.{m[2]}.", k)
        k = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                   lambda m: f"decoder.up.{n_blocks - 1 - int(m[1])}.upsample.", k)
        k = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", k)
        if "mid_block.attentions.0." in k:
            k = k.replace("mid_block.attentions.0.", "mid.attn_1.").replace("group_norm", "norm")
            k = k.replace("to_q", "q").replace("to_k", "k").replace("to_v", "v").replace("to_out.0", "proj_out")
            v = v[:, :, None, None] if v.dim() == 2 else v  # linear -> 1x1 conv
        k = k.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        out["first_stage_model." + k] = v.contiguous()
    return out


def test_single_file_in_the_original_ldm_layout(tmp_path):
    from safetensors.torch import save_file

    vae = tiny_vae(groups=32, channels=(32, 32), shift_factor=None)
    save_file(to_ldm(vae.state_dict(), 2), str(tmp_path / "sd_vae.safetensors"))
    ae = AUTO_ENCODER.build({"type": "AutoencoderKL", "path": str(tmp_path / "sd_vae.safetensors"), "variant": "sd"})
    x = torch.rand(1, 3, 2, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(frames_of(ae.encode(x)),
                                   vae.encode(frames_of(x)).latent_dist.mode() * 0.18215, atol=1e-5, rtol=1e-5)
        z = ae.encode(x)
        torch.testing.assert_close(frames_of(ae.decode(z)), vae.decode(frames_of(z) / 0.18215).sample,
                                   atol=1e-5, rtol=1e-5)
