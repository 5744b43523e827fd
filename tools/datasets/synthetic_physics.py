"""Procedural bouncing-ball videos: an offline dataset for smoke tests, demos and
class- and text-conditional experiments (no files, no downloads).

Conditioning vocabulary. Every item describes its scene with attributes
``meta["attributes"] = {"num_balls": n, "colors": [names], "gravity": dir, "speed": s}``
and a caption built from them by :func:`caption`:

- ``num_balls``: 1, 2, 3, ... -> "one ball", "two balls", "three balls", ...
- ``colors``: palette names of the balls, in palette order (``COLOR_NAMES``: red, green, blue,
  yellow, purple, cyan, orange, white) -> "red", "red and blue", "red, green and blue";
- ``gravity``: one of ``GRAVITY_DIRS`` -> "no gravity", "falling down", "rising up",
  "falling to the left", "falling to the right";
- ``speed``: "slow" | "fast" (only with ``speeds``; else None and not in the caption) ->
  "moving slowly" | "moving fast".

Example: ``"two balls, red and blue, falling to the left, moving fast"``.
``label_mode='scene'`` gives one class per (num_balls, gravity) pair, ``scene_class``;
its names (``class_names``) read like ``"2 balls, gravity left"``.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from utils.registry import DATASETS

PALETTE = [(230, 60, 60), (60, 200, 90), (70, 120, 240), (240, 200, 50), (200, 80, 220),
           (60, 210, 220), (250, 140, 40), (240, 240, 240)]
COLOR_NAMES = ["red", "green", "blue", "yellow", "purple", "cyan", "orange", "white"]  # PALETTE order
GRAVITY_DIRS = ["none", "down", "up", "left", "right"]
_GRAVITY_VEC = {"none": (0.0, 0.0), "down": (0.0, 1.0), "up": (0.0, -1.0), "left": (-1.0, 0.0), "right": (1.0, 0.0)}
_GRAVITY_TEXT = {"none": "no gravity", "down": "falling down", "up": "rising up",
                 "left": "falling to the left", "right": "falling to the right"}
SPEED_CLASSES = ["slow", "fast"]
_SPEED_TEXT = {"slow": "moving slowly", "fast": "moving fast"}
_NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def caption(attrs: dict) -> str:
    """The caption of a scene from its attributes (see the module docstring for the vocabulary)."""
    n = int(attrs["num_balls"])
    parts = [f"{_NUMBER_WORDS[n] if n < len(_NUMBER_WORDS) else n} ball{'s' if n != 1 else ''}"]
    cols = list(attrs.get("colors") or [])
    if cols:
        parts.append(cols[0] if len(cols) == 1 else ", ".join(cols[:-1]) + " and " + cols[-1])
    parts.append(_GRAVITY_TEXT[attrs.get("gravity") or "none"])
    if attrs.get("speed"):
        parts.append(_SPEED_TEXT[attrs["speed"]])
    return ", ".join(parts)


def scene_class(attrs: dict, num_balls_range: Sequence[int], gravity_dirs: Sequence[str]) -> int:
    """Class index of (num_balls, gravity): ``(n - min_balls) * len(gravity_dirs) + dir index``."""
    return (int(attrs["num_balls"]) - int(num_balls_range[0])) * len(gravity_dirs) + \
        list(gravity_dirs).index(attrs["gravity"])


def _range(name, v, cast=float, lo=None):
    """int/float or [min, max] -> (min, max), validated."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = (v, v)
    if not (isinstance(v, (list, tuple)) and len(v) == 2):
        raise ValueError(f"{name}={v!r} must be a number or [min, max].")
    a, b = cast(v[0]), cast(v[1])
    if a > b or (lo is not None and a < lo):
        raise ValueError(f"{name}={list(v)} must satisfy {'' if lo is None else f'{lo} <= '}min <= max.")
    return a, b


def _rgb(name, c):
    if not (isinstance(c, (list, tuple)) and len(c) == 3 and all(0 <= float(x) <= 255 for x in c)):
        raise ValueError(f"{name}={c!r} must be an RGB triple with values in 0..255, e.g. [255, 0, 0].")
    return tuple(float(x) for x in c)


