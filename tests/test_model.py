import pytest
import torch

from tools.models.next_clip_transformer import NextClipTransformer
from utils.registry import MODEL


def randomize(model, seed=0, std=0.05):
    """Zero-initialised gates would make every equivalence test trivial: fill all weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def tiny(**kw):
    return randomize(NextClipTransformer(preset="tiny", in_channels=3, **kw)).eval()


def _batch(B=2, F=6, H=8, W=8, C=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    xn = torch.randn(B, C, F, H, W, generator=g)
    xc = torch.randn(B, C, F, H, W, generator=g)
    clip_lens = torch.tensor([[2, 1, 3], [1, 3, 0]])[:B]
    t = torch.rand(B, 3, generator=g)
    return xn, xc, clip_lens, t


def test_registry_and_preset_override():
    m = MODEL.build({"type": "NextClipTransformer", "preset": "tiny", "depth": 3})
    assert len(m.blocks) == 3 and m.hidden == 64
    with pytest.raises(ValueError, match="preset"):
        NextClipTransformer(preset="nope")


@pytest.mark.parametrize("kw", [
    dict(),
    dict(norm="rmsnorm", mlp="swiglu", time_cond="token", rope="3d"),
    dict(frame_causal_clean=True, qk_norm=False, cond_dim=5),
])
def test_forward_impls_agree(kw):
    model = tiny(**kw)
    xn, xc, cl, t = _batch()
    cond = torch.randn(2, 3, 5) if kw.get("cond_dim") else None
    outs = {}
    for impl in ("math", "blocks", "flex"):
        model.set_attention(impl)
        with torch.no_grad():  # FlexAttention has no CPU backward
            outs[impl] = model(xn, xc, cl, t, cond=cond)
    assert outs["math"].shape == xn.shape and torch.isfinite(outs["math"]).all()
    # padded frames are arbitrary: compare real frames only (sample 1 has 4 real frames)
    for impl in ("blocks", "flex"):
        torch.testing.assert_close(outs[impl][0], outs["math"][0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(outs[impl][1, :, :4], outs["math"][1, :, :4], atol=1e-5, rtol=1e-4)


def test_sample_independent_of_batch_and_last_clean_unused():
    model = tiny()
    xn, xc, cl, t = _batch()
    full = model(xn, xc, cl, t)
    solo = model(xn[1:, :, :4], xc[1:, :, :4], cl[1:, :2], t[1:, :2])
    torch.testing.assert_close(full[1:, :, :4], solo, atol=1e-5, rtol=1e-4)
    xc2 = xc.clone()
    xc2[0, :, 3:] = 100.0  # last clip of sample 0 = frames 3..5
    torch.testing.assert_close(model(xn, xc2, cl, t)[0], full[0], atol=1e-6, rtol=0)


def test_zero_init_starts_at_zero():
    model = NextClipTransformer(preset="tiny", in_channels=3)
    xn, xc, cl, t = _batch()
    assert model(xn, xc, cl, t).abs().max() == 0


@pytest.mark.parametrize("kw", [dict(), dict(frame_causal_clean=True, rope="3d", time_cond="token")])
@pytest.mark.parametrize("with_cond", [False, True])
def test_denoise_with_cache_equals_forward(kw, with_cond):
    model = tiny(cond_dim=5, **kw)
    g = torch.Generator().manual_seed(3)
    B, C, H, W = 2, 3, 8, 8
    hist_lens, G = [2, 3], 2
    hist = torch.randn(B, C, 5, H, W, generator=g)
    z = torch.randn(B, C, G, H, W, generator=g)
    tt = torch.rand(B, generator=g)
    cond = torch.randn(B, 2, 5, generator=g) if with_cond else None
    clip_lens = torch.tensor([hist_lens + [G]] * B)
    t = torch.cat([torch.ones(B, 2), tt[:, None]], 1)
    xn = torch.cat([hist, z], 2)
    xc = torch.cat([hist, torch.zeros_like(z)], 2)
    ref = model(xn, xc, clip_lens, t, cond=cond)[:, :, 5:]
    cache = model.encode_history(hist, frame_offset=0, cond=cond, clip_lens=hist_lens)
    out = model.denoise(z, tt, cache=cache, frame_offset=5)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    # extending a cache clip by clip == encoding the whole history at once
    c1 = model.encode_history(hist[:, :, :2], cond=cond, clip_lens=[2])
    c2 = model.encode_history(hist[:, :, 2:], clip_lens=[3], cache=c1)
    torch.testing.assert_close(model.denoise(z, tt, cache=c2), ref, atol=1e-5, rtol=1e-4)
    # no history: denoise(cache=None) == forward on the single clip
    ref0 = model(z, torch.zeros_like(z), torch.tensor([[G]] * B), tt[:, None], cond=cond)
    torch.testing.assert_close(model.denoise(z, tt, cond=cond), ref0, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_grad_checkpointing_same_loss_and_grads():
    xn, xc, cl, t = _batch()
    res = []
    for ckpt in (False, True):
        model = tiny(grad_checkpointing=ckpt).train()
        loss = model(xn, xc, cl, t).square().mean()
        loss.backward()
        res.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(res[0][0], res[1][0])
    for a, b in zip(res[0][1], res[1][1]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_no_model_null_cond():
    """The null condition is the embedder's: the model has none of its own."""
    model = tiny(cond_dim=5)
    assert not hasattr(model, "null_cond") and not hasattr(model, "null_cond_like")
    assert "cond_dropout" not in model.config


