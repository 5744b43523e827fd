"""PRETRAIN VideoGPTCheckpoint: folder layouts, caches, key report, marker ids, meta loading,
export round trip, and the KV-cached rollout of the imported model."""
import json
import shutil

import pytest
import torch
from conftest import SHARED
from rollouts import roll
from safetensors.torch import load_file, save_file

from tools.diffusions.rectified_flow import RectifiedFlow
from tools.models.videogpt import VideoGPT
from tools.pretrain import videogpt_checkpoint as vc
from utils.checkpoint import CheckpointError, load_weights, save_weights
from utils.registry import MODEL, PRETRAIN

FIXTURE = SHARED / "fixtures" / "videogpt_tiny"
WEIGHTS = FIXTURE / "weights.safetensors"
BARE = dict(hidden=64, depth=2, heads=2, ffn=128, vocab_size=32)  # the tiny shape without marker ids


@pytest.fixture(scope="module")
def official():
    assert WEIGHTS.is_file(), f"{WEIGHTS} is missing: these tests need ../shared/fixtures/videogpt_tiny"
    return load_file(str(WEIGHTS))


@pytest.fixture(scope="module")
def reference_model():
    m = VideoGPT(preset="tiny")
    vc.VideoGPTCheckpoint(m, str(WEIGHTS))
    return m.eval()


def checkpoint_dir(tmp_path, sd, layout):
    """Write ``sd`` in one of the official layouts (+ the fixture's config.json)."""
    d = tmp_path / "ckpt"
    folder = d / "transformer" if layout == "subfolder" else d
    folder.mkdir(parents=True)
    shutil.copy(FIXTURE / "config.json", folder / "config.json")
    if layout in ("safetensors", "subfolder"):
        save_file(sd, str(folder / "model.safetensors"))
    elif layout == "sharded":
        keys = sorted(sd)
        parts = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
                 "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
        for name, ks in parts.items():
            save_file({k: sd[k] for k in ks}, str(folder / name))
        (folder / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {}, "weight_map": {k: n for n, ks in parts.items() for k in ks}}))
    elif layout == "model.pt":
        torch.save({"module": sd}, folder / "model.pt")  # a DeepSpeed-style wrapper
    elif layout == "pytorch_model.bin":
        torch.save({f"module.{k}": v for k, v in sd.items()}, folder / "pytorch_model.bin")
    return d


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) if k != "_extra_state" else torch.allclose(sa[k], sb[k], equal_nan=True)
               for k in sa)


@pytest.mark.parametrize("layout", ["safetensors", "sharded", "model.pt", "pytorch_model.bin", "subfolder"])
def test_every_official_layout_loads(tmp_path, official, reference_model, layout):
    m = VideoGPT(preset="tiny")
    report = vc.VideoGPTCheckpoint(m, str(checkpoint_dir(tmp_path, official, layout)))
    assert report["computed"] == ["pos_embed"] and not report["missing"] and not report["unexpected"]
    assert_same_weights(m, reference_model)
    assert m.config["rope_scaling"]["type"] == "longrope"


def test_pickles_are_read_with_weights_only(tmp_path, official):
    d = tmp_path / "evil"
    d.mkdir()
    torch.save({"state_dict": official, "fn": print}, d / "model.pt")  # a non-tensor object
    with pytest.raises(CheckpointError, match="weights_only=True"):
        vc.VideoGPTCheckpoint(VideoGPT(preset="tiny"), str(d))


def test_hub_ids_resolve_from_local_caches_only(tmp_path, official, reference_model, monkeypatch):
    import huggingface_hub.constants as hc

    snap = tmp_path / "hub" / "models--zhuangshaobin--Video-GPT" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("a" * 40)
    save_file(official, str(snap / "model.safetensors"))
    shutil.copy(FIXTURE / "config.json", snap / "config.json")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    m = VideoGPT(preset="tiny")
    vc.VideoGPTCheckpoint(m, "zhuangshaobin/Video-GPT", source="huggingface")
    assert_same_weights(m, reference_model)

    ms = tmp_path / "ms" / "models" / "owner" / "Video-GPT"
    ms.mkdir(parents=True)
    save_file(official, str(ms / "model.safetensors"))
    shutil.copy(FIXTURE / "config.json", ms / "config.json")
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    m = VideoGPT(preset="tiny")
    vc.VideoGPTCheckpoint(m, "owner/Video-GPT", source="modelscope")
    assert_same_weights(m, reference_model)
    with pytest.raises(CheckpointError, match="Nothing is downloaded"):
        vc.VideoGPTCheckpoint(VideoGPT(preset="tiny"), "owner/not-cached")


