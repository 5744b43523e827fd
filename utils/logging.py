"""Logging: a console + file logger, a JSONL scalar log, TensorBoard when installed."""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Dict, Optional

LOGGER_NAME = "nextclip"


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def setup_logger(run_dir: Optional[Path] = None, rank: int = 0, level: int = logging.INFO) -> logging.Logger:
    """Console on rank 0 (warnings only elsewhere), plus ``<run_dir>/log.txt`` on rank 0."""
    log = get_logger()
    log.setLevel(level)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    fmt = logging.Formatter("[%(asctime)s %(levelname)s] %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setLevel(level if rank == 0 else logging.WARNING)
    console.setFormatter(fmt)
    log.addHandler(console)
    if run_dir is not None and rank == 0:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(Path(run_dir) / "log.txt", encoding="utf-8")
        fh.setFormatter(fmt)
        log.addHandler(fh)
    return log


class ScalarLog:
    """Append-only ``scalars.jsonl`` (always) mirrored to TensorBoard when it is installed."""

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "scalars.jsonl"
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run_dir) / "tb"))
            except ImportError:  # tensorboard is optional
                self.tb = None

    def write(self, step: int, scalars: Dict[str, float]) -> None:
        if not self.enabled:
            return
        rec = {"step": int(step), "time": round(time.time(), 3)}
        rec.update({k: float(v) for k, v in scalars.items()})
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, float(v), step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
