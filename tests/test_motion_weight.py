"""RectifiedFlow's motion-weighted loss: pixels that changed from the previous frame weigh 1 + motion_weight."""
from __future__ import annotations

import pytest
import torch

from tools.diffusions.rectified_flow import RectifiedFlow, masked_frame_mse, motion_weights


def moving_dot(frames: int = 4) -> torch.Tensor:
    x = -torch.ones(1, 3, frames, 8, 8)
    for f in range(frames):
        x[0, :, f, 2, f] = 1.0  # a dot one pixel to the right each frame
    return x


def test_weights_mark_where_the_picture_changed():
    w = motion_weights(moving_dot(), 5.0, 0.1)
    assert w.shape == (1, 1, 4, 8, 8)
    assert torch.all(w[:, :, 0] == 1)  # no previous frame
    for f in range(1, 4):
        changed = {(2, f - 1), (2, f)}  # where the dot left and where it arrived
        got = {(int(r), int(c)) for r, c in (w[0, 0, f] == 6).nonzero()}
        assert got == changed and int((w[0, 0, f] == 1).sum()) == 64 - 2
    assert torch.all(motion_weights(-torch.ones(1, 3, 3, 4, 4), 5.0, 0.1) == 1)  # a still video: the plain mean
    assert torch.all(motion_weights(moving_dot() * 0.01, 5.0, 0.1) == 1)  # changes below the threshold


def test_the_loss_weighs_errors_on_moving_pixels():
    x = moving_dot()
    valid = torch.ones(1, 4, dtype=torch.bool)
    err = torch.zeros_like(x)
    err[0, :, 1, 2, 1] = 1.0  # an error where the dot is in frame 1 (it moved there)
    plain, _ = masked_frame_mse(x + err, x, valid)
    weighted, _ = masked_frame_mse(x + err, x, valid, motion_weights(x, 5.0, 0.1))
    assert weighted.item() == pytest.approx(6 * plain.item())
    err2 = torch.zeros_like(x)
    err2[0, :, 1, 6, 6] = 1.0  # the same error on the still background
    assert masked_frame_mse(x + err2, x, valid, motion_weights(x, 5.0, 0.1))[0].item() == pytest.approx(plain.item())


def test_training_loss_uses_the_weights_only_when_set():
    x = moving_dot(8)
    clip_lens = torch.tensor([[4, 4]])
    model = lambda x_noisy, x_clean, clip_lens, t, **kw: -torch.ones_like(x_noisy)  # noqa: E731  (the background)
    losses = {w: RectifiedFlow(motion_weight=w).training_losses(model, x, clip_lens,
                                                                generator=torch.Generator().manual_seed(0))["loss"]
              for w in (0.0, 10.0)}
    # the prediction misses only the dot, which moved in frames 1..7: those errors weigh 11x
    assert losses[10.0].item() == pytest.approx(losses[0.0].item() * (1 + 7 * 11) / 8)
    with pytest.raises(ValueError, match="motion_weight=-1"):
        RectifiedFlow(motion_weight=-1)
    with pytest.raises(ValueError, match="motion_threshold=2"):
        RectifiedFlow(motion_threshold=2)