@DATASETS.register_class()
class SyntheticPhysics(Dataset):
    """Bouncing balls with elastic wall/ball collisions and optional gravity (procedural, seeded).

    Units: lengths are fractions of the shorter image side (``radius``), speeds are in
    fractions of the shorter side per frame, ``gravity`` in fractions per frame^2
    (pointing down the image). Item ``i`` is fully determined by ``(seed, i)``.
    Items: ``dict(video=(3, T, H, W) float32 in [-1, 1], caption=str (vocabulary in the module
    docstring), label=int (only with label_mode), meta=dict(seed, index, num_balls, attributes))``.
    ``label_mode='num_balls'`` gives ``label = num_balls - min_balls`` (classes 0..max-min);
    ``label_mode='scene'`` one class per (num_balls, gravity direction), see ``class_names``.

    Conditioning options: ``gravity_dirs`` (subset of ``GRAVITY_DIRS``): each video draws one
    direction uniformly and ``gravity`` is its strength (without it, ``gravity`` > 0 points down).
    ``speeds={"slow": [lo, hi], "fast": [lo, hi]}``: each video draws a speed class, then every
    ball's initial speed from that range (instead of ``speed``). ``distinct_colors``: refuse
    scenes with more balls than palette colours (balls always get distinct colours otherwise).
    These draws use their own random stream, so videos without them are unchanged.
    """

    def __init__(self, num_balls: Union[int, Sequence[int]] = (1, 3),
                 radius: Union[float, Sequence[float]] = (0.08, 0.15),
                 speed: Union[float, Sequence[float]] = (0.02, 0.06), gravity: float = 0.0,
                 mass: str = "area", colors: Optional[Sequence[Sequence[int]]] = None,
                 background: Sequence[int] = (16, 16, 24), resolution: Union[int, Sequence[int]] = 32,
                 num_frames: int = 16, substeps: int = 4, seed: int = 0, length: int = 10000,
                 label_mode: Optional[str] = None, gravity_dirs: Optional[Sequence[str]] = None,
                 speeds: Optional[dict] = None, distinct_colors: bool = False):
        self.num_balls = _range("num_balls", num_balls, int, lo=1)
        self.radius = _range("radius", radius, float, lo=1e-3)
        if self.radius[1] >= 0.5:
            raise ValueError(f"radius={list(self.radius)} is a fraction of the shorter side and must be < 0.5.")
        self.speed = _range("speed", speed, float, lo=0.0)
        if mass not in ("area", "equal"):
            raise ValueError(f"mass={mass!r} must be 'area' (mass ~ radius^2) or 'equal'.")
        self.mass = mass
        self.gravity = float(gravity)
        if colors is not None and (not isinstance(colors, (list, tuple)) or not colors):
            raise ValueError(f"colors={colors!r} must be a non-empty list of RGB triples or null (palette).")
        self.colors = np.array([_rgb("colors[]", c) for c in (colors or PALETTE)], dtype=np.float32)
        self.background = np.array(_rgb("background", background), dtype=np.float32)
        if isinstance(resolution, int) and not isinstance(resolution, bool):
            resolution = (resolution, resolution)
        if not (isinstance(resolution, (list, tuple)) and len(resolution) == 2 and all(int(r) >= 4 for r in resolution)):
            raise ValueError(f"resolution={resolution!r} must be an int or [H, W], each >= 4.")
        self.height, self.width = int(resolution[0]), int(resolution[1])
        for name, v in (("num_frames", num_frames), ("substeps", substeps), ("length", length)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} must be a positive int.")
        self.num_frames, self.substeps, self.length, self.seed = num_frames, substeps, length, int(seed)
        if gravity_dirs is not None:
            bad = [d for d in gravity_dirs if d not in GRAVITY_DIRS]
            if not gravity_dirs or bad or len(set(gravity_dirs)) != len(gravity_dirs):
                raise ValueError(f"gravity_dirs={gravity_dirs!r} must be a non-empty list of distinct directions "
                                 f"from {GRAVITY_DIRS}.")
            if any(d != "none" for d in gravity_dirs) and self.gravity <= 0:
                raise ValueError(f"gravity={gravity!r}: with gravity_dirs, gravity is the strength and must be > 0.")
            self.gravity_dirs = list(gravity_dirs)
        else:  # the fixed direction of plain `gravity`
            self.gravity_dirs = ["none" if self.gravity == 0 else "down" if self.gravity > 0 else "up"]
        self.speeds = None
        if speeds is not None:
            if not isinstance(speeds, dict) or not speeds or set(speeds) - set(SPEED_CLASSES):
                raise ValueError(f"speeds={speeds!r} must map 'slow' and/or 'fast' to [min, max] speeds.")
            self.speeds = {k: _range(f"speeds.{k}", speeds[k], float, lo=0.0) for k in SPEED_CLASSES if k in speeds}
        self.distinct_colors = bool(distinct_colors)
        if self.distinct_colors and self.num_balls[1] > len(self.colors):
            raise ValueError(f"distinct_colors: num_balls up to {self.num_balls[1]} but only {len(self.colors)} "
                             f"colours; lower num_balls or add colours.")
        self.color_names = COLOR_NAMES if colors is None else [f"rgb{tuple(int(x) for x in c)}" for c in self.colors]
        if label_mode not in (None, "num_balls", "scene"):
            raise ValueError(f"label_mode={label_mode!r} must be 'num_balls', 'scene' or null (no label).")
        self.label_mode = label_mode
        counts = range(self.num_balls[0], self.num_balls[1] + 1)
        if label_mode == "scene":
            self.class_names = [f"{n} ball{'s' if n != 1 else ''}, "
                                f"{'no gravity' if d == 'none' else 'gravity ' + d}"
                                for n in counts for d in self.gravity_dirs]
        elif label_mode == "num_balls":
            self.class_names = [f"{n} ball{'s' if n != 1 else ''}" for n in counts]
        else:
            self.class_names = []
        self.num_classes = len(self.class_names)

    def __len__(self) -> int:
        return self.length

    # ------------------------------------------------------------------ simulation
    def scene(self, index: int) -> dict:
        """The per-video draws of the conditioning options: gravity direction and speed class
        (from their own stream, so the ball layout stream is unchanged)."""
        rng = np.random.default_rng([self.seed, int(index), 1])
        g = self.gravity_dirs[int(rng.integers(len(self.gravity_dirs)))]
        speed = None
        if self.speeds:
            names = list(self.speeds)
            speed = names[int(rng.integers(len(names)))]
        return {"gravity": g, "speed": speed}

    def _init_state(self, rng, speed_range=None):
        H, W = self.height, self.width
        side = min(H, W)
        n = int(rng.integers(self.num_balls[0], self.num_balls[1] + 1))
        r = rng.uniform(*self.radius, size=n) * side
        pos = np.zeros((n, 2))  # (x, y) in pixels
        for i in range(n):
            for _ in range(200):
                p = np.array([rng.uniform(r[i], W - r[i]), rng.uniform(r[i], H - r[i])])
                if i == 0 or (np.linalg.norm(pos[:i] - p, axis=1) >= r[:i] + r[i]).all():
                    break
            else:
                raise ValueError(f"could not place {n} balls of radius {self.radius} in a {H}x{W} frame; "
                                 f"use fewer balls (num_balls) or smaller radius.")
            pos[i] = p
        ang = rng.uniform(0, 2 * np.pi, size=n)
        spd = rng.uniform(*(speed_range or self.speed), size=n) * side
        vel = np.stack([np.cos(ang), np.sin(ang)], 1) * spd[:, None]
        m = r ** 2 if self.mass == "area" else np.ones(n)
        return pos, vel, r, m

    def simulate(self, index: int):
        """Returns ``(pos (T, n, 2) pixels (x, y), vel (T, n, 2) pixels/frame, radius (n,), mass (n,), rng)``."""
        rng = np.random.default_rng([self.seed, int(index)])
        sc = self.scene(index)
        pos, vel, r, m = self._init_state(rng, self.speeds[sc["speed"]] if sc["speed"] else None)
        H, W = self.height, self.width
        dt = 1.0 / self.substeps
        g = np.array(_GRAVITY_VEC[sc["gravity"]]) * abs(self.gravity) * min(H, W)
        P, V = [pos.copy()], [vel.copy()]
        iu, ju = np.triu_indices(len(r), 1)
        for _ in range(self.num_frames - 1):
            for _ in range(self.substeps):
                vel = vel + g * dt
                pos = pos + vel * dt
                _collide_walls(pos, vel, r, W, H)
                for _ in range(4):  # contacts and wall clamping may push balls into each other
                    touching = _collide_balls(pos, vel, r, m, iu, ju)
                    np.clip(pos, r[:, None], np.array([W, H]) - r[:, None], out=pos)
                    if not touching:
                        break
            P.append(pos.copy())
            V.append(vel.copy())
        return np.stack(P), np.stack(V), r, m, rng

    # ------------------------------------------------------------------ rendering
    def render(self, pos: np.ndarray, r: np.ndarray, colors: np.ndarray) -> np.ndarray:
        """Anti-aliased discs (1-pixel linear edge) over the background -> (T, H, W, 3) float in [0, 255]."""
        T = pos.shape[0]
        ys = np.arange(self.height, dtype=np.float32) + 0.5
        xs = np.arange(self.width, dtype=np.float32) + 0.5
        img = np.broadcast_to(self.background, (T, self.height, self.width, 3)).copy()
        for i in range(len(r)):
            dx = xs[None, None, :] - pos[:, i, 0, None, None].astype(np.float32)
            dy = ys[None, :, None] - pos[:, i, 1, None, None].astype(np.float32)
            a = np.clip(r[i] + 0.5 - np.sqrt(dx * dx + dy * dy), 0.0, 1.0)[..., None]  # (T, H, W, 1)
            img = img * (1 - a) + colors[i] * a
        return img

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for SyntheticPhysics of length {self.length}.")
        pos, _, r, _, rng = self.simulate(index)
        n = len(r)
        pick = rng.permutation(len(self.colors))
        ids = pick[np.arange(n) % len(pick)]
        cols = self.colors[ids]
        img = self.render(pos, r, cols)  # (T, H, W, 3)
        video = torch.from_numpy(np.ascontiguousarray((img.transpose(3, 0, 1, 2) / 127.5 - 1.0).astype(np.float32)))
        attrs = dict(num_balls=n, colors=[self.color_names[i] for i in sorted(set(ids.tolist()))],
                     **self.scene(index))
        item = {"video": video, "caption": caption(attrs),
                "meta": {"seed": self.seed, "index": int(index), "num_balls": n, "attributes": attrs}}
        if self.label_mode == "num_balls":
            item["label"] = n - self.num_balls[0]
        elif self.label_mode == "scene":
            item["label"] = scene_class(attrs, self.num_balls, self.gravity_dirs)
        return item

    # ------------------------------------------------------------------ export
    def write_videos(self, out_dir: str, count: int, fps: int = 8, context_frames: Optional[int] = None,
                     start_index: int = 0, list_name: str = "test_list.txt", crf: int = 12) -> str:
        """Write items ``start_index .. start_index+count-1`` as mp4 plus a test list.

        Each line of ``<out_dir>/<list_name>`` is ``path|||caption`` (path relative to the list).
        ``context_frames=None`` writes whole videos; an int writes only the first
        ``context_frames`` frames (the context an inference run continues from) and the
        whole video under ``<out_dir>/gt/`` for comparison. Written with
        :func:`utils.video_io.write_video` (exact frame sizes, atomic).
        Returns the list file path.
        """
        from utils.video_io import to_uint8, write_video

        if context_frames is not None and not 1 <= int(context_frames) <= self.num_frames:
            raise ValueError(f"context_frames={context_frames} must be in 1..num_frames={self.num_frames} or null.")
        os.makedirs(out_dir, exist_ok=True)
        lines = []
        for i in range(start_index, start_index + count):
            item = self[i]
            frames = to_uint8(item["video"])
            name = f"physics_{self.seed}_{i:06d}.mp4"
            if context_frames is not None:
                write_video(os.path.join(out_dir, "gt", name), frames, fps=fps, quality=crf)
                frames = frames[:context_frames]
            write_video(os.path.join(out_dir, name), frames, fps=fps, quality=crf)
            lines.append(f"{name}|||{item['caption']}")  # relative to the list file
        list_path = os.path.join(out_dir, list_name)
        tmp = list_path + ".tmp"
        with open(tmp, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, list_path)
        return list_path


