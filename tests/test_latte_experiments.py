"""The Latte experiments as a user runs them, on the tiny golden fixture and a tiny VAE made here:
configs/latte/ucf101_infer.yaml writes one mp4 per class (names and ids), an unconditional preset runs from a
table-less file, and configs/latte/train.yaml fine-tunes with the hybrid loss and resumes exactly after a kill."""
from __future__ import annotations

import json
import pathlib

import pytest
import torch
from safetensors.torch import load_file

from tools.train import train_next_clip
from utils.cli import main

diffusers = pytest.importorskip("diffusers")

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURE = ROOT.parent / "shared" / "fixtures" / "latte_tiny"
VIDEOS = ROOT.parent / "shared" / "data" / "videos"
TINY = ["model={_delete_: true, type: Latte, input_size: 8, patch_size: 2, hidden: 64, depth: 4, heads: 4, "
        "num_frames: 4, learn_sigma: true}", "backend.type=cpu", "backend.precision=fp32", "progress=false"]


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    """A tiny diffusers AutoencoderKL (4 latent channels, spatial factor 2): 16 px frames -> the fixture's 8x8."""
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                                  up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 8],
                                  layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=16,
                                  scaling_factor=0.18215)
    d = tmp_path_factory.mktemp("tiny_vae")
    vae.save_pretrained(d, safe_serialization=True)
    return d


def infer(cfg: str, test_model: str, vae, tmp_path, lines: str, *extra):
    listing = tmp_path / "classes.txt"
    listing.write_text(lines)
    return main("infer", ["--cfg", f"configs/latte/{cfg}", f"test_model={test_model}", f"auto_encoder.path={vae}",
                          *TINY, f"test_list_path={listing}", f"log_dir={tmp_path / 'out'}", "resolution=[16,16]",
                          "max_frames=4", "ddim_timesteps=3", *extra])


@pytest.mark.slow
def test_ucf101_infer_writes_one_mp4_per_class(tmp_path, vae_dir, monkeypatch):
    monkeypatch.chdir(ROOT)  # the command as documented, run from the repository root
    assert infer("ucf101_infer.yaml", "../shared/fixtures/latte_tiny/latte.pt", vae_dir, tmp_path,
                 "ApplyEyeMakeup\n3|7\nYoYo\n", "embedder.dim=64") == 0
    out = tmp_path / "out" / "classes"
    mp4s = sorted(out.glob("*.mp4"))
    assert len(mp4s) == 3 and all(p.stat().st_size > 0 for p in mp4s)
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in recs] == ["ok"] * 3
    log = (out / "log.txt").read_text()
    assert "class table into the embedder" in log
    # an unknown class is one failed item (exit code 1), not a crash
    (tmp_path / "bad").mkdir()
    assert infer("ucf101_infer.yaml", "../shared/fixtures/latte_tiny/latte.pt", vae_dir, tmp_path / "bad",
                 "NotAClass\n", "embedder.dim=64") == 1


@pytest.mark.slow
def test_unconditional_preset_runs_from_a_file_without_class_table(tmp_path, vae_dir):
    sd = load_file(str(FIXTURE / "latte.safetensors"))
    sd.pop("y_embedder.embedding_table.weight")
    torch.save({"ema": sd}, tmp_path / "sky.pt")
    assert infer("skytimelapse_infer.yaml", str(tmp_path / "sky.pt"), vae_dir, tmp_path, "sample|1\nsample|2\n",
                 "sampler=ddim") == 0
    assert len(list((tmp_path / "out" / "classes").glob("*.mp4"))) == 2


def train(log_dir, vae, videos, *extra):
    return main("train", ["--cfg", str(ROOT / "configs" / "latte" / "train.yaml"),
                          f"pretrain.path={FIXTURE / 'latte.pt'}", *TINY, "embedder.dim=64",
                          f"auto_encoder.path={vae}", f"log_dir={log_dir}",
                          f"dataset.list_file={videos}", "dataset.num_frames=4", "dataset.stride=1",
                          "dataset.resolution=16", "max_frames=4", "batch_size=2", "num_steps=4", "save_ckp_interval=2",
                          "log_interval=1", "log_mfu=false", "lr=1e-3", "ema_decay=0.9", "cond_dropout=0.5", *extra])


def losses(run_dir):
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "scalars.jsonl").read_text().splitlines())}


