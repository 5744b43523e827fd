"""Training engine and loop (tools/train/loop.py, train_next_clip): settings validation, epochs, image/video
mixing, cached-latent
cuts, checkpoint failures and cleanup, resume checks, scalar log trimming, distributed failures."""
import errno
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml
from ports import free_port
from train_configs import tiny_train_yaml

from tools.train import train_next_clip as engine
from tools.train.train_next_clip import GlobalBatchSampler, latents_of
from utils.cli import main
from utils.config import ConfigError, load_config
from utils.registry import DATASETS, ENGINE

ROOT = pathlib.Path(__file__).resolve().parents[1]

PHYSICS = "{type: SyntheticPhysics, resolution: 16, num_frames: 8, length: 16, seed: 0}"


def write_cfg(tmp_path, dataset=PHYSICS, batch=2, steps=6, save=3, name="tiny.yaml"):
    p = tmp_path / name
    p.write_text(tiny_train_yaml(dataset=yaml.safe_load(dataset), clip_sampling={"mode": "random", "min_clips": 2},
                                 batch_size=batch, num_steps=steps, lr=1.0e-3, warmup_steps=2, lr_schedule="constant",
                                 save_ckp_interval=save, use_ema=True, ema_decay=0.9))
    return p


def records(run):
    return [json.loads(line) for line in (run / "scalars.jsonl").read_text().splitlines()]


def losses(run):
    return {r["step"]: r["loss"] for r in records(run)}


def train(cfg, log_dir, *overrides):
    return main("train", ["--cfg", str(cfg), "log_dir", str(log_dir), *overrides])


# ---------------------------------------------------------------------------- 10: validate (C1)
@pytest.mark.parametrize("override,key", [
    ("batch_size=0", "batch_size"), ("num_steps=-5", "num_steps"), ("grad_accum=0", "grad_accum"),
    ("lr=0", "lr"), ("lr=-1e-3", "lr"), ("save_ckp_interval=0", "save_ckp_interval"),
    ("log_interval=0", "log_interval"), ("viz_interval=0", "viz_interval"), ("warmup_steps=-1", "warmup_steps"),
    ("lr_schedule=linear", "lr_schedule"), ("clip_sampling.mode=randm", "clip_sampling.mode"),
    ("clip_sampling.min_clips=0", "clip_sampling.min_clips"), ("max_frames=0", "max_frames"),
    ("ema_decay=1.5", "ema_decay"), ("dist_timeout=0", "dist_timeout"), ("betas=[0.9]", "betas"),
    ("window_start=last", "window_start"),
])
def test_validate_names_the_bad_setting(tmp_path, override, key):
    cfg = load_config(write_cfg(tmp_path), [override], registry=ENGINE)
    with pytest.raises(ConfigError) as e:
        engine.validate(cfg)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{key}=") and "allowed" in msg


def test_validate_accepts_shipped_settings_and_is_the_engine_hook(tmp_path):
    assert ENGINE.get("train_next_clip").validate is engine.validate
    engine.validate(load_config(write_cfg(tmp_path), [], registry=ENGINE))
    engine.validate(load_config(ROOT / "configs/tiny/train.yaml", [], registry=ENGINE))


def test_bad_setting_exits_2_without_training(tmp_path, capsys):
    cfg = write_cfg(tmp_path)
    assert train(cfg, tmp_path, "batch_size=0") == 2
    err = capsys.readouterr().err
    assert "batch_size=0" in err and "Traceback" not in err
    assert not (tmp_path / "tiny" / "checkpoints").exists()


@pytest.mark.slow
def test_dry_run_rejects_bad_settings(tmp_path):
    """Through the CLI (helper "config" wires validate into --dry-run)."""
    if "validate" not in (ROOT / "utils/cli.py").read_text():
        pytest.skip("utils/cli.py does not call engine.validate yet")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "train_net.py", "--cfg", str(write_cfg(tmp_path)), "--dry-run",
                        "batch_size=0"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "batch_size=0" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------------------- 2: epochs (C3)
