"""tools/scorers: FVD through a TorchScript feature network, CLIP-T / CLIP-I through a tiny OpenCLIP
model the test builds and trains (nothing is downloaded)."""
from __future__ import annotations

import clip_stand_in
import pytest
import torch
import torch.nn.functional as F
from clip_stand_in import COLORS, PROMPTS, frames

from tools.scorers.i3d import STYLEGAN_V_KWARGS, I3DFeatures, fvd, preprocess


class _StandIn(torch.nn.Module):
    """A stand-in for StyleGAN-V's I3D with its call signature: per-channel means and stds of the
    frames, with the keyword arguments it must receive checked."""

    def forward(self, x: torch.Tensor, rescale: bool = True, resize: bool = True,
                return_features: bool = False) -> torch.Tensor:
        assert not rescale and not resize and return_features
        assert x.shape[1:] == (3, 16, 224, 224)
        return torch.cat([x.mean(dim=(2, 3, 4)), x.std(dim=(2, 3, 4)), x[:, :, :, ::56, ::56].mean(2).flatten(1)], 1)


@pytest.fixture(scope="module")
def torchscript_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("i3d") / "i3d_torchscript.pt"
    torch.jit.script(_StandIn()).save(str(path))
    return path


def _videos(n: int, shift: float = 0.0, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(3, 16, 32, 48, generator=g) * 1.2 - 0.6 + shift).clamp(-1, 1) for _ in range(n)]


def test_preprocess_is_stylegan_v_resize_crop_and_range():
    video = torch.linspace(-1, 1, 48).view(1, 1, 1, 48).expand(3, 20, 32, 48).contiguous()
    x = preprocess(video)
    assert x.shape == (3, 16, 224, 224)  # first 16 frames, shorter side 32 -> 224, centre crop of 336
    full = F.interpolate(video[:, :16], size=(224, 336), mode="bilinear", align_corners=False)
    torch.testing.assert_close(x, full[:, :, :, 56:280])
    assert x.min() >= -1 and x.max() <= 1
    tall = preprocess(torch.zeros(3, 9, 40, 20), size=56, num_frames=None)
    assert tall.shape == (3, 9, 56, 56)
    with pytest.raises(ValueError, match="num_frames=16"):
        preprocess(torch.zeros(3, 8, 32, 32))


def test_fvd_of_identical_sets_is_zero_and_grows_with_a_shift(torchscript_file):
    net = I3DFeatures(str(torchscript_file), batch_size=3)
    assert net.call_kwargs == STYLEGAN_V_KWARGS
    real = net(_videos(8))
    assert real.shape == (8, 3 + 3 + 48) and real.dtype == torch.float64
    assert fvd(real, real) == pytest.approx(0.0, abs=1e-8)
    other = net(_videos(8, seed=1))  # the same distribution, other samples: small
    shifted = net(_videos(8, shift=0.3, seed=1))
    far = net(_videos(8, shift=0.6, seed=1))
    assert 0 < fvd(other, real) < fvd(shifted, real) < fvd(far, real)


def test_missing_i3d_file_is_one_line_naming_the_setting(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        I3DFeatures(str(tmp_path / "nope.pt"), setting="i3d_path")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("i3d_path=") and "i3d_torchscript.pt" in msg


# ---------------------------------------------------------------------------- CLIP
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return clip_stand_in.tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.mark.slow  # the fixture trains a tiny CLIP (~5 s)
def test_clip_t_scores_the_matching_prompt_higher(tiny_clip):
    from tools.scorers.clip import CLIPScorer

    scorer = CLIPScorer(tiny_clip["arch"], tiny_clip["pretrained"], tiny_clip["config_file"])
    # the embedder's pooled text feature is open_clip's encode_text
    ids = __import__("open_clip").get_tokenizer(clip_stand_in.ARCH)(PROMPTS)
    with torch.no_grad():
        torch.testing.assert_close(scorer.text_embeddings(PROMPTS), tiny_clip["model"].encode_text(ids))
    red = frames(COLORS[0], 5, seed=99).transpose(0, 1)  # (C, T, H, W)
    blue = frames(COLORS[1], 5, seed=98).transpose(0, 1)
    assert scorer.clip_t(red, "a red ball") > scorer.clip_t(red, "a blue ball")
    assert scorer.clip_t(blue, "a blue ball") > scorer.clip_t(blue, "a red ball")


@pytest.mark.slow
def test_clip_i_scores_the_matching_image_higher(tiny_clip):
    from tools.scorers.clip import CLIPScorer

    scorer = CLIPScorer(tiny_clip["arch"], tiny_clip["pretrained"], tiny_clip["config_file"])
    red = frames(COLORS[0], 5, seed=97).transpose(0, 1)
    red_img, blue_img = frames(COLORS[0], 1, seed=1)[0], frames(COLORS[1], 1, seed=2)[0]
    assert scorer.clip_i(red, red_img) > scorer.clip_i(red, blue_img)
    assert scorer.clip_i(red[:, :1].expand(-1, 3, -1, -1), red[:, 0]) == pytest.approx(1.0, abs=1e-5)


def test_missing_clip_weights_is_one_line_naming_the_setting(tmp_path):
    from tools.scorers.clip import CLIPScorer

    with pytest.raises(FileNotFoundError) as e:
        CLIPScorer("ViT-B-32", str(tmp_path / "none.safetensors"), setting="clip_weights")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("clip_weights=") and "never downloaded" in msg
