"""backend.parallel=fsdp (FSDP2 on CPU / gloo): parity with one process, sharded checkpoints, exact
resume on the same and on another world size, consolidation for inference."""
import json
import pathlib
import shutil

import pytest
import torch
from ports import torchrun_train
from train_configs import cpu, physics, tiny_train_yaml

from utils.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]

TINY = tiny_train_yaml(backend=cpu(parallel="auto", meta_init=False), dataset=physics(length=32),
                       clip_sampling={"mode": "random", "min_clips": 2}, grad_accum=2, num_steps=4, lr=1.0e-3,
                       warmup_steps=2, grad_clip=1.0, keep_last=1, use_ema=True, ema_decay=0.9)
#: gloo all-reduce / reduce-scatter order vs one process summing the same gradients
REL = 1e-4


def losses(run_dir):
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "scalars.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process with the global batch (2 x accum 2) for 4 steps, and 2 FSDP ranks stopped at step 2."""
    tmp = tmp_path_factory.mktemp("fsdp")
    cfg = tmp / "tiny.yaml"
    cfg.write_text(TINY)
    assert main("train", ["--cfg", str(cfg), "log_dir", str(tmp / "single")]) == 0
    torchrun_train(cfg, tmp / "part", "backend.parallel=fsdp", "num_steps=2")
    return tmp, cfg, losses(tmp / "single" / "tiny")


@pytest.mark.slow
def test_fsdp_writes_sharded_checkpoints_and_resumes_exactly(runs, tmp_path):
    tmp, cfg, single = runs
    run = tmp_path / "run"
    shutil.copytree(tmp / "part", run)
    ck = run / "tiny" / "checkpoints"
    assert (ck / "step_00000002.dcp" / ".metadata").is_file() and (ck / "step_00000002.state.pt").is_file()
    assert not list(ck.glob("*.safetensors"))  # no rank-0 gather of the weights
    torchrun_train(cfg, run, "backend.parallel=fsdp")  # the same command again: resume: auto from the sharded step 2
    assert "step_00000002 at step 2" in (run / "tiny" / "log.txt").read_text()  # resumed, not restarted
    got = losses(run / "tiny")
    assert sorted(got) == [1, 2, 3, 4]
    for s in got:  # FSDP (2 ranks, batch 1, accum 2) == one process (batch 2, accum 2), also after the resume
        assert got[s] == pytest.approx(single[s], rel=REL), (s, got[s], single[s])
    # keep_last=1 pruned the step-2 directory; no temp directory is left
    assert sorted(p.name for p in ck.iterdir()) == ["step_00000004.dcp", "step_00000004.state.pt"]


@pytest.mark.slow
def test_sharded_checkpoint_resumes_on_one_process_and_consolidates(runs, tmp_path):
    tmp, cfg, single = runs
    run = tmp_path / "run"
    shutil.copytree(tmp / "part", run)
    # written by 2 ranks, resumed by 1 (parallel auto -> none) with the same global batch
    assert main("train", ["--cfg", str(cfg), "log_dir", str(run)]) == 0
    assert "step_00000002 at step 2" in (run / "tiny" / "log.txt").read_text()  # resumed, not restarted
    got = losses(run / "tiny")
    for s in (3, 4):
        assert got[s] == pytest.approx(single[s], rel=REL), (s, got[s], single[s])
    # one safetensors file of the sharded EMA that inference loads (test_model) like any weights file
    from scripts.consolidate_checkpoint import main as consolidate
    from utils.checkpoint import checkpoint_config, load_weights, read_state_dict
    from utils.registry import MODEL

    out = tmp_path / "model.safetensors"
    sharded = tmp / "part" / "tiny" / "checkpoints" / "step_00000002"
    assert consolidate([str(sharded), str(out), "--part", "model"]) == 0
    model = MODEL.build({"type": "NextClipTransformer", "preset": "tiny", "in_channels": 3, "patch_size": 4,
                         "rope": "3d"})
    assert not any(load_weights(model, out, strict=True).values())
    assert "TASK_TYPE: train_next_clip" in checkpoint_config(out)
    # the consolidated weights are the one-process run's weights after the same 2 steps
    assert main("train", ["--cfg", str(cfg), "log_dir", str(tmp_path / "two"), "num_steps=2"]) == 0
    ref = read_state_dict(tmp_path / "two" / "tiny" / "checkpoints" / "step_00000002.safetensors")
    got = read_state_dict(out)
    assert got.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=REL, atol=1e-6, msg=k)
    assert consolidate([str(sharded), str(tmp_path / "ema.safetensors")]) == 0  # default part: the EMA


def test_consolidate_refuses_a_plain_checkpoint(tmp_path, capsys):
    from scripts.consolidate_checkpoint import main as consolidate
    from utils.checkpoint import save_checkpoint

    save_checkpoint(tmp_path, 1, {"w": torch.zeros(2)}, None, {}, "a: 1\n")
    assert consolidate([str(tmp_path / "step_00000001.safetensors"), str(tmp_path / "o.safetensors")]) == 2
    assert "not a sharded checkpoint" in capsys.readouterr().err


def test_parallel_setting_is_checked_and_resolved():
    from tools.backends.cpu import CPUBackend

    with pytest.raises(ValueError, match=r"backend.parallel='zero3' is unknown; choose one of auto, none, ddp, fsdp"):
        CPUBackend(precision="fp32", parallel="zero3")
    b = CPUBackend(precision="fp32")
    assert (b.parallel_mode(1), b.parallel_mode(2)) == ("none", "ddp")  # today's behaviour
    assert CPUBackend(precision="fp32", parallel="fsdp").parallel_mode(2) == "fsdp"
    with pytest.raises(ValueError, match="parallel=fsdp needs torch.distributed"):
        CPUBackend(precision="fp32", parallel="fsdp").wrap(torch.nn.Linear(2, 2), 1)


def test_meta_parameters_keep_buffers_and_materialise():
    from tools.backends.parallel import has_meta, materialise, meta_parameters
    from utils.registry import MODEL

    spec = {"type": "NextClipTransformer", "preset": "tiny", "in_channels": 3, "patch_size": 4, "rope": "3d"}
    ref = MODEL.build(spec)
    with meta_parameters():
        model = MODEL.build(spec)
    assert all(p.is_meta for p in model.parameters()) and not any(b.is_meta for b in model.buffers())
    materialise(model, torch.device("cpu"))
    assert not has_meta(model)
    for (n, b), (_, r) in zip(model.named_buffers(), ref.named_buffers()):  # RoPE frequencies survive to_empty
        assert torch.equal(b, r), n
    x = torch.randn(1, 3, 8, 16, 16)
    assert torch.isfinite(model(x, x, torch.tensor([[4, 4]]), torch.rand(1, 2))).all()


def test_prune_and_clean_remove_sharded_directories(tmp_path):
    from tools.train.loop import prune
    from utils.checkpoint import clean_checkpoint_dir

    for s in (1, 2):
        (tmp_path / f"step_{s:08d}.dcp").mkdir()
        (tmp_path / f"step_{s:08d}.dcp" / "__0_0.distcp").write_bytes(b"x")
        (tmp_path / f"step_{s:08d}.state.pt").write_bytes(b"x")
    (tmp_path / ".step_00000003.dcp.tmp").mkdir()  # a killed sharded write
    prune(tmp_path, 1)
    removed = clean_checkpoint_dir(tmp_path)
    assert any(r.endswith(".step_00000003.dcp.tmp") for r in removed)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000002.dcp", "step_00000002.state.pt"]
