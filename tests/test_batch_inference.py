"""Batch inference under hostile conditions: failed writes (disk full), odd list files, stale
and incomplete outputs, lost log lines, sharded results, settings checked up front."""
import errno
import io
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from ports import free_port
from test_inference_engine import tiny_weights, write_cfg

import utils.video_io as vio
from utils.cli import main
from utils.config import ConfigError, InputError, load_config
from utils.registry import INFER_ENGINE
from utils.test_list import failure_reasons, load_results, merge_results, parse_test_list, run_test_list

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _frames(item):
    return np.full((3, 8, 10, 3), (item.index * 40) % 256, np.uint8)


def _recs(out_dir):
    return [json.loads(line) for line in (pathlib.Path(out_dir) / "results.jsonl").read_text().splitlines()]


@pytest.fixture
def disk_full_ffmpeg(tmp_path, monkeypatch):
    """An 'ffmpeg' that creates an empty output, says the disk is full and exits 1 (what a
    real ffmpeg does on a full disk)."""
    exe = tmp_path / "fake_ffmpeg.sh"
    exe.write_text('#!/bin/sh\nfor a in "$@"; do out="$a"; done\n: > "$out"\n'
                   'echo "Could not write header: No space left on device" >&2\nexit 1\n')
    exe.chmod(0o755)
    monkeypatch.setattr(vio, "_ffmpeg_exe", lambda: str(exe))
    return exe


# ---------------------------------------------------------------------------- 0: failed writes
def test_ffmpeg_failure_raises_and_leaves_nothing(tmp_path, disk_full_ffmpeg):
    out = tmp_path / "v"
    with pytest.raises(OSError) as e:
        vio.write_video(out / "a.mp4", np.zeros((3, 8, 8, 3), np.uint8))
    assert e.value.errno == errno.ENOSPC and "No space left" in str(e.value) and e.value.filename.endswith("a.mp4")
    assert os.listdir(out) == []  # neither the final name nor a temp file


def test_writer_that_writes_nothing_is_a_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(vio, "_write_mp4", lambda tmp, frames, fps, q: None)  # "succeeds", 0 bytes
    with pytest.raises(OSError, match="empty"):
        vio.write_video(tmp_path / "a.mp4", np.zeros((3, 8, 8, 3), np.uint8))
    assert os.listdir(tmp_path) == []


def test_disk_full_stops_the_batch_and_rerun_redoes_it(tmp_path, monkeypatch, disk_full_ffmpeg):
    items = parse_test_list(["one", "two", "three"], "text")
    calls = []
    with pytest.raises(OSError) as e:
        run_test_list(items, str(tmp_path), lambda it: calls.append(it.index) or _frames(it), progress=False)
    assert e.value.errno == errno.ENOSPC and calls == [0]  # no rollouts wasted on a full disk
    assert not list(tmp_path.glob("*.mp4"))
    recs = _recs(tmp_path)
    assert [r["status"] for r in recs] == ["error"] and "free some space" in recs[0]["error"]
    monkeypatch.undo()  # space freed: the same run again does every item
    s = run_test_list(items, str(tmp_path), _frames, progress=False)
    assert (s["ok"], s["skipped"], s["failed"]) == (3, 0, 0)
    assert all(p.stat().st_size > 0 for p in tmp_path.glob("*.mp4")) and len(list(tmp_path.glob("*.mp4"))) == 3
    assert [r["status"] for r in _recs(tmp_path)] == ["ok"] * 3


