"""bf16 sampling without autocast (tools/models/layers.cast_linears via Backend.cast_for_sampling): the weights
cast once, the same dtype policy in every path as under autocast."""
import copy

import pytest
import torch

from tools.models.layers import cast_linears
from tools.models.next_clip_transformer import NextClipTransformer
from utils.registry import BACKEND


def tiny(**kw):
    m = NextClipTransformer(preset="tiny", in_channels=3, cond_dim=5, **kw)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-zero gates / output layer
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return m.eval()


@pytest.mark.parametrize("kw", [dict(), dict(frame_causal_clean=True, rope="3d", time_cond="token")])
def test_bf16_cast_policy_cached_path_equals_training_forward_and_autocast(kw):
    """Linear weights bf16, everything else fp32 (norm weights, RoPE tables); inputs stay fp32 (the first
    layers cast them); the residual stream is bf16 in the training forward, encode_history and denoise; the
    cached prediction equals the training forward within 2 bf16 ulps (2 * 2**-7) of the output's magnitude,
    and the autocast model's prediction within 4."""
    ref_model = tiny(**kw)
    model = copy.deepcopy(ref_model)
    n = cast_linears(model, torch.bfloat16)
    assert n == sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert cast_linears(model, torch.bfloat16) == 0  # cast once
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
        linear = isinstance(model.get_submodule(name.rsplit(".", 1)[0]), torch.nn.Linear)
        assert p.dtype == (torch.bfloat16 if linear else torch.float32), (name, p.dtype)
    g = torch.Generator().manual_seed(3)
    B, C, H, W = 2, 3, 8, 8
    hist, z = torch.randn(B, C, 5, H, W, generator=g), torch.randn(B, C, 2, H, W, generator=g)
    tt, cond = torch.rand(B, generator=g), torch.randn(B, 2, 5, generator=g)
    clip_lens, t = torch.tensor([[2, 3, 2]] * B), torch.cat([torch.ones(B, 2), tt[:, None]], 1)
    seen = []
    hook = model.blocks[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.no_grad():
        ref = model(torch.cat([hist, z], 2), torch.cat([hist, torch.zeros_like(z)], 2), clip_lens, t, cond=cond)
        cache = model.encode_history(hist, frame_offset=0, cond=cond, clip_lens=[2, 3])
        out = model.denoise(z, tt, cache=cache, frame_offset=5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = ref_model.denoise(z, tt, cache=ref_model.encode_history(hist, frame_offset=0, cond=cond,
                                                                            clip_lens=[2, 3]), frame_offset=5)
    hook.remove()
    assert seen == [torch.bfloat16] * 3, seen  # forward, encode_history, denoise
    assert cache.k[0].dtype == torch.bfloat16
    ref = ref[:, :, 5:].float()
    assert (out.float() - ref).abs().max() <= 2 * 2 ** -7 * ref.abs().max()
    assert (out.float() - auto.float()).abs().max() <= 4 * 2 ** -7 * ref.abs().max()
    assert not torch.equal(out.float(), torch.zeros_like(ref))


def test_backend_casts_for_sampling_only_in_a_low_precision():
    model = tiny()
    assert BACKEND.build({"type": "cpu", "precision": "fp32"}).cast_for_sampling(model) is False
    assert model.out.weight.dtype == torch.float32
    assert BACKEND.build({"type": "cpu", "precision": "bf16"}).cast_for_sampling(model) is True
    assert model.out.weight.dtype == torch.bfloat16 and model.rope.freq0.dtype == torch.float32
