"""The web page's **Play** tab: an action-conditioned model as a game (``python app.py --cfg configs/atari/play.yaml``).

A game starts from a held-out episode's first frames (the config's ``dataset``: the episodes no training config
uses) and their actions; every button press (or key: arrows, space) asks the model for the next clip with that
action held for each of its frames (:meth:`~tools.inferences.predictor.Predictor.start` /
:class:`~tools.inferences.predictor.PlaySession`: the KV cache of the history is kept between presses). The page
shows the newest frame and the clip, and the sampling time per frame of that press. :class:`Arcade` holds the
handlers as plain methods (tested without a browser); :func:`play_tab` wires them into the page.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tools.datasets.atari import action_index, game_spec
from tools.embedders.conditioning import is_per_frame
from tools.inferences.page_inputs import PageError, as_int
from utils.logging import get_logger
from utils.registry import DATASETS
from utils.video_io import to_uint8, write_video

#: games kept at once (each holds a KV cache of its history); the oldest is dropped
MAX_GAMES = 8
#: frames of a game kept for its mp4 (a game can go on for ever; the model keeps only its window)
MAX_KEPT_FRAMES = 1024
#: keys of the page -> the action name they press (names as the game table spells them)
KEYS = {"ArrowUp": "UP", "ArrowDown": "DOWN", "ArrowLeft": "LEFT", "ArrowRight": "RIGHT", " ": "NOOP", "f": "FIRE"}
STAY = "NOOP"
#: a game starts at this frame of a held-out episode (the ball is in play by then)
START_FRAME = 8


@dataclass
class Game:
    """One game in progress: its session (history + KV cache) and what it has shown so far."""
    session: object
    frames: list = field(default_factory=list)   # uint8 (H, W, 3), the context first
    actions: list = field(default_factory=list)  # the action name of every generated frame
    latencies: list = field(default_factory=list)  # seconds per generated frame, one per press


@dataclass
class Shown:
    """What a press gives the page: the game's key, the newest frame, the clip as a strip, a status line."""
    game: str | None
    frame: np.ndarray | None
    clip: np.ndarray | None
    message: str


def controls(game: str) -> list[tuple[str, str]]:
    """The buttons of ``game``: (label, action name): stay first, then the moves the game table lists under the
    names a player uses (Pong: UP / DOWN for RIGHT / LEFT), then FIRE when the game has it."""
    spec = game_spec(game)
    friendly = {target: alias for alias, target in spec.aliases.items()}
    out = [("stay", STAY)]
    for name, _sign in spec.moves.items():
        if "FIRE" not in name:
            label = friendly.get(name, name)
            out.append((label.lower(), label))
    if "FIRE" in spec.action_names:
        out.append(("fire", "FIRE"))
    return out


