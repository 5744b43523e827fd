"""Scene analyser for SyntheticPhysics-style videos (numpy/OpenCV, no learned weights).

Reads from uint8 frames (T, H, W, 3) what a condition asks for: how many balls, which
palette colours, and how they move (gravity direction from the mean acceleration of the
ball centroids, speed class from the initial speed). Used by the ``evaluate_condition``
engine to score generated videos; validated on ground-truth videos.

Pixels are explained as ``background + a * (colour - background)`` (the dataset's
anti-aliased discs): for every palette colour the coverage ``a`` that fits a pixel best is
found by projection, and the pixel takes the colour with the smallest residual. Pixels
with ``a >= 0.5`` form per-colour masks whose connected components are the balls.

Object level (``detect_objects``): per frame, every visible ball as (colour, x, y, area), with
blobs down to half the smallest disc (a quarter with depth layers, so that balls partly hidden
behind others still count); pixels best explained by the dataset's obstacle colour
(``SceneSettings.obstacle_color``) are scenery, never balls (``detect_obstacles`` boxes them).
``match_objects`` pairs predicted and true balls of the same colour (position error per frame).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

GRAVITY_NAMES = ("none", "down", "up", "left", "right")
SPEED_NAMES = ("slow", "fast")
ATTRIBUTES = ("num_balls", "colors", "gravity", "speed")

#: SyntheticPhysics defaults (kept here so that the analyser does not import the dataset's
#: torch machinery; ``settings_from_dataset`` reads the real values from a dataset config)
DEFAULT_BACKGROUND = (16, 16, 24)


@dataclass
class SceneSettings:
    """What the analyser needs to know about the dataset (see :func:`settings_from_dataset`).

    ``gravity`` is the dataset's gravity strength (fraction of the shorter side per
    frame^2; 0 = the analyser never reports a direction), ``speeds`` the dataset's
    ``{"slow": [lo, hi], "fast": [lo, hi]}`` (fractions of the shorter side per frame; None
    = no speed class), ``substeps`` the simulation's sub-steps per frame and ``min_radius`` /
    ``max_radius`` the ball radius range (fractions of the shorter side): blobs much smaller or
    larger (e.g. a washed-out frame) are not balls.
    """
    palette: Sequence[Sequence[float]]
    color_names: Sequence[str]
    background: Sequence[float] = DEFAULT_BACKGROUND
    gravity: float = 0.0
    speeds: Mapping[str, Sequence[float]] | None = None
    substeps: int = 4
    min_radius: float = 0.08
    max_radius: float = 0.15
    obstacle_color: Sequence[float] | None = None  # the dataset's obstacle colour when it has obstacles
    min_blob_fraction: float = 0.5  # smallest ball blob / smallest disc area (0.25 with occlusion: partly hidden)


@dataclass
class SceneAnalysis:
    """What one video shows. ``tracks[i]`` is ball i's centroid (x, y) in pixels per frame
    (NaN where it is not visible); ``accel`` the mean acceleration (x, y) in pixels/frame^2
    (NaN if unmeasurable); ``init_speed`` the mean initial speed in pixels/frame."""
    num_balls: int
    colors: list[str]
    gravity: str | None
    speed: str | None
    tracks: list[np.ndarray] = field(repr=False, default_factory=list)
    track_colors: list[str] = field(default_factory=list)
    accel: tuple[float, float] = (float("nan"), float("nan"))
    init_speed: float = float("nan")

    def attributes(self) -> dict:
        """The four attributes in the dataset's ``meta["attributes"]`` format."""
        return {"num_balls": self.num_balls, "colors": list(self.colors), "gravity": self.gravity,
                "speed": self.speed}


def settings_from_dataset(dataset_cfg: Mapping, palette: Sequence | None = None,
                          color_names: Sequence[str] | None = None) -> SceneSettings:
    """SceneSettings from a SyntheticPhysics config dict (its gravity, speeds, colours, ...).

    The palette and colour names default to the dataset module's PALETTE / COLOR_NAMES.
    """
    from tools.datasets import synthetic_physics as sp

    colors = dataset_cfg.get("colors") or palette or sp.PALETTE
    names = color_names or (sp.COLOR_NAMES if colors is sp.PALETTE else None)
    if names is None or len(names) != len(colors):  # the dataset's names of custom colours
        names = [f"rgb{tuple(int(x) for x in c)}" for c in colors]
    radius = dataset_cfg.get("radius", (0.08, 0.15))
    lo, hi = (radius, radius) if isinstance(radius, (int, float)) else radius
    obstacles = dataset_cfg.get("obstacles", 0) or 0
    has_obstacles = max(obstacles) > 0 if isinstance(obstacles, (list, tuple)) else int(obstacles) > 0
    return SceneSettings(palette=[tuple(map(float, c)) for c in colors], color_names=list(names),
                         background=tuple(dataset_cfg.get("background", DEFAULT_BACKGROUND)),
                         gravity=_gravity_strength(dataset_cfg),
                         speeds=dataset_cfg.get("speeds"), substeps=int(dataset_cfg.get("substeps", 4)),
                         min_radius=float(lo), max_radius=float(hi),
                         obstacle_color=tuple(map(float, dataset_cfg.get("obstacle_color", sp.OBSTACLE_COLOR)))
                         if has_obstacles else None,
                         min_blob_fraction=0.25 if int(dataset_cfg.get("depth_layers", 1) or 1) > 1 else 0.5)


