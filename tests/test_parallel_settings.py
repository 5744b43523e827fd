"""backend.parallel errors are one line (exit 2) before anything is written: fsdp on one process says to
start it with torchrun; an unknown mode (zero3) fails the --dry-run instead of printing "dry run OK"."""
from __future__ import annotations

import pathlib

from train_configs import physics, tiny_train_yaml

from utils.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]

TINY = tiny_train_yaml(dataset=physics(length=8), batch_size=1, num_steps=1, save_ckp_interval=1000)


def write_cfg(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    return cfg


def test_fsdp_on_one_process_says_to_use_torchrun(tmp_path, capsys):
    code = main("train", ["--cfg", str(write_cfg(tmp_path)), "log_dir", str(tmp_path / "runs"),
                          "backend.parallel=fsdp"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "backend.parallel=fsdp" in err[0] and "torchrun" in err[0], err
    assert not (tmp_path / "runs").exists()


def test_unknown_parallel_mode_fails_the_dry_run(tmp_path, capsys):
    from train_net import run  # the entry point: its --dry-run also prints the memory plan

    assert run(["--cfg", str(write_cfg(tmp_path)), "backend.parallel=zero3", "--dry-run"]) == 2
    out = capsys.readouterr()
    assert "dry run OK" not in out.out, out.out[-500:]
    err = out.err.strip().splitlines()
    assert len(err) == 1 and "backend.parallel='zero3'" in err[0] and "auto, none, ddp, fsdp" in err[0], err


def test_unknown_parallel_mode_fails_the_inference_dry_run(tmp_path, capsys):
    lst = tmp_path / "list.txt"
    lst.write_text("balls|1\n")
    cfg = tmp_path / "p.yaml"
    cfg.write_text("TASK_TYPE: predict_next_clip\nmodel: {type: NextClipTransformer, preset: tiny, in_channels: 3, "
                   f"patch_size: 4}}\ntest_list_path: {lst}\ntest_list_kind: text\nresolution: [16, 16]\n")
    assert main("infer", ["--cfg", str(cfg), "backend.parallel=zero3", "--dry-run"]) == 2
    out = capsys.readouterr()
    err = out.err.strip().splitlines()
    assert "dry run OK" not in out.out and len(err) == 1 and "backend.parallel='zero3'" in err[0], err
