"""SyntheticPhysics: masks / properties (contract K1), today's output pinned (contract K2) and
the opt-in v2 physics (gravity at any angle, restitution, friction, densities, depth layers,
obstacles)."""
import hashlib

import numpy as np
import pytest
import torch

from tools.datasets.synthetic_physics import GRAVITY_DIRS, PALETTE, SyntheticPhysics

# sha256 of items 0-3 (video bytes + caption), computed BEFORE the v2 options were added
PINNED = {
    "default": (dict(), "e75608891994af2049f73f25dcc5acd854feb6fa1fb1ded5e9736ff930382e98"),
    "demo": (dict(resolution=32, num_frames=12, num_balls=[1, 3], seed=777, length=64),
             "1bdc29ed55d7560055b483ade14236003b831f30d07d7da2d620d2f0410d8d9c"),
    "cond": (dict(resolution=32, num_frames=8, num_balls=[1, 3], gravity=0.006,
                  gravity_dirs=["none", "down", "up", "left", "right"],
                  speeds={"slow": [0.01, 0.025], "fast": [0.04, 0.07]}, distinct_colors=True,
                  label_mode="scene", seed=4242, length=100),
             "e6a35954e97064f6e70e46539a3a5237ec2d93c1041f77bca00e2adfa91e9694"),
    "rect": (dict(resolution=[24, 20], num_frames=6, num_balls=[2, 5], gravity=0.01, seed=3),
             "b972e8c1f5e89e83de51964a2eb48e81c00672588ecb59926bb30c42e3a97237"),
}


def _digest(ds, n=4):
    h = hashlib.sha256()
    for i in range(n):
        it = ds[i]
        h.update(it["video"].numpy().tobytes())
        h.update(it["caption"].encode())
    return h.hexdigest()


@pytest.mark.parametrize("name", sorted(PINNED))
def test_todays_output_is_unchanged(name):
    kwargs, digest = PINNED[name]
    assert _digest(SyntheticPhysics(**kwargs)) == digest
    assert _digest(SyntheticPhysics(with_masks=True, **kwargs)) == digest  # masks do not change videos


def test_masks_and_properties():
    ds = SyntheticPhysics(resolution=32, num_frames=12, num_balls=[1, 3], seed=777, with_masks=True)
    seen_collision = False
    for i in range(12):
        it = ds[i]
        m, v, n = it["masks"], it["video"], it["meta"]["num_balls"]
        assert m.dtype == torch.uint8 and m.shape == (12, 32, 32)
        assert int(m.max()) <= n and set(torch.unique(m).tolist()) <= set(range(n + 1))
        p = it["meta"]["properties"]
        assert p["count"] == n and p["gravity"] in GRAVITY_DIRS and isinstance(p["collision"], bool)
        seen_collision |= p["collision"]
        img = (v.permute(1, 2, 3, 0).numpy() + 1) * 127.5            # (T, H, W, 3)
        bg = np.array([16, 16, 24], np.float32)
        far = np.abs(img - bg).max(-1)
        assert (far[m.numpy() == 0] <= 0.5 * 240 + 1).all()             # at most half covered
        assert (far[m.numpy() > 0] > 10).all()                          # a ball is drawn there
    assert seen_collision
    assert "masks" not in SyntheticPhysics(length=2)[0]
    assert "properties" in SyntheticPhysics(length=2)[0]["meta"]


def test_mask_topmost_ball_wins():
    ds = SyntheticPhysics(resolution=16, num_frames=1)
    pos = np.array([[[6.0, 8.0], [10.0, 8.0]]])
    m = ds.masks(pos, np.array([4.0, 4.0]))
    assert m[0, 8, 8] == 2 and m[0, 8, 3] == 1 and m[0, 0, 0] == 0
    assert ds.masks(pos, np.array([4.0, 4.0]), order=[1, 0])[0, 8, 8] == 1


def test_collision_property_matches_contacts():
    # one ball can never collide
    ds = SyntheticPhysics(num_balls=1, num_frames=30, seed=2)
    assert not any(ds[i]["meta"]["properties"]["collision"] for i in range(5))


V2 = dict(resolution=64, num_frames=40, num_balls=[1, 6], radius=[0.05, 0.1], gravity_angle=[0, 360],
          gravity_strength=[0.001, 0.004], restitution=[0.8, 1.0], friction=[0.0, 0.01], density=[0.5, 2.0],
          depth_layers=2, obstacles=[1, 2], distinct_colors=True, with_masks=True)


