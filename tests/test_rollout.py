import pytest
import torch
from rollouts import roll

from tools.diffusions.rectified_flow import RectifiedFlow
from tools.inferences.rollout import RolloutSettings, clip_seed, rollout
from tools.models.next_clip_transformer import NextClipTransformer


def make_diffusion():
    return RectifiedFlow(prediction="x1")


def make_model(**kw):
    m = NextClipTransformer(preset="tiny", in_channels=3, **kw)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return m.eval()


CTX = torch.randn(2, 3, 2, 8, 8, generator=torch.Generator().manual_seed(1))
BASE = dict(clip_len=2, steps=3, seed=7)


COND = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(2))
COND_MASK = torch.tensor([[True, True, False], [True, False, False]])  # padded, different real counts
NULL = dict(null_cond=torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(3)),
            null_mask=torch.tensor([[True, False, False]] * 2))
CONDKW = dict(cond=COND, cond_mask=COND_MASK, **NULL)


@pytest.mark.parametrize("pooled", [False, True])
def test_recompute_equals_off_with_sliding_window(pooled):
    model, diff = make_model(cond_dim=4, pooled_cond=pooled), make_diffusion()
    kw = dict(BASE, num_clips=4, window=4, history_guide_scale=1.5, guide_scale=3.0, **CONDKW)
    off = roll(model, diff, CTX, kv_cache="off", **kw)
    rec = roll(model, diff, CTX, kv_cache="recompute", **kw)
    assert off.shape == (2, 3, 2 + 8, 8, 8)
    assert torch.equal(off[:, :, :2], CTX)
    torch.testing.assert_close(rec, off, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("fcc,cond", [(False, False), (True, False), (False, True), (False, "pooled")])
def test_rolling_equals_off_until_window_slides(fcc, cond):
    model, diff = make_model(frame_causal_clean=fcc, cond_dim=4 if cond else 0,
                             pooled_cond=cond == "pooled"), make_diffusion()
    kw = dict(BASE, num_clips=3, window=100, history_guide_scale=1.5, history_noise=0.95)
    if cond:
        kw.update(guide_scale=3.0, **CONDKW)
    off = roll(model, diff, CTX, kv_cache="off", **kw)
    rol = roll(model, diff, CTX, kv_cache="rolling", **kw)
    torch.testing.assert_close(rol, off, atol=1e-5, rtol=1e-4)
    # once the window slides, rolling is an approximation (runs, finite, differs)
    kw.update(window=3)
    rol2 = roll(model, diff, CTX, kv_cache="rolling", **kw)
    off2 = roll(model, diff, CTX, kv_cache="off", **kw)
    assert torch.isfinite(rol2).all() and rol2.shape == off.shape
    torch.testing.assert_close(rol2[:, :, :4], off2[:, :, :4], atol=1e-5, rtol=1e-4)  # before the slide
    assert not torch.allclose(rol2, off2, atol=1e-5)


def test_clips_get_different_noise_and_seed_is_reproducible():
    assert len({clip_seed(0, i) for i in range(100)}) == 100
    model, diff = make_model(), make_diffusion()
    # with an all-zero model the prediction is 0, so the sample is a deterministic map of the noise
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    a = roll(model, diff, None, shape=(1, 3, 8, 8), num_clips=3, window=8, **BASE)
    b = roll(model, diff, None, shape=(1, 3, 8, 8), num_clips=3, window=8, **BASE)
    torch.testing.assert_close(a, b)
    c = roll(model, diff, None, shape=(1, 3, 8, 8), num_clips=3, window=8, **dict(BASE, seed=8))
    assert not torch.allclose(a, c)
    model2 = make_model()
    v = roll(model2, diff, None, shape=(1, 3, 8, 8), num_clips=3, window=8, **BASE)
    # the pure noise of different clips differs -> use a fresh stand-in sampler returning z
    class Identity:
        def sample(self, pred_fn, z, **kw):
            return z
    n = roll(model2, Identity(), None, shape=(1, 3, 8, 8), num_clips=3, window=8, **BASE)
    clips = n[:, :, 0:2], n[:, :, 2:4], n[:, :, 4:6]
    assert not torch.allclose(clips[0], clips[1]) and not torch.allclose(clips[1], clips[2])
    assert torch.isfinite(v).all()


def test_rolling_moves_cond_keys_when_the_window_slides():
    """One layer: cached keys do not depend on other frames, so rolling == recompute even after
    the window slid -- only if the cached cond keys move along with the window."""
    model, diff = make_model(cond_dim=4, depth=1), make_diffusion()
    kw = dict(BASE, num_clips=4, window=3, guide_scale=2.0, **CONDKW)
    rol = roll(model, diff, CTX, kv_cache="rolling", **kw)
    torch.testing.assert_close(rol, roll(model, diff, CTX, kv_cache="recompute", **kw), atol=1e-5, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["off", "recompute", "rolling"])
def test_guide_scales_one_equal_no_guidance_and_guidance_changes_output(mode):
    model, diff = make_model(cond_dim=4), make_diffusion()
    kw = dict(BASE, num_clips=2, window=8, cond=COND, cond_mask=COND_MASK, kv_cache=mode)
    plain = roll(model, diff, CTX, **kw)
    ones = roll(model, diff, CTX, history_guide_scale=1.0, guide_scale=1.0, **NULL, **kw)
    torch.testing.assert_close(plain, ones, atol=0, rtol=0)
    by_cond = roll(model, diff, CTX, guide_scale=3.0, **NULL, **kw)
    by_hist = roll(model, diff, CTX, history_guide_scale=2.0, **kw)
    both = roll(model, diff, CTX, history_guide_scale=2.0, guide_scale=3.0, **NULL, **kw)
    for out in (by_cond, by_hist, both):
        assert not torch.allclose(plain, out, atol=1e-4)
    assert not torch.allclose(by_cond, both, atol=1e-4) and not torch.allclose(by_hist, both, atol=1e-4)


class _Probe:
    """A stand-in diffusion that evaluates pred_fn on the same noisy clip at fixed model times
    and returns it unchanged (so every call sees the same history)."""
    TIMES = (0.0, 0.25, 0.5, 0.75)

    def __init__(self):
        self.preds = []

    def sample(self, pred_fn, z, **kw):
        self.preds.append([pred_fn(z, torch.full((z.shape[0],), t)) for t in self.TIMES])
        return z


# (scale, interval) setting of the guided term, the other term's fixed setting, the interval tried
TERMS = {"condition": ("guide_scale", "guide_interval", dict(history_guide_scale=1.5), (0.3, 0.6)),
         "history": ("history_guide_scale", "history_guide_interval", dict(guide_scale=2.0), (0.0, 0.5))}


@pytest.mark.slow
@pytest.mark.parametrize("term", sorted(TERMS))
@pytest.mark.parametrize("mode", ["off", "recompute", "rolling"])
def test_guide_interval_applies_its_term_only_inside_it(mode, term):
    scale_key, interval_key, other, (lo, hi) = TERMS[term]
    model = make_model(cond_dim=4)
    kw = dict(BASE, num_clips=2, window=8, kv_cache=mode, **CONDKW, **other)
    runs = {}
    for name, extra in (("plain", {scale_key: 1.0}), ("guided", {scale_key: 3.0}),
                        ("inside", {scale_key: 3.0, interval_key: (lo, hi)})):
        probe = _Probe()
        roll(model, probe, CTX, **kw, **extra)
        runs[name] = probe.preds
    for clip in range(2):
        for i, t in enumerate(_Probe.TIMES):
            want = runs["guided" if lo <= t <= hi else "plain"][clip][i]
            torch.testing.assert_close(runs["inside"][clip][i], want, atol=1e-6, rtol=1e-5)
            assert not torch.allclose(runs["guided"][clip][i], runs["plain"][clip][i], atol=1e-4)
    diff = make_diffusion()
    full = roll(model, diff, CTX, **kw, **{scale_key: 3.0})
    torch.testing.assert_close(roll(model, diff, CTX, **kw, **{scale_key: 3.0, interval_key: [0, 1]}), full,
                               atol=0, rtol=0)                       # the default: every step
    for bad in ((0.5, 0.2), (-0.1, 1.0), (0.0, 1.5), (0.5,), "all", (True, 1.0)):
        with pytest.raises(ValueError, match=rf"^{interval_key}=.* must be \[lo, hi\] model times"):
            roll(model, diff, CTX, **kw, **{scale_key: 3.0, interval_key: bad})


def test_cond_guidance_needs_null_cond():
    model, diff = make_model(cond_dim=4), make_diffusion()
    with pytest.raises(ValueError, match="guide_scale=3.0 needs cond and null_cond"):
        roll(model, diff, CTX, num_clips=1, guide_scale=3.0, cond=COND, cond_mask=COND_MASK, **BASE)
    with pytest.raises(ValueError, match="null_cond"):
        roll(model, diff, CTX, num_clips=1, guide_scale=3.0, **NULL, **BASE)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["off", "recompute", "rolling"])
