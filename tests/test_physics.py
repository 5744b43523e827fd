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
    assert it["caption"].startswith(f"{['two', 'three', 'four'][it['meta']['num_balls'] - 2]} balls, ")
    assert it["meta"]["index"] == 3 and ds.class_names == ["2 balls", "3 balls", "4 balls"]
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
        collided += int(np.abs(np.diff(vel, axis=0)).sum() > 0)
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
    assert len(lines) == 2 and lines[0].endswith("|||" + ds[0]["caption"]) and "two balls, " in lines[0]
    item = parse_test_list(lst, kind="video")[0]  # relative paths resolve against the list
    assert item.error is None and item.caption == ds[0]["caption"]
    frames, info = read_video(item.path)
    assert frames.shape == (3, 21, 30, 3) and info.fps == pytest.approx(4)
    gt, _ = read_video(tmp_path / "gt" / lines[0].split("|||")[0])
    assert gt.shape == (6, 21, 30, 3)
    ref = ((ds[0]["video"] + 1) * 127.5).permute(1, 2, 3, 0).numpy()
    assert np.abs(gt.astype(float) - ref).mean() < 6  # lossy codec, close to the source
    assert not list(tmp_path.glob("*.tmp*"))


# ---------------------------------------------------------------------------- conditioning
COND = dict(resolution=32, num_frames=8, num_balls=[1, 3], gravity=0.01,
            gravity_dirs=["none", "down", "up", "left", "right"],
            speeds={"slow": [0.01, 0.025], "fast": [0.045, 0.07]}, distinct_colors=True, seed=3)


def test_scene_attributes_labels_and_captions():
    from tools.datasets.synthetic_physics import COLOR_NAMES, caption, scene_class

    ds = SyntheticPhysics(label_mode="scene", length=400, **COND)
    assert ds.num_classes == 15 and ds.class_names[0] == "1 ball, no gravity"
    assert ds.class_names[8] == "2 balls, gravity left"
    seen = {"gravity": set(), "speed": set(), "label": set()}
    for i in range(200):
        it = ds[i]
        a = it["meta"]["attributes"]
        assert a["num_balls"] == it["meta"]["num_balls"] and len(a["colors"]) == a["num_balls"]
        assert a["colors"] == sorted(a["colors"], key=COLOR_NAMES.index)  # palette order
        assert it["caption"] == caption(a) and it["label"] == scene_class(a, [1, 3], COND["gravity_dirs"])
        assert ds.class_names[it["label"]].startswith(f"{a['num_balls']} ball")
        for k in ("gravity", "speed"):
            seen[k].add(a[k])
        seen["label"].add(it["label"])
    assert seen["gravity"] == set(COND["gravity_dirs"]) and seen["speed"] == {"slow", "fast"}
    assert len(seen["label"]) == 15
    assert caption(dict(num_balls=2, colors=["red", "blue"], gravity="left", speed="fast")) == \
        "two balls, red and blue, falling to the left, moving fast"
    assert caption(dict(num_balls=1, colors=["white"], gravity="none", speed=None)) == "one ball, white, no gravity"


def test_gravity_direction_and_speed_class_are_physical():
    """The drawn direction accelerates the balls that way; slow/fast scenes start at their speeds."""
    ds = SyntheticPhysics(**dict(COND, num_balls=1, radius=0.08, num_frames=4, substeps=8))
    side = 32
    for i in range(60):
        pos, vel, r, _, _ = ds.simulate(i)
        a = ds.scene(i)
        v0 = np.linalg.norm(vel[0, 0]) / side
        lo, hi = COND["speeds"][a["speed"]]
        assert lo - 1e-9 <= v0 <= hi + 1e-9
        dv = (vel[1:, 0] - vel[:-1, 0]).mean(0) / side  # mean change per frame, fractions of the side
        want = {"none": (0, 0), "down": (0, 1), "up": (0, -1), "left": (-1, 0), "right": (1, 0)}[a["gravity"]]
        bounced = (np.sign(vel[1:, 0]) != np.sign(vel[:-1, 0])).any()
        if not bounced:
            assert np.allclose(dv, np.array(want) * 0.01, atol=1e-6), (a, dv)


def test_conditioning_options_leave_plain_videos_unchanged_and_validate():
    plain = SyntheticPhysics(seed=11, resolution=16, num_frames=6)[2]["video"]
    same = SyntheticPhysics(seed=11, resolution=16, num_frames=6, gravity_dirs=["none"])[2]["video"]
    assert torch.equal(plain, same)
    with pytest.raises(ValueError, match="gravity_dirs"):
        SyntheticPhysics(gravity=0.01, gravity_dirs=["sideways"])
    with pytest.raises(ValueError, match="must be > 0"):
        SyntheticPhysics(gravity_dirs=["down"])
    with pytest.raises(ValueError, match="speeds"):
        SyntheticPhysics(speeds={"medium": [0.1, 0.2]})
    with pytest.raises(ValueError, match="distinct_colors"):
        SyntheticPhysics(num_balls=[1, 9], radius=0.05, distinct_colors=True)
