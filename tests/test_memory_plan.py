"""train_net.py --dry-run prints a per-rank memory plan built on the meta device (tools/train/memory_plan.py)."""
import pathlib

import pytest

import train_net

ROOT = pathlib.Path(__file__).resolve().parents[1]
STAGE1 = str(ROOT / "configs" / "videogpt" / "stage1.yaml")


def _rows(out):
    rows = {}
    for line in out.splitlines():
        if line.startswith("#   "):
            parts = line[4:].split("  (")[0].rsplit(None, 2)
            name, gib = parts[0].strip(), float(parts[1])
            rows[name] = gib
    return rows


def test_stage1_plan_shards_states_by_world_size(capsys):
    assert train_net.run(["--cfg", STAGE1, "--dry-run", "+backend.parallel=fsdp", "--world-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "memory plan per rank: parallel=fsdp, world=8, precision=bf16, 3.76B parameters" in out
    fsdp = _rows(out)
    assert train_net.run(["--cfg", STAGE1, "--dry-run"]) == 0  # one process: nothing sharded
    one = _rows(capsys.readouterr().out)
    assert one["weights (fp32)"] == pytest.approx(8 * fsdp["weights (fp32)"], rel=0.01)
    assert one["AdamW moments (fp32)"] == pytest.approx(2 * one["weights (fp32)"], rel=0.01)
    assert one["total"] > 70 and fsdp["total"] < 20  # the issue's ~73 GB per rank, and what FSDP makes of it
    assert fsdp["activations"] == one["activations"]  # data parallel: activations are per sample


def test_checkpointing_and_bad_world_size(capsys):
    assert train_net.run(["--cfg", STAGE1, "--dry-run", "model.grad_checkpointing=false"]) == 0
    off = _rows(capsys.readouterr().out)["activations"]
    assert train_net.run(["--cfg", STAGE1, "--dry-run"]) == 0
    on = _rows(capsys.readouterr().out)["activations"]
    assert off > 5 * on
    with pytest.raises(SystemExit) as e:
        train_net.run(["--cfg", STAGE1, "--dry-run", "--world-size", "0"])
    assert e.value.code == 2 and "--world-size '0' is not allowed" in capsys.readouterr().err


def test_plan_of_a_conditional_config_takes_cond_dim_from_the_embedder(capsys):
    """Regression: the plan built the model without the embedder's cond_dim, so every conditional config
    (pooled_cond needs a condition) printed "dry run OK" and then failed with a build error."""
    cfg = str(ROOT / "configs" / "experiments" / "conditioning" / "train_class.yaml")
    assert train_net.run(["--cfg", cfg, "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "memory plan per rank" in captured.out and "error" not in captured.err
