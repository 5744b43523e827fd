"""INFER_ENGINE predict_next_clip: roll a next-clip model out over every line of a test list.

An action-conditioned model (a per-frame embedder, e.g. DiscreteActions) reads each line's actions from
its caption field: ``path.mp4|||actions=NOOP*4,UP*8,DOWN*8`` (one action per frame of the whole output
video, context frames first, run-length names of the embedder's game or ints, -1 = no action; shorter
is padded with no action). A bad line fails alone with a one-line error naming the allowed actions and
the list goes on."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from tools.embedders.actions import ACTIONS_FORMAT, ACTIONS_PREFIX, parse_actions
from tools.embedders.conditioning import is_per_frame
from tools.inferences.predictor import ROLLOUT_DEFAULTS, Predictor, check_list_file, validate_rollout
from utils import distributed as du
from utils.checkpoint import embedder_weights_for
from utils.config import ConfigError, to_yaml
from utils.io import atomic_write_text
from utils.logging import get_logger, setup_logger
from utils.registry import INFER_ENGINE
from utils.run_lock import run_lock
from utils.test_list import KINDS, TestItem, failure_reasons, fingerprint, merge_results, parse_test_list, run_test_list
from utils.video_io import side_by_side, to_uint8

DEFAULTS = dict(
    ROLLOUT_DEFAULTS,
    test_list_path=None,
    test_list_kind="video",  # video | image | class | text
    round=1,
    side_by_side=True,       # video inputs: ground truth | prediction (false: the prediction alone)
    save_prediction=False,   # video inputs: also write the prediction alone (context included) as <name>.prediction.mp4
    save_gif=False,
    save_grid=False,
    overwrite=False,
    progress=True,
    dist_timeout=600.0,      # seconds a collective waits for a silent rank (torchrun) before the run stops
)

#: settings that do not change an item's output (left out of the skip fingerprint);
#: which files are written is checked separately, and item identity (line, seed, round) too
NOT_IN_FINGERPRINT = ("log_dir", "name", "overwrite", "progress", "save_gif", "save_grid", "test_list_path",
                      "round", "dist_timeout")


def validate(cfg) -> None:
    """Contract C1: one-line ConfigError for settings that would fail the run or every item."""
    path = cfg.get("test_list_path")
    if not path or not isinstance(path, (str, Path)):
        raise ConfigError(f"test_list_path={'null' if path is None else repr(path)}: a test list file is required; "
                          f"pass e.g. 'test_list_path data/demo/test_list.txt'")
    check_list_file(path)
    if cfg.get("test_list_kind") not in KINDS:
        raise ConfigError(f"test_list_kind={cfg.get('test_list_kind')!r} is not a list kind; use one of "
                          f"{list(KINDS)}")
    r = cfg.get("round")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ConfigError(f"round={r!r} must be an integer >= 1 (how often each line is run, with seed + r); "
                          f"set e.g. 'round=1'")
    if not isinstance(cfg.get("save_prediction", False), bool):
        raise ConfigError(f"save_prediction={cfg.get('save_prediction')!r} must be true or false (video inputs: also "
                          f"write the prediction alone as <name>.prediction.mp4)")
    t = cfg.get("dist_timeout")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0 or t == float("inf"):
        raise ConfigError(f"dist_timeout={t!r} is not allowed: it must be a number of seconds > 0 (how long a "
                          f"collective waits for a silent rank under torchrun); set e.g. 'dist_timeout=600'")
    validate_rollout(cfg)


def extra_videos(cfg) -> tuple:
    """Keys of the extra mp4s of every item: ``prediction`` (the prediction alone, context frames
    included, for scoring by evaluate_generation) when ``save_prediction`` is on for video inputs."""
    return ("prediction",) if cfg.get("save_prediction") and cfg.test_list_kind == "video" else ()


@INFER_ENGINE.register_class()
def predict_next_clip(cfg) -> int:
    """Autoregressive next-clip rollout for each test-list line; one mp4 per item."""
    rank, _, local_rank = du.env_rank()
    list_path = Path(cfg.test_list_path) if cfg.test_list_path else None
    if list_path is None:
        raise ConfigError("test_list_path is not set; pass 'test_list_path data/demo/test_list.txt'.")
    # the list is read before anything is created: a bad list leaves no run directory behind
    items = parse_test_list(list_path, kind=cfg.test_list_kind, rounds=cfg.round, base_seed=cfg.seed)
    out_dir = Path(cfg.log_dir) / list_path.stem
    with run_lock(out_dir, "inference", rank=rank):  # the run owns its directory until it ends
        setup_logger(out_dir, rank)  # before the Predictor, so its start-up lines are kept
        if rank == 0:
            atomic_write_text(out_dir / "config.yaml", to_yaml({k: v for k, v in cfg.items() if not k.startswith("_")}))
        predictor = Predictor(cfg, local_rank)
        timeout = float(cfg.dist_timeout)
        rank, world = du.init_distributed(predictor.backend.dist_backend, timeout)
        try:  # a rank that dies or stops makes the others stop after dist_timeout, naming it
            with du.collective_guard(timeout, probe_timeout_s=min(10.0, max(2.0, timeout))):
                return _predict(cfg, predictor, items, out_dir, rank, world)
        finally:
            du.cleanup()


def output_fingerprint(cfg) -> str:
    """Hash of the weights files and every setting that changes an output (see :func:`fingerprint`)."""
    settings = {k: v for k, v in cfg.items() if not k.startswith("_") and k not in NOT_IN_FINGERPRINT}
    tm = Path(cfg.test_model) if cfg.test_model else None
    if tm is not None and tm.is_dir():  # a weights folder: every file in it
        files = sorted(p for p in tm.rglob("*") if p.is_file() and not p.name.startswith("."))
    else:
        files = [tm, embedder_weights_for(tm)] if tm is not None else []
    return fingerprint(settings, [str(f) for f in files])


def _warn_ignored_conditions(predictor: Predictor, items: list[TestItem], log) -> None:
    """Once: the model takes no condition, so the list's captions / labels change nothing."""
    if getattr(predictor.embedder, "num_tokens", 0) != 0:
        return
    n = sum(1 for it in items if not it.error and (it.caption or it.label))
    if n:
        log.warning("the embedder %s takes no condition (num_tokens 0): the captions/labels of %d of %d items "
                    "are ignored (the model is unconditional)", predictor.cfg.embedder.get("type"), n, len(items))