def test_sampler_yields_index_epoch_pairs_and_resumes_them():
    s = GlobalBatchSampler(6, 2, 0, 1, seed=3, epoch_aware=True)
    it = iter(s)
    first = [next(it) for _ in range(9)]  # 3 batches per epoch -> epochs 0, 1, 2
    assert [b[0][1] for b in first] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert all(isinstance(i, int) and 0 <= i < 6 for b in first for i, _ in b)
    assert sorted(i for b in first[:3] for i, _ in b) == list(range(6))  # each epoch is a permutation
    resumed = iter(GlobalBatchSampler(6, 2, 0, 1, seed=3, start_batch=4, epoch_aware=True))
    assert [next(resumed) for _ in range(5)] == first[4:]
    plain = iter(GlobalBatchSampler(6, 2, 0, 1, seed=3))
    assert next(plain) == [i for i, _ in first[0]]  # ints for datasets that are not epoch-aware


class EpochProbe(torch.utils.data.Dataset):
    """A tiny epoch-aware dataset: a random 'crop offset' drawn from (seed, epoch, index)."""

    epoch_aware = True
    calls = []

    def __init__(self, length: int = 4, seed: int = 0):
        self.length, self.seed = length, seed

    def __len__(self):
        return self.length

    def __getitem__(self, key):
        index, epoch = key
        offset = int(np.random.default_rng([self.seed, epoch, index]).integers(0, 1000))
        EpochProbe.calls.append((index, epoch, offset))
        video = torch.full((3, 8, 16, 16), (offset % 200) / 100.0 - 1.0)
        return {"video": video, "meta": {"offset": offset}}


if "EpochProbe" not in DATASETS:
    DATASETS.register_class()(EpochProbe)


@pytest.mark.slow
def test_engine_passes_epochs_so_draws_change_and_resume_repeats_them(tmp_path):
    cfg = write_cfg(tmp_path, dataset="{type: EpochProbe, length: 4}", batch=2, steps=4, save=2)
    EpochProbe.calls = []
    assert train(cfg, tmp_path / "full") == 0
    full = list(EpochProbe.calls)
    assert sorted({e for _, e, _ in full}) == [0, 1]  # 2 steps per epoch
    per_index = {}
    for i, e, off in full:
        per_index.setdefault(i, {})[e] = off
    assert any(len(set(d.values())) > 1 for d in per_index.values())  # the draws change with the epoch
    EpochProbe.calls = []
    assert train(cfg, tmp_path / "part", "num_steps=1") == 0
    assert train(cfg, tmp_path / "part") == 0
    assert EpochProbe.calls == full  # resumed at step 1: the same (index, epoch, draw) stream
    a, b = losses(tmp_path / "full" / "tiny"), losses(tmp_path / "part" / "tiny")
    assert [b[s] for s in range(2, 5)] == pytest.approx([a[s] for s in range(2, 5)], rel=1e-5)


def test_real_video_list_draws_per_epoch(tmp_path, shared_data):
    from tools.datasets.video_list import VideoList

    if not getattr(VideoList, "epoch_aware", False):
        pytest.skip("VideoList is not epoch-aware yet (helper 'data')")
    lst = tmp_path / "l.txt"
    lst.write_text("videos/cat_walking.mp4|||cat\n")
    ds = VideoList(str(lst), data_dir=str(shared_data), num_frames=4, stride=[1, 4], resolution=[16, 16],
                   crop="random", seed=1)
    s = GlobalBatchSampler(len(ds), 1, 0, 1, seed=0, epoch_aware=True)
    it = iter(s)
    keys = [next(it)[0] for _ in range(6)]
    windows = [tuple(ds[k]["meta"]["frame_indices"]) for k in keys]
    assert len(set(windows)) > 1  # the clip window changes between epochs
    assert windows == [tuple(ds[k]["meta"]["frame_indices"]) for k in keys]  # and is reproducible


