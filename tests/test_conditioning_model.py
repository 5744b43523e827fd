"""Conditional NextClipTransformer: padded cond tokens are invisible in every attention path,
cond tokens sit just before the first frame (global frame-shift invariance), rolling caches
move the cond keys along."""
import pytest
import torch

from tools.models.next_clip_transformer import NextClipTransformer

D = 5  # cond_dim
LENS = [3, 1]  # real cond tokens per sample, of M = 4


def tiny(**kw):
    m = NextClipTransformer(preset="tiny", in_channels=3, cond_dim=D, **kw)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return m.eval()


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    xn, xc = torch.randn(2, 3, 6, 8, 8, generator=g), torch.randn(2, 3, 6, 8, 8, generator=g)
    clip_lens = torch.tensor([[2, 1, 3], [1, 3, 0]])
    t = torch.rand(2, 3, generator=g)
    cond = torch.randn(2, 4, D, generator=g)
    mask = torch.arange(4)[None] < torch.tensor(LENS)[:, None]
    return xn, xc, clip_lens, t, cond, mask


def _garbled(cond, mask):
    """cond with other values at the padded positions."""
    return torch.where(mask[..., None], cond, torch.full_like(cond, 7.0))


@pytest.mark.slow
@pytest.mark.parametrize("impl,pooled", [("math", False), ("blocks", False), ("flex", False),
                                         ("math", True), ("blocks", True)])
def test_forward_padded_cond_equals_truncated_cond(impl, pooled):
    model = tiny(frame_causal_clean=impl == "blocks", pooled_cond=pooled)
    model.set_attention(impl)
    xn, xc, cl, t, cond, mask = _batch()
    with torch.no_grad():  # FlexAttention has no CPU backward
        out = model(xn, xc, cl, t, cond=cond, cond_mask=mask)
        assert torch.equal(out, model(xn, xc, cl, t, cond=_garbled(cond, mask), cond_mask=mask))
        unmasked = model(xn, xc, cl, t, cond=cond)
        model.set_attention("math")  # the truncated reference (other layouts: no extra flex compiles)
        for b, (m, nf) in enumerate(zip(LENS, (6, 4))):
            solo = model(xn[b:b + 1], xc[b:b + 1], cl[b:b + 1], t[b:b + 1], cond=cond[b:b + 1, :m])
            torch.testing.assert_close(out[b:b + 1, :, :nf], solo[:, :, :nf], atol=1e-5, rtol=1e-4)
    # padded tokens make a difference without the mask (the test can fail)
    assert not torch.allclose(out[1], unmasked[1], atol=1e-4)


