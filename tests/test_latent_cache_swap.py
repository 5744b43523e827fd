"""scripts.encode_latents into an existing cache: the new cache is written beside the old one and
swapped in when complete; another config's cache is kept unless --overwrite; a full disk is one line
and a kill -9 mid re-encode both leave the old cache usable."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from train_configs import physics, tiny_train_yaml

from scripts.encode_latents import main as encode
from tools.datasets.latent_cache import LatentCache

ROOT = pathlib.Path(__file__).resolve().parents[1]



def write_cfg(tmp_path, length=4):
    p = tmp_path / f"enc{length}.yaml"
    p.write_text(tiny_train_yaml(dataset=physics(num_frames=4, length=length), max_frames=4))
    return p


def digest(cache: pathlib.Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(cache.iterdir())}


def leftovers(tmp_path) -> list:
    return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".cache.") and p.name != ".cache.lock")


def test_same_settings_replace_other_settings_need_overwrite(tmp_path, capsys):
    cfg, cache = write_cfg(tmp_path), tmp_path / "cache"
    assert encode(["--cfg", str(cfg), "--out", str(cache), "--shard-size", "1"]) == 0
    first = digest(cache)
    assert len(LatentCache(str(cache))) == 4
    # the same settings: re-encoded and swapped in (a new manifest), nothing left beside it
    assert encode(["--cfg", str(cfg), "--out", str(cache), "--shard-size", "2"]) == 0
    assert digest(cache) != first and len(json.loads((cache / "manifest.json").read_text())["shards"]) == 2
    assert leftovers(tmp_path) == []
    second = digest(cache)
    # other settings: refused in one line naming the difference, the cache untouched
    capsys.readouterr()
    assert encode(["--cfg", str(cfg), "--out", str(cache), "dataset.seed=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "made with other settings" in err[0] and "data.seed: cache=0, expected=3" in err[0]
    assert "--overwrite" in err[0] and digest(cache) == second
    assert encode(["--cfg", str(cfg), "--out", str(cache), "dataset.seed=3", "--overwrite"]) == 0
    assert json.loads((cache / "manifest.json").read_text())["fingerprint"]["data"]["seed"] == 3


def test_a_directory_that_is_not_a_cache_is_not_replaced(tmp_path, capsys):
    out = tmp_path / "cache"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert encode(["--cfg", str(write_cfg(tmp_path)), "--out", str(out)]) == 2
    assert "not a latent cache" in capsys.readouterr().err and (out / "precious.txt").read_text() == "keep me"


def test_full_disk_is_one_line_and_the_old_cache_survives(tmp_path, capsys, monkeypatch):
    import safetensors.torch

    cfg, cache = write_cfg(tmp_path), tmp_path / "cache"
    assert encode(["--cfg", str(cfg), "--out", str(cache), "--shard-size", "1"]) == 0
    before = digest(cache)
    real = safetensors.torch.save_file
    calls = []

    def full(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:  # what the safetensors writer raises on ENOSPC
            raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device "
                                              "(os error 28)")
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    capsys.readouterr()
    assert encode(["--cfg", str(cfg), "--out", str(cache), "--shard-size", "1"]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("encode:")]
    assert len(err) == 1 and os.strerror(errno.ENOSPC) in err[0] and "shard_00001" in err[0], err
    assert digest(cache) == before and leftovers(tmp_path) == []
    assert len(LatentCache(str(cache))) == 4


@pytest.mark.slow
def test_kill_9_during_a_re_encode_leaves_the_old_cache_usable(tmp_path):
    cache = tmp_path / "cache"
    assert encode(["--cfg", str(write_cfg(tmp_path)), "--out", str(cache), "--shard-size", "1"]) == 0
    before = digest(cache)
    old_items = [LatentCache(str(cache))[i]["latent"] for i in range(4)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    # a long re-encode (4000 items, another length: --overwrite), killed once it has written shards
    p = subprocess.Popen([sys.executable, "-m", "scripts.encode_latents", "--cfg", str(write_cfg(tmp_path, 4000)),
                          "--out", str(cache), "--shard-size", "1", "--overwrite"], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # kill once the new cache has several shards on disk
            staged = [d for d in tmp_path.glob(".cache.new-*") if len(list(d.glob("shard_*"))) >= 3]
            if staged or p.poll() is not None:
                break
            time.sleep(0.05)
        assert staged, "the re-encode did not start writing its shards beside the old cache"
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert digest(cache) == before  # manifest and shards exactly as they were
    ds = LatentCache(str(cache))
    assert len(ds) == 4 and all((ds[i]["latent"] == old_items[i]).all() for i in range(4))
    # the next encode cleans up what the killed one left and replaces the cache
    assert encode(["--cfg", str(write_cfg(tmp_path)), "--out", str(cache), "--shard-size", "2"]) == 0
    assert leftovers(tmp_path) == [] and len(LatentCache(str(cache))) == 4


def test_an_interrupted_swap_is_put_back(tmp_path):
    from utils.io import recover_replaced_dir

    cache = tmp_path / "cache"
    assert encode(["--cfg", str(write_cfg(tmp_path)), "--out", str(cache)]) == 0
    before = digest(cache)
    os.rename(cache, tmp_path / ".cache.old-99999")  # killed between the two renames
    (tmp_path / ".cache.new-99999").mkdir()
    lines = recover_replaced_dir(cache)
    assert len(lines) == 2 and digest(cache) == before and leftovers(tmp_path) == []
