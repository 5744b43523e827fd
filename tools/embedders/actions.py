"""EMBEDDER ``DiscreteActions``: one learned token per frame for a discrete action, with a learned null.

A per-frame embedder (``per_frame = True``): an item's condition is a sequence of actions, one per
frame (ints in 0..num_actions-1; -1 or None = no action known), and the model takes the tokens as
frame conditions (``NextClipTransformer(frame_cond_dim=dim)``: one extra token per frame, at its
frame's time position; docs/guide/conditioning.md). The null row stands for "no action": it is what
condition dropout, a sequence given as ``None`` and the no-condition branch of guidance use.

Action names: with ``game`` set (e.g. ``pong``) an action may also be a name of that game's table
(``tools.datasets.atari.GAMES``, resolved by its ``action_index``: the minimal action set's names and
aliases such as UP / DOWN). :func:`parse_actions` reads the run-length syntax of test lists and the
page, ``NOOP*4,UP*8,DOWN*8``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from utils.registry import EMBEDDER

NO_ACTION = -1
ACTIONS_PREFIX = "actions="  # a test-list line's actions: 'path.mp4|||actions=NOOP*4,UP*8,DOWN*8'
ACTIONS_FORMAT = ("comma-separated actions, each an action name of the game or an int (-1 = no action), "
                  "optionally repeated as NAME*count: e.g. 'NOOP*4,UP*8,DOWN*8' or '0,0,2*6'")


def resolve_action(game: str, name: str) -> int:
    """An action name of ``game`` -> its index in the game's minimal action set (the game table's
    ``action_index``; ValueError naming the allowed names)."""
    from tools.datasets.atari import action_index

    return int(action_index(game, name))


def parse_actions(spec: str) -> list[int | str]:
    """Run-length action syntax -> one entry per frame (ints, and names left for the embedder to resolve):
    ``'NOOP*4,UP*2,-1'`` -> ``['NOOP'] * 4 + ['UP'] * 2 + [-1]``; an optional ``actions=`` prefix is
    dropped. ValueError (one line: the bad part and the format) otherwise."""
    text = spec.strip()
    if text.startswith(ACTIONS_PREFIX):
        text = text[len(ACTIONS_PREFIX):]
    out: list[int | str] = []
    for part in (p.strip() for p in text.split(",")):
        name, star, count = part.partition("*")
        name, count = name.strip(), count.strip()
        try:
            n = int(count) if star else 1
        except ValueError:
            n = 0
        if not name or n < 1:
            raise ValueError(f"bad action {part!r} in {spec!r}: use {ACTIONS_FORMAT}")
        try:
            value: int | str = int(name)
        except ValueError:
            value = name
        out += [value] * n
    return out


@EMBEDDER.register_class()
class DiscreteActions(nn.Module):
    """Learned table of ``num_actions`` action tokens plus a null token ("no action", index -1).

    ``embedder(values, num_frames=None)``: ``values`` is a list of B per-item action sequences (a list,
    tuple or 1-D tensor of ints, -1 = no action; ``None`` = no action anywhere) -> ``(tokens (B, F, dim),
    mask (B, F) bool)``. ``F = num_frames`` when given (shorter sequences are padded with the null token,
    longer ones truncated), else the longest sequence (at least 1). The mask is all True: every frame has
    exactly one token, the null one is learned, not padding. ``null(B, num_frames=1)`` equals
    ``embedder([None] * B, num_frames)``.
    """

    #: one token per frame: the engines route the tokens as frame conditions (model ``frame_cond_dim``)
    per_frame = True

    def __init__(self, num_actions: int, dim: int, init_std: float = 0.02, game: str | None = None):
        super().__init__()
        if isinstance(num_actions, bool) or not isinstance(num_actions, int) or num_actions < 1:
            raise ValueError(f"num_actions={num_actions!r} must be a positive int (the game's action count, "
                             f"e.g. 6 for Pong's minimal action set).")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim={dim!r} must be a positive int (the token width).")
        if game is not None and (not isinstance(game, str) or not game):
            raise ValueError(f"game={game!r} must be a game name of the game table (e.g. pong) or null.")
        self.num_actions, self.dim, self.num_tokens = num_actions, dim, 1  # one token per frame
        self.game = game  # names resolve through this game's action table
        self.table = nn.Embedding(num_actions + 1, dim)
        nn.init.normal_(self.table.weight, std=init_std)

    @property
    def null_id(self) -> int:
        return self.num_actions

    def action_ids(self, actions, num_frames: int | None = None) -> list[int]:
        """One item's actions -> table rows (null row for -1 / None), padded with the null row or
        truncated to ``num_frames`` when given. ValueError naming the allowed values otherwise."""
        if actions is None:
            actions = []
        elif torch.is_tensor(actions):
            if actions.dim() > 1:
                raise ValueError(f"an item's actions must be a 1-D sequence (one per frame), got a tensor of shape "
                                 f"{tuple(actions.shape)}.")
            actions = actions.tolist()
        elif isinstance(actions, (str, bytes)) or not isinstance(actions, Sequence):
            raise ValueError(f"an item's actions must be a sequence of ints (one per frame, -1 = no action) or None, "
                             f"got {type(actions).__name__} {actions!r}.")
        ids = [self._row(a) for a in actions]
        if num_frames is not None:
            ids = ids[:num_frames] + [self.null_id] * max(0, num_frames - len(ids))
        return ids

    def _row(self, a) -> int:
        if a is None:
            return self.null_id
        if isinstance(a, str):
            a = self._named(a)
        if isinstance(a, float) and a.is_integer():
            a = int(a)
        if isinstance(a, bool) or not isinstance(a, int) and not hasattr(a, "__index__"):
            raise ValueError(self._bad(a))
        a = int(a)
        if a == NO_ACTION:
            return self.null_id
        if not 0 <= a < self.num_actions:
            raise ValueError(self._bad(a))
        return a

    def _named(self, name: str) -> int:
        """An action given as a string: an int string, or a name of ``game``'s table."""
        try:
            return int(name.strip())
        except ValueError:
            pass
        if self.game is None:
            raise ValueError(f"action name {name!r} needs the game: set the embedder's game (e.g. "
                             f"embedder.game=pong) to use the game's action names, or give ints "
                             f"0..{self.num_actions - 1} (-1 = no action).")
        return resolve_action(self.game, name)

    def _bad(self, a) -> str:
        return (f"unknown action {a!r}: DiscreteActions(num_actions={self.num_actions}) takes ints in "
                f"0..{self.num_actions - 1} or -1 (no action); resolve action names through the game table "
                f"(tools.datasets.atari.action_index) first.")

    def forward(self, values, num_frames: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if num_frames is not None and (isinstance(num_frames, bool) or not isinstance(num_frames, int)
                                       or num_frames < 1):
            raise ValueError(f"num_frames={num_frames!r} must be a positive int (frames of the video) or None.")
        rows = [self.action_ids(v, num_frames) for v in values]
        F = num_frames if num_frames is not None else max([1] + [len(r) for r in rows])
        rows = [r + [self.null_id] * (F - len(r)) for r in rows]
        ids = torch.tensor(rows, dtype=torch.long, device=self.table.weight.device).reshape(len(rows), F)
        return self.table(ids), torch.ones(ids.shape, dtype=torch.bool, device=ids.device)

    def null(self, batch_size: int, num_frames: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The learned null token at every frame of every sample (= ``self([None] * B, num_frames)``)."""
        return self([None] * batch_size, num_frames)
