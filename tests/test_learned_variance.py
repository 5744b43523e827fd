"""Learned-range variance in GaussianDiffusion (tools/diffusions/learned_variance.py): the hybrid loss against a
scalar hand computation of improved DDPM's formulas, its stop-gradient on the mean, the respaced chain, the
linspace spacing, eps-only guidance and DDPM ancestral sampling with the learned variance."""
from __future__ import annotations

import math

import pytest
import torch

from tools.diffusions import learned_variance as lv
from tools.diffusions import schedules
from tools.diffusions.gaussian import GaussianDiffusion


class Constant(torch.nn.Module):
    """A 'model' whose eps and variance outputs are two parameters; it records what it was given."""

    timestep_input = "index"

    def __init__(self, eps: float, v: float):
        super().__init__()
        self.e, self.v = torch.nn.Parameter(torch.tensor(eps)), torch.nn.Parameter(torch.tensor(v))

    def forward(self, x, t):
        self.x, self.t = x.detach().clone(), t.clone()
        return torch.cat([self.e.expand_as(x), self.v.expand_as(x)], dim=1)


def diffusion():
    return GaussianDiffusion(num_timesteps=1000, schedule="linear", variance="learned_range", history_noise=None,
                             timestep_spacing="linspace")


def alpha_bars(k: int):
    betas = [1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)]
    ab = math.prod(1 - b for b in betas[:k + 1])
    return ab, ab / (1 - betas[k]), betas[k]


