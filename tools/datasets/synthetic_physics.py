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
``caption_drop={"colors": 0.3}`` leaves each named part out of an item's caption with its
probability (``"two balls, falling to the left"``), so one text-conditional model also follows
partial descriptions, e.g. the prompt of a (count, gravity) class.

Masks and properties. ``with_masks=True`` adds ``masks``: uint8 (T, H, W), 0 = background (and
obstacles), k = ball k (1-based simulation index) where its disc covers the pixel centre; the
topmost ball wins. Every item has ``meta["properties"] = {"count", "gravity" (a GRAVITY_DIRS
name; any-angle gravity is named by its nearest axis), "collision" (two balls touched)}``.

Physics v2 (every option off by default: today's settings give bit-identical videos).
Per video, from its own random stream ``(seed, index, 2)``:

- ``gravity_angle=[lo, hi]`` degrees (image axes, y down: 0 = right, 90 = down, 180 = left,
  270 = up), drawn uniformly; ``gravity_strength=[lo, hi]`` fractions of the shorter side per
  frame^2 (also with ``gravity_dirs``; else ``gravity`` is the strength);
- ``restitution`` (1 = elastic; walls, balls and obstacles) and ``friction`` (fraction of the
  speed lost per frame, a drag), numbers or [lo, hi];
- ``density=[lo, hi]`` per ball: mass = density x radius^2 (``mass='area'``), so sizes and
  masses vary independently;
- ``depth_layers=L``: each ball gets a layer 0..L-1; balls only collide within a layer and are
  drawn back to front, so balls of different layers pass in front of each other (occlusion);
- ``obstacles=[lo, hi]`` static grey rectangles (``obstacle_size`` fraction of the shorter side,
  ``obstacle_color``), which balls bounce off and never enter; every gap lets the largest ball
  through (rectangles near a wall are moved flush against it).

With any of them on, ``meta["physics"]`` records the draws (gravity vector, restitution,
friction, per-ball layer / radius / mass / colour, obstacle rectangles in pixels). Any
``resolution`` works (64x64 and up); ``num_balls: [1, 6]`` with ``radius: [0.05, 0.1]`` fits
64x64. Example: configs/experiments/demo_pixel/train.yaml.

Second takes (the physical-variance bound of the Physics-IQ-style scores, docs/guide/metrics.md).
``perturbation=s`` (pixels, default 0: off) adds Gaussian noise to each ball's initial state:
position offsets of standard deviation ``s`` pixels and velocity offsets of ``s / 10`` pixels per
frame (positions then kept inside the walls), drawn from the item's own stream
``(seed, index, 4, take)``. Everything else (layout, colours, physics draws, caption) is the
item's, so ``perturbation=0`` and ``perturbation=s, take=k`` are two takes of one scene that
differ only as much as a tiny change of the initial conditions makes them; ``take`` picks
another perturbation of the same size.
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
OBSTACLE_COLOR = (110, 110, 120)  # grey: no palette colour
_GRAVITY_VEC = {"none": (0.0, 0.0), "down": (0.0, 1.0), "up": (0.0, -1.0), "left": (-1.0, 0.0), "right": (1.0, 0.0)}
_GRAVITY_TEXT = {"none": "no gravity", "down": "falling down", "up": "rising up",
                 "left": "falling to the left", "right": "falling to the right"}
SPEED_CLASSES = ["slow", "fast"]
_SPEED_TEXT = {"slow": "moving slowly", "fast": "moving fast"}
CAPTION_PARTS = ("num_balls", "colors", "gravity", "speed")  # caption order
_NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def caption(attrs: dict, omit: Sequence[str] = ()) -> str:
    """The caption of a scene from its attributes (see the module docstring for the vocabulary);
    the attributes named in ``omit`` (``CAPTION_PARTS``) are left out of it."""
    bad = sorted(set(omit) - set(CAPTION_PARTS))
    if bad:
        raise ValueError(f"caption parts {bad} are unknown; omit some of {list(CAPTION_PARTS)}")
    n = int(attrs["num_balls"])
    parts = [] if "num_balls" in omit else \
        [f"{_NUMBER_WORDS[n] if n < len(_NUMBER_WORDS) else n} ball{'s' if n != 1 else ''}"]
    cols = [] if "colors" in omit else list(attrs.get("colors") or [])
    if cols:
        parts.append(cols[0] if len(cols) == 1 else ", ".join(cols[:-1]) + " and " + cols[-1])
    if "gravity" not in omit:
        parts.append(_GRAVITY_TEXT[attrs.get("gravity") or "none"])
    if attrs.get("speed") and "speed" not in omit:
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
                 speeds: Optional[dict] = None, distinct_colors: bool = False, with_masks: bool = False,
                 gravity_angle: Optional[Sequence[float]] = None,
                 gravity_strength: Optional[Union[float, Sequence[float]]] = None,
                 restitution: Union[float, Sequence[float]] = 1.0, friction: Union[float, Sequence[float]] = 0.0,
                 density: Optional[Union[float, Sequence[float]]] = None, depth_layers: int = 1,
                 obstacles: Union[int, Sequence[int]] = 0, obstacle_size: Sequence[float] = (0.1, 0.25),
                 obstacle_color: Sequence[int] = OBSTACLE_COLOR, caption_drop: Optional[dict] = None,
                 perturbation: float = 0.0, take: int = 0):
        if isinstance(perturbation, bool) or not isinstance(perturbation, (int, float)) or not 0 <= perturbation < 10:
            raise ValueError(f"perturbation={perturbation!r} must be a number of pixels in [0, 10) (0: off; a second "
                             f"take uses e.g. 0.5)")
        if isinstance(take, bool) or not isinstance(take, int) or take < 0:
            raise ValueError(f"take={take!r} must be an int >= 0 (which perturbation of the scene)")
        self.perturbation, self.take = float(perturbation), int(take)
        self.caption_drop = dict(caption_drop or {})
        for k, p in self.caption_drop.items():
            if k not in CAPTION_PARTS or isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
                raise ValueError(f"caption_drop={caption_drop!r}: keys must be caption parts {list(CAPTION_PARTS)} "
                                 f"and values probabilities in [0, 1], e.g. {{colors: 0.3}}")
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
        self._dirs_given = gravity_dirs is not None
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
        self.with_masks = bool(with_masks)
        self._init_v2(gravity_angle, gravity_strength, restitution, friction, density, depth_layers,
                      obstacles, obstacle_size, obstacle_color)
        if self.distinct_colors and self.num_balls[1] > len(self.colors):
            raise ValueError(f"distinct_colors: num_balls up to {self.num_balls[1]} but only {len(self.colors)} "
                             f"colours; lower num_balls or add colours.")
        self.color_names = COLOR_NAMES if colors is None else [f"rgb{tuple(int(x) for x in c)}" for c in self.colors]
        if label_mode not in (None, "num_balls", "scene"):
            raise ValueError(f"label_mode={label_mode!r} must be 'num_balls', 'scene' or null (no label).")
        self.label_mode = label_mode
        counts = range(self.num_balls[0], self.num_balls[1] + 1)
        # the attributes of every class, in class-id order (scene_class / label_mode='num_balls')
        self.class_attributes = ([{"num_balls": n, "gravity": d} for n in counts for d in self.gravity_dirs]
                                 if label_mode == "scene" else
                                 [{"num_balls": n} for n in counts] if label_mode == "num_balls" else [])
        self.class_names = [f"{a['num_balls']} ball{'s' if a['num_balls'] != 1 else ''}"
                            + ("" if "gravity" not in a else
                               ", no gravity" if a["gravity"] == "none" else f", gravity {a['gravity']}")
                            for a in self.class_attributes]
        self.num_classes = len(self.class_names)

    def _init_v2(self, gravity_angle, gravity_strength, restitution, friction, density, depth_layers,
                 obstacles, obstacle_size, obstacle_color) -> None:
        """Validate the v2 physics options (all off by default; see the module docstring)."""
        if gravity_angle is not None and self._dirs_given:
            raise ValueError(f"gravity_angle={gravity_angle!r} and gravity_dirs={self.gravity_dirs!r} both set: "
                             f"use gravity_dirs for the 4 axes or gravity_angle for any direction, not both.")
        self.gravity_angle = None if gravity_angle is None else _range("gravity_angle", gravity_angle, float)
        if self.gravity_angle is not None:  # named by the nearest axis ("none" only for strength 0)
            self.gravity_dirs = list(GRAVITY_DIRS)
        self.gravity_strength = None if gravity_strength is None else \
            _range("gravity_strength", gravity_strength, float, lo=0.0)
        if self.gravity_angle is not None and self.gravity_strength is None and self.gravity == 0:
            raise ValueError("gravity_angle needs a strength: set gravity (> 0) or gravity_strength [min, max].")
        self.restitution = _range("restitution", restitution, float, lo=0.0)
        self.friction = _range("friction", friction, float, lo=0.0)
        if self.restitution[1] > 1 or self.friction[1] >= 1:
            raise ValueError(f"restitution={list(self.restitution)} must be in [0, 1] and friction="
                             f"{list(self.friction)} in [0, 1) (fraction of the speed lost per frame).")
        self.density = None if density is None else _range("density", density, float, lo=1e-6)
        if isinstance(depth_layers, bool) or not isinstance(depth_layers, int) or depth_layers < 1:
            raise ValueError(f"depth_layers={depth_layers!r} must be an int >= 1 (1 = every ball collides).")
        self.depth_layers = depth_layers
        self.obstacles = _range("obstacles", obstacles, int, lo=0)
        self.obstacle_size = _range("obstacle_size", obstacle_size, float, lo=0.02)
        if self.obstacle_size[1] > 0.6:
            raise ValueError(f"obstacle_size={list(self.obstacle_size)} (fraction of the shorter side) must be <= 0.6.")
        self.obstacle_color = np.array(_rgb("obstacle_color", obstacle_color), dtype=np.float32)
        self.v2 = (self.gravity_angle is not None or self.gravity_strength is not None
                   or self.restitution != (1.0, 1.0) or self.friction != (0.0, 0.0) or self.density is not None
                   or depth_layers > 1 or self.obstacles[1] > 0)

    def __len__(self) -> int:
        return self.length

    # ------------------------------------------------------------------ simulation
    def scene(self, index: int) -> dict:
        """The per-video draws of the conditioning options: gravity direction and speed class
        (from their own stream, so the ball layout stream is unchanged)."""
        rng = np.random.default_rng([self.seed, int(index), 1])
        if self.gravity_angle is None:
            g = self.gravity_dirs[int(rng.integers(len(self.gravity_dirs)))]
        else:  # any angle: named by its nearest axis
            g = gravity_name(self.physics(index)["gravity"])
        speed = None
        if self.speeds:
            names = list(self.speeds)
            speed = names[int(rng.integers(len(names)))]
        return {"gravity": g, "speed": speed}

    def caption_omits(self, index: int) -> list:
        """The caption parts left out of item ``index``'s caption (``caption_drop``: each part
        independently with its probability, from the item's own stream ``(seed, index, 3)``, so
        videos and attributes are unchanged). A caption keeps at least one part."""
        if not self.caption_drop:
            return []
        u = np.random.default_rng([self.seed, int(index), 3]).random(len(CAPTION_PARTS))
        omit = [k for k, x in zip(CAPTION_PARTS, u) if x < self.caption_drop.get(k, 0.0)]
        present = [k for k in CAPTION_PARTS if k != "speed" or self.speeds]  # parts a caption can have
        return omit if any(k not in omit for k in present) else [k for k in omit if k != present[0]]

    def physics(self, index: int) -> dict:
        """The per-video draws of the v2 options, from their own stream (so the layout stream is
        unchanged): ``gravity`` vector (x, y) in fractions of the shorter side per frame^2,
        ``restitution``, ``friction``, per-ball ``layer`` and ``density`` (for up to max balls)
        and ``obstacles`` (k, 4) rectangles ``x0, y0, x1, y1`` in pixels."""
        rng = np.random.default_rng([self.seed, int(index), 2])
        if self.gravity_angle is not None:
            ang = np.deg2rad(rng.uniform(*self.gravity_angle))
            strength = rng.uniform(*self.gravity_strength) if self.gravity_strength else abs(self.gravity)
            g = np.array([np.cos(ang), np.sin(ang)]) * strength
        else:
            d = self.scene(index)["gravity"]
            strength = rng.uniform(*self.gravity_strength) if self.gravity_strength else abs(self.gravity)
            g = np.array(_GRAVITY_VEC[d]) * strength
        nmax = self.num_balls[1]
        out = {"gravity": g, "restitution": float(rng.uniform(*self.restitution)),
               "friction": float(rng.uniform(*self.friction)),
               "layer": rng.integers(self.depth_layers, size=nmax),
               "density": rng.uniform(*self.density, size=nmax) if self.density else np.ones(nmax)}
        out["obstacles"] = self._place_obstacles(rng)
        return out

    def _place_obstacles(self, rng) -> np.ndarray:
        """Non-overlapping rectangles (k, 4) in pixels. Every gap (to a wall or to another
        obstacle) lets the largest ball through: a rectangle closer to a wall than that is moved
        flush against it, and rectangles closer to each other are redrawn."""
        H, W = self.height, self.width
        side = min(H, W)
        k = int(rng.integers(self.obstacles[0], self.obstacles[1] + 1))
        gap = 2 * self.radius[1] * side + 1
        rects = []
        for _ in range(k):
            for _ in range(200):
                w, h = rng.uniform(*self.obstacle_size, size=2) * side
                x0, y0 = rng.uniform(0, W - w), rng.uniform(0, H - h)
                x0 = 0.0 if x0 < gap else W - w if W - w - x0 < gap else x0
                y0 = 0.0 if y0 < gap else H - h if H - h - y0 < gap else y0
                rect = np.array([x0, y0, x0 + w, y0 + h])
                if all(rect[0] >= q[2] + gap or q[0] >= rect[2] + gap or rect[1] >= q[3] + gap
                       or q[1] >= rect[3] + gap for q in rects):
                    rects.append(rect)
                    break
            else:
                raise ValueError(f"could not place {k} obstacles of size {list(self.obstacle_size)} in a {H}x{W} "
                                 f"frame with room for balls of radius {self.radius[1]}; use fewer or smaller "
                                 f"obstacles (obstacles, obstacle_size) or smaller balls.")
        return np.array(rects, np.float64).reshape(-1, 4)

    def _init_state(self, rng, speed_range=None, phys=None):
        H, W = self.height, self.width
        side = min(H, W)
        n = int(rng.integers(self.num_balls[0], self.num_balls[1] + 1))
        r = rng.uniform(*self.radius, size=n) * side
        layer = np.zeros(n, np.int64) if phys is None else phys["layer"][:n]
        rects = None if phys is None or not len(phys["obstacles"]) else phys["obstacles"]
        pos = np.zeros((n, 2))  # (x, y) in pixels
        for i in range(n):
            for _ in range(200):
                p = np.array([rng.uniform(r[i], W - r[i]), rng.uniform(r[i], H - r[i])])
                same = layer[:i] == layer[i]  # balls in other depth layers may overlap
                free = rects is None or (_rect_distance(p[None], rects) >= r[i]).all()
                if free and (i == 0 or (np.linalg.norm(pos[:i] - p, axis=1)[same] >= (r[:i] + r[i])[same]).all()):
                    break
            else:
                raise ValueError(f"could not place {n} balls of radius {self.radius} in a {H}x{W} frame; "
                                 f"use fewer balls (num_balls) or smaller radius.")
            pos[i] = p
        ang = rng.uniform(0, 2 * np.pi, size=n)
        spd = rng.uniform(*(speed_range or self.speed), size=n) * side
        vel = np.stack([np.cos(ang), np.sin(ang)], 1) * spd[:, None]
        m = r ** 2 if self.mass == "area" else np.ones(n)
        if phys is not None and self.density is not None:
            m = m * phys["density"][:n]
        return pos, vel, r, m

    def simulate(self, index: int):
        """Returns ``(pos (T, n, 2) pixels (x, y), vel (T, n, 2) pixels/frame, radius (n,), mass (n,), rng)``."""
        run = self._run(index)
        return run["pos"], run["vel"], run["radius"], run["mass"], run["rng"]

    def _run(self, index: int) -> dict:
        """The simulation of item ``index``: ``pos``, ``vel``, ``radius``, ``mass``, ``rng`` (the
        layout stream, next used for the colours), ``collision`` (two balls touched), ``layer``
        (n,) and ``phys`` (:meth:`physics`, None without v2 options)."""
        rng = np.random.default_rng([self.seed, int(index)])
        sc = self.scene(index)
        phys = self.physics(index) if self.v2 else None
        pos, vel, r, m = self._init_state(rng, self.speeds[sc["speed"]] if sc["speed"] else None, phys)
        H, W = self.height, self.width
        if self.perturbation > 0:  # a second take: tiny changes of the initial state, from their own stream
            prng = np.random.default_rng([self.seed, int(index), 4, self.take])
            pos = pos + prng.normal(0.0, self.perturbation, pos.shape)
            vel = vel + prng.normal(0.0, self.perturbation / 10, vel.shape)
            pos = np.clip(pos, r[:, None], np.array([W, H]) - r[:, None])
        dt = 1.0 / self.substeps
        if phys is None:
            g = np.array(_GRAVITY_VEC[sc["gravity"]]) * abs(self.gravity) * min(H, W)
            e, damp, layer, rects = 1.0, 1.0, np.zeros(len(r), np.int64), np.zeros((0, 4))
        else:
            g = phys["gravity"] * min(H, W)
            e, damp = phys["restitution"], (1.0 - phys["friction"]) ** dt
            layer, rects = phys["layer"][:len(r)], phys["obstacles"]
        P, V = [pos.copy()], [vel.copy()]
        iu, ju = np.triu_indices(len(r), 1)
        keep = layer[iu] == layer[ju]  # only balls in the same depth layer collide
        iu, ju = iu[keep], ju[keep]
        collision = False
        for _ in range(self.num_frames - 1):
            pos, vel, touched = step_frame(pos, vel, r, m, g, W, H, self.substeps, e, damp, (iu, ju), rects)
            collision = collision or touched
            P.append(pos.copy())
            V.append(vel.copy())
        return {"pos": np.stack(P), "vel": np.stack(V), "radius": r, "mass": m, "rng": rng, "collision": collision,
                "layer": layer, "phys": phys}

    # ------------------------------------------------------------------ rendering
    def render(self, pos: np.ndarray, r: np.ndarray, colors: np.ndarray, order: Optional[Sequence[int]] = None,
               obstacles: Optional[np.ndarray] = None) -> np.ndarray:
        """Anti-aliased discs (1-pixel linear edge) over the background (and the static
        ``obstacles`` rectangles, area-weighted edges) -> (T, H, W, 3) float in [0, 255]. Balls are
        drawn in ``order`` (default 0..n-1: later ones on top)."""
        T = pos.shape[0]
        ys = np.arange(self.height, dtype=np.float32) + 0.5
        xs = np.arange(self.width, dtype=np.float32) + 0.5
        if obstacles is not None and len(obstacles):
            base = render_obstacles(self.background, obstacles, self.height, self.width, self.obstacle_color)
            img = np.broadcast_to(base, (T, self.height, self.width, 3)).copy()
        else:
            img = np.broadcast_to(self.background, (T, self.height, self.width, 3)).copy()
        for i in (range(len(r)) if order is None else order):
            dx = xs[None, None, :] - pos[:, i, 0, None, None].astype(np.float32)
            dy = ys[None, :, None] - pos[:, i, 1, None, None].astype(np.float32)
            a = np.clip(r[i] + 0.5 - np.sqrt(dx * dx + dy * dy), 0.0, 1.0)[..., None]  # (T, H, W, 1)
            img = img * (1 - a) + colors[i] * a
        return img

    def masks(self, pos: np.ndarray, r: np.ndarray, order: Optional[Sequence[int]] = None) -> np.ndarray:
        """Ball masks (T, H, W) uint8: 0 = background, k = ball k (1-based simulation index) where
        its disc covers the pixel centre (coverage >= 0.5); balls later in ``order`` (the drawing
        order, default 0..n-1) are on top."""
        ys = np.arange(self.height, dtype=np.float32) + 0.5
        xs = np.arange(self.width, dtype=np.float32) + 0.5
        out = np.zeros((pos.shape[0], self.height, self.width), np.uint8)
        for i in (range(len(r)) if order is None else order):
            dx = xs[None, None, :] - pos[:, i, 0, None, None].astype(np.float32)
            dy = ys[None, :, None] - pos[:, i, 1, None, None].astype(np.float32)
            out[np.sqrt(dx * dx + dy * dy) <= np.float32(r[i])] = i + 1
        return out

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for SyntheticPhysics of length {self.length}.")
        run = self._run(index)
        pos, r, rng, phys = run["pos"], run["radius"], run["rng"], run["phys"]
        n = len(r)
        pick = rng.permutation(len(self.colors))
        ids = pick[np.arange(n) % len(pick)]
        cols = self.colors[ids]
        order = None if phys is None else np.lexsort((np.arange(n), run["layer"]))  # back layer first
        img = self.render(pos, r, cols, order, None if phys is None else phys["obstacles"])  # (T, H, W, 3)
        video = torch.from_numpy(np.ascontiguousarray((img.transpose(3, 0, 1, 2) / 127.5 - 1.0).astype(np.float32)))
        attrs = dict(num_balls=n, colors=[self.color_names[i] for i in sorted(set(ids.tolist()))],
                     **self.scene(index))
        props = {"count": n, "gravity": attrs["gravity"], "collision": bool(run["collision"])}
        item = {"video": video, "caption": caption(attrs, self.caption_omits(index)),
                "meta": {"seed": self.seed, "index": int(index), "num_balls": n, "attributes": attrs,
                         "properties": props}}
        if phys is not None:
            side = min(self.height, self.width)
            item["meta"]["physics"] = {
                "gravity": [float(x) for x in phys["gravity"]], "restitution": phys["restitution"],
                "friction": phys["friction"], "layer": [int(x) for x in run["layer"]],
                "radius": [float(x) / side for x in r], "mass": [float(x) for x in run["mass"]],
                "colors": [self.color_names[i] for i in ids],
                "obstacles": [[float(x) for x in q] for q in phys["obstacles"]]}  # pixels x0, y0, x1, y1
        if self.with_masks:
            item["masks"] = torch.from_numpy(self.masks(pos, r, order))
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


