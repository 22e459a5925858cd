"""NVAE's distributions: the soft-clamped Normal, the Bernoulli head, the DMoL mean.

NVAE parameterises each latent Normal by raw conv outputs ``(mu_raw, log_sig_raw)``:
``mu = 5 tanh(mu_raw / 5)``, ``sigma = exp(5 tanh(log_sig_raw / 5)) + 0.01``, and a temperature ``t``
multiplies ``sigma`` after the floor (``t = 0`` gives the mean exactly). The top group's prior is
``N(0, 1.01^2)`` (zero raw outputs). The DMoL likelihood and sampler are the shared ones in
:mod:`vdvae_cli.engine.distributions` (same channel layout, NVAE's 0.99 upper edge and bit depth).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def soft_clamp(x: Tensor) -> Tensor:
    """``5 tanh(x / 5)``: NVAE's clamp of means and log-sigmas to (-5, 5)."""
    return torch.tanh(x / 5.0) * 5.0


def normal_params(mu_raw: Tensor, log_sig_raw: Tensor, t: float = 1.0) -> tuple[Tensor, Tensor]:
    """(mu, sigma) of NVAE's Normal from raw conv outputs, sigma scaled by temperature ``t``."""
    mu = soft_clamp(mu_raw)
    sigma = torch.exp(soft_clamp(log_sig_raw)) + 1e-2
    if t != 1.0:
        sigma = sigma * t
    return mu, sigma


def normal_log_p(z: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    """Elementwise log N(z; mu, sigma^2)."""
    d = (z - mu) / sigma
    return -0.5 * d * d - HALF_LOG_2PI - torch.log(sigma)


def normal_kl(q_mu: Tensor, q_sigma: Tensor, p_mu: Tensor, p_sigma: Tensor) -> Tensor:
    """Elementwise analytic KL(N(q_mu, q_sigma^2) || N(p_mu, p_sigma^2))."""
    a = (q_mu - p_mu) / p_sigma
    b = q_sigma / p_sigma
    return 0.5 * (a * a + b * b) - 0.5 - torch.log(b)


def bernoulli_log_prob(logits: Tensor, x: Tensor) -> Tensor:
    """Elementwise log Bernoulli(x; sigmoid(logits)) for x in {0, 1} (or [0, 1])."""
    return -F.binary_cross_entropy_with_logits(logits.float(), x.float(), reduction="none")


def dmol_mean(logits: Tensor, num_mixtures: int) -> Tensor:
    """NVAE's ``DiscMixLogistic.mean()`` in [-1, 1], (N, 3, H, W), from NCHW logits (N, 10M, H, W).

    Not a true mixture mean: softmax weights average the component means and the tanh coupling
    coefficients, then the clamped R -> G -> B chain is applied once.
    """
    m = num_mixtures
    n, _, h, w = logits.shape
    logits = logits.float()
    weights = torch.softmax(logits[:, :m], dim=1).unsqueeze(1)  # (N, 1, M, H, W)
    rest = logits[:, m:].reshape(n, 3, 3 * m, h, w)
    means = (rest[:, :, :m] * weights).sum(dim=2)  # (N, 3, H, W)
    coeffs = (torch.tanh(rest[:, :, 2 * m :]) * weights).sum(dim=2)
    r = torch.clamp(means[:, 0], -1.0, 1.0)
    g = torch.clamp(means[:, 1] + coeffs[:, 0] * r, -1.0, 1.0)
    b = torch.clamp(means[:, 2] + coeffs[:, 1] * r + coeffs[:, 2] * g, -1.0, 1.0)
    return torch.stack([r, g, b], dim=1)
