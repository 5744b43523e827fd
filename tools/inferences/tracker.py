"""Physics-aware tracker: the object-level baseline a world model must beat.

From the context frames it finds every ball by colour (the scene analyser's
``detect_objects``), links each colour's detections over the frames, estimates each ball's
radius from its area, one shared gravity from the second differences and each ball's velocity
at the last context frame, then rolls the balls forward with the dataset's own integrator
(``step_frame``: sub-steps, wall / ball / obstacle contacts, restitution, friction) and renders
them with the dataset's renderer. Obstacles are found from their colour in the last context
frame. It knows the dataset's constants (substeps, restitution and friction mean, whether
there is gravity at all), not the per-video draws.

Velocity (the simulator's sub-step rule, S sub-steps, gravity g): a frame step is
``d_t = x_{t+1} - x_t = v_t + g (S + 1) / 2S`` and ``v_{t+1} = v_t + g``, so
``v_last = d_last + g (S - 1) / 2S``. A wall bounce inside the last step flips a component;
its magnitude is then taken from the step before.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from tools.datasets.synthetic_physics import SyntheticPhysics, step_frame
from tools.inferences.scene import SceneSettings, detect_objects, detect_obstacles


@dataclass
class TrackerPhysics:
    """The dataset constants the tracker may use (see :func:`physics_from_dataset`)."""
    substeps: int = 4
    restitution: float = 1.0
    friction: float = 0.0
    has_gravity: bool = False
    collide: bool = True        # balls collide (False with depth layers: layers are not observable)


def _mid(v, default: float) -> float:
    if v is None:
        return default
    return float(v) if isinstance(v, (int, float)) else 0.5 * (float(v[0]) + float(v[1]))


def physics_from_dataset(cfg: Mapping) -> TrackerPhysics:
    """TrackerPhysics from a SyntheticPhysics config dict."""
    strength = cfg.get("gravity_strength")
    has_g = bool(cfg.get("gravity") or 0) or (strength is not None and _mid(strength, 0.0) > 0)
    return TrackerPhysics(substeps=int(cfg.get("substeps", 4)), restitution=_mid(cfg.get("restitution"), 1.0),
                          friction=_mid(cfg.get("friction"), 0.0), has_gravity=has_g,
                          collide=int(cfg.get("depth_layers", 1) or 1) == 1)


def _tracks(per_frame: list[list[dict]]) -> list[dict]:
    """Link each colour's detections over the context frames (nearest neighbour from the last
    frame backwards, so every ball visible at the end gets a track)."""
    T = len(per_frame)
    out = []
    for color in sorted({o["color"] for o in per_frame[-1]}):  # sorted: set order varies with PYTHONHASHSEED
        for o in [o for o in per_frame[-1] if o["color"] == color]:
            xy = np.full((T, 2), np.nan)
            area = np.full(T, np.nan)
            xy[-1], area[-1] = (o["x"], o["y"]), o["area"]
            for t in range(T - 2, -1, -1):
                cands = [c for c in per_frame[t] if c["color"] == color]
                ref = xy[t + 1] if np.isfinite(xy[t + 1]).all() else xy[-1]
                if cands:
                    c = min(cands, key=lambda c: np.hypot(c["x"] - ref[0], c["y"] - ref[1]))
                    xy[t], area[t] = (c["x"], c["y"]), c["area"]
            out.append({"color": color, "xy": xy, "area": area})
    return out


def _gravity(tracks: list[dict], cap: float) -> np.ndarray:
    """Median second difference over all balls, without samples around a bounce (> cap)."""
    samples = []
    for tr in tracks:
        d2 = tr["xy"][2:] - 2 * tr["xy"][1:-1] + tr["xy"][:-2]
        ok = np.isfinite(d2).all(1) & (np.abs(d2) <= cap).all(1)
        samples.extend(d2[ok])
    return np.median(np.array(samples), 0) if samples else np.zeros(2)


def _velocity(xy: np.ndarray, g: np.ndarray, S: int) -> np.ndarray:
    """Velocity at the last frame (see the module docstring), bounce-corrected."""
    ok = np.isfinite(xy).all(1)
    if ok.sum() < 2 or not ok[-1] or not ok[-2]:
        return np.zeros(2)
    d_last = xy[-1] - xy[-2]
    v = d_last + g * (S - 1) / (2 * S)
    if len(xy) >= 3 and ok[-3]:
        v_prev = (xy[-2] - xy[-3]) + g * (S - 1) / (2 * S) + g  # the same velocity predicted from one step earlier
        for ax in range(2):
            if np.sign(v_prev[ax]) != np.sign(d_last[ax]) and abs(v_prev[ax]) > 0.3:
                v[ax] = np.sign(d_last[ax]) * abs(v_prev[ax])  # bounced in the last step
    return v


def track_and_predict(context: np.ndarray, num_frames: int, settings: SceneSettings,
                      physics: TrackerPhysics | None = None) -> np.ndarray:
    """uint8 context frames (C, H, W, 3) -> predicted uint8 frames (num_frames, H, W, 3)."""
    physics = physics or TrackerPhysics()
    C, H, W, _ = context.shape
    side = min(H, W)
    per_frame = detect_objects(context, settings)
    tracks = _tracks(per_frame)
    rects = detect_obstacles(context[-1], settings)
    bg = np.asarray(settings.background, np.float32)
    renderer = SyntheticPhysics(resolution=[H, W], background=[float(x) for x in bg],
                                colors=[list(c) for c in settings.palette], radius=(0.01, 0.49),
                                obstacle_color=list(settings.obstacle_color or (110, 110, 120)))
    if not tracks:
        frame = renderer.render(np.zeros((1, 0, 2)), np.zeros(0), np.zeros((0, 3)), obstacles=rects)[0]
        return np.repeat(frame[None], num_frames, 0).round().clip(0, 255).astype(np.uint8)
    S = int(physics.substeps)
    g = _gravity(tracks, cap=0.15 + 0.05 * side) if physics.has_gravity and C >= 3 else np.zeros(2)
    r_min, r_max = settings.min_radius * side, settings.max_radius * side
    radius = np.array([np.clip(np.sqrt(np.nanmax(tr["area"]) / np.pi), r_min, r_max) for tr in tracks])
    pos = np.array([tr["xy"][-1] for tr in tracks])
    np.clip(pos, radius[:, None], np.array([W, H]) - radius[:, None], out=pos)
    vel = np.array([_velocity(tr["xy"], g, S) for tr in tracks])
    mass = radius ** 2
    pairs = None if physics.collide else (np.zeros(0, int), np.zeros(0, int))
    damp = (1.0 - physics.friction) ** (1.0 / S)
    P = []
    for _ in range(num_frames):
        pos, vel, _ = step_frame(pos, vel, radius, mass, g, W, H, S, physics.restitution, damp, pairs, rects)
        P.append(pos.copy())
    name_to_rgb = dict(zip(settings.color_names, settings.palette))
    cols = np.array([name_to_rgb[tr["color"]] for tr in tracks], np.float32)
    img = renderer.render(np.stack(P), radius, cols, obstacles=rects)
    return img.round().clip(0, 255).astype(np.uint8)


def empty_frames(context: np.ndarray, num_frames: int, settings: SceneSettings | None = None) -> np.ndarray:
    """The empty-scene baseline: the background (with the context's obstacles) or, without
    settings, the per-channel median of the last context frame."""
    C, H, W, _ = context.shape
    if settings is None:
        frame = np.median(context[-1].reshape(-1, 3), 0)[None, None].repeat(H, 0).repeat(W, 1)
    else:
        renderer = SyntheticPhysics(resolution=[H, W], background=[float(x) for x in settings.background],
                                    obstacle_color=list(settings.obstacle_color or (110, 110, 120)))
        frame = renderer.render(np.zeros((1, 0, 2)), np.zeros(0), np.zeros((0, 3)),
                                obstacles=detect_obstacles(context[-1], settings))[0]
    return np.repeat(np.asarray(frame, np.float32)[None], num_frames, 0).round().clip(0, 255).astype(np.uint8)