@pytest.mark.slow
def test_blocks_equal_math_with_padded_cond_and_any_mask_order():
    """(flex == the truncated reference: test_forward_padded_cond_equals_truncated_cond[flex])"""
    model = tiny()
    xn, xc, cl, t, cond, mask = _batch()
    outs = {}
    with torch.no_grad():
        for impl in ("blocks", "math"):
            model.set_attention(impl)
            outs[impl] = model(xn, xc, cl, t, cond=cond, cond_mask=mask)
        # padding in front / in the middle: the real tokens count, not where they are
        perm = torch.tensor([3, 0, 2, 1])
        shuffled = model(xn, xc, cl, t, cond=cond[:, perm], cond_mask=mask[:, perm])
        # a sample whose cond is all padding == no cond at all
        none_real = model(xn[:1], xc[:1], cl[:1], t[:1], cond=cond[:1], cond_mask=torch.zeros(1, 4, dtype=torch.bool))
        uncond = model(xn[:1], xc[:1], cl[:1], t[:1])
    torch.testing.assert_close(outs["blocks"][0], outs["math"][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(outs["blocks"][1, :, :4], outs["math"][1, :, :4], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(shuffled, outs["math"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(none_real, uncond, atol=1e-5, rtol=1e-4)


def test_blocks_gradients_equal_math_with_padded_cond():
    xn, xc, cl, t, cond, mask = _batch()
    grads = []
    for impl in ("math", "blocks"):
        model = tiny().train()
        model.set_attention(impl)
        model(xn, xc, cl, t, cond=cond, cond_mask=mask)[:, :, :4].square().mean().backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("kw", [dict(), dict(frame_causal_clean=True, rope="3d", time_cond="token"),
                                dict(pooled_cond=True), dict(pooled_cond=True, time_cond="token")])
def test_cached_paths_hide_padded_cond(kw):
    model = tiny(**kw)
    g = torch.Generator().manual_seed(3)
    hist, z = torch.randn(2, 3, 5, 8, 8, generator=g), torch.randn(2, 3, 2, 8, 8, generator=g)
    tt = torch.rand(2, generator=g)
    _, _, _, _, cond, mask = _batch()
    cl = torch.tensor([[2, 3, 2]] * 2)
    t = torch.cat([torch.ones(2, 2), tt[:, None]], 1)
    ref = model(torch.cat([hist, z], 2), torch.cat([hist, 0 * z], 2), cl, t, cond=cond, cond_mask=mask)[:, :, 5:]
    for c in (cond, _garbled(cond, mask)):
        cache = model.encode_history(hist, 0, cond=c, cond_mask=mask, clip_lens=[2, 3])
        assert cache.cond_lens == LENS
        torch.testing.assert_close(model.denoise(z, tt, cache=cache), ref, atol=1e-5, rtol=1e-4)
        c1 = model.encode_history(hist[:, :, :2], cond=c, cond_mask=mask, clip_lens=[2])
        c2 = model.encode_history(hist[:, :, 2:], cache=c1, clip_lens=[3])
        torch.testing.assert_close(model.denoise(z, tt, cache=c2), ref, atol=1e-5, rtol=1e-4)
        # no history: the clip with its (padded) cond == forward on the clip alone
        ref0 = model(z, 0 * z, torch.tensor([[2]] * 2), tt[:, None], cond=cond, cond_mask=mask)
        torch.testing.assert_close(model.denoise(z, tt, cond=c, cond_mask=mask), ref0, atol=1e-5, rtol=1e-4)
    for b, m in enumerate(LENS):  # == the cond truncated to its real tokens
        cache = model.encode_history(hist[b:b + 1], 0, cond=cond[b:b + 1, :m], clip_lens=[2, 3])
        torch.testing.assert_close(model.denoise(z[b:b + 1], tt[b:b + 1], cache=cache), ref[b:b + 1],
                                   atol=1e-5, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("rope", ["1d", "3d"])
@pytest.mark.parametrize("with_cond", [False, True, "pooled"])
def test_outputs_invariant_to_a_global_frame_shift(rope, with_cond):
    model = tiny(rope=rope, pooled_cond=with_cond == "pooled")
    xn, xc, cl, t, cond, mask = _batch()
    c = dict(cond=cond, cond_mask=mask) if with_cond else {}
    with torch.no_grad():
        a = model(xn, xc, cl, t, frame_offset=0, **c)
        b = model(xn, xc, cl, t, frame_offset=100, **c)
        assert (a[0] - b[0]).abs().max() < 1e-4 and (a[1, :, :4] - b[1, :, :4]).abs().max() < 1e-4
        hist, z, tt = xc[:, :, :3], xn[:, :, 3:5], t[:, 0]
        d = [model.denoise(z, tt, cache=model.encode_history(hist, off, clip_lens=[1, 2], **c)) for off in (0, 100)]
        assert (d[0] - d[1]).abs().max() < 1e-4
        d0 = [model.denoise(z, tt, frame_offset=off, **c) for off in (0, 100)]
        assert (d0[0] - d0[1]).abs().max() < 1e-4


def test_drop_frames_moves_the_cond_keys_along():
    model = tiny()
    g = torch.Generator().manual_seed(5)
    hist = torch.randn(2, 3, 5, 8, 8, generator=g)
    _, _, _, _, cond, mask = _batch()
    cache = model.encode_history(hist, 0, cond=cond, cond_mask=mask, clip_lens=[2, 3]).drop_frames(2)
    fresh = model.encode_history(hist[:, :, 2:], 2, cond=cond, cond_mask=mask, clip_lens=[3])
    assert cache.frame_offset == 2 and cache.clip_lens == [3] and cache.cond_lens == LENS
    for ka, kb, va, vb in zip(cache.k, fresh.k, cache.v, fresh.v):
        for b, m in enumerate(LENS):  # real cond keys/values == those of a cache that starts at frame 2
            torch.testing.assert_close(ka[b, :, :m], kb[b, :, :m], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(va[b, :, :m], vb[b, :, :m], atol=1e-5, rtol=1e-4)
        assert ka.shape == kb.shape


def test_pooled_cond_starts_as_the_model_without_it_and_then_conditions_every_noisy_token():
    """Zero-initialised last layer: weights of a model without pooled_cond load (strict=False)
    and give the same outputs; once trained (perturbed), the pooled path changes the output
    even with the cond tokens hidden from attention."""
    base = tiny()
    pooled = NextClipTransformer(preset="tiny", in_channels=3, cond_dim=D, pooled_cond=True).eval()
    missing, unexpected = pooled.load_state_dict(base.state_dict(), strict=False)
    assert sorted(missing) == ["cond_pool.0.bias", "cond_pool.0.weight", "cond_pool.2.bias", "cond_pool.2.weight"]
    assert not unexpected
    xn, xc, cl, t, cond, mask = _batch()
    with torch.no_grad():
        torch.testing.assert_close(pooled(xn, xc, cl, t, cond=cond, cond_mask=mask),
                                   base(xn, xc, cl, t, cond=cond, cond_mask=mask))
        pooled.cond_pool[2].weight.normal_(0, 0.1)
        other = torch.randn_like(cond)
        a = pooled.denoise(xn[:, :, :2], t[:, 0], cond=cond, cond_mask=mask)
        b = pooled.denoise(xn[:, :, :2], t[:, 0], cond=other, cond_mask=mask)
        assert not torch.allclose(a, b, atol=1e-4)
        # the pooled vector is the mean of the real tokens only
        c = pooled.denoise(xn[:, :, :2], t[:, 0], cond=_garbled(cond, mask), cond_mask=mask)
        torch.testing.assert_close(a, c)


def test_pooled_cond_needs_a_condition():
    with pytest.raises(ValueError, match="pooled_cond=True needs a condition"):
        NextClipTransformer(preset="tiny", in_channels=3, pooled_cond=True)