# ---------------------------------------------------------------------------- 3: image/video mixing
JOINT = ("{{type: JointImageVideo, image_ratio: 0.5, batch_size_image: 3, seed: {seed}, "
         "video: {{type: SyntheticPhysics, resolution: 16, num_frames: 8, length: 8, seed: 0}}, "
         "image: {{type: SyntheticPhysics, resolution: 16, num_frames: 1, length: 8, seed: 1}}}}")


@pytest.mark.slow
def test_joint_image_video_trains_both_kinds_and_resumes_exactly(tmp_path):
    from tools.datasets.mixing import step_kind

    seed = next(s for s in range(100) if {step_kind(t, 0.5, s) for t in range(2)} == {"image", "video"}
                and {step_kind(t, 0.5, s) for t in range(2, 4)} == {"image", "video"})
    cfg = write_cfg(tmp_path, dataset=JOINT.format(seed=seed), batch=2, steps=4, save=2)
    assert train(cfg, tmp_path / "full") == 0
    recs = records(tmp_path / "full" / "tiny")
    kinds = [r["image_frac"] for r in recs]
    assert kinds == [1.0 if step_kind(t, 0.5, seed) == "image" else 0.0 for t in range(4)]
    assert set(kinds) == {0.0, 1.0} and all(np.isfinite(r["loss"]) for r in recs)
    assert train(cfg, tmp_path / "part", "num_steps=2") == 0
    assert train(cfg, tmp_path / "part") == 0
    a, b = losses(tmp_path / "full" / "tiny"), losses(tmp_path / "part" / "tiny")
    assert [b[s] for s in (3, 4)] == pytest.approx([a[s] for s in (3, 4)], rel=1e-5)


def test_joint_image_video_passes_epochs_to_epoch_aware_datasets():
    from tools.datasets.mixing import JointImageVideo

    EpochProbe.calls = []
    joint = JointImageVideo(EpochProbe(4), EpochProbe(4), image_ratio=0.0, batch_size_video=2,
                            batch_size_image=2, seed=0, num_steps=6)
    assert len(list(joint)) == 6
    assert [e for _, e, _ in EpochProbe.calls] == [0] * 4 + [1] * 4 + [2] * 4  # one pass = 2 steps


def test_joint_example_config_trains(tmp_path):
    cfg = ROOT / "configs/examples/joint_image_video.yaml"
    assert train(cfg, tmp_path, "num_steps=2", "log_interval=1", "backend.precision=fp32", "progress=false",
                 "dataset.image_ratio=1.0") == 0
    assert [r["image_frac"] for r in records(tmp_path / "joint_image_video")] == [1.0, 1.0]


def test_latents_of_handles_images_and_cuts_cached_latents():
    class AE:
        temporal_factor = 2

        def encode(self, x):
            return x

    cpu = torch.device("cpu")
    latent = torch.randn(2, 4, 6, 2, 2)  # 6 latent frames = 12 video frames
    assert latents_of({"latent": latent}, AE(), 8, cpu).shape[2] == 4  # cut to max_frames // 2
    assert torch.equal(latents_of({"latent": latent}, AE(), 8, cpu), latent[:, :, :4])
    with pytest.raises(ValueError, match="fewer than the 8"):
        latents_of({"latent": latent}, AE(), 16, cpu)
    image = {"video": torch.randn(3, 3, 1, 4, 4), "kind": "image"}
    assert latents_of(image, AE(), 8, cpu).shape[2] == 1  # images are not held to max_frames
    with pytest.raises(ValueError, match="max_frames"):
        latents_of({"video": torch.randn(3, 3, 1, 4, 4)}, AE(), 8, cpu)


def test_clip_sampling_of_one_frame_items():
    from tools.train.clip_sampling import CLIP_MODES, sample_clip_lens

    for mode in CLIP_MODES:
        assert sample_clip_lens(1, 3, mode, 4, 2, None).tolist() == [[1]] * 3


