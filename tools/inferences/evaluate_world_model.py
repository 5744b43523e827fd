"""INFER_ENGINE evaluate_world_model: an action-conditioned model of an Atari game (a world model) on
held-out episodes of DATASETS ``AtariEpisodes`` (a ``dataset.seed`` no training run used).

For every episode in ``eval_episodes`` the frames ``[start_frame, start_frame + context_frames)`` are the
context and the Predictor rolls out ``max_frames`` frames in all (context included) with
``predictor.predict(context, seed, cond_value=actions, num_frames=N)``, actions one per frame of the whole
video (context first; -1 = none; ``None`` = no action anywhere). Three questions:

(a) **Own actions** (``own_actions``): the model given the episode's own actions, scored against the true
    frames (PSNR / SSIM and ``paddle_error``, the distance in px between the generated and the true
    paddle, per predicted frame, and the mean over the first h frames for h in ``eval_horizons``), against
    ``null_action`` (the same model and seed with no action: what the actions add) and ``copy_last`` (the
    last context frame repeated). Pong's frames are mostly still background, so copy-last's PSNR is high
    (~31 dB): the paddle error and (b) say more about the actions.
(b) **Commanded actions** (``commanded``): after the context the model is told ``action_script`` (pairs
    ``[action, frames]``, e.g. ``[UP, 6]``, repeated to ``script_frames`` frames; names from the game
    table, ``tools/datasets/atari.py``). The player's paddle is read from every frame
    (``utils.metrics.paddle_positions``) and scored against the commanded directions:
    ``agreement`` (share of commanded moves the paddle makes in the commanded direction; frames at a stop
    left out), ``correlation`` (command vs paddle step) and the ``response_frames`` (frames until the
    paddle answers a change of command; 0 = in the first frame the new action produced) with the share of
    changes ``answered`` (``utils.metrics.action_sensitivity`` / ``response_times``). Methods: ``model``,
    ``null_action`` (the first frames of its rollout in (a)), ``copy_last`` (a frozen paddle: agreement
    0) and ``emulator`` (the real game continued from the episode's state under the same script: the
    ceiling, the paddle's own inertia included).
(c) **Drift** (``drift``): over the whole rollout of (a) (``max_frames - context_frames`` frames, 64 in
    configs/atari/evaluate.yaml), PSNR / SSIM vs the truth per horizon (in (a)), plus two figures that need
    no truth, per predicted frame: ``color_distance`` (total variation distance of the frame's colour
    histogram to the context's, ``utils.metrics.color_histogram_distance``; the true frames give the
    natural level) and ``paddle_readable`` (share of episodes whose paddle is still readable).

Writes ``metrics.json`` (the figures above, mean over episodes, plus ``per_episode``, ``failures``,
``settings`` and the ``command``) and, for the first ``save_videos`` episodes, ``videos/<e>_own.mp4``
(truth | model | null action | copy-last) and ``videos/<e>_script.mp4`` (emulator | model | null action).
"""
from __future__ import annotations

import json
import math
import shlex
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml

from tools.datasets.atari import GAMES, action_direction, action_index, emulator, episode_noops, play_actions
from tools.inferences.evaluate_prediction import _finite, horizons, score
from tools.inferences.predictor import ROLLOUT_DEFAULTS, Predictor, check_save_videos, validate_rollout
from utils.checkpoint import checkpoint_config
from utils.config import ConfigError, run_dir, to_yaml
from utils.io import atomic_write_text
from utils.logging import setup_logger
from utils.metrics import (
    action_sensitivity,
    color_histogram_distance,
    copy_last_baseline,
    paddle_positions,
    response_times,
)
from utils.registry import DATASETS, INFER_ENGINE
from utils.run_lock import run_lock
from utils.video_io import side_by_side, write_video

OWN_METHODS = ("model", "null_action", "copy_last")
SCRIPT_METHODS = ("model", "null_action", "copy_last", "emulator")
DRIFT_METHODS = ("model", "null_action", "truth")

DEFAULTS = dict(
    ROLLOUT_DEFAULTS,
    log_dir="workspace/eval",
    dataset=None,              # {type: AtariEpisodes, seed: <held out>, ...}
    eval_episodes=[0, 8],      # [first, stop) episodes of the dataset
    start_frame=8,             # the context starts at this frame of each episode
    context_frames=4,
    max_frames=68,             # context + predicted frames of the own-action rollouts (drift horizon)
    eval_horizons=None,        # predicted-frame horizons summarised (null = all predicted frames)
    action_script=[["UP", 6], ["DOWN", 6], ["NOOP", 3], ["DOWN", 4], ["UP", 8], ["NOOP", 2]],
    script_frames=32,          # commanded frames after the context (the script repeats to fill them)
    save_videos=2,
)


