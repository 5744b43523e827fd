"""Training with per-frame actions end to end: ``cond_key: actions`` with the DiscreteActions embedder
routes the tokens as frame conditions (train_net.py on a stand-in game dataset), and a tiny model trained
a few steps on a task where the action decides the motion reacts to different actions differently."""
import pathlib

import pytest
import torch
from action_stand_in import SIZE, MovingSquareActions, centroid_col, jump_col
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
dataset: {{type: MovingSquareActions, resolution: {hw}, num_frames: {frames}, length: 256, seed: 0,
          num_actions: {num_actions}, dynamics: {dynamics}}}
embedder: {{type: DiscreteActions, num_actions: 3, dim: 16}}
cond_key: actions
cond_dropout: {dropout}
frame_cond_dropout: {dropout}
max_frames: {max_frames}
window_start: {window_start}
clip_sampling: {{mode: fixed, clip_len: 2}}
batch_size: {batch}
num_steps: {steps}
lr: {lr}
warmup_steps: 1
save_ckp_interval: {steps}
viz_interval: 100000
log_interval: 1
log_mfu: false
use_ema: false
progress: false
"""


def write_cfg(tmp_path, frames=8, num_actions="null", max_frames=8, window_start="first", batch=2, steps=2,
              dynamics="move", hw=16, lr=2e-3, dropout=0.1):
    p = tmp_path / "actions.yaml"
    p.write_text(CFG.format(frames=frames, num_actions=num_actions, max_frames=max_frames, window_start=window_start,
                            batch=batch, steps=steps, dynamics=dynamics, hw=hw, lr=lr,
                            dropout=dropout))
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


def test_the_rollout_visual_plays_the_batch_actions(tmp_path):
    cfg = write_cfg(tmp_path, max_frames=6, frames=6)
    cfg.write_text(cfg.read_text().replace("viz_interval: 100000", "viz_interval: 2") +
                   "visual: [{type: RolloutVideo, num_samples: 1, context_frames: 2, clip_len: 2, window: 4, "
                   "num_sample_steps: 2}]\n")
    assert main("train", ["--cfg", str(cfg), "log_dir", str(tmp_path)]) == 0
    assert (tmp_path / "actions" / "visuals" / "step_00000002.mp4").stat().st_size > 0


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


@pytest.mark.slow
def test_a_tiny_model_trained_briefly_follows_the_actions(tmp_path):
    """Trained a few hundred steps (train_net.py) on squares that jump to the column their action names,
    the model's next frame (x1 predicted from pure noise: its mean next frame given history and action)
    puts the square at the commanded column for each of the three actions, from the same history."""
    from utils.registry import EMBEDDER, MODEL

    steps, hw = 300, 8
    cfg = write_cfg(tmp_path, batch=8, steps=steps, dynamics="jump", hw=hw, lr=1e-2, dropout=0.0)
    assert main("train", ["--cfg", str(cfg), "log_dir", str(tmp_path)]) == 0
    ckpt = tmp_path / "actions" / "checkpoints"
    model = MODEL.build({"type": "NextClipTransformer", "preset": "tiny", "in_channels": 3, "patch_size": 4,
                         "rope": "3d", "frame_cond_dim": 16})
    model.load_state_dict(load_file(str(ckpt / f"step_{steps:08d}.safetensors")))
    emb = EMBEDDER.build({"type": "DiscreteActions", "num_actions": 3, "dim": 16})
    emb.load_state_dict(load_file(str(next(ckpt.glob(f"step_{steps:08d}*embedder*.safetensors")))))
    model.eval()
    data = MovingSquareActions(length=8, num_frames=8, resolution=hw, seed=1, dynamics="jump")
    cols = []
    with torch.no_grad():
        for i in range(len(data)):
            item = data[i]
            hist, acts = item["video"][None, :, :4], item["actions"][:4].tolist()
            cache = model.encode_history(hist, 0, clip_lens=[2, 2], frame_cond=emb([acts])[0])
            z = torch.randn(1, 3, 2, hw, hw, generator=torch.Generator().manual_seed(i))
            cols.append([float(centroid_col(model.denoise(z, torch.zeros(1), cache=cache,
                                                          frame_cond=emb([[a, a]])[0])[0, :, :1])[0])
                         for a in range(3)])
    got = torch.tensor(cols)  # (items, actions): the predicted square's mean column
    want = torch.tensor([jump_col(a, hw) + (SIZE - 1) / 2 for a in range(3)])  # 1.5, 3.5, 5.5
    mean = got.mean(0)
    assert torch.all(got[:, 2] - got[:, 0] > 1.0), (got, want)  # every history: right lands right of left
    assert mean[0] < mean[1] - 0.5 and mean[1] < mean[2] - 0.5, (got, want)  # left < centre < right
    assert (mean - want).abs().max() < 1.0, (got, want)


def test_a_latent_cache_keeps_each_items_actions(tmp_path):
    """Actions are stored with a latent cache's items and read back as long tensors (training from it)."""
    from action_stand_in import MovingSquareActions

    from tools.autoencoders.identity import Identity
    from tools.datasets.latent_cache import LatentCache, encode_dataset

    data = MovingSquareActions(length=3, num_frames=6, resolution=8, seed=2)
    encode_dataset(data, Identity(), str(tmp_path / "cache"), shard_size=2, fingerprint={"t": 1}, progress=False)
    cache = LatentCache(str(tmp_path / "cache"))
    for i in range(3):
        item = cache[i]
        assert item["actions"].dtype == torch.long and torch.equal(item["actions"], data[i]["actions"])
        assert torch.equal(item["latent"], data[i]["video"])
