"""The web page's Play tab handlers (tools/inferences/web_play.py) without a browser: a game starts from a
held-out Atari episode, each press generates the next clip for that action through the Predictor's play
session, bad presses are one-line errors, a game is saved as mp4; the tab exists only for action models.
The page itself is driven in tests/test_app_browser.py."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from tools.inferences.web_app import WebApp, load_app
from tools.inferences.web_play import MAX_GAMES, controls, key_script
from utils.checkpoint import embedder_weights_for, save_weights
from utils.registry import EMBEDDER, MODEL
from utils.video_io import read_video

ROOT = pathlib.Path(__file__).resolve().parents[1]


def action_model(folder: pathlib.Path) -> list[str]:
    """A tiny action-conditioned model (random weights, its embedder beside it) and the overrides that run
    configs/atari/play.yaml with it on a small held-out episode cache in ``folder`` (log_dir not included)."""
    torch.manual_seed(0)
    emb = EMBEDDER.build({"type": "DiscreteActions", "num_actions": 6, "dim": 64}, "embedder")
    model = MODEL.build({"type": "NextClipTransformer", "preset": "tiny", "in_channels": 3, "patch_size": 16,
                         "frame_cond_dim": 64}, "model")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # outputs depend on the actions (zero-initialised gates opened)
    weights = folder / "pong.safetensors"
    save_weights(weights, model.state_dict())
    save_weights(embedder_weights_for(weights), emb.state_dict())
    return ["test_model", str(weights), "model.preset=tiny", "backend.precision=fp32", "num_sample_steps=2",
            "dataset.episodes=2", f"+dataset.cache_dir={folder / 'starts'}"]


@pytest.fixture(scope="module")
def arcade(tmp_path_factory):
    folder = tmp_path_factory.mktemp("play")
    app = load_app(str(ROOT / "configs/atari/play.yaml"), action_model(folder) + ["log_dir", str(folder / "out")],
                   50 << 20)
    return app.arcade


def test_controls_follow_the_game_table():
    assert controls("pong") == [("stay", "NOOP"), ("up", "UP"), ("down", "DOWN"), ("fire", "FIRE")]
    assert [name for _, name in controls("breakout")] == ["NOOP", "RIGHT", "LEFT", "FIRE"]
    assert '"ArrowUp": "UP"' in key_script() and "play_" in key_script()


@pytest.mark.slow
def test_a_game_starts_from_a_held_out_episode_and_each_press_adds_a_clip(arcade):
    assert arcade.available and arcade.game == "pong"
    assert [v for _, v in arcade.start_choices()] == [0, 1]
    shown = arcade.start(1, steps=2, seed=5)
    assert shown.game and "episode 1: 4 frames of history" in shown.message, shown.message
    frames, _ = arcade.starts().episode(1)
    assert np.array_equal(shown.frame, frames[8 + 3])  # the last history frame: start_frame 8, 4 context frames
    up = arcade.press(shown.game, "up", steps=2)
    assert up.game == shown.game and up.frame.shape == (64, 128, 3) and up.clip.shape == (64, 4 * 128, 3), up.message
    assert up.message.startswith("UP: 4 frames in") and "ms per frame" in up.message and "4 frames played" in up.message
    game = arcade.games[shown.game]
    assert len(game.frames) == 8 and game.actions == ["UP"] * 4 and len(game.latencies) == 1


@pytest.mark.slow
def test_a_press_is_the_play_session_with_that_action(arcade):
    """Two games from the same start and seed: the same action gives the same clip, another action another."""
    a, b = arcade.start(0, steps=2, seed=1).game, arcade.start(0, steps=2, seed=1).game
    up_a, up_b = arcade.press(a, "UP", steps=2).clip, arcade.press(b, "UP", steps=2).clip
    assert np.array_equal(up_a, up_b)
    c = arcade.start(0, steps=2, seed=1).game
    down = arcade.press(c, "DOWN", steps=2).clip
    assert not np.array_equal(down, up_a)


@pytest.mark.slow
def test_bad_presses_are_one_line_errors_and_the_game_goes_on(arcade):
    g = arcade.start(0, steps=2, seed=0).game
    bad = arcade.press(g, "JUMP")
    assert bad.message.startswith("error:") and "JUMP" in bad.message and "UP" in bad.message and bad.frame is None
    assert "\n" not in bad.message
    assert arcade.press(None, "UP").message.startswith("error: no game running: press Start")
    assert arcade.start(7).message.startswith("error: episode=7 is not allowed: give a whole number in 0..1")
    assert arcade.press(g, "UP", steps=0).message.startswith("error: sampling steps=0 is not allowed")
    assert arcade.press(g, "NOOP", steps=2).game == g  # still playable
    assert arcade.predictor.settings.num_sample_steps == 2  # the config's, after the per-press overrides


@pytest.mark.slow
def test_a_game_is_saved_as_mp4_in_the_page_outputs(arcade):
    g = arcade.start(0, steps=2, seed=0).game
    arcade.press(g, "DOWN", steps=2)
    path, msg = arcade.save(g)
    assert path and pathlib.Path(path).resolve().is_relative_to(arcade.out_dir.resolve()), msg
    assert read_video(path)[0].shape[0] == 8 and "saved 8 frames" in msg
    assert arcade.save("nope") == (None, "error: no game to save: press Start")


@pytest.mark.slow
def test_old_games_are_dropped(arcade):
    first = arcade.start(0, steps=1).game
    for _ in range(MAX_GAMES):
        arcade.start(0, steps=1)
    assert first not in arcade.games and len(arcade.games) == MAX_GAMES
    assert arcade.press(first, "UP").message.startswith("error: no game running")


@pytest.mark.slow
def test_no_play_tab_for_a_model_without_actions(tmp_path):
    app = load_app(str(ROOT / "configs/tiny/predict.yaml"), ["log_dir", str(tmp_path)], 50 << 20)
    assert isinstance(app, WebApp) and not app.arcade.available
    assert "action-conditional" not in app.describe()


@pytest.mark.slow
def test_a_press_samples_with_its_own_steps(arcade):
    """The steps slider counts on every press, not only at Start (the session keeps its own settings)."""
    a, b = arcade.start(0, steps=2, seed=3).game, arcade.start(0, steps=2, seed=3).game
    one, three = arcade.press(a, "UP", steps=1).clip, arcade.press(b, "UP", steps=3).clip
    assert not np.array_equal(one, three)
    assert arcade.games[a].session.settings.num_sample_steps == 2  # back to the game's own after the press
