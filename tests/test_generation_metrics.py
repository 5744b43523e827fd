"""utils/metrics.py, the weight-free generation metrics: Fréchet distance, VBench temporal flicker,
Physics-IQ-style motion masks and scores."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from utils.metrics import (
    frame_mse,
    frechet_distance,
    gaussian_stats,
    motion_masks,
    physics_iq_score,
    physics_iq_scores,
    spatial_iou,
    spatiotemporal_iou,
    temporal_flicker,
    weighted_spatial_iou,
)


# ---------------------------------------------------------------------------- Fréchet distance
def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    # commuting covariances: Tr(S1 + S2 - 2 (S1 S2)^1/2) = sum (sqrt a - sqrt b)^2
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([3.0, 1.0, 0.0])
    a, b = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 0.25])
    expected = float(((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum())
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expected, rel=1e-9)  # 13 + 8.25


def test_frechet_distance_of_rotated_gaussians_matches_the_closed_form():
    # a shared rotation leaves the distance unchanged: non-diagonal covariances, known answer
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    a, b = torch.tensor([0.5, 2.0, 1.0, 3.0]).double(), torch.tensor([2.0, 2.0, 0.1, 1.0]).double()
    s1, s2 = q @ torch.diag(a).double() @ q.T, q @ torch.diag(b).double() @ q.T
    mu = torch.tensor([1.0, 0.0, 0.0, 2.0]).double()
    expected = float((mu ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum())
    assert frechet_distance(mu, s1, torch.zeros(4), s2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu, s1, mu, s1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_matches_scipy_sqrtm_on_random_covariances():
    linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(1)
    f1, f2 = torch.randn(50, 6, generator=g), torch.randn(40, 6, generator=g) * 1.5 + 0.3
    (m1, s1), (m2, s2) = gaussian_stats(f1), gaussian_stats(f2)
    covmean = linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    ref = float(((m1 - m2) ** 2).sum()) + np.trace(s1.numpy() + s2.numpy() - 2 * covmean)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(ref, rel=1e-6)


def test_gaussian_stats_is_numpy_mean_and_cov():
    f = torch.randn(30, 5, generator=torch.Generator().manual_seed(2))
    mu, sigma = gaussian_stats(f)
    np.testing.assert_allclose(mu.numpy(), f.double().mean(0).numpy(), rtol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), np.cov(f.double().numpy(), rowvar=False), rtol=1e-10)
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_stats(f[:1])


# ---------------------------------------------------------------------------- temporal flicker
def test_flicker_is_one_on_a_static_video_and_lower_on_noise():
    frame = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    assert temporal_flicker(frame.expand(-1, 8, -1, -1)) == 1.0
    noise = torch.rand(3, 8, 16, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1
    moving = _square_clip(T=8, H=16, W=16, size=4, x0=0, dx=1, y0=6)  # a small square sliding right
    f_noise, f_moving = temporal_flicker(noise), temporal_flicker(moving)
    assert f_noise < f_moving < 1.0
    # uniform noise on 0..255: E|x - y| = 255 / 3, so the score is ~2/3
    assert f_noise == pytest.approx(2 / 3, abs=0.02)


def test_flicker_is_the_vbench_formula():
    a = torch.full((3, 1, 4, 4), -1.0)
    b = torch.full((3, 1, 4, 4), 1.0)
    video = torch.cat([a, b, b], 1)  # MAE 255 then 0: score (255 - 127.5) / 255
    assert temporal_flicker(video) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="T >= 2"):
        temporal_flicker(a)


# ---------------------------------------------------------------------------- motion masks
def _square_clip(T=10, H=32, W=32, size=6, x0=4, dx=2, y0=12, dy=0, background=-0.8, value=0.8):
    """A bright square moving by (dx, dy) pixels per frame over a dark background: (3, T, H, W)."""
    v = torch.full((3, T, H, W), background)
    for t in range(T):
        x, y = x0 + dx * t, y0 + dy * t
        v[:, t, y:y + size, x:x + size] = value
    return v


def _opencv_masks(video: torch.Tensor, alpha=0.3, threshold=10, k=5) -> np.ndarray:
    """Physics-IQ's mask generator, written with OpenCV as the benchmark does it."""
    frames = ((video.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).numpy().copy()
    grey = cv2.GaussianBlur(cv2.cvtColor(frames[0], cv2.COLOR_RGB2GRAY), (5, 5), 0)
    avg, kernel, out = grey.astype("float"), np.ones((k, k), np.uint8), [np.zeros(grey.shape, bool)]
    for f in frames[1:]:
        grey = cv2.GaussianBlur(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), (5, 5), 0)
        cv2.accumulateWeighted(grey, avg, alpha)
        _, m = cv2.threshold(cv2.absdiff(grey, cv2.convertScaleAbs(avg)), threshold, 255, cv2.THRESH_BINARY)
        m = cv2.morphologyEx(cv2.morphologyEx(m, cv2.MORPH_OPEN, kernel), cv2.MORPH_CLOSE, kernel)
        out.append(m > 0)
    return np.stack(out)