@pytest.mark.slow
def test_four_step_hybrid_fine_tune_resumes_exactly(tmp_path, vae_dir, monkeypatch):
    videos = tmp_path / "videos.txt"
    videos.write_text(f"{VIDEOS / 'cat_walking.mp4'}|||ApplyEyeMakeup\n{VIDEOS / '1066674877.mp4'}|||5\n")
    assert train(tmp_path / "full", vae_dir, videos) == 0
    full = tmp_path / "full" / "latte_ucf101"

    class Killed(Exception):
        pass

    def kill_after_step_3(run, done, batch):  # step 3 trained, its checkpoint (every 2) not written
        if done == 3:
            raise Killed()

    monkeypatch.setattr(train_next_clip, "_visualise", kill_after_step_3)
    with pytest.raises(Killed):
        train(tmp_path / "part", vae_dir, videos)
    monkeypatch.undo()
    assert train(tmp_path / "part", vae_dir, videos) == 0  # resume=auto: from step 2
    part = tmp_path / "part" / "latte_ucf101"
    a, b = losses(full), losses(part)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4] and all(a[s] == b[s] for s in a), (a, b)
    for name in ("step_00000004.safetensors", "step_00000004.ema.safetensors", "step_00000004.embedder.safetensors"):
        wa, wb = load_file(str(full / "checkpoints" / name)), load_file(str(part / "checkpoints" / name))
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name

    # the variance channels trained: only the vb term reaches them (the MSE sees the eps channels only)
    start = load_file(str(FIXTURE / "latte.safetensors"))
    w = load_file(str(full / "checkpoints" / "step_00000004.safetensors"))["final_layer.linear.weight"]
    rows = torch.arange(w.shape[0])
    var_rows, eps_rows = rows[rows % 8 >= 4], rows[rows % 8 < 4]  # row (pr * p + pc) * 8 + channel
    assert not torch.equal(w[var_rows], start["final_layer.linear.weight"][var_rows])
    assert not torch.equal(w[eps_rows], start["final_layer.linear.weight"][eps_rows])
    table = load_file(str(full / "checkpoints" / "step_00000004.embedder.safetensors"))["table.weight"]
    assert table.shape == (102, 64) and not torch.equal(table, start["y_embedder.embedding_table.weight"])

    # the run's checkpoint is read back by the inference config, with its trained class table
    from tools.inferences.generate_video import VideoGenerator
    from utils.config import load_config
    from utils.registry import INFER_ENGINE

    ema = full / "checkpoints" / "step_00000004.ema.safetensors"
    cfg = load_config(ROOT / "configs" / "latte" / "ucf101_infer.yaml",
                      [*TINY, "embedder.dim=64", f"test_model={ema}", f"auto_encoder.path={vae_dir}"],
                      registry=INFER_ENGINE)
    gen = VideoGenerator(cfg)
    assert torch.equal(gen.embedder.table.weight, table)
    key = "final_layer.linear.weight"
    assert torch.equal(gen.model.state_dict()[key], load_file(str(ema))[key])


@pytest.mark.slow
def test_ddpm_sampling_is_a_function_of_the_item_seed(vae_dir):
    from tools.inferences.generate_video import VideoGenerator
    from utils.config import load_config
    from utils.registry import INFER_ENGINE

    cfg = load_config(ROOT / "configs" / "latte" / "ucf101_infer.yaml",
                      [*TINY, "embedder.dim=64", f"test_model={FIXTURE / 'latte.pt'}", f"auto_encoder.path={vae_dir}",
                       "resolution=[16,16]", "max_frames=4", "ddim_timesteps=3"], registry=INFER_ENGINE)
    gen = VideoGenerator(cfg)
    first = gen.generate("", 11, label="Archery")
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(gen.generate("", 11, label="Archery"), first)
    assert not torch.equal(gen.generate("", 12, label="Archery"), first)


@pytest.mark.slow
def test_dry_run_memory_plan_of_latte_xl2_at_16x256x256(capsys):
    from train_net import run

    assert run(["--cfg", str(ROOT / "configs" / "latte" / "train.yaml"), "--dry-run", "batch_size=1"]) == 0
    out = capsys.readouterr().out
    assert "0.67B parameters" in out and "16384 latent positions per sample" in out  # 16 x 32 x 32 latents
    assert "activations" in out and "fits per rank" in out and "TFLOP forward" in out