def test_disk_full_in_the_engine_is_one_line_exit_2(tmp_path, disk_full_ffmpeg, capsys, shared_data):
    ckpt = tiny_weights(tmp_path / "tiny.safetensors")
    lst = tmp_path / "list.txt"
    lst.write_text(f"{shared_data / 'videos/cat_walking.mp4'}\n{shared_data / 'videos/realshort.mp4'}\n")
    cfg = write_cfg(tmp_path, lst, ckpt, extra="num_sample_steps: 1\n")
    assert main("infer", ["--cfg", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "0000_cat_walking_mp4.mp4" in err and "free some space" in err
    out = tmp_path / "out" / "list"
    assert not list(out.glob("*.mp4")) and [r["status"] for r in _recs(out)] == ["error"]


# ---------------------------------------------------------------------------- 5: list files
def test_list_lines_bom_directories_and_empty_lists(tmp_path, shared_data):
    lst = tmp_path / "v.txt"
    lst.write_bytes("\ufeffvideos/realshort.mp4\nvideos\nvideos/realshort.mp4|||cap\n".encode("utf-8"))
    items = parse_test_list(str(lst), "video", data_dir=str(shared_data))
    assert items[0].error is None and items[0].line == "videos/realshort.mp4" and items[0].caption == ""
    assert "is a directory" in items[1].error and "not found" not in items[1].error
    assert items[2].error is None and items[2].caption == "cap"
    for text in ("", "# only a comment\n\n   \n"):
        lst.write_text(text)
        with pytest.raises(InputError, match="no items"):
            parse_test_list(str(lst), "video")


def test_empty_or_missing_list_exits_2_and_creates_nothing(tmp_path):
    ckpt = tiny_weights(tmp_path / "tiny.safetensors")
    lst = tmp_path / "list.txt"
    lst.write_text("# nothing to do\n")
    cfg = write_cfg(tmp_path, lst, ckpt)
    assert main("infer", ["--cfg", str(cfg)]) == 2
    assert main("infer", ["--cfg", str(cfg), "test_list_path", str(tmp_path / "nope.txt")]) == 2
    assert not (tmp_path / "out").exists()  # no run directory, config.yaml or log.txt
    ev = tmp_path / "eval.yaml"
    ev.write_text(f"_BASE: {ROOT / 'configs/tiny/evaluate.yaml'}\nlog_dir: {tmp_path / 'out'}\n"
                  f"dataset: null\ntest_list_path: {tmp_path / 'nope.txt'}\n")
    assert main("infer", ["--cfg", str(ev)]) == 2
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- 6 / 8 / 9b: skipping
def test_skip_needs_same_fingerprint_and_every_output(tmp_path):
    items = parse_test_list(["one", "two"], "text")
    s = run_test_list(items, str(tmp_path), _frames, save_grid=True, progress=False, fingerprint="A")
    first = _recs(tmp_path)
    assert s["ok"] == 2 and all(r["fingerprint"] == "A" for r in first)
    # same settings: skipped, the original ok records (with their timing) are kept
    s = run_test_list(items, str(tmp_path), _frames, save_grid=True, progress=False, fingerprint="A")
    assert (s["ok"], s["skipped"]) == (0, 2) and _recs(tmp_path) == first
    # an item cut between its mp4 and its png is redone
    (tmp_path / "0001_two.png").unlink()
    calls = []
    s = run_test_list(items, str(tmp_path), lambda it: calls.append(it.index) or _frames(it), save_grid=True,
                      progress=False, fingerprint="A")
    assert calls == [1] and (s["ok"], s["skipped"]) == (1, 1) and (tmp_path / "0001_two.png").is_file()
    # another model / seed / setting: everything is redone
    s = run_test_list(items, str(tmp_path), _frames, save_grid=True, progress=False, fingerprint="B")
    assert (s["ok"], s["skipped"]) == (2, 0) and all(r["fingerprint"] == "B" for r in _recs(tmp_path))
    # an output without a record (e.g. from an older run) is not trusted either
    (tmp_path / "results.jsonl").unlink()
    for f in tmp_path.glob("results.rank*.jsonl"):
        f.unlink()
    assert run_test_list(items, str(tmp_path), _frames, progress=False, fingerprint="B")["ok"] == 2


def test_stale_temps_cleaned_and_results_written_as_items_finish(tmp_path):
    dead = tmp_path / ".0000_one.99999999.abc.tmp.mp4"  # a killed writer's temp (no such pid)
    dead.write_bytes(b"half")
    items = parse_test_list(["one", "two"], "text")
    seen = []

    def produce(item):
        if item.index == 1:  # the first item is already in results.jsonl
            seen.extend(r["index"] for r in _recs(tmp_path) if r["status"] == "ok")
        return _frames(item)

    run_test_list(items, str(tmp_path), produce, progress=False)
    assert not dead.exists() and seen == [0]


def test_newest_record_wins_across_rank_files(tmp_path):
    """9b: a sharded run failed an item; a later single-process run fixes it."""
    items = parse_test_list(["one", "two", "three"], "text")

    def flaky(item):
        if item.index == 1:
            raise FileNotFoundError("input missing")
        return _frames(item)

    for r in range(2):
        run_test_list(items, str(tmp_path), flaky, rank=r, world_size=2, progress=False)
    merge_results(str(tmp_path))
    assert [r["status"] for r in _recs(tmp_path)] == ["ok", "error", "ok"]
    assert failure_reasons(str(tmp_path), items) == {1: "FileNotFoundError: input missing"}  # rank 1's
    s = run_test_list(items, str(tmp_path), _frames, progress=False)  # the input is back
    assert (s["ok"], s["skipped"], s["failed"]) == (1, 2, 0)
    assert [r["status"] for r in _recs(tmp_path)] == ["ok", "ok", "ok"]
    merge_results(str(tmp_path))  # merging again (any rank file order) keeps the newest
    assert [r["status"] for r in load_results(str(tmp_path)).values()] == ["ok", "ok", "ok"]


@pytest.mark.slow
def test_engine_redoes_items_when_model_seed_or_settings_change(tmp_path, shared_data):
    ckpt = tiny_weights(tmp_path / "tiny.safetensors")
    lst = tmp_path / "list.txt"
    lst.write_text(f"{shared_data / 'videos/cat_walking.mp4'}\n")
    cfg = write_cfg(tmp_path, lst, ckpt, extra="num_sample_steps: 1\n")
    out = tmp_path / "out" / "list"

    def run(*overrides):
        assert main("infer", ["--cfg", str(cfg), *overrides]) == 0
        return _recs(out)[0]

    first = run()
    assert run() == first                                    # same everything: skipped, record kept
    assert run("seed=1")["written_at"] > first["written_at"]  # another seed: redone
    again = run("seed=1", "num_sample_steps=2")
    assert again["fingerprint"] != first["fingerprint"]
    os.utime(ckpt, ns=(1, 1))                                # the weights file changed
    assert run("seed=1", "num_sample_steps=2")["written_at"] > again["written_at"]


# ---------------------------------------------------------------------------- 7 / 8c: logging
def test_start_up_lines_and_partial_load_warning_are_logged(tmp_path):
    ckpt = tiny_weights(tmp_path / "other.safetensors", cond_dim=4)  # keys the model does not have
    lst = tmp_path / "list.txt"
    lst.write_text("a caption\nanother\n")
    cfg = write_cfg(tmp_path, lst, ckpt, kind="text", extra="strict: false\ncontext_frames: 0\n")
    assert main("infer", ["--cfg", str(cfg)]) == 0
    log = (tmp_path / "out" / "list" / "log.txt").read_text()
    assert "backend" in log and "attention" in log
    warn = [ln for ln in log.splitlines() if "PARTIAL LOAD" in ln]
    assert len(warn) == 1 and "WARNING" in warn[0] and "0 missing" in warn[0] and "unexpected" in warn[0]
    ignored = [ln for ln in log.splitlines() if "takes no condition" in ln]
    assert len(ignored) == 1 and "2 of 2 items" in ignored[0]  # once, not per item


def test_console_log_lines_do_not_glue_to_the_progress_bar(monkeypatch):
    from tqdm import tqdm

    from utils.logging import setup_logger

    buf = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buf)
    log = setup_logger(None)
    try:
        bar = tqdm(total=3, file=buf, desc="items")
        bar.update(1)
        log.info("hello from an item")
        bar.close()
    finally:
        setup_logger(None)
    line = next(ln for ln in buf.getvalue().split("\n") if "hello from an item" in ln)
    assert line.split("\r")[-1].startswith("[")  # the bar was cleared, the message has its own line


# ---------------------------------------------------------------------------- 8b: contact sheet
def test_contact_sheet_is_labelled_and_marks_the_context():
    t, h, w, c = 6, 16, 16, 2
    truth = np.full((t, h, w, 3), 100, np.uint8)
    grid = vio.make_labeled_grid([("truth", truth), ("prediction", truth[:5])], context_frames=c)
    img = grid.astype(int)
    orange = (np.abs(img - np.array(vio.CONTEXT_COLOR)).sum(-1) < 30)
    cols = np.where(orange.any(0))[0]
    cell_x = [x for x in range(img.shape[1]) if (img[:, x] == 100).all(-1).any()]
    assert cols.min() < cell_x[0] and cols.max() < cell_x[0] + c * (w + 3) + 3  # only the context columns framed
    dark = (img.sum(-1) < 150)
    assert dark[:, : cell_x[0]].any()                     # row labels left of the cells
    ys = [y for y in range(img.shape[0]) if (img[y] == 100).all(-1).any()]
    assert dark[: ys[0], cell_x[0]:].any()                # frame-index headers above
    assert (img == 200).all(-1).any()                     # the short row's missing cell is grey


# ---------------------------------------------------------------------------- 10 / 10d: settings
@pytest.mark.parametrize("override,setting", [
    ("round=0", "round"), ("test_list_kind=bogus", "test_list_kind"), ("test_list_path=null", "test_list_path"),
    ("fps=0", "fps"), ("num_sample_steps=0", "num_sample_steps"), ("context_frames=20", "context_frames"),
    ("guide_interval=[0.6,0.2]", "guide_interval"), ("guide_interval=[0.5]", "guide_interval"),
    ("history_guide_interval=[0.2,1.5]", "history_guide_interval"),
])
def test_validate_names_the_setting(override, setting):
    cfg = load_config(ROOT / "configs/tiny/predict.yaml", [override], registry=INFER_ENGINE)
    with pytest.raises(ConfigError, match=setting) as e:
        INFER_ENGINE.get("predict_next_clip").validate(cfg)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("override,setting", [
    ("round=0", "round"), ("test_list_kind=bogus", "test_list_kind"), ("test_list_path=null", "test_list_path"),
    ("fps=0", "fps"), ("context_frames=20", "context_frames"),
])
def test_dry_run_catches_bad_settings(override, setting, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    for extra in (["--dry-run"], []):  # the real run stops at the same check, before any item
        assert main("infer", ["--cfg", "configs/tiny/predict.yaml", override, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and setting in err and "Traceback" not in err


def test_evaluate_validate():
    ev = INFER_ENGINE.get("evaluate_prediction").validate
    ev(load_config(ROOT / "configs/tiny/evaluate.yaml", registry=INFER_ENGINE))
    for override, setting in (("dataset=null", "dataset"), ("context_frames=0", "context_frames"),
                              ("fps=0", "fps"), ("eval_range=[5,2]", "eval_range")):
        with pytest.raises(ConfigError, match=setting):
            ev(load_config(ROOT / "configs/tiny/evaluate.yaml", [override], registry=INFER_ENGINE))


def test_resolution_not_divisible_by_patch_fails_before_any_item(tmp_path, shared_data):
    ckpt = tiny_weights(tmp_path / "tiny.safetensors")
    lst = tmp_path / "list.txt"
    lst.write_text(f"{shared_data / 'videos/cat_walking.mp4'}\n")
    cfg = write_cfg(tmp_path, lst, ckpt)
    assert main("infer", ["--cfg", str(cfg), "resolution=[18,18]"]) == 2
    assert not (tmp_path / "out" / "list" / "results.jsonl").exists()  # no item was tried
    from tools.inferences.predictor import Predictor

    with pytest.raises(ConfigError, match=r"resolution=\[18, 18\].*multiples of 4"):
        Predictor(load_config(cfg, ["resolution=[18,18]"], registry=INFER_ENGINE))


# ---------------------------------------------------------------------------- done-when
@pytest.mark.slow
def test_cli_batch_over_hostile_list(tmp_path, shared_data):
    """The real CLI over real clips of several sizes and containers plus bad entries:
    exit 1, one result per item, an mp4 for every readable video."""
    from media import moving_frames, write_mkv, write_webm

    frames = moving_frames(16, 48, 64)
    gif = vio.write_video(tmp_path / "clip.gif", frames[:, :30, :40], fps=8)
    webm = write_webm(tmp_path / "clip.webm", frames)
    mkv = write_mkv(tmp_path / "clip.mkv", frames)
    short = vio.write_video(tmp_path / "short.mp4", frames[:3], fps=8)  # fewer than context_frames=4
    (tmp_path / "a_dir").mkdir()
    videos = shared_data / "videos"
    good = [videos / "cat_walking.mp4", videos / "realshort.mp4", gif, webm, mkv]  # 256x256, 320x240, ...
    bad = [tmp_path / "missing.mp4", shared_data / "broken_truncated.mp4", tmp_path / "a_dir", short]
    lst = tmp_path / "hostile.txt"
    lst.write_text("".join(f"{p}|||item {i}\n" for i, p in enumerate(good + bad)))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "inference.py", "--cfg", "configs/tiny/predict.yaml", "test_list_path",
                        str(lst), "log_dir", str(tmp_path / "out"), "num_sample_steps=1", "progress=false",
                        "max_frames=8", "backend.precision=fp32", "backend.attention=sdpa"],  # fast on CPU
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stdout + p.stderr
    out = tmp_path / "out" / "hostile"
    recs = _recs(out)
    assert [r["index"] for r in recs] == list(range(len(good) + len(bad)))
    assert [r["status"] for r in recs] == ["ok"] * len(good) + ["error"] * len(bad), \
        [(r["input"], r["error"]) for r in recs]
    for r in recs[: len(good)]:
        assert pathlib.Path(r["output"]).stat().st_size > 0 and pathlib.Path(r["output"][:-4] + ".png").is_file()
    assert len(list(out.glob("*.mp4"))) == len(good)
    errors = [r["error"] for r in recs[len(good):]]
    assert "not found" in errors[0] and "directory" in errors[2] and "context_frames" in errors[3]
    assert "Traceback" not in p.stderr


@pytest.mark.slow
def test_torchrun_summary_covers_every_rank_and_newest_record_wins(tmp_path):
    """2-rank inference: the summary counts and failure reasons cover rank 1's items too; a later
    single-process run that succeeds on the formerly missing file replaces its error record."""
    demo = ROOT / "data" / "demo"
    missing = tmp_path / "later.mp4"
    lst = tmp_path / "shard.txt"  # items 1 and 3 run on rank 1; item 3's file appears later
    lst.write_text(f"{demo / 'physics_4242_000000.mp4'}\n{tmp_path / 'gone.mp4'}\n"
                   f"{demo / 'physics_4242_000001.mp4'}\n{missing}\n")
    args = ["--cfg", "configs/tiny/predict.yaml", "test_list_path", str(lst), "log_dir", str(tmp_path / "out"),
            "num_sample_steps=1", "progress=false", "backend.precision=fp32", "backend.attention=sdpa"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        free_port(), "inference.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=180)
    log = p.stdout + p.stderr
    assert p.returncode == 1, log[-3000:]
    assert "4 items: 2 ok, 0 skipped" in log and ", 2 failed" in log, log[-3000:]
    assert "item 1 failed" in log and "item 3 failed" in log and "(this rank)" not in log
    out = tmp_path / "out" / "shard"
    assert [r["status"] for r in _recs(out)] == ["ok", "error", "ok", "error"]
    vio.write_video(missing, vio.read_video(demo / "physics_4242_000002.mp4")[0], fps=8)
    p = subprocess.run([sys.executable, "inference.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 1  # item 1 is still missing
    assert [r["status"] for r in _recs(out)] == ["ok", "error", "ok", "ok"]  # the old rank-1 error lost
