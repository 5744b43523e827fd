"""A run owns its directory: the second of two runs into one directory refuses in one line naming
the holder's pid, the lock dies with its process (kill -9 leaves nothing stale), only rank 0 locks."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from train_configs import physics, tiny_train_yaml

from utils.run_lock import RunLockedError, run_lock

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TORCH_DEVICE_BACKEND_AUTOLOAD="0",
           PYTHONPATH=str(ROOT))

HOLD = """
import sys, time
from utils.run_lock import run_lock
with run_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def _holder(directory) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


@pytest.mark.slow  # a second python process
def test_second_run_refused_naming_the_pid_and_kill_9_leaves_no_stale_lock(tmp_path):
    holder = _holder(tmp_path / "run")
    try:
        with pytest.raises(RunLockedError) as e:
            with run_lock(tmp_path / "run", "training"):
                pass
        msg = str(e.value)
        assert f"process {holder.pid}" in msg and str(tmp_path / "run") in msg and "\n" not in msg
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with run_lock(tmp_path / "run") as path:  # the kernel released it with the killed process
        assert path == tmp_path / "run" / ".lock"
        assert f"pid={os.getpid()}" in path.read_text()
    with run_lock(tmp_path / "run"):  # released at the end of the block, also within one process
        pass


def test_lock_is_exclusive_within_one_process_and_other_ranks_take_none(tmp_path):
    with run_lock(tmp_path / "run"):
        with pytest.raises(RunLockedError):
            with run_lock(tmp_path / "run"):
                pass
        with run_lock(tmp_path / "run", rank=1) as got:  # rank 0 holds it for the torchrun job
            assert got is None


def test_a_separate_lock_file_guards_a_directory_that_is_replaced(tmp_path):
    lock = tmp_path / ".cache.lock"
    with run_lock(tmp_path / "cache", lock_file=lock) as got:
        assert got == lock and not (tmp_path / "cache" / ".lock").exists()
        with pytest.raises(RunLockedError):
            with run_lock(tmp_path / "cache", lock_file=lock):
                pass


TRAIN = tiny_train_yaml(dataset=physics(length=64), clip_sampling={"mode": "random", "min_clips": 2},
                        num_steps=40, warmup_steps=2, save_ckp_interval=20, use_ema=False)

PREDICT = """
TASK_TYPE: predict_next_clip
backend: {type: cpu, precision: fp32, attention: sdpa}
model: {type: NextClipTransformer, preset: tiny, in_channels: 3, patch_size: 4, rope: 3d}
diffusion: {type: RectifiedFlow}
test_list_kind: text
resolution: [16, 16]
context_frames: 2
max_frames: 6
clip_len: 2
window: 6
num_sample_steps: 4
progress: false
"""


def _two_at_once(cmd_a, cmd_b):
    """Start both commands together; (returncode, stdout, stderr) of each."""
    procs = [subprocess.Popen(c, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in (cmd_a, cmd_b)]
    out = [p.communicate(timeout=300) for p in procs]
    return [(p.returncode, o, e) for p, (o, e) in zip(procs, out)]


def _one_refused(runs, run_dir):
    codes = sorted(r[0] for r in runs)
    assert codes == [0, 2], [(c, e[-2000:]) for c, _, e in runs]
    ok = next(r for r in runs if r[0] == 0)
    refused = next(r for r in runs if r[0] == 2)
    lines = refused[2].strip().splitlines()
    assert len(lines) == 1 and "is in use by process" in lines[0] and str(run_dir) in lines[0], lines
    return ok, refused


@pytest.mark.slow
def test_two_trainings_into_one_run_dir(tmp_path):
    cfg = tmp_path / "train.yaml"
    cfg.write_text(TRAIN)
    cmd = [sys.executable, "train_net.py", "--cfg", str(cfg), "log_dir", str(tmp_path / "runs")]
    run_dir = tmp_path / "runs" / "tiny"
    runs = _two_at_once(cmd + ["lr=0.001"], cmd + ["lr=0.002"])
    ok, _ = _one_refused(runs, run_dir)
    steps = [json.loads(line)["step"] for line in (run_dir / "scalars.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 41))  # one run's steps, once each: nothing interleaved
    winner = "lr: 0.001" if runs[0] is ok else "lr: 0.002"
    assert winner in (run_dir / "config.yaml").read_text()  # the refused run wrote nothing


@pytest.mark.slow
def test_two_inferences_into_one_log_dir(tmp_path):
    cfg = tmp_path / "predict.yaml"
    cfg.write_text(PREDICT)
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"balls|{i}\n" for i in range(1, 9)))
    cmd = [sys.executable, "inference.py", "--cfg", str(cfg), "log_dir", str(tmp_path / "out"),
           "test_list_path", str(lst)]
    out_dir = tmp_path / "out" / "list"
    ok, _ = _one_refused(_two_at_once(cmd, cmd + ["seed=5"]), out_dir)
    records = [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines()]
    assert len(records) == 8 and all(r["status"] == "ok" for r in records)
    assert len({r["fingerprint"] for r in records}) == 1  # every item from the run that ran
    assert len(list(out_dir.glob("*.mp4"))) == 8


def test_lock_wait_is_short_when_the_holder_has_not_written_its_pid(tmp_path):
    import fcntl

    (tmp_path / "run").mkdir()
    fd = os.open(tmp_path / "run" / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        t0 = time.time()
        with pytest.raises(RunLockedError, match="in use by another process"):
            with run_lock(tmp_path / "run"):
                pass
        assert time.time() - t0 < 5
    finally:
        os.close(fd)
