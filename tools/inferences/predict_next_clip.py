"""INFER_ENGINE predict_next_clip: roll a next-clip model out over every line of a test list."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from tools.inferences.predictor import ROLLOUT_DEFAULTS, Predictor, side_by_side
from utils import distributed as du
from utils.config import to_yaml
from utils.io import atomic_write_text
from utils.logging import setup_logger
from utils.registry import INFER_ENGINE
from utils.test_list import merge_results, parse_test_list, run_test_list
from utils.video_io import to_uint8

DEFAULTS = dict(
    ROLLOUT_DEFAULTS,
    test_list_path=None,
    test_list_kind="video",  # video | image | class | text
    round=1,
    side_by_side=True,       # video inputs: ground truth | prediction
    save_gif=False,
    save_grid=False,
    overwrite=False,
    progress=True,
)


@INFER_ENGINE.register_class()
def predict_next_clip(cfg) -> int:
    """Autoregressive next-clip rollout for each test-list line; one mp4 per item."""
    _, _, local_rank = du.env_rank()
    predictor = Predictor(cfg, local_rank)
    rank, world = du.init_distributed(predictor.backend.dist_backend)
    try:
        return _predict(cfg, predictor, rank, world)
    finally:
        du.cleanup()


def _predict(cfg, predictor: Predictor, rank: int, world: int) -> int:
    if not cfg.test_list_path:
        raise ValueError("test_list_path is not set; pass 'test_list_path data/demo/test_list.txt'.")
    list_path = Path(cfg.test_list_path)
    out_dir = Path(cfg.log_dir) / list_path.stem
    log = setup_logger(out_dir, rank)
    if rank == 0:
        atomic_write_text(out_dir / "config.yaml", to_yaml({k: v for k, v in cfg.items() if not k.startswith("_")}))
    items = parse_test_list(list_path, kind=cfg.test_list_kind, rounds=cfg.round, base_seed=cfg.seed)
    total = int(cfg.max_frames)

    def produce(item):
        t0 = time.time()
        if item.kind == "video":
            video = predictor.load_video(item.path, total)
            context = video[:, : cfg.context_frames]
            pred = predictor.predict(context, item.seed, item.caption or None, total)
            frames = side_by_side(video, pred) if cfg.side_by_side and video.shape[1] > context.shape[1] \
                else to_uint8(pred)
        elif item.kind == "image":
            context = predictor.load_image(item.path)
            frames = to_uint8(predictor.predict(context, item.seed, item.caption or None, total))
        else:  # class / text: generate from nothing but the condition
            cond = item.label if item.kind == "class" else item.caption
            frames = to_uint8(predictor.predict(None, item.seed, cond, total))
        return {"frames": frames, "rollout_seconds": round(time.time() - t0, 3)}

    summary = run_test_list(items, out_dir, produce, fps=cfg.fps, overwrite=cfg.overwrite,
                            save_gif=cfg.save_gif, save_grid=cfg.save_grid, rank=rank,
                            world_size=world, progress=cfg.progress and rank == 0)
    if world > 1:  # every rank wrote results.rank{r}.jsonl; rank 0 merges them
        du.barrier()
        if rank == 0:
            merge_results(str(out_dir))
        du.barrier()
    failed = torch.tensor(float(summary["failed"]))
    failed = int(du.all_reduce_mean(failed) * world)
    if rank == 0:
        log.info("%d items: %d ok, %d skipped (already done), %d failed%s", len(items), summary["ok"],
                 summary["skipped"], failed, " (this rank)" if world > 1 else "")
        for idx, why in sorted(summary["reasons"].items()):
            log.warning("item %s failed: %s", idx, why)
        log.info("outputs in %s (results.jsonl lists every item)", out_dir)
    return 0 if failed == 0 else 1


predict_next_clip.defaults = DEFAULTS
