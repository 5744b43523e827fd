import pytest

from utils.registry import REGISTRIES, BuildError, Registry, RegistryError


def make():
    reg = Registry("THINGS", "test registry")

    @reg.register_class()
    class Alpha:
        """First thing."""

        def __init__(self, size=1):
            if size < 0:
                raise ValueError("size must be >= 0")
            self.size = size

    return reg, Alpha


def test_register_and_build():
    reg, Alpha = make()
    obj = reg.build({"type": "Alpha", "size": 3})
    assert isinstance(obj, Alpha) and obj.size == 3
    assert reg.describe(Alpha) == "First thing."


def test_duplicate_names_both_modules():
    reg, _ = make()
    with pytest.raises(RegistryError) as e:
        @reg.register_class("Alpha")
        class Other:
            pass
    msg = str(e.value)
    assert "registered twice" in msg and "make.<locals>.Alpha" in msg and "Other" in msg


def test_unknown_name_suggests():
    reg, _ = make()
    with pytest.raises(RegistryError) as e:
        reg.build({"type": "Alpah"})
    msg = str(e.value)
    assert "THINGS" in msg and "Did you mean 'Alpha'" in msg and "Valid names: Alpha" in msg


def test_unknown_kwarg_and_construction_error_chain():
    reg, _ = make()
    with pytest.raises(BuildError, match="does not take 'colour'.*Accepted: size"):
        reg.build({"type": "Alpha", "colour": 1}, "model")
    with pytest.raises(BuildError, match=r"config key 'model'.*size must be >= 0") as e:
        reg.build({"type": "Alpha", "size": -1}, "model")
    assert isinstance(e.value.__cause__, ValueError)


def test_missing_type():
    reg, _ = make()
    with pytest.raises(BuildError, match="no 'type:' entry"):
        reg.build({"size": 1}, "model")


def test_all_registries_declared_with_contracts():
    from tools import load_components

    load_components()
    assert set(REGISTRIES) == {"ENGINE", "INFER_ENGINE", "MODEL", "DATASETS", "EMBEDDER", "AUTO_ENCODER",
                               "DIFFUSION", "PRETRAIN", "BACKEND", "VISUAL"}
    for reg in REGISTRIES.values():
        assert "Contract" in reg.__doc__
    for name in ("cpu", "cuda", "npu", "auto"):
        assert name in REGISTRIES["BACKEND"]
