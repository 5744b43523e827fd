import textwrap

import pytest

from utils.config import (ConfigError, apply_overrides, deep_merge, import_custom, load_config, parse_scalar,
                          split_overrides)
from utils.registry import ENGINE, MODEL


def write(p, text):
    p.write_text(textwrap.dedent(text))
    return p


def test_base_inheritance_and_delete(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "base.yaml", """
        lr: 0.001
        model: {type: A, width: 8, depth: 2}
        dataset: {type: D, size: 4}
    """)
    write(tmp_path / "sub" / "mid.yaml", """
        _BASE: ../base.yaml
        model: {width: 16}
    """)
    write(tmp_path / "sub" / "top.yaml", """
        _BASE: mid.yaml
        dataset: {_delete_: true, type: E}
    """)
    cfg = load_config(tmp_path / "sub" / "top.yaml")
    assert cfg.model == {"type": "A", "width": 16, "depth": 2}
    assert cfg.dataset == {"type": "E"}
    assert cfg.lr == 0.001
    assert cfg.name == "top"
    assert len(cfg._files) == 3


def test_base_cycle(tmp_path):
    write(tmp_path / "a.yaml", "_BASE: b.yaml\n")
    write(tmp_path / "b.yaml", "_BASE: a.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(tmp_path / "a.yaml")


def test_scalar_parsing():
    assert parse_scalar("5e-5") == 5e-5
    assert parse_scalar("true") is True
    assert parse_scalar("[1,2]") == [1, 2]
    assert parse_scalar("data/list.txt") == "data/list.txt"
    assert parse_scalar("3") == 3


def test_typed_overrides_both_styles():
    cfg = {"lr": 1e-4, "num_steps": 10, "use_ema": False, "test_model": "a.pt", "model": {"depth": 2},
           "size": [1, 2], "name": "x"}
    out = apply_overrides(cfg, split_overrides(["lr", "5e-5", "model.depth=4", "use_ema=true",
                                                "test_model", "ckpt.safetensors", "size=[3,4]",
                                                "num_steps", "20", "name=123"]), "f.yaml")
    assert out["lr"] == 5e-5 and isinstance(out["lr"], float)
    assert out["model"]["depth"] == 4 and out["use_ema"] is True and out["num_steps"] == 20
    assert out["test_model"] == "ckpt.safetensors" and out["size"] == [3, 4]
    assert out["name"] == "123"  # stays a string where a string is expected
    # int where a float is expected is fine
    assert apply_overrides(cfg, [("lr", "1", False)], "f")["lr"] == 1.0


def test_rejected_overrides():
    cfg = {"lr": 1e-4, "num_steps": 10, "use_ema": False, "model": {"depth": 2}}
    with pytest.raises(ConfigError, match=r"no key 'lrr'.*f.yaml.*Did you mean lr"):
        apply_overrides(cfg, split_overrides(["lrr=1"]), "f.yaml")
    with pytest.raises(ConfigError, match="expected int.*got str"):
        apply_overrides(cfg, split_overrides(["num_steps=abc"]), "f.yaml")
    with pytest.raises(ConfigError, match="expected bool"):
        apply_overrides(cfg, split_overrides(["use_ema=3"]), "f.yaml")
    with pytest.raises(ConfigError, match="no key 'model.width'"):
        apply_overrides(cfg, split_overrides(["model.width=3"]), "f.yaml")
    with pytest.raises(ConfigError, match="has no value"):
        split_overrides(["test_model"])


def test_plus_adds_keys():
    cfg = {"model": {"depth": 2}}
    out = apply_overrides(cfg, split_overrides(["+model.width=8", "+extra.deep.key=hi"]), "f")
    assert out["model"] == {"depth": 2, "width": 8}
    assert out["extra"] == {"deep": {"key": "hi"}}


def test_engine_defaults_and_unknown_top_level(tmp_path):
    from tools import load_components

    load_components()
    write(tmp_path / "e.yaml", "TASK_TYPE: train_next_clip\nlr: 0.01\n")
    cfg = load_config(tmp_path / "e.yaml", ["num_steps=7"], registry=ENGINE)
    assert cfg.lr == 0.01 and cfg.num_steps == 7 and "save_ckp_interval" in cfg
    write(tmp_path / "bad.yaml", "TASK_TYPE: train_next_clip\nlearning_rate: 0.01\n")
    with pytest.raises(ConfigError, match="unknown top-level key.*learning_rate"):
        load_config(tmp_path / "bad.yaml", registry=ENGINE)
    write(tmp_path / "sub.yaml", "TASK_TYPE: train_next_clip\nclip_sampling: {mod: random}\n")
    with pytest.raises(ConfigError, match="clip_sampling has unknown key.*mod.*known: mode"):
        load_config(tmp_path / "sub.yaml", registry=ENGINE)
    write(tmp_path / "t.yaml", "TASK_TYPE: train_nextclip\n")
    with pytest.raises(ConfigError, match="Did you mean 'train_next_clip'"):
        load_config(tmp_path / "t.yaml", registry=ENGINE)


def test_custom_imports_file_registers_component(tmp_path):
    write(tmp_path / "my_mod.py", """
        from utils.registry import MODEL
        @MODEL.register_class()
        class UserNetForConfigTest:
            '''A user model.'''
            def __init__(self, width=3):
                self.width = width
    """)
    write(tmp_path / "x.yaml", "custom_imports: [my_mod.py]\nmodel: {type: UserNetForConfigTest, width: 5}\n")
    cfg = load_config(tmp_path / "x.yaml")
    assert MODEL.build(cfg.model).width == 5
    with pytest.raises(ConfigError, match="not found"):
        import_custom(["nope.py"], tmp_path)
    with pytest.raises(ConfigError, match="cannot import module"):
        import_custom(["no_such_pkg.mod"], tmp_path)


def test_deep_merge_does_not_mutate():
    a = {"x": {"y": 1}}
    b = deep_merge(a, {"x": {"z": 2}})
    assert a == {"x": {"y": 1}} and b == {"x": {"y": 1, "z": 2}}