def test_no_context_and_num_frames(mode):
    model, diff = make_model(), make_diffusion()
    calls = []
    empty = torch.zeros(2, 3, 0, 8, 8)
    out = roll(model, diff, empty, num_frames=5, window=4, kv_cache=mode, history_guide_scale=1.5,
                  progress=lambda i, n: calls.append((i, n)), **BASE)
    assert out.shape == (2, 3, 5, 8, 8) and torch.isfinite(out).all()
    assert calls == [(0, 3), (1, 3), (2, 3)]
    if mode != "off":
        ref = roll(model, diff, empty, num_frames=5, window=4, kv_cache="off", history_guide_scale=1.5, **BASE)
        if mode == "recompute":
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_bad_arguments():
    """Settings are validated once, when the RolloutSettings is made: each bad value is named."""
    model, diff = make_model(), make_diffusion()
    for bad, msg in ((dict(kv_cache="bogus"), "kv_cache='bogus'"), (dict(num_clips=1, num_frames=2), "at most one"),
                     (dict(clip_len=0), "clip_len=0"), (dict(window=-1), "window=-1"),
                     (dict(num_sample_steps=1.5), "num_sample_steps=1.5"), (dict(shift=0), "shift=0"),
                     (dict(guide_scale=-3), "guide_scale=-3"), (dict(history_guide_scale=float("nan")), "nan"),
                     (dict(history_noise=1.5), "history_noise=1.5"), (dict(num_frames=0), "num_frames=0")):
        with pytest.raises(ValueError, match=msg):
            RolloutSettings(**bad)
    with pytest.raises(ValueError, match="needs num_clips or num_frames"):
        rollout(model, diff, CTX, RolloutSettings())
    with pytest.raises(ValueError, match="context must be"):
        rollout(model, diff, CTX[:, :, 0], RolloutSettings(num_clips=1))
