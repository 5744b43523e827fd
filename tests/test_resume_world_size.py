"""A resume on another number of processes: batch_size is per process, so the global batch (and the
data / noise stream) changes although no setting did; the run lists it as "not an exact continuation".
With the same global batch it says the stream continues exactly."""
from __future__ import annotations

import torch
from train_configs import tiny_train_yaml

from utils.cli import main

TINY = tiny_train_yaml()


def as_if_written_by(state_path, world: int) -> None:
    state = torch.load(state_path, weights_only=True)
    assert state["world_size"] == 1  # every checkpoint records the processes that wrote it
    state["world_size"] = world
    torch.save(state, state_path)


def resume_log(tmp_path, world: int, *overrides) -> str:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    assert main("train", ["--cfg", str(cfg), "log_dir", str(tmp_path)]) == 0
    as_if_written_by(tmp_path / "tiny" / "checkpoints" / "step_00000002.state.pt", world)
    assert main("train", ["--cfg", str(cfg), "log_dir", str(tmp_path), "num_steps=3", *overrides]) == 0
    return (tmp_path / "tiny" / "log.txt").read_text()


def test_two_ranks_resumed_on_one_process_is_not_an_exact_continuation(tmp_path):
    log = resume_log(tmp_path, 2)
    assert ("world_size changed since the checkpoint: 2 -> 1 processes, global batch 4 -> 2" in log
            and "not an exact continuation" in log), log


def test_same_global_batch_on_fewer_processes_continues_exactly(tmp_path):
    log = resume_log(tmp_path, 2, "batch_size=4")
    assert "2 -> 1 processes with the same global batch 4" in log and "not an exact continuation" not in \
        log.split("world_size changed")[1], log