def item_condition(predictor: Predictor, item: TestItem):
    """The condition value of a video / image / text line: its caption, or for an action-conditioned model
    the actions of ``actions=...`` (None: an empty caption, no action known). ValueError for a caption an
    action-conditioned model cannot read."""
    caption = (item.caption or "").strip()
    if not is_per_frame(predictor.embedder):
        return caption or None
    if not caption:
        return None
    if not caption.startswith(ACTIONS_PREFIX):
        raise ValueError(f"this model is action-conditioned: a line gives its actions as "
                         f"'path.mp4|||{ACTIONS_PREFIX}NOOP*4,UP*8' ({ACTIONS_FORMAT}), got {caption!r}")
    return parse_actions(caption)


def _producer(cfg, predictor: Predictor):
    total = int(cfg.max_frames)

    keys = extra_videos(cfg)

    def produce(item: TestItem) -> dict:
        t0 = time.time()
        cond, extra = item_condition(predictor, item), {}
        if item.kind == "video":
            video = predictor.load_video(item.path, total)
            context = video[:, : cfg.context_frames]
            pred = predictor.predict(context, item.seed, cond, total)
            frames = side_by_side(video, pred) if cfg.side_by_side and video.shape[1] > context.shape[1] \
                else to_uint8(pred)
            rows = [("truth", to_uint8(video)), ("prediction", to_uint8(pred))]
            n_ctx = context.shape[1]
            extra = {"prediction": rows[1][1]} if "prediction" in keys else {}
        elif item.kind == "image":
            context = predictor.load_image(item.path)
            frames = to_uint8(predictor.predict(context, item.seed, cond, total))
            rows, n_ctx = [("prediction", frames)], context.shape[1]
        else:  # class / text: generate from nothing but the condition
            cond = item.label if item.kind == "class" else cond
            frames = to_uint8(predictor.predict(None, item.seed, cond, total))
            rows, n_ctx = [("generated", frames)], 0
        return {"frames": frames, "grid": {"rows": rows, "context_frames": n_ctx}, "extra_videos": extra,
                "rollout_seconds": round(time.time() - t0, 3)}

    return produce


def _predict(cfg, predictor: Predictor, items: list[TestItem], out_dir: Path, rank: int, world: int,
             produce=None) -> int:
    """Run the list (this rank's share), merge the ranks' results.jsonl, log the totals; the exit code.
    ``produce(item)``: the engine's per-item function (default: the next-clip rollout); the whole-video
    engine passes its own."""
    log = get_logger()
    if rank == 0:
        _warn_ignored_conditions(predictor, items, log)
    produce = produce or _producer(cfg, predictor)
    summary = run_test_list(items, str(out_dir), produce, fps=cfg.fps, overwrite=cfg.overwrite,
                            save_gif=cfg.save_gif, save_grid=cfg.save_grid, rank=rank, world_size=world,
                            progress=cfg.progress and rank == 0, fingerprint=output_fingerprint(cfg),
                            extra_videos=extra_videos(cfg))
    counts = torch.tensor([float(summary[k]) for k in ("ok", "skipped", "failed")], device=predictor.device)
    if world > 1:  # every rank wrote results.rank{r}.jsonl; rank 0 merges them, then totals for all ranks
        du.barrier()
        if rank == 0:
            merge_results(str(out_dir))
        du.barrier()
        counts = du.all_reduce_mean(counts) * world
    ok, skipped, failed = (int(round(float(c))) for c in counts.cpu())
    if rank == 0:
        log.info("%d items: %d ok, %d skipped (done before with the same model and settings), %d failed",
                 len(items), ok, skipped, failed)
        # with several ranks: every rank's failures, from the merged results
        reasons = failure_reasons(str(out_dir), items) if world > 1 else summary["reasons"]
        for idx, why in sorted(reasons.items()):
            log.warning("item %s failed: %s", idx, why)
        log.info("outputs in %s (results.jsonl lists every item)", out_dir)
    return 0 if failed == 0 else 1


predict_next_clip.defaults = DEFAULTS
predict_next_clip.validate = validate
