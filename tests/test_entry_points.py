"""Entry points: --list, --dry-run over every shipped YAML, exit codes and messages."""
import os
import pathlib
import subprocess
import sys

import pytest

from utils.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
# every experiment; fragments without TASK_TYPE in their _BASE chain (configs/_base_/*.yaml)
# are validated through the experiments that inherit them


def _is_experiment(path) -> bool:
    from utils.config import load_yaml_tree

    return "TASK_TYPE" in load_yaml_tree(path)[0]


CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if _is_experiment(p))


def kind_of(path):

    from utils.config import load_yaml_tree

    data, _ = load_yaml_tree(path)
    from tools import load_components
    from utils.registry import INFER_ENGINE

    load_components()
    return "infer" if data.get("TASK_TYPE") in INFER_ENGINE else "train"


#: configs naming inputs that are not in the repo (paper-scale data and weights on a cluster); the
#: dry run checks that input files exist, so these are pointed at the demo files here
CLUSTER_INPUTS = {"configs/videogpt/predict.yaml": ["test_list_path=data/demo/test_list.txt",
                                                    "test_model=data/demo/tiny_physics.safetensors"]}
#: configs that run on weights their training config makes (not shipped): dry-run with shipped weights
_TINY = ["test_model=data/demo/tiny_physics.safetensors"]
CLUSTER_INPUTS.update({f"configs/experiments/conditioning/{name}.yaml": _TINY for name in
                       ("class_to_video", "text_to_video", "evaluate_class", "evaluate_text",
                        "evaluate_class_prompts", "evaluate_text_gravity")})
CLUSTER_INPUTS.update({f"configs/experiments/demo_pixel/{name}.yaml": _TINY for name in
                       ("predict", "evaluate", "evaluate_condition")})
#: the Atari world model's evaluation and play run on the weights its training makes (none is shipped)
CLUSTER_INPUTS["configs/atari/evaluate.yaml"] = CLUSTER_INPUTS["configs/atari/play.yaml"] = _TINY
#: the docs show these with the user's own lists (my_prompts.txt, ...): dry-run them on the shipped lists
CLUSTER_INPUTS.update({"configs/modelscope/t2v_infer.yaml": ["test_list_path=data/modelscope/prompts.txt"],
                       "configs/modelscope/i2vgen_xl_infer.yaml": ["test_list_path=data/modelscope/images.txt"],
                       "configs/latte/ucf101_infer.yaml": ["test_list_path=data/latte/ucf101_classes.txt"]})


@pytest.mark.parametrize("cfg", CONFIGS, ids=[str(p.relative_to(ROOT)) for p in CONFIGS])
def test_every_config_passes_dry_run(cfg, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    extra = CLUSTER_INPUTS.get(str(cfg.relative_to(ROOT)), [])
    assert main(kind_of(cfg), ["--cfg", str(cfg), "--dry-run", *extra]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "dry run OK" in out and "TASK_TYPE" in out


def test_list_shows_every_registry(capsys):
    assert main("train", ["--list"]) == 0
    out = capsys.readouterr().out
    for name in ("ENGINE", "INFER_ENGINE", "MODEL", "DATASETS", "EMBEDDER", "AUTO_ENCODER", "DIFFUSION",
                 "PRETRAIN", "BACKEND", "VISUAL", "train_next_clip", "predict_next_clip",
                 "NextClipTransformer", "RectifiedFlow", "SyntheticPhysics"):
        assert name in out
    # each component with the module that defines it
    line = next(ln for ln in out.splitlines() if ln.split()[:1] == ["NextClipTransformer"])
    assert line.split()[1] == "tools.models.next_clip_transformer", line


def run(*args, cwd=ROOT):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_bad_yaml_exit_code(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("TASK_TYPE: train_next_clip\nmodel: [unclosed\n")
    r = run("train_net.py", "--cfg", str(bad))
    assert r.returncode == 2
    assert "not valid YAML" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_typo_component_type(tmp_path):
    cfg = tmp_path / "typo.yaml"
    cfg.write_text(f"_BASE: {ROOT / 'configs/tiny/train.yaml'}\nmodel: {{type: NextClipTransfomer}}\n")
    r = run("train_net.py", "--cfg", str(cfg), "--dry-run")
    assert r.returncode == 2
    assert "model.type" in r.stderr and "Did you mean 'NextClipTransformer'" in r.stderr
    assert "Traceback" not in r.stderr
    r = run("train_net.py", "--cfg", str(cfg), "--dry-run", "--debug")
    assert r.returncode == 2 and "Traceback" in r.stderr


@pytest.mark.slow
def test_unknown_override_and_wrong_type():
    r = run("train_net.py", "--cfg", "configs/tiny/train.yaml", "--dry-run", "num_stepz=3")
    assert r.returncode == 2 and "num_stepz" in r.stderr and "Did you mean num_steps" in r.stderr
    r = run("inference.py", "--cfg", "configs/tiny/predict.yaml", "--dry-run", "round", "many")
    assert r.returncode == 2 and "expected int" in r.stderr


def test_unknown_component_kwarg(capsys):
    assert main("train", ["--cfg", "configs/tiny/train.yaml", "--dry-run", "+model.widht=3"]) == 2
    assert "does not take widht" in capsys.readouterr().err


@pytest.mark.slow
def test_missing_cfg_file():
    r = run("inference.py", "--cfg", "configs/nope.yaml")
    assert r.returncode == 2 and "does not exist" in r.stderr


@pytest.mark.parametrize("kind, cfg, override, setting", [
    ("train", "configs/tiny/train.yaml", "batch_size=0", "batch_size"),
    ("train", "configs/tiny/train.yaml", "num_steps=-5", "num_steps"),
    ("infer", "configs/tiny/predict.yaml", "round=0", "round"),
    ("infer", "configs/tiny/predict.yaml", "test_list_kind=bogus", "test_list_kind"),
    ("infer", "configs/tiny/predict.yaml", "test_list_path=null", "test_list_path"),
])
def test_dry_run_runs_the_engine_checks(kind, cfg, override, setting, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(kind, ["--cfg", cfg, override, "--dry-run"]) == 2  # flag after the override
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"config error: {setting}") and len(err.splitlines()) == 1, err


@pytest.mark.slow
def test_file_values_type_checked_end_to_end(tmp_path, capsys):
    cfg = tmp_path / "lr.yaml"
    cfg.write_text(f"_BASE: {ROOT / 'configs/tiny/train.yaml'}\nlr: 5e-5\n")
    assert main("train", ["--cfg", str(cfg), "--dry-run"]) == 0
    assert "\nlr: 5.0e-05\n" in capsys.readouterr().out
    cfg.write_text(f"_BASE: {ROOT / 'configs/tiny/train.yaml'}\nlr: fast\n")
    r = run("train_net.py", "--cfg", str(cfg), "--dry-run")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{cfg}: lr: 'fast' is a str, expected a float" in r.stderr


def test_dry_run_refuses_missing_inputs(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main("infer", ["--cfg", "configs/videogpt/predict.yaml", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "test_list_path='data/videogpt/test_list.txt' does not exist" in err