def step_frame(pos: np.ndarray, vel: np.ndarray, r: np.ndarray, m: np.ndarray, g: np.ndarray, W: float, H: float,
               substeps: int = 4, restitution: float = 1.0, damp: float = 1.0, pairs=None,
               rects: Optional[np.ndarray] = None):
    """Advance balls by one frame of ``substeps`` semi-implicit Euler steps (gravity ``g`` in
    pixels/frame^2, ``damp`` the per-sub-step velocity factor of friction) with wall, ball
    (``pairs = (iu, ju)`` that may collide; None = all) and obstacle contacts.
    Returns ``(pos, vel, touched)``; touched = two balls were in contact."""
    dt = 1.0 / substeps
    iu, ju = np.triu_indices(len(r), 1) if pairs is None else pairs
    collision = False
    for _ in range(substeps):
        vel = vel + g * dt
        if damp != 1.0:
            vel = vel * damp
        pos = pos + vel * dt
        _collide_walls(pos, vel, r, W, H, restitution)
        for _ in range(4):  # contacts and wall clamping may push balls into each other
            touching = _collide_balls(pos, vel, r, m, iu, ju, restitution=restitution)
            collision = collision or touching
            np.clip(pos, r[:, None], np.array([W, H]) - r[:, None], out=pos)
            if rects is not None and len(rects):
                touching = _collide_obstacles(pos, vel, r, rects, restitution) or touching
            if not touching:
                break
    return pos, vel, collision


