import math

import pytest
import torch

from tools.diffusions import samplers, schedules
from tools.diffusions.gaussian import GaussianDiffusion
from tools.diffusions.rectified_flow import RectifiedFlow, frame_clip_index
from utils.registry import DIFFUSION

# ----------------------------------------------------------------- analytic Gaussian flow
MU, S = 0.7, 0.5  # data x1 ~ N(MU, S^2) per element


def _D(t):
    return t * t * S * S + (1 - t) ** 2


def exact_velocity(x, t):
    t = t.reshape(-1, *([1] * (x.dim() - 1))).to(x)
    return MU + (t * S * S - (1 - t)) / _D(t) * (x - t * MU)


def exact_x1(x, t):
    t = t.reshape(-1, *([1] * (x.dim() - 1))).to(x)
    return MU + t * S * S / _D(t) * (x - t * MU)


def closed_form(z):
    return MU + S * z  # the ODE map of N(0,1) -> N(MU, S^2) is linear


def test_euler_matches_closed_form():
    z = torch.randn(4, 3, 2, 5, 5, dtype=torch.float64)
    out = samplers.euler(exact_velocity, z, schedules.flow_timesteps(2000))
    assert torch.allclose(out, closed_form(z), atol=2e-3)


def test_heun_beats_euler():
    z = torch.randn(8, 16, dtype=torch.float64)
    ts = schedules.flow_timesteps(8)
    e_euler = (samplers.euler(exact_velocity, z, ts) - closed_form(z)).abs().max()
    e_heun = (samplers.heun(exact_velocity, z, ts) - closed_form(z)).abs().max()
    assert e_heun < 0.2 * e_euler


@pytest.mark.parametrize("prediction", ["v", "x1"])
@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_flow_sample_through_prediction(prediction, sampler):
    flow = RectifiedFlow(prediction=prediction)
    z = torch.randn(4, 8, dtype=torch.float64)
    fn = exact_velocity if prediction == "v" else exact_x1
    out = flow.sample(fn, z, steps=400, sampler=sampler)
    assert torch.allclose(out, closed_form(z), atol=1e-2)


def test_timesteps_shift():
    ts = schedules.flow_timesteps(4, shift=1.0)
    assert torch.allclose(ts, torch.linspace(0, 1, 5, dtype=torch.float64))
    ts3 = RectifiedFlow().timesteps(4, shift=3.0)
    assert ts3[0] == 0 and ts3[-1] == 1 and (ts3.diff() > 0).all()
    assert math.isclose(float(ts3[2]), 0.25)  # sigma 0.5 -> 1.5 / 2 = 0.75
    with pytest.raises(ValueError, match="shift"):
        schedules.flow_timesteps(4, shift=0)


# ----------------------------------------------------------------- conversions
@pytest.mark.parametrize("prediction", ["x1", "v", "eps"])
def test_conversions_round_trip(prediction):
    flow = RectifiedFlow(prediction=prediction)
    x1, eps = torch.randn(2, 3, 4, 5, 5, dtype=torch.float64), torch.randn(2, 3, 4, 5, 5, dtype=torch.float64)
    t = torch.tensor([0.2, 0.8], dtype=torch.float64)
    tb = t.view(-1, 1, 1, 1, 1)
    z = tb * x1 + (1 - tb) * eps
    p = flow.target(x1, eps)
    assert torch.allclose(flow.to_x1(p, z, t), x1)
    assert torch.allclose(flow.to_velocity(p, z, t), x1 - eps)
    assert torch.allclose(flow.from_x1(flow.to_x1(p, z, t), z, t), p)
    tf = t[:, None].expand(2, 4)  # per-frame times broadcast too
    assert torch.allclose(flow.to_velocity(p, z, tf), x1 - eps)


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="prediction='foo'"):
        RectifiedFlow(prediction="foo")
    with pytest.raises(ValueError, match="history_noise"):
        RectifiedFlow(history_noise=[1.0, 0.5])
    with pytest.raises(ValueError, match="zero_terminal_snr"):
        GaussianDiffusion(prediction="eps", zero_terminal_snr=True)
    with pytest.raises(ValueError, match="sampler='dpm'"):
        RectifiedFlow().sample(lambda z, t: z, torch.zeros(1, 2), steps=2, sampler="dpm")
    assert "RectifiedFlow" in DIFFUSION and "GaussianDiffusion" in DIFFUSION


