"""DATASETS AtariEpisodes (tools/datasets/atari.py): real ALE frames, the game table's geometry measured on
them, the frame/action alignment, determinism of the cache and its refusal of other settings."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from tools.datasets.atari import (
    GAMES,
    AtariCacheMismatch,
    AtariEpisodes,
    FrameProcessor,
    action_direction,
    action_index,
    area_matrix,
    emulator,
    generate_episode,
    source_paddle,
)

SMALL = dict(episodes=2, episode_frames=40, num_frames=8, stride=8)  # ~0.2 s of generation


@pytest.fixture(scope="module")
def episodes():
    """A few real episodes per game with the raw screens (module-scoped: generated once)."""
    return {g: [generate_episode(g, 0, e, 100, with_ram=True) for e in range(3)] for g in GAMES}


def test_game_table_sizes_fit_patch_8_and_a_small_token_budget():
    for g, spec in GAMES.items():
        h, w = spec.size
        assert h % 8 == 0 and w % 8 == 0, g
        assert 100 <= (h // 8) * (w // 8) <= 150, (g, h, w)


def test_minimal_action_sets_match_the_emulator():
    for spec in GAMES.values():
        ale = emulator(spec)  # raises itself when the table and ale-py disagree
        assert tuple(a.name for a in ale.getMinimalActionSet()) == spec.action_names


@pytest.mark.parametrize("game", sorted(GAMES))
def test_paddle_is_at_least_3px_each_way_in_output_frames(game, episodes):
    """Measured on real frames: where the raw screen shows the whole paddle in its exact colour (a paddle
    that moved between the two max-pooled frames is a two-tone smear), the output frame has >= 3 rows and
    >= 3 columns of paddle colour (distance < 40 of 255) inside the table's band."""
    spec = GAMES[game]
    lo, hi = spec.paddle_band
    seen = 0
    for ep in episodes[game]:
        for raw, out in zip(ep["screens"], ep["frames"]):
            src = (raw == np.array(spec.paddle_color, np.uint8)).all(-1)
            t, b, left, r = spec.crop
            s0, s1 = spec.source_band
            whole = src[t:b, s0:s1].any(1).sum() >= 16 if spec.paddle_axis == "row" else \
                src[s0:s1, left:r].any(0).sum() >= 16  # 16 px, more when max-pooled while moving
            if not whole:
                continue
            d = np.sqrt(((out.astype(float) - spec.paddle_color) ** 2).sum(-1)) < 40
            band = d[:, lo:hi] if spec.paddle_axis == "row" else d[lo:hi, :]
            rows, cols = band.any(1).sum(), band.any(0).sum()
            assert rows >= 3 and cols >= 3, (game, rows, cols)
            # and nothing of the paddle just outside the band (the band holds all of it)
            # (unless the ball, Breakout's is paddle-coloured, is within 4 source px of the band)
            side = d if spec.paddle_axis == "row" else d.T  # (along the motion, across the band)
            near = src[t:b, max(s0 - 4, 0):s0].any() or src[t:b, s1:s1 + 4].any() if spec.paddle_axis == "row" \
                else src[s0 - 4:s0, left:r].any() or src[s1:s1 + 4, left:r].any()
            if not near:
                assert not side[:, lo - 1].any() and (hi >= side.shape[1] or not side[:, hi].any()), game
            seen += 1
    assert seen > 10, f"{game}: only {seen} frames with the whole paddle"


def test_area_resize_is_exact():
    m = area_matrix(160, 64)
    assert np.allclose(m.sum(1), 1) and m.shape == (64, 160)
    assert np.allclose(m[0, :3], [0.4, 0.4, 0.2]) and m[0, 3:].sum() == 0  # 2.5 source rows per output row
    spec = GAMES["pong"]
    flat = np.full((210, 160, 3), 77, np.uint8)
    assert (FrameProcessor(spec)(flat) == 77).all()


