"""The fast paths compute what the plain paths compute (no timing here):
preallocated KV-cache buffers (KVCache.join) vs torch.cat, per-shape token metadata memo vs a
fresh build, batched guidance branches (denoise(branches=...)) vs separate calls, and the row
gather vs torch.gather."""
import copy

import pytest
import torch

from tools.models.kv_rollout import DenoiseCall
from tools.models.layers import KVCache
from tools.models.next_clip_transformer import NextClipTransformer, _gather_tokens

G, HW = 2, 8  # frames per clip, frame size (patch 2 -> 16 tokens per frame)


def make_model(**kw):
    m = NextClipTransformer(preset="tiny", in_channels=3, rope="3d", **kw)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-zero gates / output layer
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return m.eval()


def video(frames, seed=1, B=2):
    return torch.randn(B, 3, frames, HW, HW, generator=torch.Generator().manual_seed(seed))


def rolling_caches(model, frames, drop_every=2):
    """Encode clip by clip, sliding the window every ``drop_every`` clips -> the final cache."""
    x = video(frames)
    cache = model.encode_history(x[:, :, :G], 0, clip_lens=[G])
    for i, s in enumerate(range(G, frames, G)):
        cache = model.encode_history(x[:, :, s:s + G], cache=cache, clip_lens=[G])
        model.denoise(video(G, seed=10 + i), torch.full((2,), 0.5), cache=cache)  # scratch rows in between
        if i % drop_every == drop_every - 1:
            cache.drop_frames(G)
    return cache


@pytest.mark.slow
def test_preallocated_cache_over_many_clips_equals_the_cat_cache():
    """8 clips appended, denoised against and slid in place == the same calls on the torch.cat
    path (taken whenever autograd records, as it does here with enable_grad)."""
    model = make_model()
    with torch.no_grad():
        fast = rolling_caches(model, 8 * G)
    with torch.enable_grad():
        ref = rolling_caches(model, 8 * G)
    assert fast.buffers is not None and ref.buffers is None  # the two paths really differ
    assert fast.clip_lens == ref.clip_lens and fast.frame_offset == ref.frame_offset
    for a, b, c, d in zip(fast.k, ref.k, fast.v, ref.v):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=1e-6)
        torch.testing.assert_close(c, d.detach(), rtol=0, atol=1e-6)


@torch.no_grad()
def test_extension_and_scratch_never_change_an_older_cache():
    """An older cache sharing the buffers keeps its keys / values and its predictions while newer
    caches extend it and denoise in the room after it (and it can still be extended itself)."""
    model = make_model()
    x, z, t = video(6), video(G, seed=3), torch.full((2,), 0.3)
    c1 = model.encode_history(x[:, :, :2], 0, clip_lens=[2])
    model.denoise(z, t, cache=c1)  # moves c1 into buffers with room
    snap = [k.clone() for k in c1.k], [v.clone() for v in c1.v]
    c2 = model.encode_history(x[:, :, 2:4], cache=c1, clip_lens=[2])  # in place after c1
    assert c2.k[0].data_ptr() == c1.k[0].data_ptr()
    snap2 = [k.clone() for k in c2.k]
    p2 = model.denoise(z, t, cache=c2)
    p1 = model.denoise(z, t, cache=c1)  # c1 is no longer the newest: it must not write over c2
    c3 = model.encode_history(x[:, :, 4:6], cache=c1, clip_lens=[2])  # a second branch from c1
    for a, b in zip(c1.k + c1.v, snap[0] + snap[1]):
        assert torch.equal(a, b)
    for a, b in zip(c2.k, snap2):
        assert torch.equal(a, b)
    plain = lambda c: KVCache([k.clone() for k in c.k], [v.clone() for v in c.v], c.num_cond,
                              c.tokens_per_frame, c.frame_offset, list(c.clip_lens))
    torch.testing.assert_close(p1, model.denoise(z, t, cache=plain(c1)), rtol=0, atol=1e-6)
    torch.testing.assert_close(p2, model.denoise(z, t, cache=plain(c2)), rtol=0, atol=1e-6)
    ref3 = model.encode_history(x[:, :, 4:6], cache=plain(c1), clip_lens=[2])
    for a, b in zip(c3.k + c3.v, ref3.k + ref3.v):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("with_cond", [False, True])