def _kinetic(vel, m):
    return 0.5 * (m[None, :] * (vel ** 2).sum(-1)).sum(-1)


def test_v2_deterministic_and_options_change_the_video():
    a, b = SyntheticPhysics(seed=3, **V2), SyntheticPhysics(seed=3, **V2)
    for i in (4, 0):
        x, y = a[i], b[i]
        assert torch.equal(x["video"], y["video"]) and torch.equal(x["masks"], y["masks"])
        assert x["meta"]["physics"] == y["meta"]["physics"]
    assert not torch.equal(a[0]["video"], SyntheticPhysics(seed=4, **V2)[0]["video"])
    assert a[0]["video"].shape == (3, 40, 64, 64)
    plain = SyntheticPhysics(seed=3, resolution=32, num_frames=8)[1]["video"]
    assert not torch.equal(plain, SyntheticPhysics(seed=3, resolution=32, num_frames=8, obstacles=1)[1]["video"])


def test_v2_gravity_any_angle_and_strength():
    ds = SyntheticPhysics(**V2, length=64)
    gs = np.array([ds.physics(i)["gravity"] for i in range(64)])
    strength = np.hypot(gs[:, 0], gs[:, 1])
    assert (strength >= 0.001 - 1e-12).all() and (strength <= 0.004 + 1e-12).all()
    ang = np.degrees(np.arctan2(gs[:, 1], gs[:, 0])) % 90
    assert ((ang > 5) & (ang < 85)).mean() > 0.5  # not only the 4 axes
    # a lone ball, no walls hit within a few frames: the centroid follows g
    one = SyntheticPhysics(resolution=64, num_frames=4, num_balls=1, radius=0.05, speed=0.0, gravity_angle=[30, 30],
                           gravity_strength=0.004, seed=1)
    pos, vel, _, _, _ = one.simulate(0)
    dv = vel[-1] - vel[0]
    assert np.allclose(dv / np.linalg.norm(dv), [np.cos(np.pi / 6), np.sin(np.pi / 6)], atol=1e-6)
    assert np.isclose(np.linalg.norm(dv), 3 * 0.004 * 64)
    assert one[0]["meta"]["properties"]["gravity"] == "right"


@pytest.mark.parametrize("opts", [dict(obstacles=[1, 3], depth_layers=2),
                                  dict(restitution=[0.7, 0.9]), dict(friction=0.02, density=[0.5, 3.0])])
def test_v2_energy_never_grows_without_gravity(opts):
    ds = SyntheticPhysics(resolution=48, num_frames=120, num_balls=[3, 6], radius=[0.06, 0.1],
                          speed=[0.05, 0.1], seed=7, **opts)
    for i in range(3):
        run = ds._run(i)
        ke = _kinetic(run["vel"], run["mass"])
        assert (np.diff(ke) <= 1e-9 * ke[0]).all(), ke
        if opts.get("obstacles") and not opts.get("restitution"):
            assert np.allclose(ke, ke[0], rtol=1e-9)  # elastic obstacles and balls keep the energy


def test_v2_obstacles_never_penetrated_and_balls_stay_in():
    ds = SyntheticPhysics(**dict(V2, num_frames=120, obstacles=[2, 3], obstacle_size=[0.1, 0.2]), seed=11)
    from tools.datasets.synthetic_physics import _rect_distance
    for i in range(4):
        run = ds._run(i)
        pos, r, rects = run["pos"], run["radius"], run["phys"]["obstacles"]
        assert len(rects) >= 2
        for t in range(pos.shape[0]):
            d = _rect_distance(pos[t], rects)                            # (n, k)
            assert (d >= r[:, None] - 0.05).all(), (i, t, float((d - r[:, None]).min()))
        assert (pos >= r[None, :, None] - 1e-6).all() and (pos <= 64 - r[None, :, None] + 1e-6).all()


