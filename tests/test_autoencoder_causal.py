"""CausalVAE: 1+4k frames, chunked == whole, image = 1 frame, tiles without seams, trainable; and the
frame arithmetic of causal VAEs in the engine, the predictor and the model's in_channels."""
import pytest
import torch

from tools.autoencoders.causal_vae import CausalVAE
from utils.config import ConfigError
from utils.registry import AUTO_ENCODER

TINY = {"type": "CausalVAE", "latent_channels": 4, "base_channels": 8, "channel_mult": [1, 1, 1, 1]}


@pytest.fixture(scope="module")
def ae():
    torch.manual_seed(0)
    return AUTO_ENCODER.build(dict(TINY)).eval()


def test_round_trip_shapes_over_1_plus_4k_frames(ae):
    assert (ae.temporal_factor, ae.spatial_factor, ae.causal) == (4, 8, True)
    with torch.no_grad():
        for T, t in ((1, 1), (5, 2), (9, 3)):
            z = ae.encode(torch.rand(2, 3, T, 16, 24) * 2 - 1)
            assert z.shape == (2, 4, t, 2, 3) and ae.latent_frames(T) == t and ae.pixel_frames(t) == T
            assert ae.decode(z).shape == (2, 3, T, 16, 24)
    with pytest.raises(ValueError, match=r"1 \+ 4 k"):
        ae.encode(torch.zeros(1, 3, 8, 16, 16))