# ---------------------------------------------------------------------------- 4: cached latents cut
def test_training_on_a_longer_latent_cache_uses_max_frames(tmp_path, monkeypatch):
    from scripts.encode_latents import main as encode

    cfg = write_cfg(tmp_path, batch=2, steps=1, save=1000)
    cache = tmp_path / "cache"
    assert encode(["--cfg", str(cfg), "--out", str(cache)]) == 0
    seen = []
    real = engine.sample_clip_lens
    monkeypatch.setattr(engine, "sample_clip_lens", lambda f, *a, **k: seen.append(f) or real(f, *a, **k))
    assert train(cfg, tmp_path / "run", f"latent_cache={cache}", "max_frames=4") == 0
    assert seen == [4]  # the cached 8-frame latents were cut to max_frames


# ---------------------------------------------------------------------------- 8: checkpoint failures
def _full_disk(monkeypatch, fail_on):
    """Make the safetensors / torch.save writer raise ENOSPC for files whose name contains fail_on."""
    import utils.checkpoint as ck

    real_save_file, real_save = ck.save_file, ck.torch.save

    def save_file(sd, path, metadata=None):
        if fail_on in os.path.basename(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save_file(sd, path, metadata=metadata)

    def save(obj, path, *a, **k):
        if fail_on in os.path.basename(str(path)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(ck, "save_file", save_file)
    monkeypatch.setattr(ck.torch, "save", save)


@pytest.mark.parametrize("fail_on", [".ema.", ".state."])
def test_disk_full_save_removes_partial_files_and_says_so(tmp_path, monkeypatch, fail_on):
    from utils.checkpoint import save_checkpoint
    from utils.io import disk_full_hint

    sd = {"w": torch.zeros(4)}
    save_checkpoint(tmp_path, 1, sd, sd, {}, "a: 1\n")
    _full_disk(monkeypatch, fail_on)
    with pytest.raises(OSError) as e:
        save_checkpoint(tmp_path, 2, sd, sd, {}, "a: 1\n", embedder_sd=sd)
    assert e.value.errno == errno.ENOSPC and "No space left" in str(e.value) and "step 2" in str(e.value)
    assert fail_on.strip(".") in e.value.filename and disk_full_hint(e.value)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["step_00000001.ema.safetensors", "step_00000001.safetensors", "step_00000001.state.pt"]


@pytest.mark.slow
def test_real_write_failure_is_reported_with_its_os_cause(tmp_path):
    """No monkeypatching: a file size limit makes the real safetensors writer fail (EFBIG)."""
    code = f"""
import errno, resource, signal, torch
from utils.checkpoint import save_checkpoint
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
sd = {{"w": torch.zeros(1000)}}
save_checkpoint({str(tmp_path)!r}, 1, sd, None, {{}}, "")
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
try:
    save_checkpoint({str(tmp_path)!r}, 2, sd, {{"w": torch.zeros(10000)}}, {{}}, "")
except OSError as e:
    print("ERRNO", e.errno, e.filename, e.strerror)
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                       capture_output=True, text=True, timeout=60)
    assert f"ERRNO {errno.EFBIG}" in r.stdout and "step_00000002.ema.safetensors" in r.stdout, r.stdout + r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000001.safetensors", "step_00000001.state.pt"]


@pytest.mark.slow
def test_disk_full_during_training_keeps_earlier_checkpoint(tmp_path, monkeypatch, capsys):
    cfg = write_cfg(tmp_path, steps=4, save=2)
    _full_disk(monkeypatch, "step_00000004.state")
    assert train(cfg, tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left" in err and "step_00000004.state.pt" in err
    ck = tmp_path / "tiny" / "checkpoints"
    assert sorted(p.name for p in ck.iterdir() if p.name.startswith("step_00000004")) == []
    assert (ck / "step_00000002.state.pt").is_file()


def test_start_removes_stale_temps_and_old_incomplete_checkpoints(tmp_path):
    cfg = write_cfg(tmp_path, steps=4, save=2)
    assert train(cfg, tmp_path, "num_steps=2") == 0
    ck = tmp_path / "tiny" / "checkpoints"
    weights = (ck / "step_00000002.safetensors").read_bytes()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = ck / f".step_00000003.{dead}.abc123.tmp.safetensors"
    old_partial = ck / "step_00000001.safetensors"      # older than the newest complete: removed
    new_partial = ck / "step_00000009.ema.safetensors"  # newer: kept (not ours to judge)
    for p in (stale, old_partial, new_partial):
        p.write_bytes(weights)
    assert train(cfg, tmp_path) == 0
    assert not stale.exists() and not old_partial.exists() and new_partial.exists()
    assert (ck / "step_00000002.state.pt").is_file() and (ck / "step_00000004.state.pt").is_file()


# ---------------------------------------------------------------------------- 10c: changed settings
@pytest.mark.slow
def test_resume_with_new_lr_takes_effect_and_is_logged(tmp_path):
    cfg = write_cfg(tmp_path, steps=6, save=3)
    assert train(cfg, tmp_path, "num_steps=3") == 0
    assert train(cfg, tmp_path, "lr=5e-4") == 0
    run = tmp_path / "tiny"
    lrs = {r["step"]: r["lr"] for r in records(run)}
    assert lrs[3] == pytest.approx(1e-3) and [lrs[s] for s in (4, 5, 6)] == pytest.approx([5e-4] * 3)
    log = (run / "log.txt").read_text()
    assert "lr changed since the checkpoint: 0.001 -> 0.0005, takes effect" in log
    assert "lr: 0.0005" in (run / "config.yaml").read_text()


@pytest.mark.slow
def test_resume_with_cosine_schedule_rebuilds_it_at_the_resumed_step(tmp_path):
    cfg = write_cfg(tmp_path, steps=6, save=3)
    assert train(cfg, tmp_path / "full", "lr_schedule=cosine", "num_steps=10") == 0
    assert train(cfg, tmp_path / "part", "num_steps=3") == 0  # constant schedule so far
    assert train(cfg, tmp_path / "part", "lr_schedule=cosine", "num_steps=10") == 0
    a = {r["step"]: r["lr"] for r in records(tmp_path / "full" / "tiny")}
    b = {r["step"]: r["lr"] for r in records(tmp_path / "part" / "tiny")}
    assert [b[s] for s in range(4, 11)] == pytest.approx([a[s] for s in range(4, 11)])


@pytest.mark.slow
def test_resume_with_other_diffusion_is_a_config_error(tmp_path, capsys):
    cfg = write_cfg(tmp_path, steps=4, save=2)
    assert train(cfg, tmp_path, "num_steps=2") == 0
    before = (tmp_path / "tiny" / "config.yaml").read_text()
    assert train(cfg, tmp_path, "diffusion.prediction=v") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "diffusion.prediction" in err and "'x1'" in err
    assert (tmp_path / "tiny" / "config.yaml").read_text() == before


# ---------------------------------------------------------------------------- 12b: resume that cannot resume
@pytest.mark.slow
def test_corrupt_newest_checkpoint_falls_back_with_a_warning(tmp_path, capsys):
    cfg = write_cfg(tmp_path, steps=6, save=3)
    assert train(cfg, tmp_path / "full") == 0
    assert train(cfg, tmp_path / "part") == 0
    bad = tmp_path / "part" / "tiny" / "checkpoints" / "step_00000006.state.pt"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    assert train(cfg, tmp_path / "part", "num_steps=6") == 0  # resumes from step 3, replays 4..6
    out = capsys.readouterr().out
    assert "skipping unreadable checkpoint step_00000006" in out and str(bad) in out
    a, b = losses(tmp_path / "full" / "tiny"), losses(tmp_path / "part" / "tiny")
    assert [b[s] for s in range(4, 7)] == pytest.approx([a[s] for s in range(4, 7)], rel=1e-5)
    # an explicit path to a bad checkpoint: one line naming the file
    bad.write_bytes(b"garbage")
    assert train(cfg, tmp_path / "part", f"resume={bad}", "num_steps=9") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("input error:") and str(bad) in err


@pytest.mark.slow
def test_checkpoints_of_another_model_are_refused_before_writing(tmp_path, capsys):
    cfg = write_cfg(tmp_path, steps=2, save=2)
    assert train(cfg, tmp_path) == 0
    run = tmp_path / "tiny"
    before = (run / "config.yaml").read_text()
    assert train(cfg, tmp_path, "model.patch_size=8", "num_steps=4") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not match this model" in err and "mismatched" in err
    assert "model.patch_size: checkpoint 4, now 8" in err
    assert (run / "config.yaml").read_text() == before
    assert sorted(p.name for p in (run / "checkpoints").iterdir())[-1] == "step_00000002.state.pt"


# ---------------------------------------------------------------------------- 13: scalars after resume
@pytest.mark.slow
def test_scalars_have_each_step_once_after_a_resume_that_replays_steps(tmp_path):
    cfg = write_cfg(tmp_path, steps=6, save=3)
    assert train(cfg, tmp_path) == 0
    run = tmp_path / "tiny"
    for p in (run / "checkpoints").glob("step_00000006.*"):
        p.unlink()  # as if killed after logging step 6 but before its checkpoint
    assert train(cfg, tmp_path) == 0  # resumes at 3 and replays 4..6
    assert [r["step"] for r in records(run)] == [1, 2, 3, 4, 5, 6]


def test_scalar_log_trim_is_atomic_and_drops_a_torn_line(tmp_path):
    from utils.logging import ScalarLog

    p = tmp_path / "scalars.jsonl"
    p.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 6)) + '{"step": 6, "lo')
    log = ScalarLog(tmp_path, tensorboard=False)
    assert log.trim_after(3) == 3
    assert [json.loads(x)["step"] for x in p.read_text().splitlines()] == [1, 2, 3]
    assert log.trim_after(3) == 0
    assert not [q for q in tmp_path.iterdir() if q.name.startswith(".")]  # no temp file left


# ---------------------------------------------------------------------------- 14: distributed failures
FAULTY = '''
import os, time
from tools.datasets.synthetic_physics import SyntheticPhysics
from utils.registry import DATASETS

@DATASETS.register_class()
class FaultyPhysics(SyntheticPhysics):
    """Rank 1 hangs (sleeps) or dies at its 3rd item."""
    def __init__(self, mode="hang", **kw):
        super().__init__(**kw)
        self.mode, self.n = mode, 0
    def __getitem__(self, i):
        self.n += 1
        if os.environ.get("RANK") == "1" and self.n == 3:
            if self.mode == "hang":
                time.sleep(120)
            os._exit(7)
        return super().__getitem__(i)
'''


def _torchrun(tmp_path, mode, timeout_s, port):
    (tmp_path / "faulty.py").write_text(FAULTY)
    cfg = write_cfg(tmp_path, dataset="{type: FaultyPhysics, mode: " + mode + ", resolution: 16, num_frames: 8, "
                    "length: 16}", batch=1, steps=6, save=1000)
    cfg.write_text("custom_imports: [faulty.py]\n" + cfg.read_text() + f"dist_timeout: {timeout_s}\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(port), str(ROOT / "train_net.py"), "--cfg", str(cfg), "log_dir", str(tmp_path)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    return r, time.time() - t0


@pytest.mark.slow
def test_hung_rank_is_named_after_dist_timeout(tmp_path):
    r, took = _torchrun(tmp_path, "hang", 3, free_port())
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "rank 0 of 2: a collective operation failed because rank 1 stopped answering" in out, out[-3000:]
    assert "dist_timeout=3s" in out and took < 40, took


@pytest.mark.slow
def test_dead_rank_stops_the_others_at_once(tmp_path):
    r, took = _torchrun(tmp_path, "die", 60, free_port())
    assert r.returncode != 0 and took < 30, (took, (r.stdout + r.stderr)[-3000:])
