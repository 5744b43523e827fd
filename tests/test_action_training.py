"""Training with per-frame actions end to end: ``cond_key: actions`` with the DiscreteActions embedder
routes the tokens as frame conditions (train_net.py on a stand-in game dataset), and a tiny model trained
a few steps on a task where the action decides the motion reacts to different actions differently."""
import pathlib

import pytest
from safetensors.torch import load_file

from utils.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]

CFG = """
TASK_TYPE: train_next_clip
name: actions
custom_imports: [action_stand_in]
backend: {{type: cpu, precision: fp32, attention: sdpa}}
model: {{type: NextClipTransformer, preset: tiny, in_channels: 3, patch_size: 4, rope: 3d}}
diffusion: {{type: RectifiedFlow, prediction: x1}}
auto_encoder: {{type: Identity}}
dataset: {{type: MovingSquareActions, resolution: 16, num_frames: {frames}, length: 256, seed: 0,
          num_actions: {num_actions}, dynamics: {dynamics}}}
embedder: {{type: DiscreteActions, num_actions: 3, dim: 16}}
cond_key: actions
cond_dropout: 0.1
frame_cond_dropout: 0.1
max_frames: {max_frames}
window_start: {window_start}
clip_sampling: {{mode: fixed, clip_len: 2}}
batch_size: {batch}
num_steps: {steps}
lr: 2.0e-3
warmup_steps: 1
save_ckp_interval: {steps}
viz_interval: 100000
log_interval: 1
use_ema: false
progress: false
"""


def write_cfg(tmp_path, frames=8, num_actions="null", max_frames=8, window_start="first", batch=2, steps=2,
              dynamics="move"):
    p = tmp_path / "actions.yaml"
    p.write_text(CFG.format(frames=frames, num_actions=num_actions, max_frames=max_frames,
                            window_start=window_start, batch=batch, steps=steps, dynamics=dynamics))
    return p


@pytest.mark.parametrize("num_actions,window_start", [("null", "first"), (5, "random"), (12, "random")])
def test_train_net_routes_actions_as_frame_conditions(tmp_path, num_actions, window_start):
    """Items with as many, fewer (padded with no action) and more (truncated) actions than frames, in a
    window cut at random: the run trains, the model gets frame_cond_dim from the embedder, and the
    embedder's table is saved beside the model weights."""
    cfg = write_cfg(tmp_path, frames=10, num_actions=num_actions, max_frames=6, window_start=window_start)
    assert main("train", ["--cfg", str(cfg), "log_dir", str(tmp_path)]) == 0
    ckpt = tmp_path / "actions" / "checkpoints"
    sd = load_file(str(ckpt / "step_00000002.safetensors"))
    assert sd["frame_cond_proj.weight"].shape == (64, 16) and "cond_proj.weight" not in sd
    emb = load_file(str(next(ckpt.glob("step_00000002*embedder*.safetensors"))))
    assert emb["table.weight"].shape == (4, 16)


def test_a_per_frame_embedder_needs_one_latent_per_frame():
    from types import SimpleNamespace

    from easydict import EasyDict

    from tools.embedders.actions import DiscreteActions
    from tools.train.train_next_clip import _check_frame_conditions
    from utils.config import ConfigError

    cfg = EasyDict(embedder={"type": "DiscreteActions"}, auto_encoder={"type": "CausalVAE"})
    emb = DiscreteActions(num_actions=3, dim=4)
    _check_frame_conditions(cfg, emb, SimpleNamespace(temporal_factor=1))
    with pytest.raises(ConfigError, match="merges 4 frames into one latent frame"):
        _check_frame_conditions(cfg, emb, SimpleNamespace(temporal_factor=4))
