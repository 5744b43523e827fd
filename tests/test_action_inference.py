"""Inference of an action-conditioned model: Predictor.predict with one action per frame of the whole
video, the interactive PlaySession (the same mechanism), action names through the embedder's game, and
the test-list syntax 'path.mp4|||actions=NOOP*4,UP*8' (a bad line fails alone, the batch goes on)."""
import json

import pytest
import torch

import tools.embedders.actions as actions_mod
from tools.embedders.actions import DiscreteActions, parse_actions
from tools.inferences.predictor import Predictor
from utils.checkpoint import embedder_weights_for, save_weights
from utils.cli import main
from utils.config import load_config
from utils.registry import INFER_ENGINE, MODEL

MODEL_CFG = {"type": "NextClipTransformer", "preset": "tiny", "in_channels": 3, "patch_size": 4, "rope": "3d"}
NAMES = {"NOOP": 0, "RIGHT": 1, "LEFT": 2, "UP": 1, "DOWN": 2}  # a test game: UP / DOWN are aliases


@pytest.fixture(autouse=True)
def toy_game(monkeypatch):
    """Action names of a test game 'toy' (the game table of the Atari data is not needed here)."""
    def resolve(game, name):
        if game != "toy" or name not in NAMES:
            raise ValueError(f"unknown action {name!r} for {game}: use one of {', '.join(NAMES)} or an int 0..2")
        return NAMES[name]

    monkeypatch.setattr(actions_mod, "resolve_action", resolve)


def weights(tmp_path):
    torch.manual_seed(0)
    m = MODEL.build(dict(MODEL_CFG, frame_cond_dim=8))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path / "actions.safetensors"
    save_weights(path, m.state_dict())
    emb = DiscreteActions(num_actions=3, dim=8)
    with torch.no_grad():
        emb.table.weight.normal_()  # actions far apart, so a changed action changes the output
    save_weights(embedder_weights_for(path), emb.state_dict())
    return path


def write_cfg(tmp_path, lst, ckpt, extra=""):
    cfg = tmp_path / "predict.yaml"
    cfg.write_text(f"""
TASK_TYPE: predict_next_clip
backend: {{type: cpu, precision: fp32, attention: sdpa}}
model: {json.dumps(MODEL_CFG)}
embedder: {{type: DiscreteActions, num_actions: 3, dim: 8, game: toy}}
diffusion: {{type: RectifiedFlow}}
log_dir: {tmp_path / 'out'}
test_list_path: {lst}
test_list_kind: video
test_model: {ckpt}
resolution: [16, 16]
context_frames: 2
max_frames: 8
clip_len: 2
window: 6
num_sample_steps: 2
kv_cache: rolling
progress: false
{extra}
""")
    return cfg


def predictor(tmp_path, *over):
    lst = tmp_path / "list.txt"
    lst.write_text("x\n")
    return Predictor(load_config(write_cfg(tmp_path, lst, weights(tmp_path)), list(over), registry=INFER_ENGINE))


def test_parse_actions_run_length_syntax():
    assert parse_actions("actions=NOOP*2,UP,-1,2*3") == ["NOOP", "NOOP", "UP", -1, 2, 2, 2]
    for bad in ("UP*0", "UP*x", "UP,,DOWN", ""):
        with pytest.raises(ValueError, match=r"bad action .* use comma-separated actions"):
            parse_actions(bad)


def test_embedder_names_resolve_through_its_game():
    emb = DiscreteActions(num_actions=3, dim=4, game="toy")
    assert torch.equal(emb([["UP", "DOWN", "NOOP", "2", -1]])[0], emb([[1, 2, 0, 2, -1]])[0])
    with pytest.raises(ValueError, match="unknown action 'JUMP' for toy: use one of NOOP, RIGHT, LEFT, UP, DOWN"):
        emb([["JUMP"]])
    with pytest.raises(ValueError, match=r"needs the game: set the embedder's game"):
        DiscreteActions(num_actions=3, dim=4)([["UP"]])


def test_predict_takes_one_action_per_frame_of_the_whole_video(tmp_path):
    p = predictor(tmp_path)
    ctx = torch.rand(3, 2, 16, 16) * 2 - 1
    acts = [-1, 0] + ["UP"] * 6
    a = p.predict(ctx, 3, acts, 8)
    assert a.shape == (3, 8, 16, 16)
    # names == their indices; a shorter sequence == padded with no action; None == all no action
    assert torch.equal(a, p.predict(ctx, 3, [-1, 0, 1, 1, 1, 1, 1, 1], 8))
    assert torch.equal(p.predict(ctx, 3, [-1, 0, 1, 1], 8), p.predict(ctx, 3, [-1, 0, 1, 1, -1, -1, -1, -1], 8))
    assert torch.equal(p.predict(ctx, 3, None, 8), p.predict(ctx, 3, [-1] * 8, 8))
    # the actions act: other actions for the generated frames give another video (context frames kept)
    b = p.predict(ctx, 3, [-1, 0] + ["DOWN"] * 6, 8)
    assert torch.equal(a[:, :2], b[:, :2]) and (a[:, 2:] - b[:, 2:]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="9 actions for a video of 8 frames"):
        p.predict(ctx, 3, [0] * 9, 8)
    with pytest.raises(ValueError, match="one action per frame: give a sequence"):
        p.predict(ctx, 3, "UP", 8)


@pytest.mark.parametrize("kv", ["rolling", "recompute"])
def test_play_session_is_predict_clip_by_clip(tmp_path, kv):
    p = predictor(tmp_path, f"kv_cache={kv}", "guide_scale=2.0")
    ctx = torch.rand(3, 2, 16, 16) * 2 - 1
    ref = p.predict(ctx, 5, [-1, 0, 1, 1, 2, 2, 0, 0], 8)
    play = p.start(ctx, [-1, 0], 5)
    clips = [play.next_clip("UP"), play.next_clip([2, "DOWN"]), play.next_clip(0)]
    assert play.frames_generated == 6
    torch.testing.assert_close(torch.cat([ctx, *clips], 1), ref, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="3 actions for a video of 2 frames"):
        play.next_clip([0, 0, 0])


def test_test_list_actions_and_a_bad_line_that_fails_alone(tmp_path, shared_data):
    video = shared_data / "videos" / "cat_walking.mp4"
    lst = tmp_path / "list.txt"
    lst.write_text(f"{video}|||actions=-1*2,UP*6\n"
                   f"{video}|||actions=NOOP*2,JUMP*6\n"
                   f"{video}|||a caption\n"
                   f"{video}\n")
    cfg = write_cfg(tmp_path, lst, weights(tmp_path))
    assert main("infer", ["--cfg", str(cfg)]) == 1  # some items failed
    out = tmp_path / "out" / "list"
    recs = {r["index"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert recs[0]["status"] == "ok" and recs[3]["status"] == "ok"
    assert recs[1]["status"] == "error" and "unknown action 'JUMP' for toy: use one of NOOP" in recs[1]["error"]
    assert recs[2]["status"] == "error" and "path.mp4|||actions=NOOP*4,UP*8" in recs[2]["error"]
    assert len(list(out.glob("*.mp4"))) == 2