@pytest.mark.slow
def test_conditional_forward_uses_every_parameter():
    """DDP (find_unused_parameters=False) needs a gradient for every parameter."""
    model = tiny(cond_dim=5).train()
    xn, xc, cl, t = _batch()
    mask = torch.tensor([[True, True, False], [True, False, False]])
    model(xn, xc, cl, t, cond=torch.randn(2, 3, 5), cond_mask=mask).square().mean().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused, unused


def test_paper_preset_on_meta_device():
    with torch.device("meta"):
        model = NextClipTransformer(preset="videogpt-3.8b")
    n = sum(p.numel() for p in model.parameters())
    assert n == 3_634_461_712, n  # exact count of this implementation (Phi-3 blocks: no biases, no qk-norm)
    assert 3.5e9 < n < 4.0e9


@pytest.mark.parametrize("kw", [dict(), dict(frame_causal_clean=True, rope="3d", time_cond="token")])
def test_bf16_policy_cached_path_equals_training_forward(kw):
    """One dtype policy in every path: under bf16 autocast the residual stream is bf16 in the
    training forward AND in encode_history / denoise (the forward's fp32 padding row used to promote every
    token to fp32), time embeddings are computed from fp32 t. Bound: the cached prediction equals the
    training forward within 2 bf16 ulps (2 * 2**-7) of the output's magnitude."""
    model = tiny(cond_dim=5, **kw)
    g = torch.Generator().manual_seed(3)
    B, C, H, W = 2, 3, 8, 8
    hist = torch.randn(B, C, 5, H, W, generator=g)
    z = torch.randn(B, C, 2, H, W, generator=g)
    tt = torch.rand(B, generator=g)
    cond = torch.randn(B, 2, 5, generator=g)
    clip_lens = torch.tensor([[2, 3, 2]] * B)
    t = torch.cat([torch.ones(B, 2), tt[:, None]], 1)
    seen = []
    hook = model.blocks[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref = model(torch.cat([hist, z], 2), torch.cat([hist, torch.zeros_like(z)], 2), clip_lens, t, cond=cond)
        cache = model.encode_history(hist, frame_offset=0, cond=cond, clip_lens=[2, 3])
        out = model.denoise(z, tt, cache=cache, frame_offset=5)
    hook.remove()
    assert seen == [torch.bfloat16] * 3, seen  # forward, encode_history, denoise
    ref = ref[:, :, 5:].float()
    assert (out.float() - ref).abs().max() <= 2 * 2 ** -7 * ref.abs().max()


def test_adapt_patch_size_computes_the_pooled_model_at_twice_the_resolution(tmp_path):
    """Weights of patch p0 adapted to patch 2*p0 compute, on a 2x frame, the old model on the
    2x2-average-pooled frame, nearest-upsampled (the warm start of the pixel demo model: 32x32 patch 8 ->
    64x64 patch 16), also when loaded through LoadCheckpoint(adapt_patch_size: true)."""
    from safetensors.torch import save_file

    from tools.pretrain.load_checkpoint import LoadCheckpoint, adapt_patch_weights

    small = tiny(cond_dim=5)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in small.parameters():  # no zero-initialised layers: every weight matters
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    big = tiny(cond_dim=5, patch_size=2 * small.patch_size)
    save_file(small.state_dict(), str(tmp_path / "small.safetensors"))
    report = LoadCheckpoint(big, str(tmp_path / "small.safetensors"), adapt_patch_size=True)
    assert not any(report[k] for k in ("missing", "unexpected", "mismatched")), report
    B, C, Fr = 2, 3, 6
    xn, xc = torch.randn(B, C, Fr, 16, 16, generator=g), torch.randn(B, C, Fr, 16, 16, generator=g)
    clip_lens, t = torch.tensor([[2, 2, 2]] * B), torch.rand(B, 3, generator=g)
    cond = torch.randn(B, 2, 5, generator=g)
    pool = lambda x: torch.nn.functional.avg_pool3d(x, (1, 2, 2))
    with torch.no_grad():
        ref = small(pool(xn), pool(xc), clip_lens, t, cond=cond)
        out = big(xn, xc, clip_lens, t, cond=cond)
    ref = ref.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()
    with pytest.raises(ValueError, match="must divide"):
        adapt_patch_weights(small.state_dict(), small.in_channels, small.patch_size + 1)
    sd = big.state_dict()
    assert adapt_patch_weights(sd, big.in_channels, big.patch_size) is sd  # same size: passes through


def test_load_checkpoint_exclude_restarts_the_output_layer(tmp_path):
    """LoadCheckpoint(exclude: [out.]) loads everything but the output layer, which keeps its
    fresh (zero) init, so the model starts from zero output with the trained trunk. strict still holds
    for the rest; a prefix that names nothing is refused."""
    from safetensors.torch import save_file

    from tools.pretrain.load_checkpoint import LoadCheckpoint
    from utils.checkpoint import CheckpointError

    trained = tiny()
    save_file(trained.state_dict(), str(tmp_path / "w.safetensors"))
    fresh = NextClipTransformer(preset="tiny", in_channels=3)
    report = LoadCheckpoint(fresh, str(tmp_path / "w.safetensors"), exclude=["out."])
    assert report["excluded"] == ["out.bias", "out.weight"] and not report["missing"], report
    assert fresh.out.weight.abs().max() == 0
    torch.testing.assert_close(fresh.blocks[0].qkv.weight, trained.blocks[0].qkv.weight, atol=0, rtol=0)
    xn, xc, cl, t = _batch()
    assert fresh.eval()(xn, xc, cl, t).abs().max() == 0  # the restarted output layer
    cond_model = NextClipTransformer(preset="tiny", in_channels=3, cond_dim=5)
    with pytest.raises(CheckpointError, match="missing"):  # strict: the rest must match
        LoadCheckpoint(cond_model, str(tmp_path / "w.safetensors"), exclude=["out."])
    with pytest.raises(CheckpointError, match="match no tensor"):
        LoadCheckpoint(fresh, str(tmp_path / "w.safetensors"), exclude=["head."])
