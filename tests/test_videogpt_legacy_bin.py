"""A pytorch_model.bin of plain tensors in torch's legacy (non-zip) format loads, read with
weights_only=True and without mmap (which only zip files allow); a legacy pickle that is not plain
tensors is still refused without running anything."""
from __future__ import annotations

import os
import shutil

import pytest
import torch
from conftest import SHARED
from safetensors.torch import load_file

from tools.models.videogpt import VideoGPT
from tools.pretrain import videogpt_checkpoint as vc
from utils.checkpoint import CheckpointError

FIXTURE = SHARED / "fixtures" / "videogpt_tiny"


def folder_with(tmp_path, obj):
    d = tmp_path / "ckpt"
    d.mkdir()
    shutil.copy(FIXTURE / "config.json", d / "config.json")
    torch.save(obj, d / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    with open(d / "pytorch_model.bin", "rb") as f:
        assert f.read(2) != b"PK"  # not a zip file: the legacy format
    return d


def test_legacy_bin_of_plain_tensors_loads(tmp_path):
    sd = load_file(str(FIXTURE / "weights.safetensors"))
    d = folder_with(tmp_path, {f"module.{k}": v for k, v in sd.items()})
    model = VideoGPT(preset="tiny")
    vc.VideoGPTCheckpoint(model, str(d))
    ref = VideoGPT(preset="tiny")
    vc.VideoGPTCheckpoint(ref, str(FIXTURE / "weights.safetensors"))
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, msg=k)


class Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_legacy_pickle_with_code_is_still_refused(tmp_path):
    d = folder_with(tmp_path, {"w": torch.zeros(2), "x": Boom()})
    with pytest.raises(CheckpointError, match="weights_only"):
        vc.VideoGPTCheckpoint(VideoGPT(preset="tiny"), str(d))
    assert not (tmp_path / "pwned").exists() and not os.path.exists("pwned")