def _assert_same_codec(other, ae, x):
    """``other`` encodes ``x`` and decodes the latents exactly as ``ae`` does; returns ae's latents."""
    with torch.no_grad():
        z = ae.encode(x)
        torch.testing.assert_close(other.encode(x), z, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(other.decode(z), ae.decode(z), atol=1e-5, rtol=1e-5)
    return z


def test_chunked_equals_whole_video(ae):
    x = torch.rand(1, 3, 13, 16, 16) * 2 - 1
    chunked = AUTO_ENCODER.build({**TINY, "chunk_size": 4})
    chunked.load_state_dict(ae.state_dict())
    _assert_same_codec(chunked, ae, x)
    with pytest.raises(ValueError, match="multiple of temporal_factor"):
        AUTO_ENCODER.build({**TINY, "chunk_size": 3}).encode(x)


def test_image_is_a_one_frame_video(ae):
    x = torch.rand(1, 3, 9, 16, 16) * 2 - 1
    with torch.no_grad():
        z = ae.encode(x)
        z_img = ae.encode(x[:, :, :1])  # causal: the first latent sees only the first frame
        torch.testing.assert_close(z_img, z[:, :, :1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ae.decode(z[:, :, :1]), ae.decode(z)[:, :, :1], atol=1e-5, rtol=1e-5)


def test_tiles_have_no_seams():
    torch.manual_seed(1)
    x = torch.rand(1, 3, 1, 128, 128) * 2 - 1  # larger than a tile + 2 margins (46 px)
    small = {**TINY, "base_channels": 4}
    ae = AUTO_ENCODER.build(small).eval()
    tiled = AUTO_ENCODER.build({**small, "tile_size": 32})
    tiled.load_state_dict(ae.state_dict())
    z = _assert_same_codec(tiled, ae, x)
    with torch.no_grad():
        tiled.enc_margin = 8  # a margin short of the receptive field shows seams: the check can fail
        assert (tiled.encode(x) - z).abs().max() > 1e-2
    with pytest.raises(ValueError, match="tile_size=20"):
        CausalVAE(tile_size=20)


def test_trainable_and_weights_reload(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    vae = CausalVAE(latent_channels=4, base_channels=8, channel_mult=(1, 1, 1, 1))
    x = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    losses = []
    for i in range(8):
        recon, mean, logvar = vae(x, generator=torch.Generator().manual_seed(i))
        loss = (recon - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] and mean.shape == (2, 4, 2, 2, 2)
    path = tmp_path / "vae.safetensors"
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(path))
    back = AUTO_ENCODER.build({**TINY, "weights": str(path)}).eval()
    vae.eval()
    with torch.no_grad():
        torch.testing.assert_close(back.encode(x), vae.encode(x))


def test_frame_arithmetic_helpers():
    from tools.autoencoders.base import VideoAutoencoder

    ident = AUTO_ENCODER.build({"type": "Identity"})
    causal = CausalVAE(base_channels=4, channel_mult=(1, 1, 1, 1))
    pooled = VideoAutoencoder()
    pooled.temporal_factor = 4
    assert [ident.latent_frames(t) for t in (1, 7)] == [1, 7] and ident.valid_frames(7)
    assert [causal.latent_frames(t) for t in (1, 5, 17)] == [1, 2, 5] and causal.pixel_frames(5) == 17
    assert not causal.valid_frames(16) and causal.nearest_frames(16) == 17  # the nearest valid count
    assert pooled.latent_frames(16) == 4 and not pooled.valid_frames(17) and pooled.nearest_frames(17) == 16
    with pytest.raises(ValueError, match=r"max_frames=16: .*1 \+ 4 k.*use e.g. max_frames=17"):
        causal.check_frames(16, "max_frames")


def test_model_in_channels_follow_the_autoencoder():
    from tools.autoencoders.base import model_cfg_with_channels

    causal = CausalVAE(latent_channels=8, base_channels=4, channel_mult=(1, 1, 1, 1))
    assert model_cfg_with_channels({"type": "NextClipTransformer"}, causal)["in_channels"] == 8
    assert model_cfg_with_channels({"in_channels": 8}, causal)["in_channels"] == 8
    with pytest.raises(ConfigError, match="model.in_channels=3 but the auto_encoder CausalVAE makes 8-channel"):
        model_cfg_with_channels({"in_channels": 3}, causal)


def test_engine_latents_of_counts_causal_frames(ae):
    from tools.train.train_next_clip import check_autoencoder_frames, latents_of

    cached = {"latent": torch.zeros(2, 4, 3, 2, 2)}  # 9 pixel frames -> 1 + 2 latent frames
    assert latents_of(cached, ae, 9, "cpu").shape[2] == 3  # T // 4 = 2 before the fix
    with pytest.raises(ValueError, match="fewer than the 3"):
        latents_of({"latent": torch.zeros(2, 4, 2, 2, 2)}, ae, 9, "cpu")
    assert latents_of({"video": torch.zeros(1, 3, 9, 16, 16)}, ae, 9, "cpu").shape == (1, 4, 3, 2, 2)
    check_autoencoder_frames(ae, 9, None)
    with pytest.raises(ConfigError, match="max_frames=8"):
        check_autoencoder_frames(ae, 8, None)


def test_engine_passes_the_step_generator_to_a_stochastic_encode():
    from tools.train.train_next_clip import latents_of, step_generator

    torch.manual_seed(0)
    vae = CausalVAE(base_channels=4, channel_mult=(1, 1, 1, 1), sample_posterior=True).eval()
    batch = {"video": torch.rand(2, 3, 5, 16, 16) * 2 - 1}
    a = latents_of(batch, vae, 5, "cpu", step_generator(1, 3, 0))
    torch.manual_seed(99)
    assert torch.equal(a, latents_of(batch, vae, 5, "cpu", step_generator(1, 3, 0)))
    assert not torch.equal(a, latents_of(batch, vae, 5, "cpu", step_generator(1, 4, 0)))


def _predict_cfg(tmp_path, context, max_frames):
    from utils.config import load_config
    from utils.registry import INFER_ENGINE

    cfg = tmp_path / "p.yaml"
    cfg.write_text(f"""TASK_TYPE: predict_next_clip
backend: {{type: cpu, precision: fp32, attention: sdpa}}
model: {{type: NextClipTransformer, preset: tiny, patch_size: 2}}
auto_encoder: {{type: CausalVAE, latent_channels: 4, base_channels: 8, channel_mult: [1, 1, 1, 1]}}
resolution: [16, 16]
context_frames: {context}
max_frames: {max_frames}
clip_len: 1
window: 4
num_sample_steps: 2
""")
    return load_config(cfg, registry=INFER_ENGINE)


def test_predictor_with_a_causal_vae(tmp_path):
    from tools.inferences.predictor import Predictor

    p = Predictor(_predict_cfg(tmp_path, 5, 13))
    assert p.model.in_channels == 4  # from the auto_encoder: the preset's value is not used
    video = p.predict(torch.rand(3, 5, 16, 16) * 2 - 1, seed=1)
    assert video.shape == (3, 13, 16, 16)  # 1 + 4 * 3 frames: 2 latent context + 2 generated
    assert p.predict(None, seed=1, num_frames=9).shape == (3, 9, 16, 16)
    with pytest.raises(ConfigError, match=r"context_frames=4 pixel frames .* 1 \+ 4 k .* context_frames: 5"):
        Predictor(_predict_cfg(tmp_path, 4, 13))


@pytest.mark.parametrize("context", [0, 5])
def test_rollout_video_counts_latent_frames_of_a_causal_vae(tmp_path, context):
    """The training-time sample video generates latent_frames(T) - context latents, so it shows as
    many frames as the batch: 13 pixel frames = 4 latent frames (from nothing, 13 // 4 = 3 latents
    would decode to only 9 frames)."""
    from tools.inferences.predictor import Predictor
    from tools.visuals.rollout_video import RolloutVideo
    from utils.video_io import probe_video

    p = Predictor(_predict_cfg(tmp_path, 5, 13))
    hook = RolloutVideo(num_samples=1, context_frames=context, clip_len=1, window=4, num_sample_steps=1)
    state = {"model": p.model, "diffusion": p.diffusion, "autoencoder": p.autoencoder, "backend": p.backend,
             "embedder": p.embedder, "batch": {"video": torch.rand(1, 3, 13, 16, 16) * 2 - 1}, "step": 3,
             "run_dir": tmp_path, "cfg": p.cfg}
    (path,) = hook(state)
    assert probe_video(path).num_frames == 13


def test_residual_shortcuts_pair_frames_causally_and_invert():
    """DC-AE style shortcuts: Downsample's parameter-free path is space-time-to-channel of frame pairs
    (2j - 1, 2j), the first frame paired with itself, averaged over 2x2 pixels; Upsample's undoes it
    (nearest upsampling, the first frame once)."""
    import torch.nn.functional as F

    from tools.autoencoders.causal_vae import Downsample, Upsample, channel_fit

    x = torch.randn(2, 4, 5, 8, 8)
    down, up = Downsample(4, 8, temporal=True), Upsample(8, 4, temporal=True)
    s = channel_fit(down._space_to_channel(x), 8)
    pooled = F.avg_pool3d(torch.cat([x[:, :, :1], x], dim=2), (1, 2, 2))  # (2, 4, 6, 4, 4)
    torch.testing.assert_close(s, pooled.unflatten(2, (3, 2)).transpose(2, 3).reshape(2, 8, 3, 4, 4))
    back = up._channel_to_space(s)
    nearest = F.interpolate(pooled[:, :, 1:], scale_factor=(1, 2, 2), mode="nearest")
    torch.testing.assert_close(back, nearest)
    with torch.no_grad():
        y_down, y_up = down(x), up(s)
        down.shortcut = up.shortcut = False  # forward adds exactly these paths to the convs
        torch.testing.assert_close(y_down - down(x), s)
        torch.testing.assert_close(y_up - up(s), back)


def test_random_window_start_gives_the_history_of_a_sliding_rollout(ae):
    """window_start: random cuts the latent window of a longer item at a random latent frame: with a
    causal VAE the window then starts with a 4-frame latent (what a sliding-window rollout's history
    starts with past the first window), never re-encodes a later frame as a first frame, is the same
    from cached latents as from videos, and N ranks draw the starts of the single-process global batch."""
    from tools.autoencoders.base import encode
    from tools.train.train_next_clip import latents_of, step_generator

    video = torch.rand(4, 3, 19, 16, 16) * 2 - 1        # 19 frames: the encodable prefix is 17 = 5 latents
    with torch.no_grad():
        full = encode(ae, video[:, :, :17])              # (4, C, 5, 2, 2)
    first = latents_of({"video": video}, ae, 9, "cpu", step_generator(1, 0, 0))
    assert torch.allclose(first, full[:, :, :3], atol=1e-5)     # default: the first 9 frames, as before
    starts = set()
    for step in range(6):
        a = latents_of({"video": video}, ae, 9, "cpu", step_generator(1, step, 0), window_start="random")
        assert a.shape == (4, full.shape[1], 3, 2, 2)
        for b in range(4):
            s = [s for s in range(3) if torch.allclose(a[b], full[b, :, s:s + 3], atol=1e-5)]
            assert len(s) == 1, (step, b)
            starts.add(s[0])
        cached = latents_of({"latent": full}, ae, 9, "cpu", step_generator(1, step, 0), window_start="random")
        assert torch.allclose(cached, a, atol=1e-5)
        halves = [latents_of({"latent": full[2 * r:2 * r + 2]}, ae, 9, "cpu", step_generator(1, step, 0),
                             (r, 2), "random") for r in range(2)]
        assert torch.equal(torch.cat(halves), cached)
    assert starts == {0, 1, 2}
    with torch.no_grad():  # cutting the video instead would re-encode frame 4 as a first frame: not the same
        assert not torch.allclose(encode(ae, video[:, :, 4:13])[:, :, 0], full[:, :, 1], atol=1e-3)
