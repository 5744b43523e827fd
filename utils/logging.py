"""Logging: a console + file logger, a JSONL scalar log, TensorBoard when installed."""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

LOGGER_NAME = "nextclip"


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


class TqdmConsoleHandler(logging.StreamHandler):
    """A console handler that prints through ``tqdm.write``: a running progress bar is
    cleared, the line printed, and the bar redrawn below it (no lines glued to the bar)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            try:
                from tqdm import tqdm
            except ImportError:  # tqdm is optional here: plain stream output
                self.stream.write(msg + self.terminator)
            else:
                tqdm.write(msg, file=self.stream)
            self.flush()
        except RecursionError:
            raise
        except Exception:  # logging must never raise
            self.handleError(record)


def setup_logger(run_dir: Path | None = None, rank: int = 0, level: int = logging.INFO) -> logging.Logger:
    """Console on rank 0 (warnings only elsewhere), plus ``<run_dir>/log.txt`` on rank 0.

    The console handler is safe to mix with a tqdm progress bar (:class:`TqdmConsoleHandler`).
    Call it before building components, so their start-up lines (backend, weights) are kept.
    """
    log = get_logger()
    log.setLevel(level)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    fmt = logging.Formatter("[%(asctime)s %(levelname)s] %(message)s", "%H:%M:%S")
    console = TqdmConsoleHandler(sys.stdout)
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
    """Append-only ``scalars.jsonl`` (always) mirrored to TensorBoard when it is installed.

    ``resume_step``: a run resumed at that step first drops the records of later steps (they
    are replayed), so each step appears once; TensorBoard purges them too.
    """

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True,
                 resume_step: int | None = None):
        self.enabled = enabled
        self.path = Path(run_dir) / "scalars.jsonl"
        self.tb = None
        if enabled and resume_step is not None:
            self.trim_after(resume_step)
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run_dir) / "tb"),
                                        purge_step=None if resume_step is None else int(resume_step) + 1)
            except ImportError:  # tensorboard is optional
                self.tb = None

    def trim_after(self, step: int) -> int:
        """Atomically drop the records with ``step`` > ``step`` (and a torn last line left by a
        killed writer); other lines are kept as they are. Returns how many lines were dropped."""
        if not self.path.is_file():
            return 0
        from utils.io import atomic_write_text

        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        keep = []
        for i, line in enumerate(lines):
            try:
                rec = json.loads(line)
            except ValueError:
                if i == len(lines) - 1:  # torn by a kill mid-write
                    continue
                keep.append(line)
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] > step:
                continue
            keep.append(line if line.endswith("\n") else line + "\n")
        if len(keep) != len(lines) or (lines and not lines[-1].endswith("\n")):
            atomic_write_text(self.path, "".join(keep))
        return len(lines) - len(keep)

    def write(self, step: int, scalars: dict[str, float]) -> None:
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
