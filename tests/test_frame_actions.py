"""Frame conditions (one action token per frame) in NextClipTransformer: the token belongs to its frame,
so the training forward, the cached denoise and the rolling window carry it as they carry the frame."""
import pytest
import torch

from tools.models.next_clip_transformer import NextClipTransformer

D = 6  # frame_cond_dim


def tiny(**kw):
    kw = {"preset": "tiny", "in_channels": 3, "patch_size": 4, "frame_cond_dim": D, **kw}
    m = NextClipTransformer(**kw)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return m.eval()


def _inputs(seed=0, B=2, Fr=6, hw=8):
    g = torch.Generator().manual_seed(seed)
    xn, xc = torch.randn(B, 3, Fr, hw, hw, generator=g), torch.randn(B, 3, Fr, hw, hw, generator=g)
    acts = torch.randn(B, Fr, D, generator=g)
    return xn, xc, acts, g


def test_a_model_without_frame_conditions_is_unchanged():
    """frame_cond_dim=0 (the default) builds the same parameters with the same values and outputs."""
    torch.manual_seed(3)
    a = NextClipTransformer(preset="tiny", in_channels=3, patch_size=4)
    torch.manual_seed(3)
    b = NextClipTransformer(preset="tiny", in_channels=3, patch_size=4, frame_cond_dim=0)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert "frame_cond_proj.weight" in tiny().state_dict()
    xn, xc, _, _ = _inputs()
    cl, t = torch.tensor([[2, 4], [3, 3]]), torch.rand(2, 2)
    with torch.no_grad():
        assert torch.equal(a(xn, xc, cl, t), b(xn, xc, cl, t))


def test_a_frame_conditioned_model_needs_its_frame_conditions():
    model = tiny()
    xn, xc, acts, _ = _inputs()
    cl, t = torch.tensor([[2, 4]] * 2), torch.rand(2, 2)
    with pytest.raises(ValueError, match="frame_cond_dim=6: every call needs frame_cond"):
        model(xn, xc, cl, t)
    with pytest.raises(ValueError, match="embedder.null"):
        model.denoise(xn[:, :, :2], t[:, 0])
    with pytest.raises(AssertionError, match="frame_cond must be"):
        model(xn, xc, cl, t, frame_cond=acts[:, :5])


@pytest.mark.parametrize("rope", ["1d", "3d"])
def test_cached_denoise_equals_the_forward_with_actions(rope):
    """recompute (one encode of the history), an extended cache and no cache equal the training forward."""
    model = tiny(rope=rope)
    xn, xc, acts, g = _inputs()
    hist, z, tt = xc[:, :, :4], xn[:, :, 4:], torch.rand(2, generator=g)
    cl = torch.tensor([[1, 3, 2]] * 2)
    t = torch.cat([torch.ones(2, 2), tt[:, None]], 1)
    with torch.no_grad():
        ref = model(torch.cat([hist, z], 2), torch.cat([hist, 0 * z], 2), cl, t, frame_cond=acts)[:, :, 4:]
        cache = model.encode_history(hist, 0, clip_lens=[1, 3], frame_cond=acts[:, :4])
        got = model.denoise(z, tt, cache=cache, frame_cond=acts[:, 4:])
        c1 = model.encode_history(hist[:, :, :1], 0, clip_lens=[1], frame_cond=acts[:, :1])
        c2 = model.encode_history(hist[:, :, 1:], cache=c1, clip_lens=[3], frame_cond=acts[:, 1:4])
        got2 = model.denoise(z, tt, cache=c2, frame_cond=acts[:, 4:])
        alone = model.denoise(z, tt, frame_cond=acts[:, 4:])
        ref0 = model(z, 0 * z, torch.tensor([[2]] * 2), tt[:, None], frame_cond=acts[:, 4:])
        # the clip's own actions reach the cached denoise (the test can fail)
        other = model.denoise(z, tt, cache=cache, frame_cond=acts[:, 4:].flip(0))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got2, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(alone, ref0, atol=1e-5, rtol=1e-4)
    assert (other - ref).abs().max() > 1e-3