def test_actions_are_the_ones_that_produced_each_frame(episodes):
    """Replaying the recorded actions (after the recorded NOOP start) on a fresh emulator gives the same
    frames: actions[t] produced frame t; actions[0] = -1."""
    for game in GAMES:
        spec, ep = GAMES[game], episodes[game][0]
        assert ep["actions"][0] == -1 and (ep["actions"][1:] >= 0).all()
        ale = emulator(spec)
        ale.reset_game()
        acts = ale.getMinimalActionSet()
        for _ in range(ep["noops"]):
            ale.act(acts[0])
        proc = FrameProcessor(spec)
        assert (proc(ale.getScreenRGB()) == ep["frames"][0]).all()
        for t in range(1, len(ep["actions"])):
            for _ in range(3):
                ale.act(acts[int(ep["actions"][t])])
            a = ale.getScreenRGB()
            ale.act(acts[int(ep["actions"][t])])
            frame = proc(np.maximum(a, ale.getScreenRGB()))  # frame skip 4: max of the last two
            assert (frame == ep["frames"][t]).all(), (game, t)


def test_behaviour_policy_uses_every_action_and_moves_the_paddle_both_ways(episodes):
    for game, spec in GAMES.items():
        acts = np.concatenate([ep["actions"][1:] for ep in episodes[game]])
        assert (np.bincount(acts, minlength=len(spec.action_names)) > 0).all(), game
        pos = np.array([source_paddle(spec, s) for ep in episodes[game] for s in ep["screens"]], dtype=float)
        v = np.diff(pos)
        v = v[np.isfinite(v)]
        assert (v > 0).sum() > 10 and (v < 0).sum() > 10, game


def test_action_index_names_aliases_and_errors():
    assert action_index("pong", "UP") == action_index("pong", "right") == 2
    assert action_index("pong", "DOWN") == 3 and action_index("pong", 5) == 5 and action_index("pong", "none") == -1
    assert action_index("breakout", "LEFT") == 3
    assert action_direction("pong", "UP") == -1 and action_direction("breakout", "RIGHT") == 1
    assert action_direction("pong", "FIRE") == 0
    with pytest.raises(ValueError, match="UP"):
        action_index("breakout", "UP")
    with pytest.raises(ValueError, match="out of range"):
        action_index("pong", 6)
    with pytest.raises(ValueError, match="pong"):
        action_index("tetris", 0)


def test_same_seed_same_frames_and_items(tmp_path):
    a = AtariEpisodes(game="pong", seed=3, cache_dir=str(tmp_path / "a"), **SMALL)
    b = AtariEpisodes(game="pong", seed=3, cache_dir=str(tmp_path / "b"), **SMALL)
    c = AtariEpisodes(game="pong", seed=4, cache_dir=str(tmp_path / "c"), **SMALL)
    assert len(a) == len(b) == 10  # 2 episodes x 40 frames, windows of 8 every 8
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert torch.equal(x["video"], y["video"]) and torch.equal(x["actions"], y["actions"])
    assert not all(torch.equal(a[i]["video"], c[i]["video"]) for i in range(len(a)))
    # the cache reads back what the generator makes for that episode, whatever ran before it
    ep = generate_episode("pong", 3, 1, 40)
    item = a[5]  # episode 1, frames 0..7
    assert item["meta"]["episode"] == 1 and item["meta"]["start"] == 0
    assert torch.equal(item["video"], torch.from_numpy(ep["frames"][:8]).permute(3, 0, 1, 2).float() / 127.5 - 1)