# ---------------------------------------------------------------------------- settings
def script_actions(game: str, script, frames: int) -> list[int]:
    """``[[action, count], ...]`` repeated to ``frames`` action indices (ValueError naming a bad entry)."""
    ok = isinstance(script, (list, tuple)) and len(script) > 0
    steps = []
    for entry in script if ok else []:
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[1], int)
                and not isinstance(entry[1], bool) and entry[1] > 0):
            ok = False
            break
        steps += [action_index(game, entry[0])] * int(entry[1])
    if not ok:
        raise ValueError(f"action_script={script!r} must be a list of [action, frames] pairs with frames >= 1, "
                         f"e.g. [[UP, 6], [DOWN, 6], [NOOP, 3]]")
    return [steps[i % len(steps)] for i in range(frames)]


def _training_seed(test_model) -> tuple[str, int] | None:
    """(game, dataset seed) of the training config stored in a .safetensors checkpoint, if any."""
    if not test_model or not str(test_model).endswith(".safetensors") or not Path(test_model).is_file():
        return None
    try:
        ds = yaml.safe_load(checkpoint_config(Path(test_model)) or "")["dataset"]
        return str(ds["game"]), int(ds["seed"])
    except Exception:  # no or foreign metadata: nothing to compare
        return None


def validate(cfg) -> None:
    """One-line ConfigError for settings that would fail the evaluation."""
    ds = cfg.get("dataset") or {}
    if ds.get("type") != "AtariEpisodes":
        raise ConfigError(f"dataset.type={ds.get('type')!r}: evaluate_world_model scores held-out Atari episodes; "
                          f"set dataset: {{type: AtariEpisodes, game: pong, seed: <a seed no training used>}}")
    game = ds.get("game", "pong")
    if game not in GAMES:
        raise ConfigError(f"dataset.game={game!r} is not in the Atari game table; choose one of {sorted(GAMES)}")
    validate_rollout(cfg)
    check_save_videos(cfg.get("save_videos"))
    horizons(cfg)
    C, T = int(cfg.context_frames), int(cfg.max_frames)
    if C < 1:
        raise ConfigError(f"context_frames={C} must be >= 1: the world model continues given frames")
    er = cfg.get("eval_episodes")
    if not (isinstance(er, (list, tuple)) and len(er) == 2 and all(isinstance(x, int) for x in er)
            and 0 <= er[0] < er[1] <= int(ds.get("episodes", 200))):
        raise ConfigError(f"eval_episodes={er!r} must be [first, stop) with 0 <= first < stop <= dataset.episodes="
                          f"{ds.get('episodes', 200)}; set e.g. 'eval_episodes=[0,8]'")
    s, ep_frames = cfg.get("start_frame"), int(ds.get("episode_frames", 300))
    if isinstance(s, bool) or not isinstance(s, int) or s < 0 or s + T > ep_frames:
        raise ConfigError(f"start_frame={s!r} + max_frames={T} must fit in dataset.episode_frames={ep_frames}; "
                          f"lower start_frame or max_frames, or raise dataset.episode_frames")
    sf = cfg.get("script_frames")
    if isinstance(sf, bool) or not isinstance(sf, int) or not 2 <= sf <= T - C:
        raise ConfigError(f"script_frames={sf!r} must be an int in 2..{T - C} (max_frames - context_frames)")
    try:
        script_actions(game, cfg.get("action_script"), sf)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    trained = _training_seed(cfg.get("test_model"))
    if trained is not None and trained == (game, int(ds.get("seed", 0))):
        raise ConfigError(f"dataset.seed={trained[1]} is the seed test_model was trained on ({game}): the evaluation "
                          f"needs held-out episodes; set dataset.seed to a seed no training run used")