def test_repeated_cached_denoise_steps_equal_the_training_forward(with_cond):
    """Every step of a cached denoise (the first grows the buffers, later ones write scratch in
    place) equals the noisy-clip output of forward."""
    model = make_model(cond_dim=4, pooled_cond=True) if with_cond else make_model()
    B, Fh = 2, 4
    cond = torch.randn(B, 3, 4) if with_cond else None
    mask = torch.tensor([[True, True, False], [True, False, False]]) if with_cond else None
    hist = video(Fh)
    with torch.no_grad():
        cache = model.encode_history(hist, 0, cond=cond, cond_mask=mask, clip_lens=[2, 2])
        for step in range(3):
            z, t = video(G, seed=20 + step), torch.rand(B)
            got = model.denoise(z, t, cache=cache)
            t_all = torch.cat([torch.ones(B, 2), t[:, None]], 1)
            full = model(torch.cat([hist, z], 2), torch.cat([hist, torch.zeros_like(z)], 2),
                         torch.tensor([[2, 2, G]] * B), t_all, cond=cond, cond_mask=mask)[:, :, Fh:]
            torch.testing.assert_close(got, full, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_token_metadata_memo_has_no_stale_entries_across_shapes_offsets_and_dtypes():
    model = make_model()
    cache = model.encode_history(video(4), 0, clip_lens=[4])
    runs = [(video(G, seed=5), 4), (video(3, seed=6), 4), (video(G, seed=5), 9), (video(G, seed=5), 4)]
    got = [model.denoise(z, torch.full((2,), 0.4), cache=cache, frame_offset=o) for z, o in runs]
    for (z, o), y in zip(runs, got):
        fresh = copy.deepcopy(model)
        fresh._memo.clear()
        torch.testing.assert_close(y, fresh.denoise(z, torch.full((2,), 0.4), cache=cache, frame_offset=o),
                                   rtol=0, atol=0)
    assert not torch.allclose(got[0], got[2])  # the offset really changes the result
    m64 = copy.deepcopy(model).double()  # a cast model must not reuse fp32 RoPE tables
    y64 = m64.denoise(runs[0][0].double(), torch.full((2,), 0.4, dtype=torch.float64), frame_offset=4)
    fresh = copy.deepcopy(model).double()
    fresh._memo.clear()
    ref = fresh.denoise(runs[0][0].double(), torch.full((2,), 0.4, dtype=torch.float64), frame_offset=4)
    assert y64.dtype == torch.float64 and torch.equal(y64, ref)


@torch.no_grad()
def test_batched_guidance_branches_equal_separate_denoise_calls():
    """History + no-history + null-cond branches (with padded cond of two lengths, so two
    batch groups) in one denoise(branches=...) == three plain calls."""
    model = make_model(cond_dim=4, pooled_cond=True)
    cond, mask = torch.randn(2, 3, 4), torch.tensor([[True, True, False], [True, False, False]])
    null, null_mask = torch.randn(2, 2, 4), torch.tensor([[True, False]] * 2)
    cache = model.encode_history(video(4), 0, cond=cond, cond_mask=mask, clip_lens=[2, 2])
    null_cache = model.encode_history(video(4), 0, cond=null, cond_mask=null_mask, clip_lens=[2, 2])
    z, t = video(G, seed=8), torch.tensor([0.2, 0.7])
    branches = [DenoiseCall(cache, 4), DenoiseCall(None, 0, cond, mask), DenoiseCall(null_cache, 4),
                DenoiseCall(None, 0, null, null_mask)]
    got = model.denoise(z, t, **branches[0]._asdict(), branches=branches[1:])
    assert isinstance(got, list) and len(got) == 4
    for y, (c, o, cd, m) in zip(got, branches):
        torch.testing.assert_close(y, model.denoise(z, t, cache=c, frame_offset=o, cond=cd, cond_mask=m),
                                   rtol=1e-5, atol=1e-6)


def test_row_gather_equals_torch_gather_forward_and_backward():
    g = torch.Generator().manual_seed(0)
    table = torch.randn(3, 5, 7, generator=g, requires_grad=True)
    idx = torch.randint(0, 5, (3, 11), generator=g)
    got = _gather_tokens(table, idx)
    ref = torch.gather(table, 1, idx[..., None].expand(-1, -1, 7))
    assert torch.equal(got, ref)
    gy = torch.randn(3, 11, 7, generator=g)
    ga, = torch.autograd.grad(got, table, gy)
    gb, = torch.autograd.grad(ref, table, gy)
    torch.testing.assert_close(ga, gb, rtol=0, atol=1e-6)
    const = torch.gather(table, 1, torch.full((3, 11, 7), 2))  # an int index: every token takes row 2
    assert torch.equal(_gather_tokens(table, 2).expand(3, 11, 7), const)
