"""`train_net.py --cfg configs/modelscope/t2v_train.yaml --dry-run` prints the memory and time plan of the released
UNet (built on the meta device from the model's defaults when the weights folder is not on this machine)."""
from __future__ import annotations

import re

import pytest

import train_net


@pytest.mark.slow
def test_dry_run_prints_the_plan_of_the_released_model(capsys):
    assert train_net.run(["--cfg", "configs/modelscope/t2v_train.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "# memory plan per rank: parallel=none, world=1, precision=bf16, 1.41B parameters" in out
    assert "16384 latent positions per sample, activation checkpointing on" in out  # 16 x 256 x 256 -> 16 x 32 x 32
    weights = float(re.search(r"weights \(fp32\)\s+([\d.]+) GiB", out).group(1))
    assert weights == pytest.approx(1.411e9 * 4 / 2 ** 30, rel=1e-2)
    assert re.search(r"fits per rank .*24 GB no, 40 GB yes, 80 GB yes", out)
    assert re.search(r"# inference .* fits 24 GB yes", out) and "s/step" in out
    on = float(re.search(r"activations\s+([\d.]+) GiB", out).group(1))
    cfg = "configs/modelscope/t2v_train.yaml"
    assert train_net.run(["--cfg", cfg, "--dry-run", "model.grad_checkpointing=false"]) == 0
    off = float(re.search(r"activations\s+([\d.]+) GiB", capsys.readouterr().out).group(1))
    assert off > 2 * on  # checkpointing keeps the block inputs and one block's activations