# ---------------------------------------------------------------------------- the figures
def _video(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> (3, T, H, W) float in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float() / 127.5 - 1.0


def emulator_continuation(ds, episode: int, start: int, script: list[int], ale=None) -> torch.Tensor:
    """The real game from a cached episode's frame ``start`` under ``script``: frames
    ``[start, start + 1 + len(script))`` (3, F, H, W). The episode is replayed from its NOOP start and
    its own actions, which must give back its cached frames (RuntimeError otherwise). ``ale``: an emulator
    of the game to reuse (tools.datasets.atari.emulator)."""
    frames, actions = ds.episode(episode)
    st = ds.settings
    played = play_actions(ds.game, [int(a) for a in actions[1:start + 1]] + list(script), st["frame_skip"],
                          episode_noops(st["seed"], episode, st["noop_max"]), ale)["frames"]
    if not np.array_equal(played[:start + 1], frames[:start + 1]):
        raise RuntimeError(f"replaying episode {episode} did not give its cached frames (ale-py "
                           f"{st['ale_py']} made the cache); regenerate the cache")
    return _video(played[start:])


def sensitivity(video: torch.Tensor, directions: list[int], spec) -> dict:
    """Action sensitivity and response times of one video against per-frame commanded directions."""
    pos = paddle_positions(video, **spec.reader())
    return {**action_sensitivity(pos, directions, spec.paddle_range),
            "response": response_times(pos, directions, spec.paddle_range)["times"]}


def pool_sensitivity(rows: list[dict]) -> dict:
    """Episodes pooled: agreement weighted by counted frames, mean correlation, response times of every
    change of command."""
    frames = sum(r["frames"] for r in rows)
    agree = sum(r["agreement"] * r["frames"] for r in rows if r["frames"]) / frames if frames else math.nan
    corr = [r["correlation"] for r in rows if math.isfinite(r["correlation"])]
    times = [t for r in rows for t in r["response"]]
    got = [t for t in times if t is not None]
    return {"agreement": agree, "correlation": float(np.mean(corr)) if corr else math.nan, "frames": frames,
            "response_frames": float(np.mean(got)) if got else math.nan,
            "answered": len(got) / len(times) if times else math.nan, "changes": len(times),
            "readable": float(np.mean([r["readable"] for r in rows]))}


def _nanmean(x, axis=None):
    """Mean ignoring NaN (an unreadable paddle); NaN where nothing is finite."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "mean of empty slice"
        m = np.nanmean(np.asarray(x, np.float64), axis)
    return m.tolist() if axis is not None else float(m)


def _per_frame_means(rows: list[dict], methods, metrics, hs: list[int]) -> dict:
    """{methods: {m: {metric: [mean over episodes per predicted frame]}}, horizons: {h: {m: {metric: mean
    over the first h frames}}}}; NaN (an unreadable paddle) is left out of the means, None where nothing
    is left."""
    out, by_h = {}, {str(h): {} for h in hs}
    for m in methods:
        out[m] = {}
        for metric in metrics:
            a = np.array([r[m][metric] for r in rows], np.float64)  # (N, T_pred)
            out[m][metric] = _nanmean(a, 0)
            for h in hs:
                by_h[str(h)].setdefault(m, {})[metric] = _nanmean(a[:, :h])
    return {"methods": out, "horizons": by_h}


# ---------------------------------------------------------------------------- the engine
def evaluate(cfg, predictor, out_dir: Path, log) -> int:
    """The evaluation with a built predictor (anything with the Predictor's ``predict``): writes
    metrics.json (and videos) into ``out_dir``; 0 when every episode was scored."""
    ds = DATASETS.build({**cfg.dataset, "num_frames": int(cfg.max_frames)}, "dataset")
    spec, game = ds.spec, ds.game
    C, T, S, s0 = int(cfg.context_frames), int(cfg.max_frames), int(cfg.script_frames), int(cfg.start_frame)
    script = script_actions(game, cfg.action_script, S)
    directions = [0] + [action_direction(game, a) for a in script]  # from the last context frame on
    hs = horizons(cfg)
    ale = emulator(spec)  # one for every episode's continuation
    own, drift, commanded, failures, per_episode = [], [], {m: [] for m in SCRIPT_METHODS}, [], []
    for n, e in enumerate(range(*cfg.eval_episodes)):
        t0 = time.time()
        frames, actions = ds.episode(e)
        if len(frames) < s0 + T:
            failures.append({"episode": e, "error": f"has {len(frames)} frames, needs start_frame + max_frames = "
                                                    f"{s0 + T} (the game ended early)"})
            continue
        truth = _video(frames[s0:s0 + T])                                      # (3, T, H, W)
        context, own_actions = truth[:, :C], [int(a) for a in actions[s0:s0 + T]]
        seed = int(cfg.seed) + e
        try:
            pred = predictor.predict(context, seed, cond_value=own_actions, num_frames=T)
            null = predictor.predict(context, seed, cond_value=None, num_frames=T)
            scripted = predictor.predict(context, seed, cond_value=own_actions[:C] + script, num_frames=C + S)
            emu = torch.cat([context[:, :-1], emulator_continuation(ds, e, s0 + C - 1, script, ale)], 1)  # (3, C+S, ..)
        except Exception as err:  # one episode's failure is reported, the evaluation goes on
            failures.append({"episode": e, "error": f"{type(err).__name__}: {err}"})
            log.warning("episode %d skipped: %s", e, err)
            continue
        future = truth[:, C:]
        copy = torch.cat([context, copy_last_baseline(context, T - C)], 1)
        preds = {"model": pred, "null_action": null, "copy_last": copy}
        true_pos = paddle_positions(future, **spec.reader())
        own.append({m: {**score(v[:, C:T], future),
                        "paddle_error": (paddle_positions(v[:, C:T], **spec.reader()) - true_pos).abs().tolist()}
                    for m, v in preds.items()})
        rec = {"episode": e, "seed": seed, "psnr": {m: float(np.mean(r["psnr"])) for m, r in own[-1].items()},
               "paddle_error": {m: _nanmean(r["paddle_error"]) for m, r in own[-1].items()},
               "commanded": {}}
        drift.append({m: {"color_distance": color_histogram_distance(v[:, C:T], context).tolist(),
                          "paddle_readable": torch.isfinite(paddle_positions(v[:, C:T], **spec.reader()))
                          .double().tolist()}
                      for m, v in {"model": pred, "null_action": null, "truth": truth}.items()})
        videos = {"model": scripted, "null_action": null[:, :C + S], "copy_last": copy[:, :C + S], "emulator": emu}
        for m, v in videos.items():
            row = sensitivity(v[:, C - 1:C + S], directions, spec)
            commanded[m].append(row)
            rec["commanded"][m] = row
        rec["seconds"] = round(time.time() - t0, 3)
        per_episode.append(rec)
        if n < int(cfg.save_videos):
            write_video(out_dir / "videos" / f"{e:04d}_own.mp4", side_by_side(truth, pred, null, copy), fps=cfg.fps)
            write_video(out_dir / "videos" / f"{e:04d}_script.mp4",
                        side_by_side(emu, scripted, null[:, :C + S]), fps=cfg.fps)
        log.info("episode %d: PSNR model %.2f dB, null action %.2f, copy-last %.2f; commanded agreement model "
                 "%.2f, emulator %.2f", e, rec["psnr"]["model"], rec["psnr"]["null_action"], rec["psnr"]["copy_last"],
                 rec["commanded"]["model"]["agreement"], rec["commanded"]["emulator"]["agreement"])

    result = {"game": game, "dataset_seed": ds.settings["seed"], "context_frames": C, "predicted_frames": T - C,
              "script_frames": S, "start_frame": s0, "episodes": len(per_episode), "failures": failures,
              "command": shlex.join(["python", *sys.argv]), "settings": {
                  "action_script": [list(x) for x in cfg.action_script], "num_sample_steps": cfg.num_sample_steps,
                  "clip_len": cfg.clip_len, "window": getattr(predictor, "window", cfg.window),
                  "kv_cache": cfg.kv_cache, "guide_scale": cfg.guide_scale, "test_model": cfg.test_model}}
    if per_episode:
        result["own_actions"] = _per_frame_means(own, OWN_METHODS, ("psnr", "ssim", "paddle_error"), hs)
        result["commanded"] = {"script": [spec.action_names[a] for a in script],
                               "methods": {m: pool_sensitivity(rows) for m, rows in commanded.items()}}
        result["drift"] = _per_frame_means(drift, DRIFT_METHODS, ("color_distance", "paddle_readable"), hs)
        for h, per in result["own_actions"]["horizons"].items():
            log.info("first %3s frames: PSNR model %.2f / null action %.2f / copy-last %.2f dB; paddle error %s / %s "
                     "/ %s px", h, per["model"]["psnr"], per["null_action"]["psnr"], per["copy_last"]["psnr"],
                     *(_fmt(per[m]["paddle_error"]) for m in OWN_METHODS))
        for m, r in result["commanded"]["methods"].items():
            log.info("commanded %-11s agreement %.3f correlation %.3f response %.2f frames (answered %.2f)", m,
                     r["agreement"], r["correlation"], r["response_frames"], r["answered"])
    result["per_episode"] = per_episode
    atomic_write_text(out_dir / "metrics.json", json.dumps(_finite(result), indent=1, allow_nan=False))
    log.info("wrote %s (%d episodes, %d failed)", out_dir / "metrics.json", len(per_episode), len(failures))
    return 0 if per_episode and not failures else 1


def _fmt(x) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.2f}"


@INFER_ENGINE.register_class()
def evaluate_world_model(cfg) -> int:
    """An action-conditioned Atari model on held-out episodes: own actions, commanded scripts, drift."""
    out_dir = run_dir(cfg)
    with run_lock(out_dir, "evaluation"):
        log = setup_logger(out_dir)
        atomic_write_text(out_dir / "config.yaml", to_yaml({k: v for k, v in cfg.items() if not k.startswith("_")}))
        return evaluate(cfg, Predictor(cfg), out_dir, log)


evaluate_world_model.defaults = DEFAULTS
evaluate_world_model.validate = validate