def _collide_walls(pos, vel, r, W, H):
    """Reflect positions and velocities at the walls (in place); elastic."""
    for d, size in ((0, W), (1, H)):
        lo = pos[:, d] < r
        pos[lo, d] = 2 * r[lo] - pos[lo, d]
        vel[lo, d] = np.abs(vel[lo, d])
        hi = pos[:, d] > size - r
        pos[hi, d] = 2 * (size - r[hi]) - pos[hi, d]
        vel[hi, d] = -np.abs(vel[hi, d])


def _collide_balls(pos, vel, r, m, iu, ju, passes: int = 3) -> bool:
    """Elastic ball-ball collisions (in place).

    Overlapping pairs that approach each other exchange the impulse
    ``J = 2 m_i m_j / (m_i + m_j) * (v_i - v_j).n`` along the contact normal n (momentum and
    kinetic energy conserved); overlaps are then removed by moving both balls apart along n
    in proportion to their inverse masses (positions only, so energy is unaffected).
    Returns whether any pair was in contact.
    """
    touching = False
    if len(iu) == 0:
        return touching
    for _ in range(passes):
        d = pos[ju] - pos[iu]
        dist = np.sqrt((d * d).sum(1))
        hit = np.nonzero(dist < r[iu] + r[ju])[0]
        if len(hit) == 0:
            return touching
        touching = True
        for k in hit:  # few contacts per sub-step: resolve them one after another
            i, j = iu[k], ju[k]
            n = pos[j] - pos[i]
            dn = float(np.sqrt(n @ n))
            n = n / dn if dn > 1e-9 else np.array([1.0, 0.0])
            approach = float((vel[i] - vel[j]) @ n)
            if approach > 0:
                J = 2.0 * approach * m[i] * m[j] / (m[i] + m[j])
                vel[i] -= J / m[i] * n
                vel[j] += J / m[j] * n
            overlap = r[i] + r[j] - dn
            if overlap > 0:
                wi, wj = 1 / m[i], 1 / m[j]
                pos[i] -= n * overlap * wi / (wi + wj)
                pos[j] += n * overlap * wj / (wi + wj)
    return touching