def test_strict_key_report_and_partial_load(tmp_path, official):
    sd = dict(official)
    sd.pop("final_layer.linear.bias")
    sd["lm_head.weight"] = torch.zeros(32, 64)
    sd["llm.norm.weight"] = torch.ones(65)
    d = checkpoint_dir(tmp_path, sd, "safetensors")
    with pytest.raises(CheckpointError) as e:
        vc.VideoGPTCheckpoint(VideoGPT(preset="tiny"), str(d))
    msg = str(e.value)
    assert "1 missing: final_layer.linear.bias" in msg and "1 unexpected: lm_head.weight" in msg
    assert "llm.norm.weight: checkpoint (65,) vs model (64,)" in msg
    m = VideoGPT(preset="tiny")
    report = vc.VideoGPTCheckpoint(m, str(d), strict=False)
    assert report["missing"] == ["final_layer.linear.bias"] and report["unexpected"] == ["lm_head.weight"]
    assert torch.equal(m.final_layer.linear.weight, official["final_layer.linear.weight"])


def test_pos_embed_in_the_file_overrides_the_computed_one(tmp_path, official):
    sd = dict(official, pos_embed=torch.full((1, 192 * 192, 64), 0.5))
    m = VideoGPT(preset="tiny")
    report = vc.VideoGPTCheckpoint(m, str(checkpoint_dir(tmp_path, sd, "safetensors")))
    assert report["computed"] == [] and torch.all(m.pos_embed == 0.5)


def test_marker_ids_from_tokenizer_files_then_config(tmp_path, official):
    d = checkpoint_dir(tmp_path, official, "safetensors")
    (d / "tokenizer.json").write_text(json.dumps({"added_tokens": [
        {"id": 7, "content": "<|diffusion|>"}, {"id": 8, "content": "<img>"}, {"id": 9, "content": "</img>"}]}))
    m = VideoGPT(**BARE)
    vc.VideoGPTCheckpoint(m, str(d))
    assert m.token_ids == {"<|diffusion|>": 7, "<img>": 8, "</img>": 9}
    with pytest.raises(CheckpointError, match="diffusion_token_id=3 but the checkpoint's tokenizer files"):
        vc.VideoGPTCheckpoint(VideoGPT(preset="tiny"), str(d))  # the preset's 3 vs the tokenizer's 7
    (d / "tokenizer.json").unlink()
    cfg = json.loads((d / "config.json").read_text())
    cfg["videogpt"].update(diffusion_token_id=3, image_start_token_id=4, image_end_token_id=5)
    (d / "config.json").write_text(json.dumps(cfg))
    m = VideoGPT(**BARE)
    vc.VideoGPTCheckpoint(m, str(d))
    assert m.token_ids == {"<|diffusion|>": 3, "<img>": 4, "</img>": 5}
    (d / "config.json").unlink()
    m = VideoGPT(**BARE)
    vc.VideoGPTCheckpoint(m, str(d))
    with pytest.raises(ValueError, match="marker token ids are not set"):
        m.denoise(torch.zeros(1, 4, 1, 8, 8), torch.zeros(1))


def test_config_mismatch_names_the_fields(tmp_path, official):
    d = checkpoint_dir(tmp_path, official, "safetensors")
    with pytest.raises(CheckpointError, match=r"hidden: 64 \(model has 96\)"):
        vc.VideoGPTCheckpoint(VideoGPT(preset="tiny", hidden=96, heads=2), str(d))
    with pytest.raises(CheckpointError, match="model type VideoGPT"):
        PRETRAIN.get("VideoGPTCheckpoint")(MODEL.build({"type": "NextClipTransformer", "preset": "tiny"}), str(d))


def test_empty_weights_build_on_meta_and_load_in_place(reference_model):
    m = VideoGPT(preset="tiny", empty_weights=True)
    assert all(p.is_meta for p in m.parameters()) and m.pos_embed.is_meta
    vc.VideoGPTCheckpoint(m, str(WEIGHTS), dtype="bfloat16")
    assert not any(t.is_meta for t in list(m.parameters()) + list(m.buffers()))
    assert all(p.dtype == torch.bfloat16 for p in m.parameters())
    ref = reference_model.state_dict()
    assert all(torch.equal(v, ref[k].bfloat16()) for k, v in m.state_dict().items())


