"""INFER_ENGINE evaluate_world_model (tools/inferences/evaluate_world_model.py) with stand-in predictors
that expose the Predictor's ``predict``: one that IS the game (the emulator continues the episode under
the given actions) and one that ignores actions (replays the recording). The engine's figures must tell
them apart; configs/atari/evaluate.yaml loads and validates."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from tools.datasets.atari import AtariEpisodes, emulator, episode_noops, play_actions
from tools.inferences.evaluate_world_model import evaluate, script_actions, validate
from utils.config import ConfigError, load_config
from utils.registry import INFER_ENGINE

ROOT = Path(__file__).resolve().parent.parent


def _video(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float() / 127.5 - 1


class GameStandIn:
    """``predict(context, seed, cond_value, num_frames)`` like the Predictor. ``follow=True``: the emulator
    continues the episode the context comes from under ``cond_value``'s actions after the context (the
    perfect world model); ``follow=False``: the recorded episode, whatever the actions."""

    def __init__(self, ds: AtariEpisodes, follow: bool):
        self.ds, self.follow, self.calls = ds, follow, []
        self.ale = emulator(ds.spec)

    def _find(self, context: torch.Tensor) -> tuple[int, int]:
        ctx = ((context.permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
        for e in range(len(self.ds.episode_lengths)):
            frames, _ = self.ds.episode(e)
            for s in range(len(frames) - len(ctx) + 1):
                if np.array_equal(frames[s:s + len(ctx)], ctx):
                    return e, s
        raise AssertionError("context not found in the dataset")

    def predict(self, context, seed, cond_value=None, num_frames=None):
        C, T = context.shape[1], int(num_frames)
        self.calls.append(None if cond_value is None else list(cond_value))
        if cond_value is not None and len(cond_value) > T:
            raise ValueError(f"{len(cond_value)} actions for {T} frames")
        e, s = self._find(context)
        frames, actions = self.ds.episode(e)
        if cond_value is None or not self.follow:
            return _video(frames[s:s + T])
        st = self.ds.settings
        future = [max(int(a), 0) for a in cond_value[C:]] + [0] * (T - len(cond_value))
        played = play_actions(self.ds.game, [int(a) for a in actions[1:s + C]] + future, st["frame_skip"],
                              episode_noops(st["seed"], e, st["noop_max"]), self.ale)["frames"]
        return _video(played[s:s + T])


def _cfg(tmp_path, **over):
    overrides = [f"+dataset.cache_dir={tmp_path / 'cache'}", "dataset.episodes=2", "dataset.episode_frames=28",
                 "max_frames=20", "script_frames=16", "eval_horizons=[4,16]", "eval_episodes=[0,2]",
                 f"log_dir={tmp_path}", "save_videos=1"] + [f"{k}={v}" for k, v in over.items()]
    return load_config(ROOT / "configs/atari/evaluate.yaml", overrides, registry=INFER_ENGINE)


def _run(cfg, follow: bool, tmp_path, name: str):
    out = tmp_path / name
    out.mkdir()
    settings = {k: v for k, v in cfg.dataset.items() if k != "type"}
    predictor = GameStandIn(AtariEpisodes(**{**settings, "num_frames": cfg.max_frames}), follow)
    code = evaluate(cfg, predictor, out, logging.getLogger("test"))
    return code, json.loads((out / "metrics.json").read_text()), predictor, out


def test_config_loads_and_validates(tmp_path):
    cfg = load_config(ROOT / "configs/atari/evaluate.yaml", registry=INFER_ENGINE)
    validate(cfg)
    assert cfg.dataset.type == "AtariEpisodes" and cfg.dataset.seed != 0  # held out: training uses seed 0
    assert cfg.max_frames - cfg.context_frames == 64 and cfg.resolution == [64, 128]
    for bad, msg in ((["action_script=[[JUMP,3]]"], "JUMP"), (["start_frame=70"], "start_frame=70"),
                     (["eval_episodes=[0,99]"], "eval_episodes"), (["script_frames=65"], "script_frames=65"),
                     (["dataset.type=SyntheticPhysics"], "AtariEpisodes")):
        with pytest.raises(ConfigError, match=msg):
            validate(load_config(ROOT / "configs/atari/evaluate.yaml", bad, registry=INFER_ENGINE))


def test_script_actions_repeat_and_name_errors():
    assert script_actions("pong", [["UP", 2], ["NOOP", 1]], 5) == [2, 2, 0, 2, 2]
    with pytest.raises(ValueError, match="frames >= 1"):
        script_actions("pong", [["UP", 0]], 4)


def test_engine_tells_a_game_that_follows_actions_from_one_that_ignores_them(tmp_path):
    cfg = _cfg(tmp_path)
    code, m, pred, out = _run(cfg, True, tmp_path, "follow")
    assert code == 0 and m["episodes"] == 2 and not m["failures"]
    # every rollout gets one action per frame of the whole video: own actions, none, the script
    C, T, S = 4, 20, 16
    assert [len(c) if c else c for c in pred.calls[:3]] == [T, None, C + S]
    assert pred.calls[2][C:] == script_actions("pong", cfg.action_script, S)
    own = m["own_actions"]["horizons"]
    assert own["16"]["model"]["psnr"] > own["16"]["copy_last"]["psnr"] + 5  # the true continuation
    assert own["4"]["model"]["ssim"] > 0.99
    assert own["16"]["model"]["paddle_error"] == 0.0 and own["16"]["copy_last"]["paddle_error"] > 2  # px
    assert len(m["own_actions"]["methods"]["model"]["paddle_error"]) == T - C
    cmd = m["commanded"]["methods"]
    assert cmd["model"]["agreement"] > 0.8 and cmd["model"]["agreement"] == cmd["emulator"]["agreement"]
    assert cmd["model"]["response_frames"] <= 1.5 and cmd["model"]["answered"] > 0.8
    assert cmd["copy_last"]["agreement"] == 0.0 and cmd["copy_last"]["correlation"] is None
    assert cmd["null_action"]["agreement"] < 0.7  # the recording: its own actions, not the script
    drift = m["drift"]["horizons"]["16"]
    assert drift["model"]["paddle_readable"] > 0.9 and drift["model"]["color_distance"] < 0.05
    assert len(m["drift"]["methods"]["model"]["color_distance"]) == T - C
    assert "python" in m["command"] and m["settings"]["action_script"][0] == ["UP", 6]
    assert (out / "videos" / "0000_own.mp4").is_file() and (out / "videos" / "0000_script.mp4").is_file()

    code, m2, _, _ = _run(cfg, False, tmp_path, "ignore")  # a model blind to actions
    cmd2 = m2["commanded"]["methods"]
    assert cmd2["model"]["agreement"] < 0.7 and cmd2["model"]["agreement"] < cmd["model"]["agreement"] - 0.2
    assert cmd2["emulator"]["agreement"] == cmd["emulator"]["agreement"]  # the reference does not depend on it


def test_short_episodes_are_reported_not_fatal(tmp_path):
    cfg = _cfg(tmp_path, start_frame=9)  # 9 + 20 > 28 frames per episode: the validation says so
    with pytest.raises(ConfigError, match="start_frame=9"):
        validate(cfg)
    code, m, _, _ = _run(cfg, True, tmp_path, "short")
    assert code == 1 and m["episodes"] == 0 and len(m["failures"]) == 2 and "needs start_frame" in \
        m["failures"][0]["error"]


def test_the_training_seed_is_refused(tmp_path):
    """Held-out means held out: a checkpoint whose stored training config used the same game and dataset
    seed is refused; another seed passes."""
    import yaml
    from safetensors.torch import save_file

    ckpt = tmp_path / "step_1.ema.safetensors"
    train_cfg = {"dataset": {"type": "AtariEpisodes", "game": "pong", "seed": 9001}}
    save_file({"w": torch.zeros(1)}, str(ckpt), metadata={"config": yaml.safe_dump(train_cfg)})
    with pytest.raises(ConfigError, match="dataset.seed=9001 is the seed test_model was trained on"):
        validate(load_config(ROOT / "configs/atari/evaluate.yaml", [f"test_model={ckpt}"], registry=INFER_ENGINE))
    validate(load_config(ROOT / "configs/atari/evaluate.yaml", [f"test_model={ckpt}", "dataset.seed=9002"],
                         registry=INFER_ENGINE))
