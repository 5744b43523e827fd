"""utils/cli.py: engine.validate (contract C1), one-line OS/input errors (C2), flags anywhere."""
import errno
import os
import pathlib
import subprocess
import sys

import pytest

from utils.cli import main, split_argv
from utils.config import ConfigError, InputError, run_dir
from utils.registry import ENGINE

ROOT = pathlib.Path(__file__).resolve().parents[1]
FAKE = "fake_cli_engine"


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A tiny training engine registered under FAKE; ``calls`` records what ran, ``raises[0]`` is raised."""
    calls, raises = [], []

    def engine(cfg):
        """Fake engine for the CLI tests."""
        calls.append("run")
        if raises:
            raise raises[0]
        out = run_dir(cfg)
        out.mkdir(parents=True, exist_ok=True)  # like the real engines: the run folder first
        (out / "done.txt").write_text("ok")
        return 0

    def validate(cfg):
        calls.append("validate")
        if cfg.batch_size < 1:
            raise ConfigError(f"batch_size={cfg.batch_size}: must be at least 1. Set batch_size=1 or more.")

    engine.defaults = {"log_dir": str(tmp_path / "runs"), "batch_size": 2}
    engine.validate = validate
    monkeypatch.setitem(ENGINE._obj, FAKE, engine)
    cfg = tmp_path / "fake.yaml"
    cfg.write_text(f"TASK_TYPE: {FAKE}\nname: exp\n")
    engine.raises = raises
    return cfg, calls, engine


def err_line(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_validate_runs_for_dry_run_and_before_the_real_run(fake, capsys):
    cfg, calls, _ = fake
    assert main("train", ["--cfg", str(cfg), "--dry-run", "batch_size=0"]) == 2
    assert err_line(capsys).startswith("config error: batch_size=0: must be at least 1")
    assert calls == ["validate"]  # dry run says what the real run would say; nothing ran
    calls.clear()
    assert main("train", ["--cfg", str(cfg), "batch_size=0"]) == 2
    assert calls == ["validate"] and "batch_size=0" in err_line(capsys)
    calls.clear()
    assert main("train", ["--cfg", str(cfg), "batch_size=3"]) == 0
    assert calls == ["validate", "run"]


def test_engine_without_validate_still_runs(fake, capsys):
    cfg, calls, engine = fake
    del engine.validate
    assert main("train", ["--cfg", str(cfg), "--dry-run", "batch_size=0"]) == 0
    assert "dry run OK" in capsys.readouterr().out


def test_log_dir_under_a_regular_file_is_one_line(fake, tmp_path, capsys):
    cfg, _, _ = fake
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main("train", ["--cfg", str(cfg), f"log_dir={blocker}/sub"]) == 2
    line = err_line(capsys)
    assert line.startswith("error: Not a directory: ") and str(blocker) in line
    assert main("train", ["--cfg", str(cfg), f"log_dir={blocker}/sub", "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize("exc, expect", [
    (PermissionError(errno.EACCES, "Permission denied", "/ro/runs/exp"), "error: Permission denied: /ro/runs/exp"),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/x"), "error: Read-only file system: /mnt/ro/x"),
    (OSError(errno.ENOSPC, "No space left on device", "/big/ckpt.pt"),
     "error: No space left on device: /big/ckpt.pt (no space left on the device: free some space"),
])
def test_os_errors_with_a_file_are_one_line(fake, capsys, exc, expect):
    cfg, _, engine = fake
    engine.raises.append(exc)
    assert main("train", ["--cfg", str(cfg)]) == 2
    assert err_line(capsys).startswith(expect)


def test_os_error_without_a_file_keeps_its_traceback(fake):
    cfg, _, engine = fake
    engine.raises.append(OSError("something low-level broke"))
    with pytest.raises(OSError, match="low-level"):
        main("train", ["--cfg", str(cfg)])


def test_input_error_is_one_line(fake, capsys):
    cfg, _, engine = fake
    engine.raises.append(InputError("test list data/x.txt has no items (only comments)"))
    assert main("train", ["--cfg", str(cfg)]) == 2
    assert err_line(capsys) == "input error: test list data/x.txt has no items (only comments)"


def test_flags_anywhere(fake, capsys):
    cfg, calls, _ = fake
    assert main("train", ["batch_size=3", "--dry-run", "--cfg", str(cfg), "--debug"]) == 0
    assert "batch_size: 3" in capsys.readouterr().out and calls == ["validate"]
    assert main("train", [f"--cfg={cfg}", "batch_size", "4", "--dry-run"]) == 0
    assert "batch_size: 4" in capsys.readouterr().out
    assert split_argv(["lr", "-1e-3", "--dry-run", "--cfg", "x.yaml", "a=1"]) == (
        ["--dry-run", "--cfg", "x.yaml"], ["lr", "-1e-3", "a=1"])


def test_unknown_flag_is_named(fake, capsys):
    cfg, calls, _ = fake
    assert main("train", ["--cfg", str(cfg), "batch_size=3", "--dry_run"]) == 2
    assert "'--dry_run' is not a flag" in err_line(capsys) and calls == []


@pytest.mark.slow
def test_real_train_engine_log_dir_under_a_file(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "train_net.py", "--cfg", "configs/tiny/train.yaml",
                        f"log_dir={blocker}/sub", "num_steps=1"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert f"error: Not a directory: {blocker}/sub" in r.stderr


def test_component_built_from_a_bad_input_is_an_input_error(fake, capsys):
    """A component whose constructor refuses its input (BuildError caused by InputError) is
    reported as an input error, not as a config typo."""
    from utils.registry import BuildError

    cfg, _, engine = fake
    try:
        raise BuildError("DATASETS (config key 'dataset'): building VideoList failed: InputError: x") \
            from InputError("list file 'x.txt' has no entries")
    except BuildError as e:
        engine.raises.append(e)
    assert main("train", ["--cfg", str(cfg)]) == 2
    assert err_line(capsys).startswith("input error: DATASETS")
    engine.raises[0] = BuildError("DATASETS: building VideoList failed: TypeError: bad")
    assert main("train", ["--cfg", str(cfg)]) == 2
    assert err_line(capsys).startswith("config error: DATASETS")
