"""Test lists for batch inference: parsing, and a resumable, sharded runner.

Formats (one item per line; ``#`` comments and blank lines ignored):
  text:  ``caption`` or ``caption|seed``      image / video: ``path|||caption`` or ``path``
  class: ``label`` or ``label|seed``
Each line is repeated ``rounds`` times (line-major); round r uses seed
``line seed + r`` or ``base_seed + r``. Malformed lines become items with ``error``
set; the runner records them as failed and goes on. A file is read as UTF-8 (a BOM is
dropped); a list without any item is an :class:`~utils.config.InputError`.

Results: every record carries ``written_at`` and the run's ``fingerprint`` (model and
settings); the newest record of an item wins. A re-run skips an item only if its newest
record is ``ok`` with the same fingerprint and every requested output exists.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
import unicodedata
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from utils.config import ConfigError, InputError
from utils.io import atomic_path, clean_stale_temps, disk_full_hint
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


#: what one line of each kind of list looks like (for error messages)
LINE_FORMATS = {"text": "a caption|123", "class": "3|123", "image": "path/to/image.png|||caption",
                "video": "path/to/clip.mp4|||caption"}


def _read_lines(source: Union[str, os.PathLike]) -> List[str]:
    """The lines of a UTF-8 text file (a byte-order mark is dropped)."""
    path = os.fspath(source)
    if os.path.isdir(path):
        raise InputError(f"test list {path!r} is a directory; give the list file (one item per line)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"test list {path!r} does not exist")
    try:
        with open(path, encoding="utf-8-sig") as f:
            return f.read().splitlines()
    except UnicodeDecodeError as e:
        raise InputError(f"test list {path!r} is not UTF-8 text (byte {e.start}: {e.reason}); "
                         f"save it as UTF-8") from e


def _media_line(line: str, kind: str, base: str):
    """'path|||caption' or a bare 'path' -> (path, caption, error)."""
    p, _, caption = line.partition("|||")
    p, caption = p.strip(), caption.strip()
    if not p:
        return None, caption, "empty path before '|||'"
    path = os.path.join(base, os.path.expanduser(p))
    if os.path.isdir(path):
        return path, caption, f"{kind} path {path!r} is a directory, not a {kind} file; list its files one per line"
    if not os.path.isfile(path):
        return path, caption, f"{kind} file {path!r} not found"
    return path, caption, None


def parse_test_list(source: Union[str, os.PathLike, Iterable[str]], kind: str = "text", rounds: int = 1,
                    base_seed: int = 0, data_dir: Optional[str] = None) -> List[TestItem]:
    """Parse a test list file (or an iterable of lines) into :class:`TestItem` s.

    A list without a single item (empty, or only comments) is an :class:`InputError`.
    """
    if kind not in KINDS:
        raise ConfigError(f"test list kind (test_list_kind)={kind!r} is not supported; use one of {list(KINDS)}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"rounds (round)={rounds!r} must be an integer >= 1; set e.g. 'round=1'")
    if isinstance(source, (str, os.PathLike)):
        lines, name = _read_lines(source), repr(os.fspath(source))
        base = data_dir if data_dir is not None else os.path.dirname(os.path.abspath(source))
    else:
        lines, base, name = list(source), data_dir or ".", "(given as lines)"
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
            path, caption, err = _media_line(line, kind, base)
        for r in range(rounds):
            s = (seed if seed is not None else base_seed) + r
            items.append(TestItem(len(items), no, kind, caption, path, label, s, r, err, line))
    if not items:
        raise InputError(f"test list {name} has no items ({len(lines)} lines, all blank or '#' comments); "
                         f"add one item per line, e.g. '{LINE_FORMATS[kind]}'")
    return items


def slugify(text: str, max_len: int = 60) -> str:
    """A filename-safe, unicode-preserving slug (NFKC; letters/digits/-/_ kept); 'item' if empty."""
    text = unicodedata.normalize("NFKC", text or "")
    text = "".join(c if (c.isalnum() or c in "-_") else "_" for c in text)
    text = re.sub(r"_+", "_", text).strip("_-")[:max_len].strip("_-")
    return text or "item"


def output_name(item: TestItem) -> str:
    return f"{item.index:04d}_{slugify(item.caption or item.label or (os.path.basename(item.path or '')))}.mp4"


def output_paths(item: TestItem, out_dir: str, save_gif: bool = False, save_grid: bool = False,
                 extra_videos: Sequence[str] = ()) -> List[str]:
    """Every file an item produces: the mp4, the gif / png contact sheet when asked for, and one
    ``<name>.<key>.mp4`` per ``extra_videos`` key (e.g. ``prediction``: the prediction alone)."""
    mp4 = os.path.join(out_dir, output_name(item))
    return [mp4] + ([mp4[:-4] + ".gif"] if save_gif else []) + ([mp4[:-4] + ".png"] if save_grid else []) + \
        [f"{mp4[:-4]}.{key}.mp4" for key in extra_videos]


def fingerprint(settings: Mapping, files: Sequence[Optional[str]] = ()) -> str:
    """A short hash of everything that changes an item's output.

    ``settings``: JSON-able generation settings (model, seed, steps, ...); ``files``: weights
    files, identified by absolute path, size and modification time (a retrained checkpoint
    saved under the same name changes the fingerprint).
    """
    stats = []
    for f in files:
        if f:
            p = os.path.abspath(os.fspath(f))
            st = os.stat(p) if os.path.exists(p) else None
            stats.append([p, st.st_size if st else None, st.st_mtime_ns if st else None])
    blob = json.dumps({"settings": settings, "files": stats}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _read_jsonl(path: str) -> List[dict]:
    recs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:  # a line cut by an interrupted run
                    continue
                if isinstance(r, dict) and "index" in r:
                    recs.append(r)
    return recs


def load_results(out_dir: str) -> Dict[int, dict]:
    """The newest record of every item in ``results.jsonl`` and ``results.rank*.jsonl``.

    Records carry ``written_at`` (unix time); the newest wins whichever file holds it
    (older records without it count as oldest; on a tie the later file / line wins).
    """
    if not os.path.isdir(out_dir):
        return {}
    names = sorted(n for n in os.listdir(out_dir) if re.fullmatch(r"results\.rank\d+\.jsonl", n))
    names = (["results.jsonl"] if os.path.isfile(os.path.join(out_dir, "results.jsonl")) else []) + names
    recs: Dict[int, dict] = {}
    for n in names:
        for r in _read_jsonl(os.path.join(out_dir, n)):
            old = recs.get(r["index"])
            if old is None or r.get("written_at", 0) >= old.get("written_at", 0):
                recs[r["index"]] = r
    return recs


def _write_results(out_dir: str, recs: Dict[int, dict]) -> str:
    path = os.path.join(out_dir, "results.jsonl")
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for i in sorted(recs):
                f.write(json.dumps(recs[i], ensure_ascii=False, default=str) + "\n")
    return path


def merge_results(out_dir: str) -> str:
    """Write ``results.jsonl``: the newest record per item (:func:`load_results`), by index.

    With several ranks, call this on one rank after all ranks finished (barrier).
    """
    return _write_results(out_dir, load_results(out_dir))


def failure_reasons(out_dir: str, items: Sequence[TestItem]) -> Dict[int, str]:
    """``{index: error}`` of the listed items whose newest record (any rank's) failed."""
    wanted = {it.index for it in items}
    return {i: r.get("error") or "failed" for i, r in sorted(load_results(out_dir).items())
            if i in wanted and r.get("status") == "error"}


def _still_valid(prev: Optional[dict], item: TestItem, outputs: List[str], fp: Optional[str]) -> bool:
    """An earlier ok record of this very item, made with the same model and settings, whose
    every requested output is still there."""
    if not prev or prev.get("status") != "ok" or prev.get("fingerprint") != fp:
        return False
    same = (prev.get("input"), prev.get("kind"), prev.get("seed"), prev.get("round")) == \
        (item.line, item.kind, item.seed, item.round)
    return same and all(os.path.isfile(o) and os.path.getsize(o) > 0 for o in outputs)


def _produce_and_write(item: TestItem, produce_fn: Callable, outputs: List[str], fps: float) -> dict:
    """Run one item and write its outputs; returns the extra record fields."""
    res = produce_fn(item)
    extra, grid, videos = {}, None, {}
    if isinstance(res, dict):
        grid, videos = res.get("grid"), res.get("extra_videos") or {}
        extra = {k: v for k, v in res.items() if k not in ("frames", "grid", "extra_videos")}
        res = res["frames"]
    frames = np.asarray(res)
    for out in outputs:
        key = next((k for k in videos if out.endswith(f".{k}.mp4")), None)
        if key is not None:
            write_video(out, videos[key], fps=fps)
        elif out.endswith(".png"):
            if grid:  # labelled rows (e.g. truth / prediction) with the context columns marked
                write_grid(out, grid["rows"], context_frames=int(grid.get("context_frames", 0)))
            else:
                write_grid(out, frames)
        else:
            write_video(out, frames, fps=fps)
    return extra


def _run_item(item: TestItem, produce_fn: Callable, outputs: List[str], fps: float,
              fp: Optional[str]) -> Tuple[dict, Optional[BaseException]]:
    """Run one item into its record; also returns the error that must stop the batch (disk full)."""
    rec = dict(asdict(item), input=item.line, output=outputs[0], outputs=outputs, status="ok",
               error=None, seconds=0.0, fingerprint=fp)
    rec.pop("line")
    t0, stop = time.time(), None
    if item.error:
        rec.update(status="error", error=item.error, output=None, outputs=[])
    else:
        try:
            extra = _produce_and_write(item, produce_fn, outputs, fps)
            rec.update({k: v for k, v in extra.items() if k not in rec})
        except Exception as e:  # per item: record and go on
            rec.update(status="error", error=f"{type(e).__name__}: {e}{disk_full_hint(e)}", output=None, outputs=[])
            stop = e if disk_full_hint(e) else None
    rec["seconds"] = round(time.time() - t0, 3)
    rec["written_at"] = time.time()
    return rec, stop


def _record(log, rec: dict, out_dir: str, known: Dict[int, dict], rank: int, world_size: int, failing: bool) -> None:
    """Append ``rec`` to this rank's log and rewrite ``results.jsonl``: two independent writes, so that on
    a full disk (``failing``: the item's own write hit it; errors are then not raised again) the small
    atomic rewrite still records the failure when the append cannot (the failed output's file is gone)."""
    def append() -> None:
        log.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
        log.flush()

    def rewrite() -> None:
        if world_size == 1:
            _write_results(out_dir, known)
        elif rank == 0:
            merge_results(out_dir)

    for write in (append, rewrite):
        try:
            write()
        except OSError:
            if not failing:
                raise


def run_test_list(items: List[TestItem], out_dir: str, produce_fn: Callable, fps: float = 8,
                  overwrite: bool = False, save_gif: bool = False, save_grid: bool = False,
                  rank: int = 0, world_size: int = 1, progress: bool = True,
                  fingerprint: Optional[str] = None, extra_videos: Sequence[str] = ()) -> dict:
    """Run ``produce_fn(item) -> uint8 (T, H, W, 3)`` (or a dict with ``frames``, optionally
    ``grid = {rows: [(label, frames), ...], context_frames: C}`` for a labelled png, plus
    extra fields for the record, and ``extra_videos = {key: frames}`` written as
    ``<name>.<key>.mp4`` for every key of the ``extra_videos`` argument).

    Rank r handles items with ``index % world_size == r`` and appends one JSON line per
    finished item to ``results.rank{r}.jsonl`` (with ``written_at`` and ``fingerprint``).
    ``results.jsonl`` (the newest record per item) exists from the start and is rewritten
    atomically after each item (by rank 0 with several ranks; call :func:`merge_results`
    after a barrier at the end). An item is skipped, and its earlier ``ok`` record kept,
    only when that record has the same ``fingerprint`` (model + settings) and every
    requested output (mp4, gif, png) exists; otherwise it is redone (also with
    ``overwrite``). Temp files of killed writers are removed first. A full disk stops the
    batch (the OSError is raised after the item is recorded). Returns
    ``{ok, failed, skipped, total, reasons: {index: message}}`` for this rank.
    """
    from tqdm import tqdm

    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
    os.makedirs(out_dir, exist_ok=True)
    clean_stale_temps(out_dir)
    mine = [it for it in items if it.index % world_size == rank]
    summary = {"ok": 0, "failed": 0, "skipped": 0, "total": len(mine), "reasons": {}}
    known = load_results(out_dir)
    if rank == 0:
        _write_results(out_dir, known)
    log_path = os.path.join(out_dir, f"results.rank{rank}.jsonl")
    with open(log_path, "a", encoding="utf-8") as log:
        for item in tqdm(mine, desc=f"test list (rank {rank})", disable=not progress):
            outputs = output_paths(item, out_dir, save_gif, save_grid, extra_videos)
            if not item.error and not overwrite and _still_valid(known.get(item.index), item, outputs, fingerprint):
                summary["skipped"] += 1  # the original ok record (with its timing) stays
                continue
            rec, stop = _run_item(item, produce_fn, outputs, fps, fingerprint)
            summary["ok" if rec["status"] == "ok" else "failed"] += 1
            if rec["status"] == "error":
                summary["reasons"][item.index] = rec["error"]
            known[item.index] = rec
            _record(log, rec, out_dir, known, rank, world_size, failing=stop is not None)
            if stop is not None:  # every following write would fail too
                raise stop
    if world_size == 1:
        merge_results(out_dir)
    return summary