def test_export_round_trip_through_a_training_checkpoint(tmp_path, official, reference_model):
    """model -> NextClip checkpoint (as training writes it) -> official layout -> model."""
    step = tmp_path / "step_00000010.safetensors"
    save_weights(step, reference_model.state_dict(), {"config": "model: {type: VideoGPT, preset: tiny}\n"})
    out = vc.export_checkpoint(step, tmp_path / "official", max_shard_bytes=200_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(official) | {"pos_embed"}
    assert len(set(index["weight_map"].values())) > 1  # sharded
    m = VideoGPT(**BARE)
    report = vc.VideoGPTCheckpoint(m, str(out))  # token ids and rope factors from the exported config.json
    assert report["computed"] == [] and m.token_ids == reference_model.token_ids
    assert m.config["rope_scaling"] == reference_model.config["rope_scaling"]
    assert_same_weights(m, reference_model)
    plain = VideoGPT(**BARE)  # test_model=step...safetensors: the generic loader, no config.json
    load_weights(plain, step)
    assert plain.config["rope_scaling"] == reference_model.config["rope_scaling"]
    assert plain.token_ids == reference_model.token_ids
    assert vc.main([str(tmp_path / "nope.safetensors"), str(tmp_path / "x")]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("guide", [1.0, 1.5])
def test_kv_cached_rollout_equals_uncached(reference_model, guide):
    g = torch.Generator().manual_seed(0)
    ctx = torch.randn(1, 4, 3, 8, 8, generator=g)
    flow = RectifiedFlow(prediction="x1")
    kw = dict(num_clips=3, clip_len=2, window=5, steps=3, history_guide_scale=guide, seed=1)
    off = roll(reference_model, flow, ctx, kv_cache="off", **kw)
    rec = roll(reference_model, flow, ctx, kv_cache="recompute", **kw)
    assert off.shape == (1, 4, 9, 8, 8)
    assert (off - rec).abs().max() < 1e-5
    big = dict(kw, window=20)  # rolling is exact while the window never slides
    rolling = roll(reference_model, flow, ctx, kv_cache="rolling", **big)
    assert (roll(reference_model, flow, ctx, kv_cache="off", **big) - rolling).abs().max() < 1e-5


def test_predictor_loads_a_weights_folder_through_the_pretrain_loader(tmp_path, official, reference_model):
    """test_model may be an official folder when pretrain names a loader for it; without one the
    folder is a one-line config error; the output fingerprint covers the folder's files."""
    from tools.inferences.predict_next_clip import output_fingerprint
    from tools.inferences.predictor import Predictor, validate_rollout
    from utils.config import ConfigError, load_config
    from utils.registry import INFER_ENGINE

    folder = checkpoint_dir(tmp_path, official, "sharded")
    yml = tmp_path / "predict.yaml"
    yml.write_text(
        "TASK_TYPE: predict_next_clip\n"
        "backend: {type: cpu, precision: fp32, attention: sdpa}\n"
        "model: {type: VideoGPT, preset: tiny}\n"
        "auto_encoder: {type: Identity, channels: 4}\n"
        "pretrain: {type: VideoGPTCheckpoint, path: unused}\n"
        f"test_model: {folder}\n"
        "resolution: [8, 8]\ncontext_frames: 2\nmax_frames: 4\nclip_len: 2\nwindow: 4\nnum_sample_steps: 2\n")
    cfg = load_config(yml, registry=INFER_ENGINE)
    validate_rollout(cfg)
    p = Predictor(cfg)
    assert_same_weights(p.model, reference_model)
    before = output_fingerprint(cfg)
    shard = sorted(folder.glob("model-*.safetensors"))[0]
    save_file(load_file(str(shard)), str(shard), metadata={"retrained": "1"})
    assert output_fingerprint(cfg) != before  # a changed shard changes the outputs' fingerprint
    cfg.pretrain = None
    with pytest.raises(ConfigError, match="is a folder, which needs a pretrain loader"):
        validate_rollout(cfg)


@pytest.mark.slow
def test_stage_style_training_fine_tunes_an_official_folder(tmp_path):
    """As configs/videogpt/stage*.yaml do: VideoGPT built on meta (empty_weights), filled from an
    official-layout folder by VideoGPTCheckpoint, trained by train_next_clip; its checkpoint
    loads back through the same loader."""
    from utils.cli import main

    src = VideoGPT(preset="tiny", in_channels=3)  # pixel frames in this test
    folder = tmp_path / "official"
    vc.export_videogpt(src, folder)
    yml = tmp_path / "stage.yaml"
    yml.write_text(
        "TASK_TYPE: train_next_clip\nname: stage\n"
        "backend: {type: cpu, precision: fp32, attention: sdpa}\n"
        "model: {type: VideoGPT, preset: tiny, in_channels: 3, empty_weights: true}\n"
        f"pretrain: {{type: VideoGPTCheckpoint, path: {folder}}}\n"
        "diffusion: {type: RectifiedFlow, prediction: x1}\nauto_encoder: {type: Identity}\n"
        "dataset: {type: SyntheticPhysics, resolution: 8, num_frames: 4, length: 16, seed: 0}\n"
        "max_frames: 4\nclip_sampling: {mode: random, min_clips: 2}\nbatch_size: 2\nnum_steps: 2\n"
        "lr: 1.0e-3\nwarmup_steps: 1\nsave_ckp_interval: 2\nviz_interval: 1000\nlog_interval: 1\nlog_mfu: false\n"
        "use_ema: false\nprogress: false\n")
    assert main("train", ["--cfg", str(yml), "log_dir", str(tmp_path / "runs")]) == 0
    step = tmp_path / "runs" / "stage" / "checkpoints" / "step_00000002.safetensors"
    tuned = VideoGPT(preset="tiny", in_channels=3)
    vc.VideoGPTCheckpoint(tuned, str(step))  # stage 2 reads stage 1's file the same way
    moved = [k for k, v in tuned.state_dict().items()
             if torch.is_tensor(v) and v.is_floating_point() and not torch.equal(v, src.state_dict()[k])]
    assert moved  # it trained ...
    drift = max(float((v - src.state_dict()[k]).abs().max()) for k, v in tuned.state_dict().items()
                if torch.is_tensor(v) and v.is_floating_point())
    assert drift < 0.01, drift  # ... two Adam steps of lr 1e-3 away from the folder's weights
