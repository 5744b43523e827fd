"""FSDP resumes that could not pass by restarting from step 0: every resume asserts the step it resumed
at, and the optimizer state of its next checkpoint against a reference (AdamW's per-parameter step count
and moments: a run that ignored the checkpoint, or dropped its optimizer state, counts 2 steps, not 4).
World sizes 2 -> 1, 1 -> 2 (a whole-file checkpoint into FSDP shards) and 2 -> 3 (uneven shards, the
sharded load into FSDP ranks); 2 -> 2 with the same global batch is tests/test_fsdp.py's exact-resume test."""
from __future__ import annotations

import json
import pathlib
import shutil

import pytest
import torch
from ports import torchrun_train
from train_configs import cpu, physics, tiny_train_yaml

from tools.train import loop
from utils.checkpoint import read_checkpoint
from utils.cli import main
from utils.config import load_config
from utils.registry import EMBEDDER, ENGINE, MODEL

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = tiny_train_yaml(backend=cpu(parallel="auto", meta_init=False), dataset=physics(length=32),
                       clip_sampling={"mode": "random", "min_clips": 2}, grad_accum=2, num_steps=4, lr=1.0e-3,
                       warmup_steps=2, grad_clip=1.0, keep_last=5, use_ema=True, ema_decay=0.9)
REL = 1e-4  # gloo reduction order vs one process summing the same gradients
STEP4 = pathlib.Path("tiny") / "checkpoints" / "step_00000004"

pytestmark = pytest.mark.slow


def train(cfg, log_dir, *extra) -> None:
    assert main("train", ["--cfg", str(cfg), "log_dir", str(log_dir), *extra]) == 0


def losses(log_dir):
    path = pathlib.Path(log_dir) / "tiny" / "scalars.jsonl"
    return {r["step"]: r["loss"] for r in map(json.loads, path.read_text().splitlines())}


def optimizer_state(cfg_path, stem):
    """(step, optimizer.state_dict()) of checkpoint ``stem`` as a one-process run resumes it (sharded or not)."""
    cfg = load_config(str(cfg_path), [], registry=ENGINE)
    model = MODEL.build(dict(cfg.model))
    embedder = EMBEDDER.build(dict(cfg.embedder))
    optimizer = loop.make_optimizer(torch.nn.ModuleList([model, embedder]), cfg)
    step, _ = loop.apply_resume(read_checkpoint(stem), cfg, model, None, optimizer, embedder)
    return step, optimizer.state_dict()


def assert_same_optimizer(got, ref) -> None:
    """AdamW's state per parameter: the step count exactly, the moments to the reduction tolerance."""
    assert sorted(got["state"]) == sorted(ref["state"]) and got["state"]
    for i, r in ref["state"].items():
        g = got["state"][i]
        assert float(g["step"]) == float(r["step"]), (i, g["step"], r["step"])
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(g[key], r[key], rtol=REL, atol=1e-9, msg=f"{i}.{key}")


def assert_resumed_at_2(log_dir) -> None:
    log = (pathlib.Path(log_dir) / "tiny" / "log.txt").read_text()
    assert "step_00000002 at step 2" in log, log[-2000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted one-process run (4 steps), one stopped at step 2 (whole files), and 2 FSDP ranks
    stopped at step 2 (sharded); the same global batch of 4 (2 x accum 2; 2 ranks x 1 x accum 2)."""
    tmp = tmp_path_factory.mktemp("fsdp_resume")
    cfg = tmp / "tiny.yaml"
    cfg.write_text(TINY)
    train(cfg, tmp / "single")
    train(cfg, tmp / "single_part", "num_steps=2")
    torchrun_train(cfg, tmp / "fsdp_part", "backend.parallel=fsdp", "num_steps=2")
    ref_step, ref = optimizer_state(cfg, tmp / "single" / STEP4)
    assert ref_step == 4 and all(float(s["step"]) == 4 for s in ref["state"].values())
    return tmp, cfg, losses(tmp / "single"), ref


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_2_to_1(runs, tmp_path):
    tmp, cfg, single, ref = runs
    run = _copy(tmp / "fsdp_part", tmp_path / "run")
    train(cfg, run)  # one process, batch 2 x accum 2: the same global batch
    assert_resumed_at_2(run)
    step, state = optimizer_state(cfg, run / STEP4)
    assert step == 4
    assert_same_optimizer(state, ref)


def test_1_to_2(runs, tmp_path):
    tmp, cfg, single, ref = runs
    run = _copy(tmp / "single_part", tmp_path / "run")
    torchrun_train(cfg, run, "backend.parallel=fsdp")  # whole-file checkpoint -> FSDP shards on 2 ranks
    assert_resumed_at_2(run)
    got = losses(run)
    for s in (3, 4):
        assert got[s] == pytest.approx(single[s], rel=REL), (s, got[s], single[s])
    step, state = optimizer_state(cfg, run / STEP4)
    assert step == 4
    assert_same_optimizer(state, ref)


def test_2_to_3_uneven_shards(runs, tmp_path):
    tmp, cfg, _, _ = runs
    run = _copy(tmp / "fsdp_part", tmp_path / "run")
    # 3 ranks: parameters of 64 / 128 rows shard unevenly; global batch 4 -> 6
    torchrun_train(cfg, run, "backend.parallel=fsdp", nproc=3)
    assert_resumed_at_2(run)
    log = (run / "tiny" / "log.txt").read_text()
    assert "2 -> 3 processes, global batch 4 -> 6" in log and "not an exact continuation" in log
    # the reference: one process with the same global batch of 6 (3 x accum 2), from the same checkpoint
    ref_run = _copy(tmp / "fsdp_part", tmp_path / "ref")
    train(cfg, ref_run, "batch_size=3")
    assert_resumed_at_2(ref_run)
    got, want = losses(run), losses(ref_run)
    for s in (3, 4):
        assert got[s] == pytest.approx(want[s], rel=REL), (s, got[s], want[s])
    step, state = optimizer_state(cfg, run / STEP4)
    ref_step, ref = optimizer_state(cfg, ref_run / STEP4)
    assert step == ref_step == 4
    assert all(float(s["step"]) == 4 for s in state["state"].values())  # AdamW counted the resumed steps on
    assert_same_optimizer(state, ref)