# ----------------------------------------------------------------- training losses
class Recorder(torch.nn.Module):
    """Stand-in next-clip model: records its inputs; returns a fixed function of them."""

    def __init__(self, fn=None):
        super().__init__()
        self.fn = fn or (lambda xn, xc, cl, t: xn + 0.5 * xc)
        self.calls = []
        self.conds = []

    def forward(self, x_noisy, x_clean, clip_lens, t, cond=None, cond_mask=None):
        self.calls.append((x_noisy.clone(), x_clean.clone(), clip_lens, t.clone()))
        self.conds.append((cond, cond_mask))
        return self.fn(x_noisy, x_clean, clip_lens, t)


CLIP_LENS = torch.tensor([[2, 2, 2], [3, 1, 0]])  # sample 1 has 2 padding frames


def test_frame_clip_index():
    idx, valid, last = frame_clip_index(CLIP_LENS, 6)
    assert idx[0].tolist() == [0, 0, 1, 1, 2, 2] and idx[1].tolist()[:4] == [0, 0, 0, 1]
    assert valid[1].tolist() == [True] * 4 + [False] * 2
    assert last[0].tolist() == [False] * 4 + [True] * 2 and last[1].tolist() == [False] * 3 + [True, False, False]
    with pytest.raises(ValueError, match="clip_lens sums"):
        frame_clip_index(torch.tensor([[4, 4]]), 6)


@pytest.mark.parametrize("diff", [RectifiedFlow(prediction="v"), GaussianDiffusion(num_timesteps=100)])
def test_loss_ignores_padding_and_last_clean_copy(diff):
    x1 = torch.randn(2, 3, 6, 4, 4)
    m = Recorder()
    out = diff.training_losses(m, x1, CLIP_LENS, generator=torch.Generator().manual_seed(0))
    assert out["loss"].dim() == 0 and out["loss_per_frame"].shape == (2, 6) and out["t"].shape == (2, 3)
    assert (out["loss_per_frame"][1, 4:] == 0).all()
    assert torch.isclose(out["loss"], out["loss_per_frame"].sum() / 10)
    xn, xc, _, _ = m.calls[0]
    assert (xc[0, :, 4:] == 0).all() and (xc[1, :, 3:] == 0).all()  # last clip + padding hidden
    assert (xc[0, :, :4] != 0).all() and (xn[1, :, 4:] == 0).all()
    # changing padding frames or the last clip's clean content outside the noisy path changes nothing
    x2 = x1.clone()
    x2[1, :, 4:] = 100.0
    out2 = diff.training_losses(Recorder(), x2, CLIP_LENS, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out["loss"], out2["loss"])


def test_history_noise_on_clean_frames():
    x1 = torch.randn(1, 3, 6, 4, 4)
    cl = torch.tensor([[2, 2, 2]])
    for hn, noisy in ((None, False), ([0.5, 0.6], True)):
        m = Recorder()
        RectifiedFlow(history_noise=hn).training_losses(m, x1, cl, generator=torch.Generator().manual_seed(1))
        xc = m.calls[0][1]
        assert torch.equal(xc[:, :, :4], x1[:, :, :4]) != noisy


def test_flow_loss_uses_per_clip_time():
    """With x1 = 0 the exact eps is x_noisy / (1 - t_clip): an oracle reaches zero loss."""
    x1 = torch.zeros(2, 2, 6, 3, 3)
    idx, _, _ = frame_clip_index(CLIP_LENS, 6)

    def oracle(xn, xc, cl, t):
        tf = torch.gather(t, 1, idx)[:, None, :, None, None]
        return xn / (1 - tf)

    flow = RectifiedFlow(prediction="eps", t_sampler="logit_normal", history_noise=None)
    out = flow.training_losses(Recorder(oracle), x1, CLIP_LENS, generator=torch.Generator().manual_seed(0))
    assert out["loss"] < 1e-8
    assert not torch.allclose(out["t"][0, 0], out["t"][0, 1])


def test_gaussian_loss_uses_per_clip_time():
    g = GaussianDiffusion(num_timesteps=100, schedule="cosine")
    x1 = torch.zeros(2, 2, 6, 3, 3)
    idx, _, _ = frame_clip_index(CLIP_LENS, 6)

    def oracle(xn, xc, cl, t):
        k = torch.round((1 - t) * 100).long()
        ab = g.alphas_cumprod[k].float()
        return xn / torch.gather((1 - ab).sqrt(), 1, idx)[:, None, :, None, None]

    out = g.training_losses(Recorder(oracle), x1, CLIP_LENS, generator=torch.Generator().manual_seed(0))
    assert out["loss"] < 1e-8 and out["t"].max() <= 1 and out["t"].min() > 0


