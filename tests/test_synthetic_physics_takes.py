"""SyntheticPhysics second takes (``perturbation`` / ``take``): the same scene with a tiny change of
the initial state, the physical-variance bound of the Physics-IQ-style scores."""
from __future__ import annotations

import pytest
import torch

from tools.datasets.synthetic_physics import SyntheticPhysics
from utils.metrics import physics_iq_scores

V2 = dict(resolution=64, num_frames=24, num_balls=[2, 4], radius=[0.05, 0.1], speed=[0.02, 0.06],
          gravity_angle=[0, 360], gravity_strength=[0.0, 0.004], restitution=[0.8, 1.0], obstacles=[0, 2], seed=7101)


def test_perturbation_zero_is_todays_item():
    a, b = SyntheticPhysics(**V2)[3], SyntheticPhysics(**V2, perturbation=0.0, take=5)[3]
    assert torch.equal(a["video"], b["video"]) and a["caption"] == b["caption"]


def test_a_second_take_is_the_same_scene_a_little_apart():
    ref, take = SyntheticPhysics(**V2), SyntheticPhysics(**V2, perturbation=0.5, take=1)
    moved = 0
    for i in range(4):
        a, b = ref[i], take[i]
        assert a["caption"] == b["caption"] and a["meta"]["physics"] == b["meta"]["physics"]  # same scene
        assert torch.equal(a["video"], take[i]["video"]) is False  # but not the same video
        pa, va, ra, _, _ = ref.simulate(i)
        pb, vb, rb, _, _ = take.simulate(i)
        assert (ra == rb).all()
        start = abs(pa[0] - pb[0]).max()
        assert 0.05 < start < 4 * 0.5  # initial offsets of the order of perturbation pixels (std 0.5)
        assert 0.005 < abs(va[0] - vb[0]).max() < 4 * 0.05  # velocity offsets: std perturbation / 10
        moved += abs(pa[-1] - pb[-1]).max() > start  # differences grow (collisions, walls) in some scenes
        assert torch.equal(take[i]["video"], b["video"])  # deterministic
    assert moved >= 1
    other = SyntheticPhysics(**V2, perturbation=0.5, take=2)[0]["video"]
    assert not torch.equal(other, take[0]["video"])  # another take, another perturbation


def test_second_takes_bound_the_motion_scores_from_above():
    """A second take scores far better against the reference than a scene of another seed."""
    ref, take = SyntheticPhysics(**V2), SyntheticPhysics(**V2, perturbation=0.5, take=1)
    other = SyntheticPhysics(**{**V2, "seed": 7102})
    for i in range(2):
        s_take = physics_iq_scores(take[i]["video"], ref[i]["video"], skip=4, kernel=3)
        s_other = physics_iq_scores(other[i]["video"], ref[i]["video"], skip=4, kernel=3)
        assert s_take["spatiotemporal_iou"] > s_other["spatiotemporal_iou"]
        assert s_take["mse"] < s_other["mse"]


@pytest.mark.parametrize("bad", [dict(perturbation=-1), dict(perturbation=True), dict(take=-1), dict(take=1.5)])
def test_bad_take_options(bad):
    with pytest.raises(ValueError, match="perturbation|take"):
        SyntheticPhysics(**V2, **bad)