def _gravity_strength(dataset_cfg: Mapping) -> float:
    """The gravity strength the analyser expects (fractions of the side per frame^2): ``gravity``,
    else the lower end of v2's ``gravity_strength`` range (a quarter of its upper end when the
    range starts at 0: weaker pulls then read as "none")."""
    g = float(dataset_cfg.get("gravity", 0.0) or 0.0)
    strength = dataset_cfg.get("gravity_strength")
    if g > 0 or strength is None:
        return g
    lo, hi = (strength, strength) if isinstance(strength, (int, float)) else strength
    return float(lo) if float(lo) > 0 else 0.25 * float(hi)


# ---------------------------------------------------------------------- pixels -> colour masks
def coverage_maps(frames: np.ndarray, settings: SceneSettings) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: index of the best-fitting palette colour (T, H, W) and every colour's coverage
    a (T, H, W, K).

    ``a`` is the projection of ``pixel - background`` on ``colour - background`` clipped to
    [0, 1]; the best colour has the smallest residual (ties of empty pixels give a = 0).
    """
    bg = np.asarray(settings.background, np.float32)
    d = frames.astype(np.float32) - bg                                   # (T, H, W, 3)
    palette = list(settings.palette) + ([settings.obstacle_color] if settings.obstacle_color is not None else [])
    c = np.asarray(palette, np.float32) - bg                            # (K, 3), obstacle colour last
    cc = np.maximum((c * c).sum(1), 1e-6)                                # (K,)
    dot = d @ c.T                                                        # (T, H, W, K)
    a = np.clip(dot / cc, 0.0, 1.0)
    resid = (d * d).sum(-1, keepdims=True) - 2 * a * dot + a * a * cc    # squared residual
    return resid.argmin(-1), a


def _blobs(mask: np.ndarray, weight: np.ndarray, free: np.ndarray, min_area: int,
           max_area: int) -> list[tuple[float, float, float]]:
    """Connected components of one binary frame -> [(x, y, area)], components with an area
    outside [min_area, max_area] dropped. Centroids are coverage-weighted over the component grown by 2 pixels
    into ``free`` pixels (edge or background, not another ball), pixel centres at +0.5 like
    the renderer, so the anti-aliased rim counts symmetrically."""
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    out = []
    for k in range(1, n):
        if not min_area <= stats[k, cv2.CC_STAT_AREA] <= max_area:
            continue
        comp = (lab == k).astype(np.uint8)
        grown = (cv2.dilate(comp, np.ones((5, 5), np.uint8)) > 0) & (free | (comp > 0))
        ys, xs = np.nonzero(grown)
        w = weight[ys, xs]
        cx, cy = float((xs + 0.5) @ w / w.sum()), float((ys + 0.5) @ w / w.sum())
        out.append((cx, cy, float(stats[k, cv2.CC_STAT_AREA])))
    return out


def _link(per_frame: list[list[tuple[float, float, float]]], count: int) -> list[np.ndarray]:
    """Greedy nearest-neighbour tracks of ``count`` balls of one colour over the frames."""
    T = len(per_frame)
    tracks = [np.full((T, 2), np.nan) for _ in range(count)]
    last: list[np.ndarray | None] = [None] * count
    for t, blobs in enumerate(per_frame):
        pts = [np.array(b[:2]) for b in sorted(blobs, key=lambda b: -b[2])[:count]]
        free = list(range(count))
        for p in pts:
            seen = [i for i in free if last[i] is not None]
            i = min(seen, key=lambda i: np.linalg.norm(last[i] - p)) if seen else free[0]
            tracks[i][t] = p
            last[i] = p
            free.remove(i)
    return tracks


def _mode(values: Sequence[int]) -> int:
    """Most frequent value; ties go to the larger one (a ball hidden in some frames)."""
    counts = Counter(values)
    return max(counts, key=lambda v: (counts[v], v))


# ---------------------------------------------------------------------- motion
def _accel_samples(tracks: Sequence[np.ndarray], cap: float) -> np.ndarray:
    """Second differences of the centroids (N, 2) in pixels/frame^2, without the samples around
    a bounce: a wall or ball contact flips or exchanges velocity, which shows as a second
    difference far above gravity (> ``cap`` in some axis); gravity alone never exceeds it."""
    out = []
    for tr in tracks:
        d2 = tr[2:] - 2 * tr[1:-1] + tr[:-2]
        ok = np.isfinite(d2).all(1) & (np.abs(d2) <= cap).all(1)
        out.extend(d2[ok])
    return np.array(out, np.float64).reshape(-1, 2)


def gravity_direction(accel: np.ndarray, strength_px: float) -> str:
    """Mean acceleration (x, y) in pixels/frame^2 -> "none"|"down"|"up"|"left"|"right".

    "none" when its magnitude is below half the dataset's gravity strength (or unknown)."""
    if strength_px <= 0 or not np.isfinite(accel).all() or np.hypot(*accel) < 0.5 * strength_px:
        return "none"
    ax, ay = accel
    if abs(ay) >= abs(ax):
        return "down" if ay > 0 else "up"  # image y points down
    return "right" if ax > 0 else "left"


