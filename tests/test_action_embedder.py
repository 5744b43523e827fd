"""EMBEDDER DiscreteActions (one token per frame, a learned null) and the engines' per-frame routing:
frame_cond_dim follows the embedder, sequences are cut to the training window, padded with the null
token or truncated, dropped whole (cond_dropout) or per frame (frame_cond_dropout)."""
import pytest
import torch

from tools.embedders.actions import DiscreteActions
from tools.embedders.conditioning import embed, is_per_frame, model_cfg_for, null_condition
from utils.config import ConfigError


def test_tokens_null_padding_and_truncation():
    emb = DiscreteActions(num_actions=3, dim=4)
    tokens, mask = emb([[0, 1, 2], [2, -1], None])
    assert tokens.shape == (3, 3, 4) and mask.dtype == torch.bool and bool(mask.all())
    rows = emb.table.weight
    null = rows[3]
    assert torch.equal(tokens[0], rows[[0, 1, 2]])
    assert torch.equal(tokens[1], torch.stack([rows[2], null, null]))  # -1 and the padding: the null row
    assert torch.equal(tokens[2], null.expand(3, 4))
    # num_frames: shorter sequences padded with the null token, longer ones truncated
    t5, _ = emb([[0, 1, 2], torch.tensor([1])], num_frames=5)
    assert torch.equal(t5[0], torch.stack([rows[0], rows[1], rows[2], null, null]))
    assert torch.equal(t5[1, 1:], null.expand(4, 4))
    t2, _ = emb([[0, 1, 2]], num_frames=2)
    assert torch.equal(t2[0], rows[[0, 1]])
    # null(B, F) == embedder([None] * B, F); every action differs from the null token
    assert torch.equal(emb.null(2, 5)[0], emb([None, None], num_frames=5)[0])
    assert emb.null(2)[0].shape == (2, 1, 4)
    assert not any(torch.equal(rows[a], null) for a in range(3))


def test_bad_actions_name_what_is_allowed():
    emb = DiscreteActions(num_actions=6, dim=4)
    for bad in ([6], [-2], [1.5], [True], [object()]):
        with pytest.raises(ValueError, match=r"takes ints in 0\.\.5 or -1 \(no action\)"):
            emb([bad])
    with pytest.raises(ValueError, match="1-D sequence"):
        emb([torch.zeros(2, 2, dtype=torch.long)])
    with pytest.raises(ValueError, match="sequence of ints"):
        emb([3])
    with pytest.raises(ValueError, match="num_actions=0"):
        DiscreteActions(num_actions=0, dim=4)


def test_the_model_config_takes_frame_cond_dim_from_the_embedder():
    emb = DiscreteActions(num_actions=6, dim=8)
    assert is_per_frame(emb)
    cfg = model_cfg_for({"type": "NextClipTransformer"}, emb, "DiscreteActions")
    assert cfg["frame_cond_dim"] == 8 and "cond_dim" not in cfg
    with pytest.raises(ConfigError, match="model.frame_cond_dim=4 but the embedder DiscreteActions makes tokens of "
                                          "width 8"):
        model_cfg_for({"frame_cond_dim": 4}, emb, "DiscreteActions")
    tokens, _ = embed(emb, [[1, 2]], "cpu", num_frames=3)
    assert tokens.shape == (1, 3, 8)
    assert torch.equal(null_condition(emb, 2, "cpu", num_frames=3)[0], emb.null(2, 3)[0])


def test_a_model_without_frame_conditions_is_refused_for_a_per_frame_embedder():
    from easydict import EasyDict as Config

    import tools
    from tools.stack import model_config

    tools.load_components()

    cfg = Config({"model": {"type": "VideoGPT"}, "embedder": {"type": "DiscreteActions"}})
    with pytest.raises(ConfigError, match="takes no frame conditions"):
        model_config(cfg, None, DiscreteActions(num_actions=6, dim=8))


def test_frame_conditioning_cuts_the_window_and_drops_from_the_step_generator():
    from tools.train.train_next_clip import build_frame_conditioning, step_generator

    emb = DiscreteActions(num_actions=3, dim=4)
    rows, null = emb.table.weight, emb.table.weight[3]
    batch = {"actions": torch.tensor([[-1, 0, 1, 2, 0, 1], [-1, 2, 2, 1, 1, 0]])}
    got = build_frame_conditioning(emb, batch, "actions", "cpu", 4, [2, 0])
    assert torch.equal(got[0], rows[[1, 2, 0, 1]]) and torch.equal(got[1], torch.stack([null, *rows[[2, 2, 1]]]))
    # a window past the end of the sequence: padded with the null token
    short = build_frame_conditioning(emb, batch, "actions", "cpu", 4, [4, 5])
    assert torch.equal(short[0, 2:], null.expand(2, 4)) and torch.equal(short[1, 1:], null.expand(3, 4))
    # whole-sequence dropout (p ~ 1): every frame null
    gen = step_generator(0, 0, 0)
    allnull = build_frame_conditioning(emb, batch, "actions", "cpu", 4, [0, 0], 0.999, 0.0, gen)
    assert torch.equal(allnull, null.expand(2, 4, 4))
    # per-frame dropout: the global batch's draw, sliced per rank; some frames null, others kept
    full = build_frame_conditioning(emb, {"actions": batch["actions"].repeat(4, 1)}, "actions", "cpu", 6,
                                    [0] * 8, 0.0, 0.5, step_generator(1, 2, 0))
    ranks = [build_frame_conditioning(emb, {"actions": batch["actions"].repeat(2, 1)}, "actions", "cpu", 6,
                                      [0] * 4, 0.0, 0.5, step_generator(1, 2, 0), r, 2) for r in (0, 1)]
    assert torch.equal(torch.cat(ranks), full)
    is_null = (full == null).all(-1)
    known = torch.cat([batch["actions"].repeat(4, 1)]) >= 0
    assert 0.2 < is_null[known].float().mean() < 0.8


def test_frame_cond_dropout_is_checked_and_the_action_path_is_a_condition_path():
    from easydict import EasyDict

    from tools.models.next_clip_transformer import NextClipTransformer
    from tools.train.train_next_clip import condition_parameters, validate

    with pytest.raises(ConfigError, match=r"frame_cond_dropout=1\.5 .*must be a number in \[0, 1\)"):
        validate(EasyDict(frame_cond_dropout=1.5))
    model = NextClipTransformer(preset="tiny", in_channels=3, frame_cond_dim=8)
    emb = DiscreteActions(num_actions=3, dim=8)
    fast = {id(p) for p in condition_parameters(model, emb)}  # cond_lr_mult applies to them
    assert id(model.frame_cond_proj.weight) in fast and id(emb.table.weight) in fast
    assert id(model.embed_noisy.weight) not in fast
