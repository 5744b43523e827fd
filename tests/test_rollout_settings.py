"""Rollout settings that run silently but mean nonsense are refused in one line (exit 2, --dry-run):
negative guidance scales (NaN already was)."""
from __future__ import annotations

import json

import pytest

from utils.cli import main

MODEL_CFG = {"type": "NextClipTransformer", "preset": "tiny", "in_channels": 3, "patch_size": 4, "rope": "3d"}


def write_cfg(tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text("balls|1\n")
    cfg = tmp_path / "p.yaml"
    cfg.write_text(f"TASK_TYPE: predict_next_clip\nmodel: {json.dumps(MODEL_CFG)}\ntest_list_path: {lst}\n"
                   f"test_list_kind: text\nresolution: [16, 16]\n")
    return cfg


@pytest.mark.parametrize("override", ["guide_scale=-3", "history_guide_scale=-1", "guide_scale=-0.5"])
def test_negative_guidance_scales_are_refused(tmp_path, capsys, override):
    assert main("infer", ["--cfg", str(write_cfg(tmp_path)), override, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and override in err[0] and ">= 0" in err[0], err


@pytest.mark.parametrize("override", ["guide_scale=0", "history_guide_scale=2.5"])
def test_zero_and_positive_scales_are_fine(tmp_path, override):
    assert main("infer", ["--cfg", str(write_cfg(tmp_path)), override, "--dry-run"]) == 0
