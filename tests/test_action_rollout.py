"""Rollouts with a different action per frame: every KV-cache mode equals the uncached forward, the
interactive RolloutSession is the mechanism rollout() drives, the no-condition branch of guidance sees
null actions for the clip AND its history, and an action changes only its own clip and later ones."""
import pytest
import torch

from tools.diffusions.rectified_flow import RectifiedFlow
from tools.inferences.guidance import Condition
from tools.inferences.rollout import RolloutSession, RolloutSettings, rollout
from tools.models.next_clip_transformer import NextClipTransformer

D = 6
CTX = torch.randn(2, 3, 2, 8, 8, generator=torch.Generator().manual_seed(1))
T = 2 + 8  # context + 4 clips of 2
ACTS = torch.randn(2, T, D, generator=torch.Generator().manual_seed(2))
NULL = torch.randn(1, 1, D, generator=torch.Generator().manual_seed(3)).expand(2, T, D)


def make_model(**kw):
    m = NextClipTransformer(preset="tiny", in_channels=3, patch_size=4, frame_cond_dim=D, **kw)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return m.eval()


def run(model, kv, acts=ACTS, null=NULL, **kw):
    s = RolloutSettings(**{"clip_len": 2, "num_sample_steps": 3, "seed": 7, "num_clips": 4, "window": 4,
                           "kv_cache": kv, **kw})
    return rollout(model, RectifiedFlow(prediction="x1"), CTX, s, Condition(frame_cond=acts, null_frame_cond=null))


@pytest.mark.parametrize("guided", [False, True])
def test_recompute_equals_off_with_actions_and_a_sliding_window(guided):
    model = make_model()
    kw = dict(guide_scale=3.0, history_guide_scale=1.5) if guided else {}
    off = run(model, "off", **kw)
    torch.testing.assert_close(run(model, "recompute", **kw), off, atol=1e-5, rtol=1e-4)
    assert off.shape == (2, 3, T, 8, 8) and torch.equal(off[:, :, :2], CTX)


def test_rolling_equals_off_until_the_window_slides_with_actions():
    model = make_model()
    kw = dict(guide_scale=2.0, history_noise=0.95)
    torch.testing.assert_close(run(model, "rolling", window=100, **kw), run(model, "off", window=100, **kw),
                               atol=1e-5, rtol=1e-4)
    rol, off = run(model, "rolling", window=3, **kw), run(model, "off", window=3, **kw)
    torch.testing.assert_close(rol[:, :, :4], off[:, :, :4], atol=1e-5, rtol=1e-4)  # before the slide
    assert torch.isfinite(rol).all() and not torch.allclose(rol, off, atol=1e-5)


@pytest.mark.parametrize("kv", ["rolling", "recompute"])
def test_the_session_stepped_clip_by_clip_is_the_rollout(kv):
    """Interactive play: the actions of each clip given only when it is generated reproduce the rollout
    that knew the whole sequence up front."""
    model, diff = make_model(), RectifiedFlow(prediction="x1")
    ref = run(model, kv, guide_scale=2.0)
    s = RolloutSettings(clip_len=2, num_sample_steps=3, seed=7, window=4, kv_cache=kv, guide_scale=2.0)
    session = RolloutSession(model, diff, CTX, s, Condition(frame_cond=ACTS[:, :2], null_frame_cond=NULL[:, :2]))
    clips = [session.next_clip(2, ACTS[:, f:f + 2], NULL[:, f:f + 2]) for f in range(2, T, 2)]
    assert torch.equal(torch.cat([CTX, *clips], 2), session.video())
    torch.testing.assert_close(session.video(), ref, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match=r"frame conditions of the clip \(full\) must be \(B, G, D\) = \(2, 2, D\)"):
        session.next_clip(2, ACTS[:, :3], NULL[:, :2])
    endless = RolloutSession(model, diff, CTX, s, Condition(frame_cond=ACTS[:, :2], null_frame_cond=NULL[:, :2]),
                             keep_video=False)
    for f in range(2, T, 2):
        torch.testing.assert_close(endless.next_clip(2, ACTS[:, f:f + 2], NULL[:, f:f + 2]), ref[:, :, f:f + 2],
                                   atol=1e-6, rtol=1e-5)
    assert endless.clips == [] and endless.frames_generated == 8 and endless.seen.shape[2] <= 4


def test_an_action_changes_only_its_own_clip_and_later_ones():
    model = make_model()
    ref = run(model, "recompute")
    changed = ACTS.clone()
    changed[:, 6] += 1.0  # frame 6: the third generated clip (frames 6, 7)
    out = run(model, "recompute", acts=changed)
    assert torch.equal(out[:, :, :6], ref[:, :, :6])
    assert (out[:, :, 6:8] - ref[:, :, 6:8]).abs().max() > 1e-3


def test_the_no_condition_branch_encodes_its_history_with_null_actions():
    """Recompute mode: every clip encodes its window twice, once with the window's actions (full) and once
    with null ones (no-condition); each branch denoises the clip with its own actions."""
    model = make_model()
    encoded, denoised = [], []
    enc, den = model.encode_history, model.denoise_many

    def spy_encode(x, *a, frame_cond=None, **kw):
        encoded.append(frame_cond)
        return enc(x, *a, frame_cond=frame_cond, **kw)

    def spy_denoise(x, t, branches):
        denoised.append([getattr(b, "frame_cond", None) for b in branches])
        return den(x, t, branches)

    model.encode_history, model.denoise_many = spy_encode, spy_denoise
    run(model, "recompute", guide_scale=2.0, window=100)
    assert len(encoded) == 8  # 4 clips x (full, no_condition)
    for i, (full, null) in enumerate(zip(encoded[::2], encoded[1::2])):
        n = 2 + 2 * i  # the whole history so far
        assert torch.equal(full, ACTS[:, :n]) and torch.equal(null, NULL[:, :n])
    f0 = 2
    for branches in denoised[:3]:  # the first clip's steps: (full, no_condition) each
        assert torch.equal(branches[0], ACTS[:, f0:f0 + 2]) and torch.equal(branches[1], NULL[:, f0:f0 + 2])


def test_frame_conditions_must_cover_the_whole_video():
    model = make_model()
    with pytest.raises(ValueError, match=r"one token per frame of the whole video: \(B, 2 context \+ 8 generated = 10"):
        run(model, "recompute", acts=ACTS[:, :9])
    with pytest.raises(ValueError, match="guide_scale=2.0 needs cond and null_cond"):
        run(model, "recompute", null=None, guide_scale=2.0)