def test_an_action_changes_only_its_own_clip_and_later_ones():
    """Causality: the action of frame f (clip c) changes the outputs of clips >= c only."""
    model = tiny()
    xn, xc, acts, _ = _inputs(B=1)
    cl, t = torch.tensor([[2, 2, 2]]), torch.tensor([[0.3, 0.6, 0.2]])
    with torch.no_grad():
        ref = model(xn, xc, cl, t, frame_cond=acts)
        for f, first_changed in ((1, 0), (2, 2), (3, 2), (5, 4)):
            changed = acts.clone()
            changed[:, f] += 1.0
            diff = (model(xn, xc, cl, t, frame_cond=changed) - ref).abs().amax(dim=(0, 1, 3, 4))  # (F,)
            assert torch.all(diff[:first_changed] == 0), (f, diff)
            assert torch.all(diff[first_changed:first_changed + 2] > 1e-4), (f, diff)


def test_blocks_equal_math_and_padded_frames_are_invisible():
    model = tiny(frame_causal_clean=True)
    xn, xc, acts, _ = _inputs()
    cl, t = torch.tensor([[2, 1, 3], [1, 3, 0]]), torch.rand(2, 3)
    garbled = acts.clone()
    garbled[1, 4:] = 9.0  # sample 1 has 4 frames: its frames 4, 5 are padding
    outs = {}
    with torch.no_grad():
        for impl in ("blocks", "math"):
            model.set_attention(impl)
            outs[impl] = model(xn, xc, cl, t, frame_cond=acts)
        pad = model(xn, xc, cl, t, frame_cond=garbled)
    torch.testing.assert_close(outs["blocks"][0], outs["math"][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(outs["blocks"][1, :, :4], outs["math"][1, :, :4], atol=1e-5, rtol=1e-4)
    assert torch.equal(pad[:, :, :4], outs["math"][:, :, :4]) and torch.equal(pad[0], outs["math"][0])


def test_blocks_gradients_equal_math_with_actions():
    xn, xc, acts, _ = _inputs()
    cl, t = torch.tensor([[2, 1, 3], [1, 3, 0]]), torch.rand(2, 3)
    grads = []
    for impl in ("math", "blocks"):
        model = tiny().train()
        model.set_attention(impl)
        model(xn, xc, cl, t, frame_cond=acts)[:, :, :4].square().mean().backward()
        grads.append([p.grad for p in model.parameters()])
    assert grads[0][-1] is not None
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    names = [n for n, _ in tiny().named_parameters()]
    assert grads[0][names.index("frame_cond_proj.weight")].abs().sum() > 0  # the actions are learned


@pytest.mark.parametrize("rope", ["1d", "3d"])
def test_outputs_invariant_to_a_global_frame_shift_with_actions(rope):
    model = tiny(rope=rope)
    xn, xc, acts, g = _inputs()
    cl, t = torch.tensor([[2, 1, 3], [1, 3, 0]]), torch.rand(2, 3, generator=g)
    with torch.no_grad():
        a = model(xn, xc, cl, t, frame_offset=0, frame_cond=acts)
        b = model(xn, xc, cl, t, frame_offset=100, frame_cond=acts)
        assert (a[0] - b[0]).abs().max() < 1e-4 and (a[1, :, :4] - b[1, :, :4]).abs().max() < 1e-4
        hist, z, tt = xc[:, :, :3], xn[:, :, 3:5], t[:, 0]
        d = [model.denoise(z, tt, frame_cond=acts[:, 3:5],
                           cache=model.encode_history(hist, off, clip_lens=[1, 2], frame_cond=acts[:, :3]))
             for off in (0, 100)]
        assert (d[0] - d[1]).abs().max() < 1e-4


def test_the_rolling_window_carries_each_frames_action():
    """With one block a cached frame's keys depend on the frame alone: after dropping the oldest frames
    the cache equals a fresh encode of the kept frames with THEIR actions (at the same positions), and
    not one with the actions shifted by a frame."""
    model = tiny(depth=1)
    xn, xc, acts, g = _inputs()
    hist, z, tt = xc[:, :, :5], xn[:, :, 5:6], torch.rand(2, generator=g)
    with torch.no_grad():
        cache = model.encode_history(hist, 0, clip_lens=[1, 1, 1, 1, 1], frame_cond=acts[:, :5]).drop_frames(2)
        fresh = model.encode_history(hist[:, :, 2:], 2, clip_lens=[1, 1, 1], frame_cond=acts[:, 2:5])
        shifted = model.encode_history(hist[:, :, 2:], 2, clip_lens=[1, 1, 1], frame_cond=acts[:, 1:4])
        assert cache.frame_offset == 2 and cache.tokens_per_frame == 4 + 1
        torch.testing.assert_close(cache.k[0], fresh.k[0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(cache.v[0], fresh.v[0], atol=1e-6, rtol=1e-5)
        got = model.denoise(z, tt, cache=cache, frame_cond=acts[:, 5:6])
        torch.testing.assert_close(got, model.denoise(z, tt, cache=fresh, frame_cond=acts[:, 5:6]),
                                   atol=1e-5, rtol=1e-4)
        assert (got - model.denoise(z, tt, cache=shifted, frame_cond=acts[:, 5:6])).abs().max() > 1e-4


def test_features_drop_the_action_slot():
    model = tiny()
    _, xc, acts, _ = _inputs()
    with torch.no_grad():
        (f,) = model.features(xc, clip_len=2, frame_cond=acts)
        cache = model.encode_history(xc, 0, clip_lens=[2, 2, 2], frame_cond=acts)
    assert f.shape == (2, 6, 2, 2, 64)
    assert cache.k[0].shape[2] == 6 * (4 + 1)


def test_the_output_head_drops_the_action_slot():
    """Without blocks every output token depends on its own input token only: the action changes no
    output pixel (its slot is dropped), a patch of the noisy frame changes exactly its own output patch."""
    model = tiny(depth=0)
    xn, xc, acts, _ = _inputs(B=1, Fr=2)
    cl, t = torch.tensor([[1, 1]]), torch.tensor([[0.3, 0.6]])
    with torch.no_grad():
        ref = model(xn, xc, cl, t, frame_cond=acts)
        assert torch.equal(model(xn, xc, cl, t, frame_cond=acts + 1.0), ref)
        for f, (r, c) in ((0, (0, 1)), (1, (1, 0))):
            moved = xn.clone()
            moved[:, :, f, 4 * r:4 * r + 4, 4 * c:4 * c + 4] += 1.0  # patch (r, c) of frame f
            diff = (model(moved, xc, cl, t, frame_cond=acts) - ref).abs().amax(1)[0]  # (F, H, W)
            changed = (diff > 0).nonzero()
            assert changed[:, 0].unique().tolist() == [f]
            assert set(changed[:, 1].div(4, rounding_mode="floor").tolist()) == {r}
            assert set(changed[:, 2].div(4, rounding_mode="floor").tolist()) == {c}


@pytest.mark.slow
def test_flex_equals_math_with_actions():
    model = tiny()
    xn, xc, acts, _ = _inputs()
    cl, t = torch.tensor([[2, 1, 3], [1, 3, 0]]), torch.rand(2, 3)
    with torch.no_grad():  # FlexAttention has no CPU backward
        model.set_attention("math")
        ref = model(xn, xc, cl, t, frame_cond=acts)
        model.set_attention("flex")
        got = model(xn, xc, cl, t, frame_cond=acts)
    torch.testing.assert_close(got[0], ref[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got[1, :, :4], ref[1, :, :4], atol=1e-5, rtol=1e-4)