def _collide_walls(pos, vel, r, W, H, restitution: float = 1.0):
    """Reflect positions and velocities at the walls (in place); elastic for ``restitution`` 1,
    else the normal velocity (and the reflected overshoot) is scaled by it."""
    e = restitution
    for d, size in ((0, W), (1, H)):
        lo = pos[:, d] < r
        hi = pos[:, d] > size - r
        if e == 1.0:
            pos[lo, d] = 2 * r[lo] - pos[lo, d]
            vel[lo, d] = np.abs(vel[lo, d])
            pos[hi, d] = 2 * (size - r[hi]) - pos[hi, d]
            vel[hi, d] = -np.abs(vel[hi, d])
        else:
            pos[lo, d] = r[lo] + e * (r[lo] - pos[lo, d])
            vel[lo, d] = e * np.abs(vel[lo, d])
            pos[hi, d] = size - r[hi] - e * (pos[hi, d] - (size - r[hi]))
            vel[hi, d] = -e * np.abs(vel[hi, d])


def _rect_distance(p: np.ndarray, rects: np.ndarray) -> np.ndarray:
    """Distance (n, k) from points (n, 2) to rectangles (k, 4) ``x0, y0, x1, y1`` (0 inside)."""
    q = np.stack([np.clip(p[:, None, 0], rects[None, :, 0], rects[None, :, 2]),
                  np.clip(p[:, None, 1], rects[None, :, 1], rects[None, :, 3])], -1)  # nearest points
    return np.sqrt(((p[:, None] - q) ** 2).sum(-1))


