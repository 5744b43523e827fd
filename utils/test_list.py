"""Test lists for batch inference: parsing, and a resumable, sharded runner.

Formats (one item per line; ``#`` comments and blank lines ignored):
  text:  ``caption`` or ``caption|seed``      image / video: ``path|||caption``
  class: ``label`` or ``label|seed``
Each line is repeated ``rounds`` times (line-major); round r uses seed
``line seed + r`` or ``base_seed + r``. Malformed lines become items with ``error``
set; the runner records them as failed and goes on.
"""
from __future__ import annotations

import json
import os
import re
import time
import unicodedata
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, List, Optional, Union

import numpy as np

from utils.io import atomic_path
from utils.video_io import write_grid, write_video

KINDS = ("text", "image", "video", "class")


@dataclass
class TestItem:
    __test__ = False  # not a pytest class

    index: int
    line_no: int
    kind: str
    caption: str = ""
    path: Optional[str] = None
    label: Optional[str] = None
    seed: int = 0
    round: int = 0
    error: Optional[str] = None
    line: str = ""


def _split_seed(text: str):
    """'x|12' -> ('x', 12, None); 'x' -> ('x', None, None); 'x|abc' -> (.., .., error)."""
    if "|" not in text:
        return text.strip(), None, None
    head, _, tail = text.rpartition("|")
    try:
        return head.strip(), int(tail.strip()), None
    except ValueError:
        return head.strip(), None, f"seed {tail.strip()!r} after the last '|' is not an integer (use 'text|123')"


def parse_test_list(source: Union[str, os.PathLike, Iterable[str]], kind: str = "text", rounds: int = 1,
                    base_seed: int = 0, data_dir: Optional[str] = None) -> List[TestItem]:
    """Parse a test list file (or an iterable of lines) into :class:`TestItem` s."""
    if kind not in KINDS:
        raise ValueError(f"test list kind={kind!r} is not supported; use one of {KINDS}")
    if rounds < 1:
        raise ValueError(f"rounds={rounds} must be >= 1")
    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise FileNotFoundError(f"test list {os.fspath(source)!r} does not exist")
        with open(source, encoding="utf-8") as f:
            lines = f.read().splitlines()
        base = data_dir if data_dir is not None else os.path.dirname(os.path.abspath(source))
    else:
        lines, base = list(source), data_dir or "."
    items: List[TestItem] = []
    for no, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        caption, path, label, seed, err = "", None, None, None, None
        if kind in ("text", "class"):
            text, seed, err = _split_seed(line)
            if not text and not err:
                err = f"empty {'caption' if kind == 'text' else 'label'} before the seed"
            if kind == "text":
                caption = text
            else:
                label = caption = text
        else:
            if "|||" not in line:
                err = f"expected 'path|||caption' for a {kind} list, got no '|||'"
            p, _, caption = line.partition("|||")
            p, caption = p.strip(), caption.strip()
            if not err and not p:
                err = "empty path before '|||'"
            if p:
                path = os.path.join(base, os.path.expanduser(p))
                if not err and not os.path.isfile(path):
                    err = f"{kind} file {path!r} not found"
        for r in range(rounds):
            s = (seed if seed is not None else base_seed) + r
            items.append(TestItem(len(items), no, kind, caption, path, label, s, r, err, line))
    return items


def slugify(text: str, max_len: int = 60) -> str:
    """A filename-safe, unicode-preserving slug (NFKC; letters/digits/-/_ kept); 'item' if empty."""
    text = unicodedata.normalize("NFKC", text or "")
    text = "".join(c if (c.isalnum() or c in "-_") else "_" for c in text)
    text = re.sub(r"_+", "_", text).strip("_-")[:max_len].strip("_-")
    return text or "item"


def output_name(item: TestItem) -> str:
    return f"{item.index:04d}_{slugify(item.caption or item.label or (os.path.basename(item.path or '')))}.mp4"


def merge_results(out_dir: str) -> str:
    """Merge ``results.rank*.jsonl`` into ``results.jsonl`` (last record per index wins, sorted).

    With several ranks, call this on one rank after all ranks finished (barrier).
    """
    recs = {}
    names = sorted(n for n in os.listdir(out_dir) if re.fullmatch(r"results\.rank\d+\.jsonl", n))
    for n in names:
        with open(os.path.join(out_dir, n), encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        r = json.loads(line)
                    except json.JSONDecodeError:  # a line cut by an interrupted run
                        continue
                    recs[r["index"]] = r
    path = os.path.join(out_dir, "results.jsonl")
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for i in sorted(recs):
                f.write(json.dumps(recs[i], ensure_ascii=False) + "\n")
    return path


def run_test_list(items: List[TestItem], out_dir: str, produce_fn: Callable, fps: float = 8,
                  overwrite: bool = False, save_gif: bool = False, save_grid: bool = False,
                  rank: int = 0, world_size: int = 1, progress: bool = True) -> dict:
    """Run ``produce_fn(item) -> uint8 (T, H, W, 3)`` (or dict with ``frames`` + extra fields).

    Rank r handles items with ``index % world_size == r`` and appends one JSON line per
    item to ``results.rank{r}.jsonl``; with ``world_size == 1`` the results are merged
    into ``results.jsonl`` at the end (otherwise call :func:`merge_results` after a
    barrier). Items whose mp4 exists are skipped unless ``overwrite``. Returns
    ``{ok, failed, skipped, total, reasons: {index: message}}``.
    """
    from tqdm import tqdm

    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
    os.makedirs(out_dir, exist_ok=True)
    mine = [it for it in items if it.index % world_size == rank]
    summary = {"ok": 0, "failed": 0, "skipped": 0, "total": len(mine), "reasons": {}}
    log_path = os.path.join(out_dir, f"results.rank{rank}.jsonl")
    with open(log_path, "a", encoding="utf-8") as log:
        for item in tqdm(mine, desc=f"test list (rank {rank})", disable=not progress):
            out = os.path.join(out_dir, output_name(item))
            rec = dict(asdict(item), input=item.line, output=out, status="ok", error=None, seconds=0.0)
            rec.pop("line")
            t0 = time.time()
            if item.error:
                rec.update(status="error", error=item.error, output=None)
            elif os.path.exists(out) and not overwrite:
                rec["status"] = "skipped"
            else:
                try:
                    res = produce_fn(item)
                    extra = {}
                    if isinstance(res, dict):
                        extra = {k: v for k, v in res.items() if k != "frames"}
                        res = res["frames"]
                    frames = np.asarray(res)
                    write_video(out, frames, fps=fps)
                    if save_gif:
                        write_video(out[:-4] + ".gif", frames, fps=fps)
                    if save_grid:
                        write_grid(out[:-4] + ".png", frames)
                    rec.update({k: v for k, v in extra.items() if k not in rec})
                except Exception as e:  # per item: record and go on
                    rec.update(status="error", error=f"{type(e).__name__}: {e}", output=None)
            rec["seconds"] = round(time.time() - t0, 3)
            key = {"ok": "ok", "skipped": "skipped", "error": "failed"}[rec["status"]]
            summary[key] += 1
            if rec["status"] == "error":
                summary["reasons"][item.index] = rec["error"]
            log.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
            log.flush()
    if world_size == 1:
        merge_results(out_dir)
    return summary