def phi(x):  # the tanh approximation of the normal CDF that improved DDPM's decoder term uses
    return 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def hand_vb(x0: float, xk: float, eps: float, v: float, k: int) -> float:
    ab, ab_prev, beta = alpha_bars(k)
    x0_hat = (xk - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
    c0, ct = beta * math.sqrt(ab_prev) / (1 - ab), (1 - ab_prev) * math.sqrt(1 - beta) / (1 - ab)
    mean = c0 * x0_hat + ct * xk
    if k == 0:
        _, ab1_prev, beta1 = alpha_bars(1)
        post = beta1 * (1 - ab1_prev) / (1 - alpha_bars(1)[0])  # clipped: the value at k = 1
    else:
        post = beta * (1 - ab_prev) / (1 - ab)
    log_var = (v + 1) / 2 * math.log(beta) + (1 - v) / 2 * math.log(post)
    if k == 0:
        s = math.exp(-0.5 * log_var)
        return -math.log(phi(s * (x0 - mean + 1 / 255)) - phi(s * (x0 - mean - 1 / 255))) / math.log(2)
    true_mean = c0 * x0 + ct * xk
    kl = 0.5 * (-1 + log_var - math.log(post) + math.exp(math.log(post) - log_var)
                + (true_mean - mean) ** 2 * math.exp(-log_var))
    return kl / math.log(2)


def test_hybrid_loss_matches_the_hand_computation_and_stops_the_mean_gradient():
    d, model = diffusion(), Constant(eps=0.3, v=-0.4)
    x0 = torch.full((1, 1, 1, 1, 1), 0.7)
    out = d.video_losses(model, x0, generator=torch.Generator().manual_seed(0))
    k, xk = int(out["k"]), float(model.x)
    assert int(model.t) == k > 0  # the model got the integer timestep
    ab = alpha_bars(k)[0]
    eps_true = (xk - math.sqrt(ab) * 0.7) / math.sqrt(1 - ab)
    mse, vb = (0.3 - eps_true) ** 2, hand_vb(0.7, xk, 0.3, -0.4, k)
    assert float(out["mse"]) == pytest.approx(mse, rel=1e-5)
    assert float(out["vb"]) == pytest.approx(vb, rel=1e-4)
    assert float(out["loss"].detach()) == pytest.approx(mse + vb, rel=1e-4)
    out["loss"].backward()
    assert float(model.e.grad) == pytest.approx(2 * (0.3 - eps_true), rel=1e-5)  # the vb term adds nothing to eps
    assert float(model.v.grad) != 0.0  # ... and is what trains the variance


def test_decoder_term_at_timestep_zero_matches_the_hand_computation():
    d = diffusion()
    x0, xk, eps, v = 0.2, 0.25, -0.5, 0.3
    t = lambda a: torch.full((1, 1, 1, 1, 1), a, dtype=torch.float64)  # noqa: E731
    ab = torch.full((1, 1, 1, 1, 1), alpha_bars(0)[0], dtype=torch.float64)
    x0_hat = d.to_eps_x0(t(eps), t(xk), ab)[1]
    got = lv.vb_term(t(x0), t(xk), x0_hat, t(v), d._full_chain, torch.tensor([0]))
    assert float(got) == pytest.approx(hand_vb(x0, xk, eps, v, 0), rel=1e-6)


def test_full_chain_is_the_original_diffusion_and_a_respaced_one_recomputes_betas():
    d = diffusion()
    full = lv.chain_tables(d.alphas_cumprod, range(1000))
    assert torch.allclose(full["beta"], d.betas, rtol=1e-9)
    ks = d.timesteps(5)
    assert ks.tolist() == [999, 749, 500, 250, 0] == schedules.ddim_timesteps(1000, 5, "linspace").tolist()
    chain = lv.chain_tables(d.alphas_cumprod, ks)
    ac = d.alphas_cumprod
    assert float(chain["beta"][2]) == pytest.approx(float(1 - ac[500] / ac[250]), rel=1e-12)
    assert float(chain["post_log_var"][0]) == float(chain["post_log_var"][1])  # clipped at the first step


def test_guidance_acts_on_the_eps_channels_only():
    d = diffusion()
    c, u = torch.randn(2, 8, 3, 4, 4), torch.randn(2, 8, 3, 4, 4)
    g = d.guide(c, u, 7.0)
    assert torch.allclose(g[:, :4], u[:, :4] + 7 * (c[:, :4] - u[:, :4]))
    assert torch.equal(g[:, 4:], c[:, 4:])
    fixed = GaussianDiffusion(history_noise=None)
    assert torch.allclose(fixed.guide(c, u, 7.0), u + 7 * (c - u))


def test_ddpm_ancestral_uses_the_learned_variance():
    """Two kept timesteps (0, 999): one noisy step with std exp(log_var / 2) at v, then the mean at k = 0."""
    d, model = diffusion(), Constant(eps=0.0, v=1.0)  # v = 1: the variance is beta of the respaced step
    z = torch.randn(1, 1, 2, 2, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x = d.sample(lambda x, t: model(x, t), z, steps=2, sampler="ddpm", timestep_input="index",
                     generator=torch.Generator().manual_seed(2))
    ac = d.alphas_cumprod
    ab, ab_prev = float(ac[999]), float(ac[0])
    beta = 1 - ab / ab_prev
    x0_hat = z / math.sqrt(ab)
    mean = beta * math.sqrt(ab_prev) / (1 - ab) * x0_hat + (1 - ab_prev) * math.sqrt(1 - beta) / (1 - ab) * z
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(2))
    x1 = mean + math.sqrt(beta) * noise
    beta0 = 1 - ab_prev  # the last step: to alpha_bar 1, eps = 0 -> the mean is x1 / sqrt(alpha_bar_0)
    expected = beta0 / (1 - ab_prev) * (x1 / math.sqrt(ab_prev))
    assert torch.allclose(x, expected, rtol=1e-5, atol=1e-6)
    assert int(model.t) == 0


def test_settings_are_checked():
    with pytest.raises(ValueError, match="learned_range"):
        GaussianDiffusion(variance="learned")
    with pytest.raises(ValueError, match="2 x 4 channels"):
        diffusion().p_mean_variance(torch.zeros(1, 4, 1, 2, 2), torch.zeros(1, 4, 1, 2, 2), torch.tensor([0]),
                                    lv.chain_tables(diffusion().alphas_cumprod, [0, 999]))
