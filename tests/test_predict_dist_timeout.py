"""Inference under torchrun with one rank stopped: rank 0 stops after ``dist_timeout`` naming the silent
rank (as the training engine does), instead of waiting 600 s without a word; the setting is checked."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time

import pytest

from ports import free_port
from utils.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]

HANGING = '''
import os, time
from tools.autoencoders.identity import Identity
from utils.registry import AUTO_ENCODER

@AUTO_ENCODER.register_class()
class StopsOnRank1(Identity):
    """Rank 1 stops answering (sleeps) when it decodes its first item."""
    def _decode_chunk(self, z):
        if os.environ.get("RANK") == "1":
            time.sleep(120)
        return z
'''

PREDICT = """
TASK_TYPE: predict_next_clip
custom_imports: [hanging.py]
backend: {{type: cpu, precision: fp32, attention: sdpa}}
model: {{type: NextClipTransformer, preset: tiny, in_channels: 3, patch_size: 4, rope: 3d}}
diffusion: {{type: RectifiedFlow}}
auto_encoder: {{type: {ae}}}
test_list_kind: text
resolution: [16, 16]
context_frames: 2
max_frames: 4
clip_len: 2
window: 4
num_sample_steps: 1
progress: false
"""


def write_cfg(tmp_path, ae="StopsOnRank1"):
    (tmp_path / "hanging.py").write_text(HANGING)
    cfg = tmp_path / "predict.yaml"
    cfg.write_text(PREDICT.format(ae=ae))
    lst = tmp_path / "list.txt"
    lst.write_text("balls|1\nballs|2\nballs|3\nballs|4\n")
    return cfg, lst


@pytest.mark.parametrize("bad", ["0", "-5", "-0.5"])
def test_dist_timeout_is_checked(tmp_path, capsys, bad):
    cfg, lst = write_cfg(tmp_path, ae="Identity")
    assert main("infer", ["--cfg", str(cfg), "test_list_path", str(lst), f"dist_timeout={bad}", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"dist_timeout={bad}" in err[0] and "number of seconds > 0" in err[0], err
    assert main("infer", ["--cfg", str(cfg), "test_list_path", str(lst), "dist_timeout=2.5", "--dry-run"]) == 0


@pytest.mark.slow
def test_stopped_rank_is_named_within_dist_timeout(tmp_path):
    cfg, lst = write_cfg(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(free_port()), str(ROOT / "inference.py"), "--cfg", str(cfg),
                        "log_dir", str(tmp_path / "out"), "test_list_path", str(lst), "dist_timeout=3"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)
    took = time.time() - t0
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "rank 0 of 2: a collective operation failed because rank 1 stopped answering" in out, out[-3000:]
    assert "dist_timeout=3s" in out and took < 60, took
