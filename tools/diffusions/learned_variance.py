"""Learned-range variance of improved DDPM (Nichol & Dhariwal 2021) as plain functions on a respaced chain.

A model with a learned variance outputs 2C channels: the prediction (eps or v), then ``v`` in [-1, 1] that
interpolates the log variance of ``p(x_prev | x_k)`` between the clipped posterior variance and beta:
``log_var = (v + 1) / 2 * log(beta_j) + (1 - v) / 2 * log(beta_tilde_j)``.

A chain is the list of kept timesteps ``ks``, ascending here (``s_0 < s_1 < ...``); its betas are
recomputed from the kept alpha-cumprods, ``beta_j = 1 - ab(s_j) / ab(s_{j-1})`` (``ab(s_{-1}) = 1``), as
improved DDPM's respacing does, so that the full chain ``ks = 0..T-1`` is the original diffusion. The
posterior log variance is clipped at j = 0 to the value at j = 1 (beta_tilde_0 = 0).

Training with a learned variance uses the "hybrid" loss: the MSE of the prediction plus the variational
bound term of step k in bits per dimension, computed with the predicted mean detached so that only the
variance learns from it (``vb_term``).
"""
from __future__ import annotations

import math

import torch

CHANNEL_DIM = 1  # (B, C, F, H, W)


def split_output(out: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 2C, ...) model output -> (prediction (B, C, ...), variance values (B, C, ...))."""
    if out.shape[CHANNEL_DIM] != 2 * channels:
        raise ValueError(f"a learned-variance model must output 2 x {channels} channels (prediction, variance), "
                         f"got shape {tuple(out.shape)}; set the model's learn_sigma: true or the diffusion's "
                         f"variance: fixed")
    return out[:, :channels], out[:, channels:]


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float, channels: int) -> torch.Tensor:
    """Classifier-free guidance ``u + s (c - u)`` on the first ``channels`` output channels (the prediction);
    the variance channels are the conditional branch's, unguided (the reference's ``forward_with_cfg``)."""
    c, c_var = cond[:, :channels], cond[:, channels:]
    u = uncond[:, :channels]
    return torch.cat([u + scale * (c - u), c_var], dim=CHANNEL_DIM)


def chain_tables(alphas_cumprod: torch.Tensor, ks) -> dict[str, torch.Tensor]:
    """Float64 tables (N,) of the chain through the kept timesteps ``ks`` (any order; used ascending)."""
    s = torch.as_tensor(sorted(int(k) for k in ks), dtype=torch.long)
    ab = alphas_cumprod.double()[s]
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    beta = 1 - ab / ab_prev
    post_var = beta * (1 - ab_prev) / (1 - ab)
    clipped = torch.cat([post_var[1:2], post_var[1:]]) if len(s) > 1 else post_var.clamp(min=1e-20)
    return {
        "timesteps": s, "ab": ab, "ab_prev": ab_prev, "beta": beta,
        "post_log_var": clipped.log(),
        "coef_x0": beta * ab_prev.sqrt() / (1 - ab),
        "coef_xt": (1 - ab_prev) * (1 - beta).sqrt() / (1 - ab),
    }


def table_at(tables: dict[str, torch.Tensor], name: str, j: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``tables[name][j]`` (j (B,) chain indices) as x's dtype, broadcast to x."""
    v = tables[name].to(x.device)[j].to(x.dtype)
    return v.reshape(-1, *([1] * (x.dim() - 1)))


def log_variance(var_values: torch.Tensor, tables: dict[str, torch.Tensor], j: torch.Tensor) -> torch.Tensor:
    """The learned-range interpolation between ``log beta_tilde_j`` (v = -1) and ``log beta_j`` (v = 1)."""
    min_log = table_at(tables, "post_log_var", j, var_values)
    max_log = table_at(tables, "beta", j, var_values).log()
    frac = (var_values + 1) / 2
    return frac * max_log + (1 - frac) * min_log


def posterior_mean(x0: torch.Tensor, x: torch.Tensor, tables: dict[str, torch.Tensor], j: torch.Tensor) -> torch.Tensor:
    """Mean of ``q(x_prev | x_j, x0)`` on the chain."""
    return table_at(tables, "coef_x0", j, x) * x0 + table_at(tables, "coef_xt", j, x) * x


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """Log-likelihood of data in [-1, 1] under a Gaussian discretized to 256 bins (improved DDPM's decoder
    term at k = 0), elementwise, in nats."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_std_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))))


def vb_term(x0: torch.Tensor, x_k: torch.Tensor, x0_pred_detached: torch.Tensor, var_values: torch.Tensor,
            tables: dict[str, torch.Tensor], j: torch.Tensor) -> torch.Tensor:
    """Per-sample (B,) variational-bound term in bits per dimension: KL(q(x_prev | x_k, x0) || p(x_prev | x_k))
    for j > 0, the decoder's negative log-likelihood of x0 at j = 0. ``x0_pred_detached`` is the model's x0
    estimate with its gradient stopped, so the term trains only the variance channels."""
    true_mean = posterior_mean(x0, x_k, tables, j)
    true_log_var = table_at(tables, "post_log_var", j, x_k)
    mean = posterior_mean(x0_pred_detached, x_k, tables, j)
    log_var = log_variance(var_values, tables, j)
    dims = tuple(range(1, x0.dim()))
    kl = normal_kl(true_mean, true_log_var, mean, log_var).mean(dim=dims) / math.log(2.0)
    nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var).mean(dim=dims) / math.log(2.0)
    return torch.where(j == 0, nll, kl)
