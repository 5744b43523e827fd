"""NextClipTransformer.features (contract K5) and the Phi-3 layout of the videogpt-3.8b preset."""
import pytest
import torch
from test_model import randomize  # zero-initialised gates would make every block an identity

from tools.models.next_clip_transformer import NextClipTransformer


def tiny(**kw):
    return randomize(NextClipTransformer(preset="tiny", in_channels=3, patch_size=4, rope="3d", **kw)).eval()


def video(B=2, F=6, seed=1):
    return torch.randn(B, 3, F, 8, 12, generator=torch.Generator().manual_seed(seed))


def test_features_shapes_and_layer_indices():
    model = tiny()
    feats = model.features(video(), layers=(0, -1))
    assert [tuple(f.shape) for f in feats] == [(2, 6, 2, 3, 64)] * 2
    assert not torch.equal(feats[0], feats[1])
    with pytest.raises(ValueError, match="out of range: the model has 2 blocks"):
        model.features(video(), layers=(2,))


def test_features_equal_the_hidden_states_of_encode_history():
    """features() is the clean path of the rollout: the same numbers encode_history computes."""
    model = tiny(cond_dim=5)
    x, cond = video(), torch.randn(2, 3, 5)
    seen = []
    hooks = [b.register_forward_hook(lambda m, i, o: seen.append(o)) for b in model.blocks]
    with torch.no_grad():
        model.encode_history(x, frame_offset=2, cond=cond, clip_lens=[3, 3])
    for h in hooks:
        h.remove()
    with torch.no_grad():
        feats = model.features(x, layers=(0, 1), clip_len=3, frame_offset=2, cond=cond)
    for f, h in zip(feats, seen):
        torch.testing.assert_close(f, h[:, 3:].reshape(2, 6, 2, 3, 64))


def test_features_of_a_clip_do_not_see_later_clips():
    model = tiny()
    x = video()
    y = x.clone()
    y[:, :, 4:] += 1.0  # change only the last clip
    a, b = (model.features(v, layers=(-1,), clip_len=2)[0] for v in (x, y))
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4:], b[:, 4:])
    one = model.features(y, layers=(-1,))[0]  # one clip: every frame sees every frame
    assert not torch.allclose(one[:, :4], a[:, :4])


def test_features_frozen_and_fine_tuned():
    model = tiny().train()
    with torch.no_grad():
        assert not model.features(video())[0].requires_grad
    model.features(video(), layers=(0,))[0].square().mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["embed_clean.weight"] is not None and grads["blocks.0.qkv.weight"] is not None
    assert grads["blocks.1.qkv.weight"] is None  # blocks past the deepest layer asked for do not run


@pytest.mark.slow
def test_features_leave_forward_encode_history_and_denoise_unchanged():
    """K5: calling features changes no state: the three outputs are bit-identical after it."""
    model = tiny()
    x = video()
    clip_lens, t = torch.tensor([[2, 2, 2], [3, 3, 0]]), torch.rand(2, 3)

    def outputs():
        with torch.no_grad():
            cache = model.encode_history(x[:, :, :2])
            return model(x, x, clip_lens, t), cache.k[0], model.denoise(x[:, :, 2:4], t[:, 1], cache)

    before = outputs()
    model.features(x, layers=(0, 1), clip_len=2)
    for a, b in zip(before, outputs()):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_videogpt_preset_has_the_phi3_layout():
    """No qk-norm and no bias in any block (Phi-3); the demo preset keeps both (its checkpoint loads)."""
    with torch.device("meta"):
        big = NextClipTransformer(preset="videogpt-3.8b")
        demo = NextClipTransformer(preset="demo", in_channels=3, patch_size=8)
    names = [n for n, _ in big.named_parameters()]
    assert not [n for n in names if n.startswith("blocks.") and n.endswith(".bias")]
    assert not [n for n in names if "q_norm" in n or "k_norm" in n]
    assert all(isinstance(b.q_norm, torch.nn.Identity) for b in big.blocks)
    demo_names = {n for n, _ in demo.named_parameters()}
    assert {"blocks.0.qkv.bias", "blocks.0.mlp.fc1.bias", "blocks.0.q_norm.weight"} <= demo_names


def test_bias_false_model_runs_and_loads_nothing_it_lacks():
    model = tiny(bias=False, qk_norm=False)
    assert model.blocks[0].mlp.fc2.bias is None and model.blocks[0].proj.bias is None
    xn = video()
    out = model(xn, xn, torch.tensor([[3, 3], [3, 3]]), torch.rand(2, 2))
    assert out.shape == xn.shape and torch.isfinite(out).all()


def test_videogpt_features_equal_the_hidden_states_of_encode_history():
    from tools.models.videogpt import VideoGPT

    model = randomize(VideoGPT(preset="tiny", diffusion_token_id=0, image_start_token_id=1,
                               image_end_token_id=2)).eval()
    p, n = model.patch_size, 4
    x = torch.randn(1, model.in_channels, 3, 2 * p, 2 * p, generator=torch.Generator().manual_seed(3))
    seen = []
    hooks = [layer.register_forward_hook(lambda m, i, o: seen.append(o)) for layer in model.llm.layers]
    with torch.no_grad():
        model.encode_history(x, frame_offset=1)
        feats = model.features(x, layers=(0, -1), frame_offset=1)
    for h in hooks:
        h.remove()
    depth = len(model.llm.layers)
    for f, h in zip(feats, (seen[0], seen[depth - 1])):
        assert f.shape == (1, 3, 2, 2, model.hidden)
        torch.testing.assert_close(f, h.reshape(1, 3, n + 2, -1)[:, :, 1:n + 1].reshape(f.shape))
