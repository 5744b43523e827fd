import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")

import pathlib

import pytest

from tools import load_components

load_components()  # as the entry points do: every built-in component registered before a test builds one

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_data():
    p = SHARED / "data"
    assert p.exists(), f"{p} is missing: tests need ../shared/data beside the checkout"
    return p
