import textwrap

import pytest
import yaml

from utils.config import (
    ConfigError,
    apply_overrides,
    deep_merge,
    import_custom,
    load_config,
    load_yaml_tree,
    parse_scalar,
    split_overrides,
)
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


def test_yaml_floats_without_a_dot_are_floats_and_loading_stays_safe(tmp_path):
    write(tmp_path / "f.yaml", "a: 5e-5\nb: 1e-4\nc: 3E+2\nd: -1e-3\ne: 1.0e-4\nf: 12\ng: e5\nh: '5e-5'\n")
    data, _ = load_yaml_tree(tmp_path / "f.yaml")
    assert data == {"a": 5e-5, "b": 1e-4, "c": 300.0, "d": -1e-3, "e": 1e-4, "f": 12, "g": "e5", "h": "5e-5"}
    assert all(isinstance(data[k], float) for k in "abcde")
    write(tmp_path / "evil.yaml", "x: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml_tree(tmp_path / "evil.yaml")
    assert yaml.safe_load("x: 5e-5") == {"x": "5e-5"}  # the subclass does not change yaml.SafeLoader


def train_cfg(tmp_path, text, overrides=()):
    write(tmp_path / "e.yaml", "TASK_TYPE: train_next_clip\n" + text)
    return load_config(tmp_path / "e.yaml", list(overrides), registry=ENGINE)


@pytest.mark.parametrize("text, match", [
    ("lr: fast\n", r"e.yaml: lr: 'fast' is a str, expected a float \(the default is 0.0001"),
    ("num_steps: twenty\n", r"e.yaml: num_steps: 'twenty' is a str, expected an int"),
    ("batch_size: 2.5\n", r"e.yaml: batch_size: 2.5 is a float, expected an int"),
    ("use_ema: 1\n", r"use_ema: 1 is an int, expected a bool.*true or false"),
    ("resume: 3\n", r"resume: 3 is an int, expected a str.*quote it"),
    ("clip_sampling: {clip_len: four}\n", r"clip_sampling.clip_len: 'four' is a str, expected an int"),
])
def test_file_values_are_type_checked(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        train_cfg(tmp_path, text)


def test_file_type_error_names_the_file_that_sets_it(tmp_path):
    write(tmp_path / "base.yaml", "TASK_TYPE: train_next_clip\nnum_steps: lots\n")
    write(tmp_path / "top.yaml", "_BASE: base.yaml\nlr: 0.01\n")
    with pytest.raises(ConfigError, match=r"base.yaml: num_steps: 'lots'"):
        load_config(tmp_path / "top.yaml", registry=ENGINE)


def test_file_values_that_fit(tmp_path):
    cfg = train_cfg(tmp_path, "lr: 1\nweight_decay: 5e-5\ncond_key: 3\nclip_sampling: {max_clips: 4}\n")
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.weight_decay == 5e-5
    assert cfg.cond_key == 3 and cfg.clip_sampling.max_clips == 4  # null defaults take anything


def test_override_is_checked_against_the_default_not_the_file_value(tmp_path):
    cfg = train_cfg(tmp_path, "lr: fast\nnum_steps: 2.5\n", ["lr=1e-3", "num_steps", "7"])
    assert cfg.lr == 1e-3 and isinstance(cfg.lr, float) and cfg.num_steps == 7
    with pytest.raises(ConfigError, match=r"override lr='abc': expected float \(default 0.0001\)"):
        train_cfg(tmp_path, "lr: fast\n", ["lr=abc"])
    with pytest.raises(ConfigError, match=r"clip_sampling.clip_len must be an int"):
        train_cfg(tmp_path, "", ["clip_sampling={clip_len: x}"])


def test_scalar_has_no_sub_keys():
    with pytest.raises(ConfigError, match=r"'lr' is a float \(0.0001\), it has no sub-keys; set it as a whole"):
        apply_overrides({"lr": 1e-4}, split_overrides(["lr.x=3"]), "f.yaml")
    with pytest.raises(ConfigError, match="it has no sub-keys"):
        apply_overrides({"lr": 1e-4}, split_overrides(["+lr.x=3"]), "f.yaml")
    out = apply_overrides({"pretrain": None}, split_overrides(["+pretrain.type=X"]), "f.yaml")
    assert out["pretrain"] == {"type": "X"}


def test_unset_component_kwarg_suggests_plus(tmp_path):
    text = "model: {type: NextClipTransformer, preset: demo}\n"
    with pytest.raises(ConfigError, match=r"NextClipTransformer takes 'depth'.*Add it with '\+model.depth=4'"):
        train_cfg(tmp_path, text, ["model.depth=4"])
    assert train_cfg(tmp_path, text, ["+model.depth=4"]).model.depth == 4
    with pytest.raises(ConfigError, match=r"no key 'model.dpeth'"):  # not a kwarg: the usual message
        train_cfg(tmp_path, text, ["model.dpeth=4"])


def test_flag_like_override_is_refused():
    with pytest.raises(ConfigError, match="'--dry_run' is not a flag"):
        split_overrides(["a=1", "--dry_run"])
    assert split_overrides(["lr", "-1e-3"]) == [("lr", "-1e-3", False)]


def test_a_dict_override_merges_and_delete_replaces():
    """`key={...}` on the command line merges into the current dict as a config file does; with
    `_delete_: true` it replaces it (was merged anyway: a DAVIS dataset kept SyntheticPhysics's keys)."""
    cfg = {"dataset": {"type": "SyntheticPhysics", "resolution": 32, "num_balls": [1, 3]}}
    merged = apply_overrides(cfg, split_overrides(["dataset={resolution: 64}"]), "x.yaml")
    assert merged["dataset"] == {"type": "SyntheticPhysics", "resolution": 64, "num_balls": [1, 3]}
    replaced = apply_overrides(cfg, split_overrides(["dataset={_delete_: true, type: DAVIS, root: /data}"]), "x.yaml")
    assert replaced["dataset"] == {"type": "DAVIS", "root": "/data"}
