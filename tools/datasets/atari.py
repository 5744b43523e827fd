"""Atari episodes from the Arcade Learning Environment (``ale-py``, ROMs bundled in its wheel): real
game frames and the actions that produced them, for action-conditioned next-clip models (world models).

How an episode is made (:func:`generate_episode`). The emulator is ``ale_py.ALEInterface`` itself (not
gymnasium), with its own sticky actions off (``repeat_action_probability=0``): after ``reset_game()`` the
same actions give the same frames, so the behaviour policy below and the NOOP start are the only sources
of randomness, and episode e depends only on (seed, e). After a reset, ``0..noop_max`` NOOP steps
(drawn per episode, :func:`episode_noops`) vary the start. Each step applies one action of the game's minimal
action set for ``frame_skip`` emulator frames; the recorded frame is the pixel-wise max of the last two
of them (the usual Atari pipeline, against sprite flicker), cropped to the playfield (``GameSpec.crop``)
and area-resized to ``GameSpec.size``. Frame 0 is the screen after the reset; frame t > 0 is what
``actions[t]`` produced, so ``actions[0] = -1`` (no action known). An episode ends at ``episode_frames``
frames or at game over.

Behaviour policies (seeded per episode by ``(seed, episode)``):

- ``random``: sticky random actions: each step keeps the previous action with probability ``sticky``,
  else draws one uniformly from the minimal set (every action occurs);
- ``track``: moves the paddle towards the ball (read from the raw screen by colour) plus an aiming
  error redrawn every few steps (``track_error`` source pixels), with ``epsilon`` random actions;
  between points (no ball) it serves (FIRE, Breakout) or heads back to the middle; moves pick the plain
  or the FIRE variant at random;
- ``mix`` (default): the episode alternates segments of 4..16 steps of ``random`` (1/3) and ``track``
  (2/3), so the ball stays in play and the paddle sweeps, stops and turns often (diverse paddle motion).

Cache. Episodes are generated once into ``cache_dir`` (default ``workspace/atari/<game>_seed<seed>``):
``episodes_00000.npz`` ... (``frames_<i>`` uint8 (T, H, W, 3), ``actions_<i>`` int16 (T,) per episode,
``shard_episodes`` episodes a shard, each shard written atomically) and ``manifest.json`` (written last)
with the generation settings, the ale-py version and each episode's frame count. A cache made with other
settings is refused (:class:`AtariCacheMismatch`, one line naming the settings that differ); a
directory without a manifest is an unfinished cache and is regenerated. Same settings, same frames.

Items (DATASETS ``AtariEpisodes``): windows of ``num_frames`` frames inside one episode (never across
an episode end), starting every ``stride`` frames, in (episode, start) order; ``length`` keeps that
many evenly spaced windows. ``{"video": (3, F, H, W) float32 in [-1, 1], "actions": (F,) long
(index into the minimal action set, -1 = none), "game": str, "meta": {...}}``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from utils.io import atomic_path, atomic_write_text
from utils.registry import DATASETS

MANIFEST = "manifest.json"
POLICIES = ("mix", "random", "track")
CACHE_VERSION = 1  # bump when the generator changes what the same settings produce


@dataclasses.dataclass(frozen=True)
class GameSpec:
    """One game: where its playfield and the player's paddle are. Source coordinates are pixels of the
    raw 210x160 ALE screen; ``paddle_band`` / ``paddle_range`` are in the OUTPUT frame (after crop and
    resize). The paddle moves along ``paddle_axis`` ("row": vertically, Pong; "col": horizontally,
    Breakout); ``moves`` maps each moving action to the sign of the change of that coordinate."""

    rom: str
    crop: tuple[int, int, int, int]   # top, bottom, left, right (source pixels; bottom/right exclusive)
    size: tuple[int, int]             # output (H, W): multiples of 8 (patch size 8)
    action_names: tuple[str, ...]     # the minimal action set, in ALE order
    aliases: dict                     # e.g. {"UP": "RIGHT"}: names a user may type for the game's actions
    moves: dict                       # action name -> +1 / -1 along paddle_axis
    paddle_color: tuple[int, int, int]
    paddle_axis: str                  # "row" or "col": the coordinate the paddle moves along
    paddle_band: tuple[int, int]      # output columns (axis row) or rows (axis col) of the paddle, end exclusive
    paddle_range: tuple[float, float]  # the paddle centre's two stops, as paddle_positions reads them
    source_band: tuple[int, int]      # the same band in source pixels (the policy reads raw screens)
    ball_color: tuple[int, int, int]
    ball_region: tuple[int, int, int, int]  # source top, bottom, left, right where the ball is looked for
    serve: str | None = None          # action that serves a new ball (Breakout: FIRE), None: automatic

    def reader(self) -> dict:
        """The settings of ``utils.metrics.paddle_positions`` for this game."""
        return {"color": self.paddle_color, "band": self.paddle_band, "axis": self.paddle_axis}


GAMES: dict[str, GameSpec] = {
    # Pong: playfield rows 34..193 (between the white walls) and all 160 columns -> 64x128 (8x16 = 128
    # patches of 8). The player's (right, green) paddle: columns 140..143 (4 px) x 16 rows -> 3.2 x 6.4
    # output px; the ball 2x4 -> 1.6 x 1.6. RIGHT moves the paddle up, LEFT down.
    "pong": GameSpec(
        rom="pong", crop=(34, 194, 0, 160), size=(64, 128),
        action_names=("NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"),
        aliases={"UP": "RIGHT", "DOWN": "LEFT", "UPFIRE": "RIGHTFIRE", "DOWNFIRE": "LEFTFIRE"},
        moves={"RIGHT": -1, "RIGHTFIRE": -1, "LEFT": 1, "LEFTFIRE": 1},
        paddle_color=(92, 186, 92), paddle_axis="row", paddle_band=(112, 115), paddle_range=(0.5, 62.5),
        source_band=(140, 144), ball_color=(236, 236, 236), ball_region=(34, 194, 0, 160)),
    # Breakout: rows 33..192 (below the top wall down to the paddle's last row) x columns 8..151 (inside
    # the side walls) -> 120x72 (15x9 = 135 patches). Rows scale by 0.75 so the 4-row paddle (rows
    # 189..192) keeps 3 output rows (117..119); columns by 0.5 (paddle 16 -> 8 px, ball 2x4 -> 1x3).
    "breakout": GameSpec(
        rom="breakout", crop=(33, 193, 8, 152), size=(120, 72),
        action_names=("NOOP", "FIRE", "RIGHT", "LEFT"), aliases={},
        moves={"RIGHT": 1, "LEFT": -1},
        paddle_color=(200, 72, 72), paddle_axis="col", paddle_band=(117, 120), paddle_range=(3.5, 69.5),
        source_band=(189, 193), ball_color=(200, 72, 72), ball_region=(93, 188, 8, 152), serve="FIRE"),
}


def game_spec(game: str) -> GameSpec:
    if game not in GAMES:
        raise ValueError(f"game={game!r} is not in the Atari game table; choose one of {sorted(GAMES)}")
    return GAMES[game]


def action_index(game: str, name_or_int) -> int:
    """An action of ``game`` as an index into its minimal action set: an int in range, or a name
    (the ALE name, e.g. "RIGHT", or a game alias, e.g. Pong's "UP"), case-insensitive. -1 / "NONE"
    means no action."""
    spec = game_spec(game)
    n = len(spec.action_names)
    if isinstance(name_or_int, (int, np.integer)) and not isinstance(name_or_int, bool):
        if -1 <= int(name_or_int) < n:
            return int(name_or_int)
        raise ValueError(f"action {int(name_or_int)} is out of range for {game}: use -1 (none) or 0..{n - 1} "
                         f"({', '.join(spec.action_names)})")
    if isinstance(name_or_int, str):
        key = name_or_int.strip().upper()
        if key == "NONE":
            return -1
        key = spec.aliases.get(key, key)
        if key in spec.action_names:
            return spec.action_names.index(key)
    allowed = list(spec.action_names) + sorted(spec.aliases) + ["NONE"]
    raise ValueError(f"action {name_or_int!r} is unknown for {game}: use an index 0..{n - 1}, -1, or one of "
                     f"{allowed}")


def action_direction(game: str, name_or_int) -> int:
    """-1 / 0 / +1: how the action moves the paddle's coordinate (``GameSpec.paddle_axis``)."""
    spec = game_spec(game)
    i = action_index(game, name_or_int)
    return 0 if i < 0 else int(spec.moves.get(spec.action_names[i], 0))


# ---------------------------------------------------------------------------- frames
def area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of an exact area resize: output pixel i averages the source interval
    [i * n_in / n_out, (i + 1) * n_in / n_out) by overlap length."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    src = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, src + 1) - np.maximum(lo, src), 0, None)
    return (overlap / overlap.sum(1, keepdims=True)).astype(np.float32)


def area_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """The non-zero entries of :func:`area_matrix` as K taps: source indices (K, n_out) and weights
    (K, n_out), so that ``out[i] = sum_k weights[k, i] * x[index[k, i]]`` (unused taps weigh 0)."""
    m = area_matrix(n_in, n_out)
    k = int((m > 0).sum(1).max())
    index = np.zeros((k, n_out), np.int64)
    weight = np.zeros((k, n_out), np.float32)
    for i in range(n_out):
        nz = np.nonzero(m[i])[0]
        index[:len(nz), i], weight[:len(nz), i] = nz, m[i, nz]
    return index, weight


class FrameProcessor:
    """Raw ALE screens (..., 210, 160, 3) uint8 -> cropped, area-resized (..., H, W, 3) uint8 (exact area
    averaging, :func:`area_matrix`, applied as a few taps per axis)."""

    def __init__(self, spec: GameSpec):
        t, b, left, r = spec.crop
        self.crop = (slice(t, b), slice(left, r))
        self.rows = area_taps(b - t, spec.size[0])
        self.cols = area_taps(r - left, spec.size[1])

    @staticmethod
    def _resize(x: np.ndarray, taps: tuple[np.ndarray, np.ndarray], axis: int) -> np.ndarray:
        index, weight = taps
        shape = [1] * x.ndim
        shape[axis] = -1
        out = np.take(x, index[0], axis=axis) * weight[0].reshape(shape)
        for i, w in zip(index[1:], weight[1:]):
            out += np.take(x, i, axis=axis) * w.reshape(shape)
        return out

    def __call__(self, screens: np.ndarray) -> np.ndarray:
        x = screens[(..., *self.crop, slice(None))].astype(np.float32)  # (..., h, w, 3)
        x = self._resize(x, self.rows, x.ndim - 3)                      # (..., H, w, 3)
        x = self._resize(x, self.cols, x.ndim - 2)                      # (..., H, W, 3)
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _is_color(x: np.ndarray, color: Sequence[int]) -> np.ndarray:
    """(..., 3) uint8 -> (...) bool: exactly ``color``."""
    return (x[..., 0] == color[0]) & (x[..., 1] == color[1]) & (x[..., 2] == color[2])


def _centre(mask: np.ndarray, axis: int) -> float | None:
    idx = np.nonzero(mask.any(axis=axis))[0]
    return None if len(idx) == 0 else float(idx.mean())


def source_paddle(spec: GameSpec, screen: np.ndarray) -> float | None:
    """The paddle centre (source row for Pong, column for Breakout) on a raw screen, by exact colour."""
    t, b, left, r = spec.crop
    lo, hi = spec.source_band
    if spec.paddle_axis == "row":
        c = _centre(_is_color(screen[t:b, lo:hi], spec.paddle_color), axis=1)
        return None if c is None else c + t
    c = _centre(_is_color(screen[lo:hi, left:r], spec.paddle_color), axis=0)
    return None if c is None else c + left


def source_ball(spec: GameSpec, screen: np.ndarray) -> tuple[float, float] | None:
    """(row, col) of the ball on a raw screen, by colour inside ``ball_region``; None when not seen."""
    t, b, left, r = spec.ball_region
    m = _is_color(screen[t:b, left:r], spec.ball_color)
    ys, xs = np.nonzero(m)
    if len(ys) == 0 or len(ys) > 16:  # nothing, or a paddle / bricks of the same colour
        return None
    return float(ys.mean()) + t, float(xs.mean()) + left


# ---------------------------------------------------------------------------- policy
class BehaviourPolicy:
    """Seeded behaviour policy (see the module docstring); ``__call__(screen) -> action index``."""

    def __init__(self, spec: GameSpec, kind: str, rng: np.random.Generator, sticky: float = 0.75,
                 epsilon: float = 0.1, track_error: float = 12.0):
        self.spec, self.kind, self.rng = spec, kind, rng
        self.sticky, self.epsilon, self.track_error = sticky, epsilon, track_error
        self.n = len(spec.action_names)
        self.prev = 0
        self.segment_left, self.segment_kind = 0, kind
        self.aim, self.aim_left = 0.0, 0
        names = spec.action_names
        self.move_ids = {d: [i for i, a in enumerate(names) if spec.moves.get(a) == d] for d in (-1, 1)}
        self.still_ids = [i for i, a in enumerate(names) if a not in spec.moves]
        self.serve_id = None if spec.serve is None else names.index(spec.serve)

    def _random(self) -> int:
        if self.rng.random() >= self.sticky:
            self.prev = int(self.rng.integers(self.n))
        return self.prev

    def _track(self, screen: np.ndarray) -> int:
        if self.rng.random() < self.epsilon:
            return int(self.rng.integers(self.n))
        if self.aim_left <= 0:
            self.aim, self.aim_left = float(self.rng.normal(0, self.track_error)), int(self.rng.integers(4, 16))
        self.aim_left -= 1
        paddle, ball = source_paddle(self.spec, screen), source_ball(self.spec, screen)
        if ball is None and self.serve_id is not None and self.rng.random() < 0.5:
            return self.serve_id
        if paddle is None:
            return int(self.rng.integers(self.n))
        t, b, left, r = self.spec.crop
        if ball is None:  # between points: back towards the middle (plus the aiming error)
            target = ((t + b) / 2 if self.spec.paddle_axis == "row" else (left + r) / 2) + 2 * self.aim
        else:
            target = (ball[0] if self.spec.paddle_axis == "row" else ball[1]) + self.aim
        gap = target - paddle
        if abs(gap) < 4:
            return int(self.rng.choice(self.still_ids))
        return int(self.rng.choice(self.move_ids[1 if gap > 0 else -1]))

    def __call__(self, screen: np.ndarray) -> int:
        kind = self.kind
        if kind == "mix":
            if self.segment_left <= 0:
                self.segment_kind = "random" if self.rng.random() < 1 / 3 else "track"
                self.segment_left = int(self.rng.integers(4, 17))
            self.segment_left -= 1
            kind = self.segment_kind
        a = self._random() if kind == "random" else self._track(screen)
        self.prev = a
        return a


# ---------------------------------------------------------------------------- generation
def emulator(spec: GameSpec):
    """A fresh ``ALEInterface`` with the game loaded. Its own randomness is off (no sticky actions), so
    after ``reset_game()`` the same actions give the same frames whatever ran before (tested)."""
    from ale_py import ALEInterface, LoggerMode, roms  # the emulator is only needed to generate

    ALEInterface.setLoggerMode(LoggerMode.Error)
    ale = ALEInterface()
    ale.setInt("random_seed", 0)
    ale.setFloat("repeat_action_probability", 0.0)
    ale.loadROM(roms.get_rom_path(spec.rom))
    names = tuple(a.name for a in ale.getMinimalActionSet())
    if names != spec.action_names:
        raise RuntimeError(f"{spec.rom}: ale-py's minimal action set is {names}, the game table says "
                           f"{spec.action_names}; update GAMES in tools/datasets/atari.py for this ale-py version")
    return ale


def step(ale, action, frame_skip: int) -> np.ndarray:
    """Apply ``action`` for ``frame_skip`` emulator frames (fewer at game over) -> the raw screen
    (210, 160, 3): the pixel-wise max of the last two frames."""
    last = prev = None
    for k in range(frame_skip):
        ale.act(action)
        if k >= frame_skip - 2 or ale.game_over():  # only the last two frames are max-pooled
            prev, last = last, ale.getScreenRGB()
        if ale.game_over():
            break
    return last if prev is None else np.maximum(prev, last)


def play_actions(game: str, actions: Sequence, frame_skip: int = 4, noops: int = 0, ale=None) -> dict:
    """Drive the emulator with a scripted action sequence (indices or names, :func:`action_index`) from a
    reset plus ``noops`` NOOP steps: ``{"frames": (1 + len(actions), H, W, 3) uint8, "screens": raw,
    "ram": (1 + len(actions), 128) uint8, "actions": (1 + len(actions),) with -1 first}`` (frame 0 is
    the start; frame t is what ``actions[t - 1]`` produced). Stops early at game over."""
    spec = game_spec(game)
    ale = ale or emulator(spec)
    ale.reset_game()
    acts = ale.getMinimalActionSet()
    for _ in range(noops):
        ale.act(acts[0])
    ids = [action_index(game, a) for a in actions]
    screens, rams, done = [ale.getScreenRGB()], [ale.getRAM().copy()], [-1]
    for a in ids:
        if ale.game_over():
            break
        screens.append(step(ale, acts[max(a, 0)], frame_skip))
        rams.append(ale.getRAM().copy())
        done.append(a)
    raw = np.stack(screens)
    return {"frames": FrameProcessor(spec)(raw), "screens": raw, "ram": np.stack(rams),
            "actions": np.asarray(done, np.int16)}


def episode_noops(seed: int, episode: int, noop_max: int) -> int:
    """The NOOP steps before frame 0 of episode ``episode`` (as :func:`generate_episode` draws them), so a
    cached episode can be replayed: reset, these NOOPs, then its actions."""
    return int(np.random.default_rng([int(seed), int(episode)]).integers(noop_max + 1))


def generate_episode(game: str, seed: int, episode: int, frames: int, policy: str = "mix",
                     frame_skip: int = 4, noop_max: int = 30, sticky: float = 0.75, epsilon: float = 0.1,
                     track_error: float = 12.0, with_ram: bool = False, ale=None) -> dict:
    """Run one episode: ``{"frames": (T, H, W, 3) uint8, "actions": (T,) int16, "noops": int}`` (the NOOP
    steps after the reset, before frame 0) with T <= ``frames``
    (fewer at game over); with ``with_ram`` also ``"ram"`` (T, 128) uint8 and ``"screens"`` (T, 210, 160, 3)
    (the raw max-pooled screens), for tests of the readers. Deterministic in (game, seed, episode, settings);
    ``ale``: an :func:`emulator` of this game to reuse (loading one takes ~0.15 s)."""
    spec = game_spec(game)
    rng = np.random.default_rng([int(seed), int(episode)])
    ale = ale or emulator(spec)
    ale.reset_game()
    acts = ale.getMinimalActionSet()
    pol = BehaviourPolicy(spec, policy, rng, sticky, epsilon, track_error)
    noops = int(rng.integers(noop_max + 1))  # the first draw of the episode's stream (episode_noops)
    for _ in range(noops):
        ale.act(acts[0])
    screen = ale.getScreenRGB()
    out_a, rams, screens = [-1], [ale.getRAM().copy()], [screen]
    while len(screens) < frames and not ale.game_over():
        a = pol(screen)
        screen = step(ale, acts[a], frame_skip)
        screens.append(screen)
        out_a.append(a)
        if with_ram:
            rams.append(ale.getRAM().copy())
    raw = np.stack(screens)                                              # (T, 210, 160, 3)
    proc = FrameProcessor(spec)
    frames = np.concatenate([proc(raw[i:i + 64]) for i in range(0, len(raw), 64)])  # 64 at a time: less memory
    ep = {"frames": frames, "actions": np.asarray(out_a, np.int16), "noops": noops}
    if with_ram:
        ep["ram"], ep["screens"] = np.stack(rams), raw
    return ep


class AtariCacheMismatch(ValueError):
    """An episode cache was made with other generation settings."""


def _ale_version() -> str:
    import ale_py

    return str(ale_py.__version__)


def generate_cache(cache_dir: str, settings: dict, shard_episodes: int = 16, log=print) -> dict:
    """Generate ``settings["episodes"]`` episodes into ``cache_dir`` (shards, then the manifest).
    Returns the manifest."""
    os.makedirs(cache_dir, exist_ok=True)
    s = settings
    kw = {k: s[k] for k in ("policy", "frame_skip", "noop_max", "sticky", "epsilon", "track_error")}
    t0 = time.perf_counter()
    lengths, shards = [], []
    ale = emulator(game_spec(s["game"]))
    for first in range(0, s["episodes"], shard_episodes):
        arrays = {}
        for e in range(first, min(first + shard_episodes, s["episodes"])):
            ep = generate_episode(s["game"], s["seed"], e, s["episode_frames"], ale=ale, **kw)
            arrays[f"frames_{e}"], arrays[f"actions_{e}"] = ep["frames"], ep["actions"]
            lengths.append(len(ep["actions"]))
        name = f"episodes_{first // shard_episodes:05d}.npz"
        with atomic_path(os.path.join(cache_dir, name)) as tmp:
            np.savez_compressed(tmp, **arrays)
        shards.append(name)
    seconds = time.perf_counter() - t0
    manifest = {"settings": s, "shard_episodes": shard_episodes, "shards": shards, "episode_lengths": lengths,
                "frames": int(sum(lengths)), "generation_seconds": round(seconds, 2)}
    atomic_write_text(os.path.join(cache_dir, MANIFEST), json.dumps(manifest, indent=1))
    log(f"[atari] {s['episodes']} {s['game']} episodes, {sum(lengths)} frames in {seconds:.1f} s -> {cache_dir}")
    return manifest


def load_or_generate(cache_dir: str, settings: dict, log=print) -> dict:
    """The cache's manifest; generates the cache when ``cache_dir`` has none; refuses other settings."""
    path = os.path.join(cache_dir, MANIFEST)
    if not os.path.isfile(path):
        return generate_cache(cache_dir, settings, log=log)
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    have = manifest.get("settings", {})
    diff = [f"{k}={have.get(k, '<absent>')!r} (wanted {settings[k]!r})" for k in settings if have.get(k) != settings[k]]
    if diff:
        raise AtariCacheMismatch(
            f"Atari cache {cache_dir!r} was made with other settings: {', '.join(diff)}; delete that folder to "
            f"regenerate it, set cache_dir to another folder, or restore those settings")
    return manifest


# ---------------------------------------------------------------------------- dataset
@DATASETS.register_class()
class AtariEpisodes(Dataset):
    """Atari game frames and the actions that made them, from ale-py (module docstring: policy, cache).

    Items: ``{"video": (3, num_frames, H, W) float32 in [-1, 1], "actions": (num_frames,) long (index into
    the game's minimal action set; -1 = none, the first frame of an episode), "game": str, "meta":
    {"seed", "episode", "start", "index"}}``. Episodes are generated into ``cache_dir`` on first use
    (``episodes`` x up to ``episode_frames`` frames) and read back from there.
    """

    def __init__(self, game: str = "pong", num_frames: int = 16, episodes: int = 200, episode_frames: int = 300,
                 seed: int = 0, policy: str = "mix", frame_skip: int = 4, noop_max: int = 30,
                 sticky: float = 0.75, epsilon: float = 0.1, track_error: float = 12.0, stride: int = 4,
                 length: int | None = None, cache_dir: str | None = None, episode_cache: int = 32):
        self.spec = game_spec(game)
        if policy not in POLICIES:
            raise ValueError(f"policy={policy!r} is unknown; choose one of {list(POLICIES)}")
        for name, v, lo in (("num_frames", num_frames, 1), ("episodes", episodes, 1),
                            ("episode_frames", episode_frames, 2), ("frame_skip", frame_skip, 1),
                            ("noop_max", noop_max, 0), ("stride", stride, 1), ("episode_cache", episode_cache, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name}={v!r} must be an int >= {lo}")
        for name, v in (("sticky", sticky), ("epsilon", epsilon)):
            if not 0 <= float(v) <= 1:
                raise ValueError(f"{name}={v!r} must be a probability in [0, 1]")
        if num_frames > episode_frames:
            raise ValueError(f"num_frames={num_frames} is longer than episode_frames={episode_frames}: items are "
                             f"windows inside one episode; raise episode_frames or lower num_frames")
        self.game, self.num_frames, self.stride = game, num_frames, stride
        self.settings = {"game": game, "seed": int(seed), "policy": policy, "frame_skip": frame_skip,
                         "noop_max": noop_max, "sticky": float(sticky), "epsilon": float(epsilon),
                         "track_error": float(track_error), "episodes": episodes, "episode_frames": episode_frames,
                         "crop": list(self.spec.crop), "size": list(self.spec.size), "ale_py": _ale_version(),
                         "cache_version": CACHE_VERSION}
        self.cache_dir = cache_dir or os.path.join("workspace", "atari", f"{game}_seed{int(seed)}")
        self.manifest = load_or_generate(self.cache_dir, self.settings)
        self.episode_lengths = list(self.manifest["episode_lengths"])
        windows = [(e, s) for e, n in enumerate(self.episode_lengths) for s in range(0, n - num_frames + 1, stride)]
        if not windows:
            raise ValueError(f"no episode of {self.cache_dir!r} has {num_frames} frames; lower num_frames")
        if length is not None:
            if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= len(windows):
                raise ValueError(f"length={length!r} must be an int in 1..{len(windows)} (the windows of "
                                 f"{num_frames} frames every {stride} frames), or null for all of them")
            windows = [windows[i * len(windows) // length] for i in range(length)]
        self.windows = windows
        self.episode_cache = episode_cache
        self._episodes: OrderedDict = OrderedDict()
        self._npz: dict = {}

    @property
    def action_names(self) -> tuple[str, ...]:
        return self.spec.action_names

    def __len__(self) -> int:
        return len(self.windows)

    def __getstate__(self):  # DataLoader workers reopen the shards
        state = dict(self.__dict__)
        state["_episodes"], state["_npz"] = OrderedDict(), {}
        return state

    def episode(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        """Episode ``e``: frames (T, H, W, 3) uint8 and actions (T,) int16 (LRU-cached in memory)."""
        if e in self._episodes:
            self._episodes.move_to_end(e)
            return self._episodes[e]
        shard = self.manifest["shards"][e // self.manifest["shard_episodes"]]
        if shard not in self._npz:
            self._npz[shard] = np.load(os.path.join(self.cache_dir, shard))
        z = self._npz[shard]
        ep = (z[f"frames_{e}"], z[f"actions_{e}"])
        self._episodes[e] = ep
        while len(self._episodes) > self.episode_cache:
            self._episodes.popitem(last=False)
        return ep

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.windows):
            raise IndexError(f"index {index} out of range for AtariEpisodes of length {len(self.windows)}")
        e, s = self.windows[index]
        frames, actions = self.episode(e)
        clip = frames[s:s + self.num_frames]                                    # (F, H, W, 3) uint8
        video = torch.from_numpy(np.ascontiguousarray(clip.transpose(3, 0, 1, 2))).float() / 127.5 - 1.0
        return {"video": video, "actions": torch.from_numpy(actions[s:s + self.num_frames].astype(np.int64)),
                "game": self.game,
                "meta": {"seed": self.settings["seed"], "episode": int(e), "start": int(s), "index": int(index)}}

