import time

import numpy as np
import pytest
import torch

from tools.datasets.synthetic_physics import SyntheticPhysics, _collide_balls
from utils.registry import DATASETS


def test_item_format_and_range():
    ds = SyntheticPhysics(resolution=[24, 20], num_frames=8, label_mode="num_balls", num_balls=[2, 4])
    it = ds[3]
    v = it["video"]
    assert v.shape == (3, 8, 24, 20) and v.dtype == torch.float32
    assert v.min() >= -1 and v.max() <= 1
    assert it["label"] == it["meta"]["num_balls"] - 2 and 0 <= it["label"] < ds.num_classes == 3
    assert it["caption"] == f"{it['meta']['num_balls']} balls" and it["meta"]["index"] == 3
    assert "label" not in SyntheticPhysics(length=2)[0]
    assert DATASETS.get("SyntheticPhysics") is SyntheticPhysics


def test_determinism_and_order_independence():
    a = SyntheticPhysics(seed=5)
    b = SyntheticPhysics(seed=5)
    x = [a[i]["video"] for i in (0, 1, 2)]
    y = [b[i]["video"] for i in (2, 1, 0)][::-1]  # other order, other instance
    assert all(torch.equal(p, q) for p, q in zip(x, y))
    assert not torch.equal(x[0], x[1])
    assert not torch.equal(x[0], SyntheticPhysics(seed=6)[0]["video"])


def _kinetic(vel, m):
    return 0.5 * (m[None, :] * (vel ** 2).sum(-1)).sum(-1)


def test_energy_and_momentum_conserved_without_gravity():
    ds = SyntheticPhysics(num_balls=[4, 6], radius=[0.08, 0.14], speed=[0.05, 0.1], num_frames=200)
    collided = 0
    for i in range(5):
        pos, vel, r, m, _ = ds.simulate(i)
        ke = _kinetic(vel, m)
        assert np.allclose(ke, ke[0], rtol=1e-9), (i, ke.min(), ke.max())
        collided += int((np.abs(np.diff(vel, axis=0)).sum() > 0))
    assert collided == 5


def test_ball_collision_is_elastic():
    pos = np.array([[0.0, 0.0], [1.9, 0.3]])
    vel = np.array([[1.0, 0.2], [-0.5, 0.0]])
    r, m = np.array([1.0, 1.0]), np.array([1.0, 3.0])
    p0, e0 = (m[:, None] * vel).sum(0), _kinetic(vel[None], m)[0]
    _collide_balls(pos, vel, r, m, np.array([0]), np.array([1]))
    assert np.allclose((m[:, None] * vel).sum(0), p0) and np.isclose(_kinetic(vel[None], m)[0], e0)
    assert np.linalg.norm(pos[1] - pos[0]) >= 2.0 - 1e-9
    n = (pos[1] - pos[0]) / np.linalg.norm(pos[1] - pos[0])
    assert (vel[0] - vel[1]) @ n <= 0  # separating after the impulse


@pytest.mark.parametrize("gravity", [0.0, 0.01])
def test_in_bounds_and_no_overlap(gravity):
    ds = SyntheticPhysics(num_balls=[5, 6], radius=[0.08, 0.12], speed=[0.05, 0.1], gravity=gravity,
                          resolution=[32, 48], num_frames=100)
    for i in range(4):
        pos, _, r, _, _ = ds.simulate(i)
        tol = 1e-6
        assert (pos[..., 0] >= r - tol).all() and (pos[..., 0] <= 48 - r + tol).all()
        assert (pos[..., 1] >= r - tol).all() and (pos[..., 1] <= 32 - r + tol).all()
        iu, ju = np.triu_indices(len(r), 1)
        dist = np.linalg.norm(pos[:, iu] - pos[:, ju], axis=-1)
        assert (dist >= (r[iu] + r[ju]) * 0.9).all(), float((dist / (r[iu] + r[ju])).min())


def test_speed_and_bad_config():
    ds = SyntheticPhysics()
    ds[0]
    t = time.perf_counter()
    for i in range(20):
        ds[i]
    assert (time.perf_counter() - t) / 20 < 0.05  # ~ms per 32x32x16 item
    with pytest.raises(ValueError, match="radius"):
        SyntheticPhysics(radius=[0.3, 0.6])
    with pytest.raises(ValueError, match="label_mode='count'"):
        SyntheticPhysics(label_mode="count")
    with pytest.raises(ValueError, match="could not place"):
        SyntheticPhysics(num_balls=40, radius=0.2)[0]
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_write_videos(tmp_path):
    from utils.test_list import parse_test_list
    from utils.video_io import read_video

    ds = SyntheticPhysics(resolution=[21, 30], num_frames=6, num_balls=2)
    lst = ds.write_videos(str(tmp_path), count=2, fps=4, context_frames=3)
    lines = open(lst).read().strip().split("\n")
    assert len(lines) == 2 and lines[0].endswith("|||2 balls")
    item = parse_test_list(lst, kind="video")[0]  # relative paths resolve against the list
    assert item.error is None and item.caption == "2 balls"
    frames, info = read_video(item.path)
    assert frames.shape == (3, 21, 30, 3) and info.fps == pytest.approx(4)
    gt, _ = read_video(tmp_path / "gt" / lines[0].split("|||")[0])
    assert gt.shape == (6, 21, 30, 3)
    ref = ((ds[0]["video"] + 1) * 127.5).permute(1, 2, 3, 0).numpy()
    assert np.abs(gt.astype(float) - ref).mean() < 6  # lossy codec, close to the source
    assert not list(tmp_path.glob("*.tmp*"))