def test_v2_occlusion_layers_and_masks_consistent_with_render():
    ds = SyntheticPhysics(**dict(V2, num_balls=[5, 6], depth_layers=3), seed=2)
    overlapped = 0
    for i in range(6):
        it = ds[i]
        run = ds._run(i)
        lay, pos, r = run["layer"], run["pos"], run["radius"]
        iu, ju = np.triu_indices(len(r), 1)
        dist = np.linalg.norm(pos[:, iu] - pos[:, ju], axis=-1)
        same = lay[iu] == lay[ju]
        assert (dist[:, same] >= (r[iu] + r[ju])[same] * 0.9).all()     # same layer: collide
        overlapped += int((dist[:, ~same] < (r[iu] + r[ju])[~same] * 0.7).any())  # other layers: pass
        img = (it["video"].permute(1, 2, 3, 0).numpy() + 1) * 127.5
        m = it["masks"].numpy()
        cols = np.array([PALETTE[["red", "green", "blue", "yellow", "purple", "cyan", "orange", "white"].index(c)]
                         for c in it["meta"]["physics"]["colors"]], np.float32)
        for k in range(1, len(r) + 1):
            # pixels at least a pixel inside ball k's disc show exactly its colour (it is on top there)
            ys, xs = np.nonzero(m[5] == k)
            inner = np.hypot(xs + 0.5 - pos[5, k - 1, 0], ys + 0.5 - pos[5, k - 1, 1]) <= r[k - 1] - 1.0
            for j in range(len(r)):  # not under another ball's anti-aliased rim
                if j != k - 1:
                    inner &= np.hypot(xs + 0.5 - pos[5, j, 0], ys + 0.5 - pos[5, j, 1]) > r[j] + 0.5
            if inner.any():
                assert np.abs(img[5, ys[inner], xs[inner]] - cols[k - 1]).max() < 1.0
        # where discs overlap, the mask names the ball in the front layer (then the higher index)
        gx, gy = np.meshgrid(np.arange(64) + 0.5, np.arange(64) + 0.5)
        for t in (0, 20):
            want, best = np.zeros((64, 64), np.uint8), np.full((64, 64), -1)
            for j in range(len(r)):
                cover = np.hypot(gx - pos[t, j, 0], gy - pos[t, j, 1]) <= r[j]
                rank = lay[j] * 100 + j
                upd = cover & (rank > best)
                want[upd], best[upd] = j + 1, rank
            assert (m[t] == want).mean() > 0.999  # float32 vs float64 at exact rims
    assert overlapped >= 1


def test_v2_bad_options():
    with pytest.raises(ValueError, match="gravity_angle"):
        SyntheticPhysics(gravity_angle=[0, 90])
    with pytest.raises(ValueError, match="both set"):
        SyntheticPhysics(gravity=0.01, gravity_dirs=["down"], gravity_angle=[0, 90])
    with pytest.raises(ValueError, match="restitution"):
        SyntheticPhysics(restitution=1.5)
    with pytest.raises(ValueError, match="depth_layers"):
        SyntheticPhysics(depth_layers=0)
    with pytest.raises(ValueError, match="obstacles"):
        SyntheticPhysics(obstacles=12, obstacle_size=0.5, resolution=32)[0]


def test_caption_drop_leaves_parts_out_and_keeps_the_video():
    """caption_drop: each named part leaves the caption with its probability (own stream: videos and
    attributes unchanged); a class prompt (count, gravity) is such a partial caption."""
    from tools.datasets.synthetic_physics import caption

    kw = dict(resolution=32, num_frames=4, num_balls=[1, 3], gravity_dirs=["none", "down"], gravity=0.002,
              length=40)
    full, part = SyntheticPhysics(**kw), SyntheticPhysics(**kw, caption_drop={"colors": 0.5})
    dropped = 0
    for i in range(40):
        a, b = full[i], part[i]
        assert torch.equal(a["video"], b["video"]) and a["meta"]["attributes"] == b["meta"]["attributes"]
        attrs = a["meta"]["attributes"]
        assert b["caption"] in (a["caption"], caption(attrs, omit=["colors"]))
        dropped += b["caption"] != a["caption"]
        assert part[i]["caption"] == b["caption"]  # deterministic
    assert 10 <= dropped <= 30, dropped
    assert caption({"num_balls": 2, "colors": ["red"], "gravity": "left"}, omit=["colors"]) == \
        "two balls, falling to the left"
    every = SyntheticPhysics(**kw, caption_drop={k: 1.0 for k in ("num_balls", "colors", "gravity")})
    assert all(every[i]["caption"] == caption(every[i]["meta"]["attributes"], omit=["colors", "gravity"])
               for i in range(5))  # never empty: the count stays
    with pytest.raises(ValueError, match="caption parts"):
        SyntheticPhysics(**kw, caption_drop={"colour": 0.5})