class Arcade:
    """The Play tab's handlers over the page's Predictor (``predictor.embedder`` must take per-frame actions).

    ``lock``: the page's model lock (one model call at a time across the tabs); ``out_dir``: where a saved
    game's mp4 goes (the page's outputs folder)."""

    def __init__(self, predictor, out_dir, lock: threading.Lock | None = None):
        self.predictor = predictor
        self.out_dir = Path(out_dir)
        self.lock = lock or threading.Lock()
        self.games: OrderedDict[str, Game] = OrderedDict()
        self._ids = itertools.count(1)
        self._starts = None

    # -- what the tab shows ----------------------------------------------------------
    @property
    def available(self) -> bool:
        """True when the model takes per-frame actions and the config names a game and its episodes."""
        return is_per_frame(self.predictor.embedder) and bool(self.game)

    @property
    def game(self) -> str | None:
        cfg = self.predictor.cfg
        return getattr(self.predictor.embedder, "game", None) or (cfg.get("dataset") or {}).get("game")

    def controls(self) -> list[tuple[str, str]]:
        return controls(self.game)

    def starts(self):
        """The held-out episodes of the config's ``dataset`` (built once; generated into its cache on first use)."""
        if self._starts is None:
            cfg = self.predictor.cfg
            if not cfg.get("dataset"):
                raise PageError("the config has no dataset: the Play tab starts from its episodes "
                                "(configs/atari/play.yaml sets the held-out Pong episodes)")
            self._starts = DATASETS.build(cfg.dataset, "dataset")
        return self._starts

    def start_choices(self) -> list[tuple[str, int]]:
        n = len(self.starts().episode_lengths)
        return [(f"held-out episode {e}", e) for e in range(n)]

    # -- handlers ----------------------------------------------------------------------
    def start(self, episode=0, steps=None, seed=0) -> Shown:
        """A new game from held-out episode ``episode``: its frames ``START_FRAME .. + context_frames`` and their
        actions are the history."""
        def run():
            cfg = self.predictor.cfg
            ds = self.starts()
            n = len(ds.episode_lengths)
            e = as_int("episode", episode, 0, n - 1)
            frames, actions = ds.episode(e)
            first, ctx = START_FRAME, max(1, int(cfg.context_frames))
            if first + ctx > len(frames):
                raise PageError(f"held-out episode {e} has {len(frames)} frames, fewer than the start frame {first} + "
                                f"context_frames {ctx}; lower context_frames or raise dataset.episode_frames")
            clip = frames[first:first + ctx]
            context = torch.from_numpy(np.ascontiguousarray(clip.transpose(3, 0, 1, 2))).float() / 127.5 - 1.0
            with self._steps(steps, self.predictor):
                session = self.predictor.start(context, [int(a) for a in actions[first:first + ctx]], int(seed))
            key = f"game{next(self._ids)}"
            self.games[key] = Game(session, frames=list(clip))
            while len(self.games) > MAX_GAMES:
                self.games.popitem(last=False)
            return key, clip[-1], clip, (f"episode {e}: {ctx} frames of history; press an action "
                                         f"({', '.join(label for label, _ in self.controls())})")

        return self._guarded("start", run)

    def press(self, game: str | None, action: str, steps=None) -> Shown:
        """The next clip of ``game`` with ``action`` held for each of its frames."""
        def run():
            g = self.games.get(game or "")
            if g is None:
                raise PageError("no game running: press Start (a game is dropped after "
                                f"{MAX_GAMES} newer ones or a restart of the server)")
            name = str(action).upper()
            index = action_index(self.game, name)  # ValueError naming the game's actions
            with self._steps(steps, g.session):  # the session keeps its own copy of the settings
                t0 = time.perf_counter()
                clip = g.session.next_clip(index)
                took = time.perf_counter() - t0
            frames = to_uint8(clip)
            g.frames.extend(frames)
            del g.frames[:-MAX_KEPT_FRAMES]
            g.actions.extend([name] * len(frames))
            g.latencies.append(took / len(frames))
            self.games.move_to_end(game)
            ms = 1000 * took / len(frames)
            return game, frames[-1], frames, (f"{name}: {len(frames)} frames in {1000 * took:.0f} ms "
                                              f"({ms:.0f} ms per frame); {len(g.actions)} frames played")

        return self._guarded("press", run)

    def save(self, game: str | None) -> tuple[str | None, str]:
        """The game so far as an mp4 in the page's outputs: (path, status line)."""
        g = self.games.get(game or "")
        if g is None or not g.frames:
            return None, "error: no game to save: press Start"
        try:
            with self.lock:
                path = write_video(self.out_dir / f"play_{time.strftime('%Y%m%d-%H%M%S')}_{game}.mp4",
                                   np.stack(g.frames), float(self.predictor.cfg.fps))
        except OSError as e:
            return None, f"error: could not write the game: {e}"
        return str(path), f"saved {len(g.frames)} frames to {path}"

    # -- plumbing ----------------------------------------------------------------------
    @staticmethod
    @contextlib.contextmanager
    def _steps(steps, holder):
        """This call's sampling steps in ``holder.settings`` (the Predictor's when a game starts, the running
        session's on a press) for the call only; None: unchanged."""
        if steps is None:
            yield
            return
        old = holder.settings
        holder.settings = dataclasses.replace(old, num_sample_steps=as_int("sampling steps", steps, 1, 200))
        try:
            yield
        finally:
            holder.settings = old

    def _guarded(self, kind: str, run) -> Shown:
        try:
            with self.lock:
                key, frame, clip, msg = run()
        except ValueError as e:  # PageError, a bad action name, a config error
            return Shown(None, None, None, f"error: {e}")
        except Exception as e:  # a bug: logged with its traceback, the page stays up
            get_logger().error("play %s failed:\n%s", kind, traceback.format_exc())
            return Shown(None, None, None, f"error: {kind} failed ({type(e).__name__}: {e})")
        get_logger().info("play %s: %s", kind, msg)
        return Shown(key, frame, np.concatenate(list(clip), axis=1), msg)


KEY_SCRIPT = """<script>
document.addEventListener('keydown', (e) => {
  const keys = %s;
  const name = keys[e.key];
  const el = document.activeElement;
  if (!name || (el && ['INPUT', 'TEXTAREA', 'SELECT'].includes(el.tagName))) return;
  const button = document.getElementById('play_' + name);
  if (button && button.offsetParent !== null) { e.preventDefault(); button.click(); }
});
</script>"""


def key_script() -> str:
    """The page's <head> script: arrows / space / f press the Play tab's buttons (when the tab is shown)."""
    return KEY_SCRIPT % json.dumps(KEYS)


def play_tab(gr, arcade: Arcade, upscale, run: dict) -> None:
    """The Play tab's components and events (inside the page's ``gr.Blocks``)."""
    cfg = arcade.predictor.cfg
    state = gr.State(None)

    def shown(res: Shown):
        big = None if res.frame is None else upscale(res.frame[None])[0]
        strip = None if res.clip is None else upscale(res.clip[None], height=128)[0]
        return res.game, big, strip, res.message

    with gr.Row():
        with gr.Column(scale=1):
            start = gr.Dropdown(arcade.start_choices(), value=0, label="start from", elem_id="play_start_from")
            steps = gr.Slider(1, 50, value=int(cfg.num_sample_steps), step=1, label="sampling steps")
            seed = gr.Number(value=int(cfg.seed), precision=0, minimum=0, label="seed")
            start_button = gr.Button("Start", variant="primary", elem_id="play_start")
            with gr.Row():
                buttons = [(gr.Button(label, elem_id=f"play_{name}"), name) for label, name in arcade.controls()]
            gr.Markdown("Keys: arrows move, space stays, f fires (click the page first).")
            save_button = gr.Button("Save the game as mp4", elem_id="play_save")
            download = gr.File(label="mp4 download", elem_id="play_download", interactive=False)
        with gr.Column(scale=2):
            frame = gr.Image(label="now", elem_id="play_frame", interactive=False, type="numpy")
            clip = gr.Image(label="the last clip", elem_id="play_clip", interactive=False, type="numpy")
            status = gr.Markdown(elem_id="play_status")
    outs = [state, frame, clip, status]
    start_button.click(lambda e, n, s: shown(arcade.start(e, n, s)), [start, steps, seed], outs, **run)
    for button, name in buttons:
        button.click(lambda g, n, _name=name: shown(arcade.press(g, _name, n)), [state, steps], outs, **run)
    save_button.click(lambda g: arcade.save(g), [state], [download, status], **run)
