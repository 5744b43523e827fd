import pytest
import torch

from tools.models.block_causal import (
    BlockCausalLayout,
    block_causal_attention,
    interleaved_dense_mask,
    prefix_attention,
)

# (clip_lens with padding, tokens_per_frame)
LAYOUTS = [
    ([[2, 1, 3], [1, 2, 0], [4, 0, 0]], 3),   # different layouts + padding, batch 3
    ([[1, 1, 1, 1], [2, 2, 0, 0]], 2),
    ([[3, 2], [3, 2]], 4),                    # identical samples
]


def _qkv(layout, H=2, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(layout.B, H, layout.L, D, generator=g) for _ in range(3)]


def _reference(q, k, v, layout):
    return block_causal_attention(q, k, v, layout, impl="math")


@pytest.mark.parametrize("clips,N", LAYOUTS)
@pytest.mark.parametrize("M", [0, 3])
@pytest.mark.parametrize("fcc", [False, True])
def test_blocks_equals_math(clips, N, M, fcc):
    lay = BlockCausalLayout(torch.tensor(clips), N, num_cond=M, frame_causal_clean=fcc)
    q, k, v = _qkv(lay)
    ref = _reference(q, k, v, lay)
    out = block_causal_attention(q, k, v, lay, impl="blocks")
    assert torch.isfinite(ref).all()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("M,fcc", [(0, False), (3, True)])
def test_flex_equals_math(M, fcc):
    clips, N = LAYOUTS[0]
    lay = BlockCausalLayout(torch.tensor(clips), N, num_cond=M, frame_causal_clean=fcc, total_len=None)
    q, k, v = _qkv(lay)
    ref = _reference(q, k, v, lay)
    out = block_causal_attention(q, k, v, lay, impl="flex")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_blocks_gradients_match_math():
    lay = BlockCausalLayout(torch.tensor([[2, 1], [1, 0]]), 2, num_cond=1)
    q, k, v = (x.requires_grad_() for x in _qkv(lay))
    g1 = torch.autograd.grad(block_causal_attention(q, k, v, lay, "blocks").square().sum(), (q, k, v))
    g2 = torch.autograd.grad(block_causal_attention(q, k, v, lay, "math").square().sum(), (q, k, v))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_padding_rows_see_only_themselves_and_total_len():
    lay = BlockCausalLayout(torch.tensor([[2, 1], [1, 0]]), 2, num_cond=1, total_len=20)
    m = lay.dense_mask()
    assert m.shape == (2, 20, 20)
    for b, n in enumerate(lay.seq_lens):
        pad = m[b, n:]
        assert torch.equal(pad, torch.eye(20, dtype=torch.bool)[n:])
        assert not m[b, :n, n:].any(), "a real token sees padding"
    q, k, v = _qkv(lay)
    out = block_causal_attention(q, k, v, lay, "blocks")
    torch.testing.assert_close(out, _reference(q, k, v, lay), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("clips", [(2, 1, 3), (1, 1, 1), (4,)])
@pytest.mark.parametrize("M", [0, 2])
@pytest.mark.parametrize("fcc", [False, True])
def test_interleaved_paper_order_is_equivalent(clips, M, fcc):
    N = 2
    inter, perm = interleaved_dense_mask(clips, N, num_cond=M, frame_causal_clean=fcc)
    lay = BlockCausalLayout(torch.tensor([list(clips)]), N, num_cond=M, frame_causal_clean=fcc)
    ours = lay.dense_mask()[0]
    assert torch.equal(inter[perm][:, perm], ours)


def test_semantics_small_case():
    # clips (1, 1), N=1, M=1 -> order: [cond][clean c1][noisy c1][noisy c2]
    m = BlockCausalLayout(torch.tensor([[1, 1]]), 1, num_cond=1).dense_mask()[0].int()
    expected = torch.tensor([[1, 0, 0, 0],
                             [1, 1, 0, 0],
                             [1, 0, 1, 0],
                             [1, 1, 0, 1]])
    assert torch.equal(m, expected)


def test_prefix_attention_matches_masked_sdpa():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 6, 4, generator=g) for _ in range(3))
    kc, vc = torch.randn(1, 2, 3, 4, generator=g), torch.randn(1, 2, 3, 4, generator=g)
    K, V = torch.cat([kc, k], 2), torch.cat([vc, v], 2)
    segs = [(0, 2, 5), (2, 6, 9)]
    out = prefix_attention(q, K, V, segs)
    mask = torch.zeros(6, 9, dtype=torch.bool)
    mask[0:2, :5] = True
    mask[2:6, :9] = True
    ref = torch.nn.functional.scaled_dot_product_attention(q, K, V, attn_mask=mask)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fcc", [False, True])
def test_padded_cond_is_invisible_and_blocks_equal_math(fcc):
    clips, N = LAYOUTS[0]
    lay = BlockCausalLayout(torch.tensor(clips), N, num_cond=3, frame_causal_clean=fcc, cond_lens=[3, 1, 0])
    m, eye = lay.dense_mask(), torch.eye(lay.L, dtype=torch.bool)
    for b, mb in enumerate(lay.cond_lens):
        real = [i for i in range(lay.seq_lens[b]) if not mb <= i < 3]
        assert m[b, real, :mb].all(), "a real token misses a real cond token"
        assert torch.equal(m[b, :, mb:3], eye[:, mb:3]), "a padded cond token is seen by another token"
        assert torch.equal(m[b, mb:3], eye[mb:3]), "a padded cond token sees more than itself"
    q, k, v = _qkv(lay)
    torch.testing.assert_close(block_causal_attention(q, k, v, lay, "blocks"), _reference(q, k, v, lay),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("with_prefix", [False, True])
def test_prefix_attention_hides_padded_cond(with_prefix):
    g = torch.Generator().manual_seed(2)
    M, lens, P = 3, [2, 0, 3], 5  # cond tokens, real cond per sample, cached tokens after the cond
    Lq = 6 if with_prefix else M + 6
    off = M + P if with_prefix else 0
    q = torch.randn(3, 2, Lq, 4, generator=g)
    k, v = (torch.randn(3, 2, off + Lq, 4, generator=g) for _ in range(2))
    segs = [(0, 2, off + 2), (2, 6, off + 6)] if with_prefix else [(0, M, M), (M, M + 2, M + 2), (M + 2, M + 6, M + 6)]
    out = prefix_attention(q, k, v, segs, cond_lens=lens, num_cond=M)
    mask = torch.zeros(3, Lq, off + Lq, dtype=torch.bool)
    for qs, qe, ke in segs:
        mask[:, qs:qe, :ke] = True
    for b, mb in enumerate(lens):
        mask[b, :, mb:M] = False
        if not with_prefix:
            mask[b, mb:M] = False
            mask[b, range(mb, M), range(mb, M)] = True  # padded cond queries: their own value
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