def initial_speed(tracks: Sequence[np.ndarray], accel: np.ndarray, substeps: int) -> float:
    """Median over balls of the initial speed (pixels/frame): per ball the larger of the first
    two frame-to-frame steps (a wall bounce inside a step only shortens it), each with the
    displacement gravity adds removed (``a (t + (S + 1) / 2S)`` for step t, S sub-steps)."""
    a = np.nan_to_num(np.asarray(accel, np.float64))
    speeds = []
    for tr in tracks:
        steps = [np.hypot(*(tr[t + 1] - tr[t] - a * (t + (substeps + 1) / (2 * substeps))))
                 for t in range(min(2, len(tr) - 1))]
        steps = [v for v in steps if np.isfinite(v)]
        if steps:
            speeds.append(max(steps))
    return float(np.median(speeds)) if speeds else float("nan")


def speed_class(speed_px: float, speeds: Mapping[str, Sequence[float]] | None, side: int) -> str | None:
    """Initial speed (pixels/frame) -> "slow"|"fast" by the midpoint between the slow range's
    top and the fast range's bottom; None when the dataset has no speed classes."""
    if not speeds:
        return None
    if len(speeds) == 1:
        return next(iter(speeds))
    if not np.isfinite(speed_px):
        return "slow"  # no clean step seen: balls that barely moved
    cut = 0.5 * (float(speeds["slow"][1]) + float(speeds["fast"][0])) * side
    return "fast" if speed_px > cut else "slow"