def test_items_follow_the_contract(tmp_path):
    ds = AtariEpisodes(game="breakout", seed=1, cache_dir=str(tmp_path / "c"), **SMALL)
    item = ds[0]
    assert item["video"].shape == (3, 8, 120, 72) and item["video"].dtype == torch.float32
    assert item["video"].min() >= -1 and item["video"].max() <= 1
    assert item["actions"].dtype == torch.long and item["actions"].shape == (8,)
    assert item["actions"][0] == -1 and (item["actions"][1:] >= 0).all()  # episode start: no action known
    assert item["game"] == "breakout"
    assert (ds[1]["actions"] >= 0).all()  # a window inside the episode: every action known
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["settings"]["seed"] == 1 and manifest["frames"] == sum(manifest["episode_lengths"])
    assert manifest["settings"]["ale_py"] and manifest["settings"]["size"] == [120, 72]
    # length keeps evenly spaced windows; windows never cross an episode end
    short = AtariEpisodes(game="breakout", seed=1, cache_dir=str(tmp_path / "c"), length=3, **SMALL)
    assert [w for w in short.windows] == [(0, 0), (0, 24), (1, 8)]
    over = AtariEpisodes(game="breakout", seed=1, cache_dir=str(tmp_path / "c"),
                         **{**SMALL, "stride": 1})
    assert all(s + 8 <= ds.episode_lengths[e] for e, s in over.windows)
    with pytest.raises(ValueError, match="length=99"):
        AtariEpisodes(game="breakout", seed=1, cache_dir=str(tmp_path / "c"), length=99, **SMALL)


def test_cache_with_other_settings_is_refused_in_one_line(tmp_path):
    d = str(tmp_path / "cache")
    AtariEpisodes(game="pong", seed=0, cache_dir=d, **SMALL)
    with pytest.raises(AtariCacheMismatch) as e:
        AtariEpisodes(game="pong", seed=0, cache_dir=d, frame_skip=2, **SMALL)
    msg = str(e.value)
    assert "\n" not in msg and "frame_skip=4 (wanted 2)" in msg and "delete" in msg and "seed" not in msg
    with pytest.raises(AtariCacheMismatch, match="episodes=2 .wanted 3."):
        AtariEpisodes(game="pong", seed=0, cache_dir=d, **{**SMALL, "episodes": 3})
    # settings that only pick windows (num_frames, stride, length) reuse the cache
    AtariEpisodes(game="pong", seed=0, cache_dir=d, **{**SMALL, "num_frames": 4, "stride": 2})


def test_unfinished_cache_is_regenerated_and_bad_settings_are_named(tmp_path):
    d = tmp_path / "cache"
    d.mkdir()
    (d / "episodes_00000.npz").write_bytes(b"partial")  # a killed run: no manifest
    ds = AtariEpisodes(game="pong", seed=0, cache_dir=str(d), **SMALL)
    assert len(ds) == 10 and os.path.isfile(d / "manifest.json")
    with pytest.raises(ValueError, match="policy='greedy'"):
        AtariEpisodes(game="pong", policy="greedy", cache_dir=str(d), **SMALL)
    with pytest.raises(ValueError, match="num_frames=50 is longer than episode_frames=40"):
        AtariEpisodes(game="pong", cache_dir=str(d), **{**SMALL, "num_frames": 50})


def test_pong_fragment_builds_the_dataset(tmp_path):
    """configs/_base_/atari_pong.yaml names only real AtariEpisodes settings (here with fewer episodes)."""
    import yaml

    from utils.registry import DATASETS

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "configs", "_base_", "atari_pong.yaml"), encoding="utf-8") as f:
        cfg = yaml.safe_load(f)["dataset"]
    assert cfg["type"] == "AtariEpisodes" and cfg["game"] == "pong"
    ds = DATASETS.build({**cfg, "episodes": 1, "episode_frames": 24, "cache_dir": str(tmp_path)})
    assert ds[0]["video"].shape == (3, 16, 64, 128) and len(ds) == 3


def test_cached_episodes_replay_from_their_noops_and_actions(tmp_path):
    """episode_noops re-derives the NOOP start, so the emulator can continue a cached episode (the world
    model evaluation plays commanded scripts from a held-out episode's state)."""
    from tools.datasets.atari import episode_noops, play_actions

    ds = AtariEpisodes(game="pong", seed=5, cache_dir=str(tmp_path), **SMALL)
    for e in range(2):
        frames, actions = ds.episode(e)
        assert episode_noops(5, e, 30) == generate_episode("pong", 5, e, 2)["noops"]
        replay = play_actions("pong", [int(a) for a in actions[1:]], noops=episode_noops(5, e, 30))
        assert (replay["frames"] == frames).all()