def _collide_obstacles(pos, vel, r, rects, restitution: float = 1.0) -> bool:
    """Push balls out of static rectangles along the contact normal and reflect the normal
    velocity (scaled by ``restitution``) when approaching (in place). Returns whether any touched."""
    touching = False
    for k in range(len(rects)):
        x0, y0, x1, y1 = rects[k]
        for i in range(len(r)):
            c = pos[i]
            q = np.array([min(max(c[0], x0), x1), min(max(c[1], y0), y1)])
            d = c - q
            dist = float(np.sqrt(d @ d))
            if dist >= r[i]:
                continue
            touching = True
            if dist > 1e-9:
                n = d / dist
            else:  # centre inside: leave by the nearest side
                gaps = [c[0] - x0, x1 - c[0], c[1] - y0, y1 - c[1]]
                sides = np.array([[-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])
                n = sides[int(np.argmin(gaps))]
                dist = -min(gaps)
            pos[i] += n * (r[i] - dist)
            vn = float(vel[i] @ n)
            if vn < 0:
                vel[i] -= (1.0 + restitution) * vn * n
    return touching


def render_obstacles(background: np.ndarray, rects: np.ndarray, H: int, W: int, color: np.ndarray) -> np.ndarray:
    """The static frame (H, W, 3): background with rectangles drawn by pixel-area coverage."""
    xs = np.arange(W, dtype=np.float64)
    ys = np.arange(H, dtype=np.float64)
    img = np.broadcast_to(background, (H, W, 3)).astype(np.float32)
    for x0, y0, x1, y1 in rects:
        cx = np.clip(np.minimum(xs + 1, x1) - np.maximum(xs, x0), 0, 1)
        cy = np.clip(np.minimum(ys + 1, y1) - np.maximum(ys, y0), 0, 1)
        a = (cy[:, None] * cx[None, :]).astype(np.float32)[..., None]
        img = img * (1 - a) + color * a
    return img


def gravity_name(g: np.ndarray) -> str:
    """A gravity vector (x, y; image y down) -> its nearest ``GRAVITY_DIRS`` axis ("none" if 0)."""
    gx, gy = float(g[0]), float(g[1])
    if gx == 0 and gy == 0:
        return "none"
    if abs(gy) >= abs(gx):
        return "down" if gy > 0 else "up"
    return "right" if gx > 0 else "left"


def _collide_balls(pos, vel, r, m, iu, ju, passes: int = 3, restitution: float = 1.0) -> bool:
    """Ball-ball collisions (in place), elastic for ``restitution`` e = 1.

    Overlapping pairs that approach each other exchange the impulse
    ``J = (1 + e) m_i m_j / (m_i + m_j) * (v_i - v_j).n`` along the contact normal n (momentum
    conserved; kinetic energy too when e = 1); overlaps are then removed by moving both balls apart along n
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
                J = (1.0 + restitution) * approach * m[i] * m[j] / (m[i] + m[j])
                vel[i] -= J / m[i] * n
                vel[j] += J / m[j] * n
            overlap = r[i] + r[j] - dn
            if overlap > 0:
                wi, wj = 1 / m[i], 1 / m[j]
                pos[i] -= n * overlap * wi / (wi + wj)
                pos[j] += n * overlap * wj / (wi + wj)
    return touching