def test_motion_masks_equal_the_opencv_pipeline_of_physics_iq():
    from tools.datasets.synthetic_physics import SyntheticPhysics

    ds = SyntheticPhysics(resolution=48, num_frames=10, radius=[0.1, 0.15], speed=[0.04, 0.06], seed=3)
    videos = [ds[i]["video"] for i in range(2)]
    videos.append(torch.rand(3, 6, 24, 24, generator=torch.Generator().manual_seed(5)) * 2 - 1)
    for v in videos:
        ours, ref = motion_masks(v).numpy(), _opencv_masks(v)
        assert ref.sum() > 0
        assert (ours == ref).all(), f"{(ours != ref).sum()} of {ref.size} pixels differ"


def test_motion_masks_follow_a_moving_square_and_stay_empty_when_static():
    clip = _square_clip()
    masks = motion_masks(clip, kernel=3)
    assert not masks[0].any()  # the first frame has nothing to compare with
    cols = masks[1:].any(1)  # (T-1, W): columns with motion
    for t in range(1, clip.shape[1]):
        xs = torch.nonzero(cols[t - 1]).flatten()
        assert len(xs) > 0
        # the motion is at the square (its leading edge is at 4 + 2t + 6) and never right of it
        assert xs.max() <= 4 + 2 * t + 6 + 2 and xs.min() >= 0
        rows = torch.nonzero(masks[t].any(1)).flatten()
        assert rows.min() >= 12 - 3 and rows.max() <= 12 + 6 + 3  # never far from the square's rows
    static = _square_clip(dx=0)
    assert not motion_masks(static).any()


def test_ious_of_known_masks():
    pred = torch.zeros(4, 8, 8, dtype=torch.bool)
    ref = torch.zeros(4, 8, 8, dtype=torch.bool)
    ref[1, 0:2, 0:2] = True  # 4 px at frame 1
    ref[2, 0:2, 2:4] = True  # 4 px at frame 2
    pred[1, 0:2, 0:2] = True  # right place and time
    pred[3, 0:2, 2:4] = True  # right place, wrong time
    assert spatial_iou(pred, ref) == 1.0  # collapsed over time they coincide
    # frame 0: both empty (1), frame 1: 1, frame 2: 0/4, frame 3: 0/4 -> (1 + 1 + 0 + 0) / 4
    assert spatiotemporal_iou(pred, ref) == pytest.approx(0.5)
    assert weighted_spatial_iou(pred, ref) == pytest.approx(1.0)  # each pixel moves 1/4 of the time in both
    pred[0, 0:2, 0:2] = True  # the first square moves twice as often: min 1/4, max 2/4 on 4 px
    assert weighted_spatial_iou(pred, ref) == pytest.approx((4 * 0.25 + 4 * 0.25) / (4 * 0.5 + 4 * 0.25))
    empty = torch.zeros_like(pred)
    assert spatial_iou(empty, empty) == spatiotemporal_iou(empty, empty) == weighted_spatial_iou(empty, empty) == 1.0
    assert spatial_iou(empty, ref) == 0.0


def test_physics_iq_scores_rank_the_right_motion_above_the_wrong_one():
    ref = _square_clip(T=12)
    same = physics_iq_scores(ref, ref, skip=4, kernel=3)
    assert same == {"spatial_iou": 1.0, "spatiotemporal_iou": 1.0, "weighted_spatial_iou": 1.0, "mse": 0.0}
    # the same 4 context frames, then the square moves down instead of right
    wrong = ref.clone()
    wrong[:, 4:] = _square_clip(T=12, x0=4 + 2 * 3, dx=0, y0=12 - 2 * 3, dy=2)[:, 4:]
    late = ref.clone()  # right path, one frame late
    late[:, 5:] = ref[:, 4:-1]
    s_wrong, s_late = physics_iq_scores(wrong, ref, skip=4, kernel=3), physics_iq_scores(late, ref, skip=4, kernel=3)
    for s in (s_wrong, s_late):
        assert s["spatiotemporal_iou"] < 1 and s["mse"] > 0
    assert s_late["spatial_iou"] > s_wrong["spatial_iou"]
    assert s_late["spatiotemporal_iou"] > s_wrong["spatiotemporal_iou"]
    assert s_late["mse"] < s_wrong["mse"]
    assert frame_mse(wrong[:, 4:], ref[:, 4:]) == pytest.approx(s_wrong["mse"])
    with pytest.raises(ValueError, match="differ in shape"):
        physics_iq_scores(ref[:, :6], ref)


def test_physics_iq_score_reads_scores_as_a_share_of_the_variance():
    var = {"spatial_iou": 0.8, "spatiotemporal_iou": 0.6, "weighted_spatial_iou": 0.5, "mse": 0.01}
    assert physics_iq_score(var, var) == pytest.approx(100.0)
    half = {"spatial_iou": 0.4, "spatiotemporal_iou": 0.3, "weighted_spatial_iou": 0.25, "mse": 0.01}
    assert physics_iq_score(half, var) == pytest.approx(50.0)
    worse_mse = dict(half, mse=0.11)  # 100 * (0.5 - 0.1)
    assert physics_iq_score(worse_mse, var) == pytest.approx(40.0)
    assert physics_iq_score({k: 0.0 for k in var} | {"mse": 1.0}, var) == 0.0  # clipped
