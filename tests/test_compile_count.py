"""Bounded FlexAttention compiles: random clip cuts run at a few padded lengths (tools/models/block_causal.py)."""
import logging

import pytest
import torch

from tools.models import block_causal as bc
from tools.train.clip_sampling import sample_clip_lens


def test_flex_len_pads_to_whole_blocks_with_a_few_sizes_per_octave():
    sizes = set()
    for L in range(1, 40000, 7):
        Lp = bc.flex_len(L)
        assert Lp % bc.FLEX_BLOCK == 0 and L <= Lp <= max(1.125 * L + bc.FLEX_BLOCK, 1024), (L, Lp)
        if 20000 <= L <= 40000:
            sizes.add(Lp)
    assert len(sizes) <= 9, sorted(sizes)  # one octave of lengths -> at most 8 (+1 edge) kernels
    assert [bc.flex_len(L) for L in (1, 128, 129, 1024, 1025)] == [128, 128, 256, 1024, 1152]


@pytest.mark.slow
def test_twenty_random_cuts_compile_at_most_twice(caplog):
    """20 random cuts of 8 frames (sequence lengths 36..60, one sample): before padding every new
    length compiled the kernel and the mask builder again (5-17 s each on CPU)."""
    from torch._dynamo.utils import counters

    g = torch.Generator().manual_seed(0)
    before_graphs = counters["stats"]["unique_graphs"]
    before = len(bc.FLEX_COMPILES)
    lengths = set()
    with caplog.at_level(logging.INFO, logger="nextclip"):
        for i in range(20):
            clip_lens = sample_clip_lens(8, 1, "random", 4, 2, None, generator=g)
            lay = bc.BlockCausalLayout(clip_lens, 4)
            lengths.add(lay.L)
            q, k, v = (torch.randn(1, 2, lay.L, 8, generator=g) for _ in range(3))
            out = bc.block_causal_attention(q, k, v, lay, "flex")
            if i % 5 == 0:
                torch.testing.assert_close(out, bc.block_causal_attention(q, k, v, lay, "math"),
                                           atol=1e-5, rtol=1e-5)
    assert len(lengths) >= 4, lengths  # the cuts really change the length
    new = len(bc.FLEX_COMPILES) - before
    assert new <= 1, bc.FLEX_COMPILES
    assert counters["stats"]["unique_graphs"] - before_graphs <= 2 * max(new, 1)  # kernel + mask builder
    assert sum("FlexAttention: compiling" in r.getMessage() for r in caplog.records) == new  # each one logged