# ----------------------------------------------------------------- Gaussian diffusion
def test_schedules_closed_forms():
    b = schedules.linear_betas(1000)
    assert math.isclose(float(b[0]), 1e-4) and math.isclose(float(b[-1]), 0.02)
    assert math.isclose(float(schedules.linear_betas(500)[-1]), 0.04)
    T = 50
    ac = schedules.alphas_cumprod_from_betas(schedules.cosine_betas(T))
    u = torch.arange(1, T + 1, dtype=torch.float64) / T
    ref = schedules.cosine_alpha_bar(u) / schedules.cosine_alpha_bar(torch.zeros((), dtype=torch.float64))
    assert torch.allclose(ac[:-1], ref[:-1], rtol=1e-9)  # last beta is clipped at 0.999
    z = schedules.rescale_zero_terminal_snr(b)
    acz = schedules.alphas_cumprod_from_betas(z)
    assert float(acz[-1].sqrt()) == 0.0 and math.isclose(float(acz[0]), float(1 - b[0]))
    ks = schedules.ddim_timesteps(1000, 4)
    assert ks.tolist() == [999, 749, 499, 249]


def _point_mass_pred(g, c, prediction):
    def pred_fn(x, t_model):
        k = torch.round((1 - t_model) * g.num_timesteps).long()
        ab = g.alphas_cumprod[k].to(x).view(-1, *([1] * (x.dim() - 1)))
        eps = (x - ab.sqrt() * c) / (1 - ab).sqrt()
        return eps if prediction == "eps" else ab.sqrt() * eps - (1 - ab).sqrt() * c
    return pred_fn


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ddim_reaches_point_mass(schedule):
    g = GaussianDiffusion(num_timesteps=1000, schedule=schedule, prediction="eps")
    c = torch.randn(1, 3, 2, 4, 4, dtype=torch.float64)
    z = torch.randn(3, 3, 2, 4, 4, dtype=torch.float64)
    out = g.sample(_point_mass_pred(g, c, "eps"), z, steps=20, eta=0.0)
    assert torch.allclose(out, c.expand_as(out), atol=1e-5)


def test_zero_terminal_snr_v_prediction():
    g = GaussianDiffusion(num_timesteps=1000, schedule="linear", prediction="v", zero_terminal_snr=True)
    assert float(g.alphas_cumprod[-1].sqrt()) == 0.0
    c = torch.randn(1, 3, 2, 4, 4, dtype=torch.float64)
    z = torch.randn(2, 3, 2, 4, 4, dtype=torch.float64)
    out = g.sample(_point_mass_pred(g, c, "v"), z, steps=10, eta=0.0)
    assert torch.isfinite(out).all() and torch.allclose(out, c.expand_as(out), atol=1e-5)
    # stochastic sampling still lands on the point mass and is reproducible
    a = g.sample(_point_mass_pred(g, c, "v"), z, steps=10, sampler="ddpm", generator=torch.Generator().manual_seed(3))
    b = g.sample(_point_mass_pred(g, c, "v"), z, steps=10, sampler="ddpm", generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.allclose(a, c.expand_as(a), atol=1e-5)


@pytest.mark.parametrize("diff", [RectifiedFlow(prediction="x1", t_sampler="logit_normal"),
                                  RectifiedFlow(prediction="v"),
                                  GaussianDiffusion(num_timesteps=50, prediction="v")])
def test_rank_slice_matches_global_batch(diff):
    """Rank r of world w gets exactly the randomness of its rows of the global batch."""
    x1 = torch.randn(4, 2, 6, 3, 3)
    cl = torch.tensor([[2, 2, 2], [3, 1, 0], [6, 0, 0], [1, 5, 0]])
    full = diff.training_losses(Recorder(), x1, cl, generator=torch.Generator().manual_seed(7))
    parts = [diff.training_losses(Recorder(), x1[r * 2:(r + 1) * 2], cl[r * 2:(r + 1) * 2],
                                  generator=torch.Generator().manual_seed(7), rank_slice=(r, 2)) for r in (0, 1)]
    assert torch.allclose(torch.cat([p["loss_per_frame"] for p in parts]), full["loss_per_frame"], atol=1e-6)
    assert torch.equal(torch.cat([p["t"] for p in parts]), full["t"])
    with pytest.raises(ValueError, match="rank_slice"):
        diff.training_losses(Recorder(), x1, cl, rank_slice=(2, 2))


@pytest.mark.parametrize("diff", [RectifiedFlow(), GaussianDiffusion(num_timesteps=50)])
def test_training_losses_pass_cond_and_mask_to_the_model(diff):
    x1 = torch.randn(2, 3, 6, 4, 4)
    cond, mask = torch.randn(2, 3, 5), torch.tensor([[True, True, False], [True, False, False]])
    m = Recorder()
    diff.training_losses(m, x1, CLIP_LENS, cond=cond, cond_mask=mask, generator=torch.Generator().manual_seed(0))
    assert m.conds[0][0] is cond and m.conds[0][1] is mask
