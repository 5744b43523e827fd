"""The paddle reader and the action-sensitivity metrics (utils/metrics.py) on real emulator frames
driven by scripted actions: the emulator follows its commands, a frozen (copy-last) video does not."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tools.datasets.atari import GAMES, action_direction, play_actions, source_paddle
from utils.metrics import action_sensitivity, paddle_positions, response_times

# Pong: UP/DOWN move the paddle; Breakout: LEFT/RIGHT. Holds long enough to hit the stops, short
# reversals, pauses.
SCRIPTS = {"pong": ["NOOP"] * 4 + ["UP"] * 12 + ["DOWN"] * 12 + ["NOOP"] * 3 + ["UP"] * 3 + ["DOWN"] * 5
           + ["UP"] * 6 + ["DOWN"] * 2 + ["NOOP"] * 2 + ["UP"] * 12 + ["DOWN"] * 20,
           "breakout": ["FIRE"] * 2 + ["LEFT"] * 12 + ["RIGHT"] * 12 + ["NOOP"] * 3 + ["LEFT"] * 3
           + ["RIGHT"] * 5 + ["LEFT"] * 6 + ["RIGHT"] * 2 + ["NOOP"] * 2 + ["LEFT"] * 12 + ["RIGHT"] * 20}


def video(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1  # (3, F, H, W) in [-1, 1]


@pytest.fixture(scope="module")
def played():
    out = {}
    for game, script in SCRIPTS.items():
        ep = play_actions(game, script, noops=10)
        spec = GAMES[game]
        out[game] = dict(ep, pos=paddle_positions(video(ep["frames"]), **spec.reader()),
                         dirs=[action_direction(game, int(a)) for a in ep["actions"]])
    return out


@pytest.mark.parametrize("game", sorted(SCRIPTS))
def test_reader_matches_the_raw_screen_and_the_ram(game, played):
    """The paddle read from output frames is the raw screen's paddle (exact colour, mapped through the
    crop and scale) within a pixel wherever the raw paddle is clean, and follows the emulator's RAM."""
    spec, ep = GAMES[game], played[game]
    pos = ep["pos"].numpy()
    assert np.isfinite(pos).all()
    t, b, left, r = spec.crop
    first, scale = (t, spec.size[0] / (b - t)) if spec.paddle_axis == "row" else (left, spec.size[1] / (r - left))
    src = np.array([np.nan if (p := source_paddle(spec, s)) is None else p for s in ep["screens"]])
    mapped = (src + 0.5 - first) * scale - 0.5
    close = np.abs(pos - mapped) <= 1.5
    assert close.mean() > 0.95, np.round(pos - mapped, 1)
    ram = ep["ram"][:, 51 if game == "pong" else 72].astype(float)  # the player's paddle in RAM
    assert np.corrcoef(ram, pos)[0, 1] > 0.99
    assert pos.min() >= spec.paddle_range[0] - 0.5 and pos.max() <= spec.paddle_range[1] + 0.5
    assert pos.min() <= spec.paddle_range[0] + 0.5 and pos.max() >= spec.paddle_range[1] - 0.5  # both stops


def test_reader_gives_nan_without_a_paddle_and_checks_its_input():
    spec = GAMES["pong"]
    blank = -torch.ones(3, 4, *spec.size)
    assert torch.isnan(paddle_positions(blank, **spec.reader())).all()
    with pytest.raises(ValueError, match="axis="):
        paddle_positions(blank, spec.paddle_color, spec.paddle_band, "diagonal")
    with pytest.raises(ValueError, match=r"\(3, F, H, W\)"):
        paddle_positions(blank[0], **spec.reader())


@pytest.mark.parametrize("game", sorted(SCRIPTS))
def test_emulator_follows_its_commands_and_a_frozen_video_does_not(game, played):
    spec, ep = GAMES[game], played[game]
    pos, dirs = ep["pos"], ep["dirs"]
    s = action_sensitivity(pos, dirs, spec.paddle_range)
    assert s["agreement"] > 0.8 and s["correlation"] > 0.7 and s["frames"] >= 30 and s["readable"] == 1.0
    rt = response_times(pos, dirs, spec.paddle_range)
    assert rt["answered"] == 1.0 and rt["mean"] <= 1.0 and len(rt["times"]) >= 6
    # commands the video did not follow: the reversed script
    s_rev = action_sensitivity(pos, [-d for d in dirs], spec.paddle_range)
    assert s_rev["agreement"] < 0.2 and s_rev["correlation"] < -0.5
    # copy-last: the first frame repeated
    frozen = paddle_positions(video(np.repeat(ep["frames"][:1], len(dirs), 0)), **spec.reader())
    s0, rt0 = action_sensitivity(frozen, dirs, spec.paddle_range), response_times(frozen, dirs, spec.paddle_range)
    assert s0["agreement"] == 0.0 and math.isnan(s0["correlation"])
    assert rt0["answered"] == 0.0 and math.isnan(rt0["mean"])


def test_stops_and_unreadable_frames_are_left_out():
    pos = torch.tensor([5.0, 3.0, 1.0, 1.0, 1.0, float("nan"), 4.0, 8.0])
    dirs = [0, -1, -1, -1, -1, 1, 1, 1]
    s = action_sensitivity(pos, dirs, limits=(1.0, 60.0))
    # steps 1, 2 agree; steps 3, 4 start at the stop (left out); 5, 6 touch the NaN; 7 agrees
    assert s["frames"] == 3 and s["agreement"] == 1.0 and s["readable"] == 7 / 8
    s_no_limits = action_sensitivity(pos, dirs)
    assert s_no_limits["frames"] == 5 and s_no_limits["agreement"] == 3 / 5
    rt = response_times(torch.tensor([5.0, 5.0, 5.0, 7.0, 9.0, 9.0, 7.0]), [0, 1, 1, 1, 1, -1, -1])
    assert rt["times"] == [2, 1] and rt["mean"] == 1.5 and rt["answered"] == 1.0  # frames 3 and 6 answer
    with pytest.raises(ValueError, match="equal length"):
        action_sensitivity(pos, dirs[:-1])
