"""The predictor keeps history + clip within the frame positions the model was trained on."""
import logging
import pathlib

import pytest

from tools.inferences.predictor import Predictor
from utils.config import ConfigError, load_config
from utils.registry import INFER_ENGINE

ROOT = pathlib.Path(__file__).resolve().parents[1]
PREDICT = ROOT / "configs/tiny/predict.yaml"   # window 12 + clips of 4; the checkpoint says max_frames 12


def _predictor(*overrides):
    return Predictor(load_config(PREDICT, ["backend.attention=sdpa", *overrides], registry=INFER_ENGINE))


@pytest.mark.slow
def test_window_lowered_to_the_trained_frames(monkeypatch, caplog):
    monkeypatch.chdir(ROOT)
    with caplog.at_level(logging.WARNING):
        p = _predictor()
    assert p.trained_frames() == 12 and p.window == 8  # 8 history + 4 new = 12 trained positions
    assert "using window=8" in caplog.text
    assert _predictor("window=4").window == 4
    assert _predictor("allow_untrained_positions=true").window == 12
    assert _predictor("trained_frames=20").window == 12
    with pytest.raises(ConfigError, match="clip_len=16"):
        _predictor("clip_len=16")


@pytest.mark.slow
def test_rollout_positions_start_at_zero_in_every_window(monkeypatch):
    """recompute mode re-encodes the window from position 0: the new clip sits at n_hist <= window."""
    import torch

    monkeypatch.chdir(ROOT)
    p = _predictor("num_sample_steps=1", "max_frames=24")
    seen = []
    enc, den = p.model.encode_history, p.model.denoise

    def encode(x, offset=0, **kw):
        seen.append(("enc", offset, x.shape[2]))
        return enc(x, offset, **kw)

    def denoise(z, t, cache=None, frame_offset=0, **kw):
        seen.append(("den", frame_offset, z.shape[2]))
        return den(z, t, cache=cache, frame_offset=frame_offset, **kw)

    monkeypatch.setattr(p.model, "encode_history", encode)
    monkeypatch.setattr(p.model, "denoise", denoise)
    p.predict(torch.zeros(3, 4, 32, 32), 0, None, 24)
    assert {o for k, o, _ in seen if k == "enc"} == {0}
    assert max(o + n for k, o, n in seen if k == "den") <= 12