# ---------------------------------------------------------------------- entry point
def _foreground(frames, settings: SceneSettings, caller: str):
    """(frames, best colour index, coverage maps, ball foreground mask) of uint8 frames (T, H, W, 3);
    obstacle pixels are scenery, not balls."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{caller} takes frames (T, H, W, 3), got shape {frames.shape}")
    best, cover = coverage_maps(frames, settings)
    a = np.take_along_axis(cover, best[..., None], -1)[..., 0]
    return frames, best, cover, (a >= 0.5) & (best < len(settings.palette))


def analyse_video(frames: np.ndarray, settings: SceneSettings) -> SceneAnalysis:
    """uint8 frames (T, H, W, 3) -> SceneAnalysis (count, colours, tracks, gravity, speed)."""
    frames, best, cover, fg = _foreground(frames, settings, "analyse_video")
    T, H, W, _ = frames.shape
    side = min(H, W)
    min_area = max(3, int(0.5 * np.pi * (settings.min_radius * side) ** 2))
    max_area = int(2.5 * np.pi * (settings.max_radius * side + 1) ** 2)  # two touching balls of one colour
    tracks, track_colors, colors, num = [], [], [], 0
    for k, name in enumerate(settings.color_names):
        masks = fg & (best == k)
        if masks.sum() < min_area:
            continue
        per_frame = [_blobs(masks[t], cover[t, ..., k], ~fg[t], min_area, max_area) for t in range(T)]
        count = _mode([len(b) for b in per_frame])
        if count == 0:
            continue
        colors.append(name)
        num += count
        for tr in _link(per_frame, count):
            tracks.append(tr)
            track_colors.append(name)
    g_px = settings.gravity * side
    samples = _accel_samples(tracks, cap=2 * g_px + 0.15)
    accel = samples.mean(0) if len(samples) else np.full(2, np.nan)
    if len(samples) >= 3:  # robust to one missed bounce
        accel = np.median(samples, 0)
    g = gravity_direction(accel, g_px)
    v0 = initial_speed(tracks, accel if g != "none" else np.zeros(2), settings.substeps)
    return SceneAnalysis(num_balls=num, colors=colors, gravity=g, speed=speed_class(v0, settings.speeds, side),
                         tracks=tracks, track_colors=track_colors, accel=(float(accel[0]), float(accel[1])),
                         init_speed=v0)


# ---------------------------------------------------------------------- objects per frame
def detect_objects(frames: np.ndarray, settings: SceneSettings,
                   min_fraction: float | None = None) -> list[list[dict]]:
    """uint8 frames (T, H, W, 3) -> per frame the visible balls ``{"color", "x", "y", "area"}``
    (pixels, centroids as in ``_blobs``). Blobs from ``min_fraction`` (default
    ``settings.min_blob_fraction``) of the smallest disc's area up to two of the largest discs count."""
    min_fraction = settings.min_blob_fraction if min_fraction is None else min_fraction
    frames, best, cover, fg = _foreground(frames, settings, "detect_objects")
    T, H, W, _ = frames.shape
    side = min(H, W)
    min_area = max(2, int(min_fraction * np.pi * (settings.min_radius * side) ** 2))
    max_area = int(2.5 * np.pi * (settings.max_radius * side + 1) ** 2)
    out: list[list[dict]] = [[] for _ in range(T)]
    for k, name in enumerate(settings.color_names):
        masks = fg & (best == k)
        for t in np.nonzero(masks.reshape(T, -1).sum(1) >= min_area)[0]:
            for x, y, area in _blobs(masks[t], cover[t, ..., k], ~fg[t], min_area, max_area):
                out[t].append({"color": name, "x": x, "y": y, "area": area})
    return out


def detect_obstacles(frame: np.ndarray, settings: SceneSettings) -> np.ndarray:
    """Boxes (k, 4) ``x0, y0, x1, y1`` in pixels of the obstacle-coloured regions of one uint8
    frame (H, W, 3); empty without ``settings.obstacle_color``."""
    if settings.obstacle_color is None:
        return np.zeros((0, 4))
    best, cover = coverage_maps(np.asarray(frame)[None], settings)
    k = len(settings.palette)
    mask = ((best[0] == k) & (cover[0, ..., k] >= 0.5)).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
    boxes = [(stats[i, 0], stats[i, 1], stats[i, 0] + stats[i, 2], stats[i, 1] + stats[i, 3])
             for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= 4]
    return np.array(boxes, np.float64).reshape(-1, 4)


def match_objects(pred: Sequence[Mapping], truth: Sequence[Mapping], miss: float) -> dict[str, float]:
    """Pair one frame's predicted and true balls of the same colour (optimal assignment by
    distance). Returns ``position_error`` (mean over true balls of the distance in pixels,
    ``miss`` for a true ball without a predicted one, capped at ``miss``; NaN without true
    balls), ``count_correct`` (1.0 when both have as many balls) and ``color_consistency``
    (Jaccard index of the two colour sets, 1.0 when both are empty)."""
    from scipy.optimize import linear_sum_assignment

    errors = []
    for color in sorted({o["color"] for o in truth}):
        t = np.array([(o["x"], o["y"]) for o in truth if o["color"] == color])
        p = np.array([(o["x"], o["y"]) for o in pred if o["color"] == color]).reshape(-1, 2)
        d = np.minimum(np.linalg.norm(t[:, None] - p[None], axis=-1), miss) if len(p) else np.zeros((len(t), 0))
        rows, cols = linear_sum_assignment(d) if len(p) else (np.array([], int), np.array([], int))
        errors.extend(d[rows, cols].tolist())
        errors.extend([miss] * (len(t) - len(rows)))
    cp, ct = {o["color"] for o in pred}, {o["color"] for o in truth}
    return {"position_error": float(np.mean(errors)) if errors else float("nan"),
            "count_correct": float(len(pred) == len(truth)),
            "color_consistency": len(cp & ct) / len(cp | ct) if cp | ct else 1.0}


def compare(found: Mapping, truth: Mapping, attributes: Sequence[str] = ATTRIBUTES) -> dict[str, bool]:
    """Attribute-wise equality (colours as sets); attributes the truth does not have (None) are skipped."""
    out = {}
    for key in attributes:
        if truth.get(key) is None:
            continue
        if key == "colors":
            out[key] = set(found.get(key) or []) == set(truth[key])
        else:
            out[key] = found.get(key) == truth[key]
    return out
