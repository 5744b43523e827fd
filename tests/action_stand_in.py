"""A stand-in for an action-conditioned game dataset (the tests' own; not the Atari data): a bright
square on a dark frame moves by the action that produced each frame.

Items are dicts like every video dataset's (``video`` (3, T, H, W) in [-1, 1]) plus ``actions`` (T,)
long: ``actions[f]`` is the action that produced frame f (0 stay, 1 right, 2 left; -1 for the first
frame, nothing produced it), as the game datasets give them. ``dynamics: move``: the action moves the
square by STEP pixels (a game's paddle); ``jump``: the action puts the square at its own column (left,
centre, right), which a tiny model learns in a few seconds. Either way the column after the action is a
deterministic function of the previous column and the action, so a model that reads the action tokens
can predict the next frame and one that ignores them cannot."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from utils.registry import DATASETS

STEP = 2  # pixels the square moves per action
MOVES = {0: 0, 1: STEP, 2: -STEP}  # action -> column change
SIZE = 4  # the square's side


def square_video(cols: list[int], row: int, hw: int) -> torch.Tensor:
    """(3, T, hw, hw) frames with the square's left column at ``cols[f]``."""
    video = torch.full((3, len(cols), hw, hw), -1.0)
    for f, c in enumerate(cols):
        video[:, f, row:row + SIZE, c:c + SIZE] = 1.0
    return video


def roll(col: int, actions: list[int], hw: int, dynamics: str = "move") -> list[int]:
    """Columns of the frames produced by ``actions`` from ``col`` (the square stays inside the frame)."""
    cols = [col]
    for a in actions:
        cols.append(jump_col(a, hw) if dynamics == "jump" else min(max(cols[-1] + MOVES[a], 0), hw - SIZE))
    return cols


def jump_col(action: int, hw: int) -> int:
    """``dynamics: jump``: the square's column after ``action`` (0 left, 1 centre, 2 right)."""
    return [0, (hw - SIZE) // 2, hw - SIZE][action]


def centroid_col(frames: torch.Tensor) -> torch.Tensor:
    """(..., C, T, H, W) -> (..., T) mean column of the bright pixels (weights: brightness above the dark
    background)."""
    w = (frames.mean(-4) + 1).clamp(min=0)  # (..., T, H, W)
    cols = torch.arange(frames.shape[-1], dtype=frames.dtype)
    return (w.sum(-2) * cols).sum(-1) / w.sum((-2, -1)).clamp(min=1e-6)


@DATASETS.register_class()
class MovingSquareActions(Dataset):
    """``length`` items of ``num_frames`` frames at ``resolution``; seeded per index."""

    def __init__(self, length: int = 64, num_frames: int = 8, resolution: int = 16, seed: int = 0,
                 num_actions: int | None = None, dynamics: str = "move"):
        assert dynamics in ("move", "jump"), dynamics
        self.length, self.num_frames, self.hw, self.seed, self.dynamics = length, num_frames, resolution, seed, dynamics
        self.num_actions = num_actions  # None: one action per frame; else that many (shorter / longer)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key) -> dict:
        index = key[0] if isinstance(key, (tuple, list)) else key
        g = torch.Generator().manual_seed(self.seed * 100003 + int(index))
        acts = torch.randint(0, 3, (self.num_frames - 1,), generator=g).tolist()
        col = int(torch.randint(0, self.hw - SIZE + 1, (1,), generator=g))
        row = int(torch.randint(0, self.hw - SIZE + 1, (1,), generator=g))
        video = square_video(roll(col, acts, self.hw, self.dynamics), row, self.hw)
        actions = [-1] + acts
        n = self.num_actions if self.num_actions is not None else self.num_frames
        actions = (actions + [0] * n)[:n]
        return dict(video=video, actions=torch.tensor(actions, dtype=torch.long), game="square",
                    meta=dict(index=int(index)))
