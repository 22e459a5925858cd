"""Random draws, diagonal Gaussians and the discretized mixture of logistics (DMoL).

Every draw goes through a :class:`Noise` source, which wraps ``torch.Generator`` objects: one
generator for a whole batch (:class:`BatchNoise`) or one per image (:class:`PerImageNoise`, which
makes image ``i`` of a seeded run independent of the batch it was drawn in).

Gaussian parameters are (mean, log standard deviation), as in the reference. DMoL maths runs in
float32 whatever the network dtype.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

# --------------------------------------------------------------------------------------------------
# Noise sources


class Noise:
    """Source of standard-normal and uniform noise for a batch. Subclasses decide the streams."""

    def normal(self, shape: Sequence[int], *, device: torch.device) -> Tensor:  # (N, ...) float32
        raise NotImplementedError

    def uniform(self, shape: Sequence[int], *, device: torch.device) -> Tensor:  # (N, ...) in [0, 1)
        raise NotImplementedError


def _on(device: torch.device, x: Tensor) -> Tensor:
    return x if x.device == torch.device(device) else x.to(device, non_blocking=True)


class BatchNoise(Noise):
    """All draws from one generator (or torch's global RNG when ``generator`` is None). Draws are
    made on the generator's own device and moved to where they are used, so a CPU generator gives
    the same numbers whatever device the network runs on."""

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def _where(self, device):
        return device if self.generator is None else self.generator.device

    def normal(self, shape, *, device):
        return _on(device, torch.randn(tuple(shape), generator=self.generator, device=self._where(device)))

    def uniform(self, shape, *, device):
        return _on(device, torch.rand(tuple(shape), generator=self.generator, device=self._where(device)))


class PerImageNoise(Noise):
    """One generator per image: row ``j`` of every draw comes from ``generators[j]`` only (drawn on
    that generator's device, then moved to the network's)."""

    def __init__(self, generators: Sequence[torch.Generator]):
        self.generators = list(generators)

    def _check(self, shape: Sequence[int]) -> None:
        if shape[0] != len(self.generators):
            raise ValueError(f"batch of {shape[0]} but {len(self.generators)} per-image generators")

    def normal(self, shape, *, device):
        self._check(shape)
        return _on(device, torch.stack([torch.randn(tuple(shape[1:]), generator=g, device=g.device) for g in self.generators]))

    def uniform(self, shape, *, device):
        self._check(shape)
        return _on(device, torch.stack([torch.rand(tuple(shape[1:]), generator=g, device=g.device) for g in self.generators]))


def as_noise(source: Noise | torch.Generator | Sequence[torch.Generator] | None) -> Noise:
    """Accept a Noise, a generator, a list of per-image generators, or None (global RNG)."""
    if isinstance(source, Noise):
        return source
    if source is None or isinstance(source, torch.Generator):
        return BatchNoise(source)
    return PerImageNoise(source)


# --------------------------------------------------------------------------------------------------
# Diagonal Gaussians (mean, log-std)


def gaussian_kl(qm: Tensor, qv: Tensor, pm: Tensor, pv: Tensor) -> Tensor:
    """Elementwise KL(N(qm, e^qv) || N(pm, e^pv)); qv, pv are log standard deviations."""
    return -0.5 + pv - qv + 0.5 * (torch.exp(qv) ** 2 + (qm - pm) ** 2) / torch.exp(pv) ** 2


def gaussian_log_prob(z: Tensor, mean: Tensor, logstd: Tensor) -> Tensor:
    """Elementwise log N(z; mean, e^logstd)."""
    return -0.5 * math.log(2 * math.pi) - logstd - 0.5 * ((z - mean) * torch.exp(-logstd)) ** 2


def temperature_std(logstd: Tensor, t: float) -> Tensor:
    """Standard deviation scaled by temperature ``t``: exp(logstd + log t); zero when t == 0."""
    if t == 0:
        return torch.zeros_like(logstd)
    return torch.exp(logstd + math.log(t))


# --------------------------------------------------------------------------------------------------
# Discretized mixture of logistics


def dmol_param_count(channels: int, num_mixtures: int) -> int:
    """DMoL parameters per pixel: RGB (3 channels) 10M (mixture logits, then per colour means,
    log-scales and the coefficients that condition G on R and B on R, G); grey (1 channel) 3M
    (mixture logits, means, log-scales)."""
    if channels == 3:
        return 10 * num_mixtures
    if channels == 1:
        return 3 * num_mixtures
    raise ValueError(f"the DMoL models 1 (grey) or 3 (RGB) channels, not {channels}")


def dmol_channels(logits: Tensor, num_mixtures: int) -> int:
    """How many colour channels DMoL parameters ``logits`` (..., 10M or 3M) describe."""
    size = logits.shape[-1]
    for c in (3, 1):
        if size == dmol_param_count(c, num_mixtures):
            return c
    raise ValueError(f"{size} DMoL parameters per pixel fit neither 3 nor 1 channels of {num_mixtures} mixtures")


def _split_dmol(logits: Tensor, num_mixtures: int) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """(N,H,W,10M) -> mixture logits (N,H,W,M), means, log-scales (clamped), coeffs: each (N,H,W,3,M).

    Grey parameters (N,H,W,3M) give means and log-scales (N,H,W,1,M) and no coefficients (None)."""
    m = num_mixtures
    n, h, w, _ = logits.shape
    pi = logits[..., :m]
    if dmol_channels(logits, m) == 1:
        rest = logits[..., m:].reshape(n, h, w, 1, 2 * m)  # [means | log-scales]
        return pi, rest[..., :m], torch.clamp(rest[..., m:], min=-7.0), None
    rest = logits[..., m:].reshape(n, h, w, 3, 3 * m)  # per colour: [means | log-scales | coeffs]
    means = rest[..., :m]
    log_scales = torch.clamp(rest[..., m : 2 * m], min=-7.0)
    coeffs = torch.tanh(rest[..., 2 * m : 3 * m])
    return pi, means, log_scales, coeffs


def dmol_nll(logits: Tensor, target: Tensor, num_mixtures: int, *, low_bit: bool = False) -> Tensor:
    """Negative log-likelihood per image in nats per dimension, shape (N,).

    ``logits`` (N,H,W,10M), ``target`` (N,H,W,3) in [-1, 1] (grey: (N,H,W,3M) and (N,H,W,1)). ``low_bit`` uses 5-bit bins (half-width
    1/31) as the reference's ffhq_256 loss does. Computed in float32.
    """
    per_pixel = dmol_log_prob(logits, target, num_mixtures, bits=5 if low_bit else 8)  # (N,H,W)
    n_dims = target.shape[1] * target.shape[2] * target.shape[3]
    return -per_pixel.sum(dim=(1, 2)) / n_dims


def dmol_log_prob(
    logits: Tensor, target: Tensor, num_mixtures: int, *, bits: int = 8, upper_edge: float = 0.999
) -> Tensor:
    """Per-pixel DMoL log-likelihood (N,H,W) in nats, summed over colours (one for grey), in float32.

    Bins have half-width ``1 / (2^bits - 1)``; targets below -0.999 take the lower tail, targets above
    ``upper_edge`` the upper tail (VDVAE 0.999; NVAE 0.99, so its 8-bit value 254 is a tail too).
    """
    logits, target = logits.float(), target.float()
    pi, means, log_scales, coeffs = _split_dmol(logits, num_mixtures)
    x = target.unsqueeze(-1)  # (N,H,W,C,1)
    if coeffs is None:  # grey: one channel, nothing to condition on
        if target.shape[-1] != 1:
            raise ValueError(f"grey DMoL parameters for a target of {target.shape[-1]} channels")
        centred = x - means  # (N,H,W,1,M)
    else:
        r, g = x[..., 0, :], x[..., 1, :]
        mean_r = means[..., 0, :]
        mean_g = means[..., 1, :] + coeffs[..., 0, :] * r
        mean_b = means[..., 2, :] + coeffs[..., 1, :] * r + coeffs[..., 2, :] * g
        centred = x - torch.stack([mean_r, mean_g, mean_b], dim=-2)  # (N,H,W,3,M)
    inv_scale = torch.exp(-log_scales)
    levels = 2**bits - 1
    half = 1.0 / levels
    plus = inv_scale * (centred + half)
    minus = inv_scale * (centred - half)
    log_cdf_plus = plus - F.softplus(plus)
    log_one_minus_cdf_minus = -F.softplus(minus)
    delta = torch.sigmoid(plus) - torch.sigmoid(minus)
    mid = inv_scale * centred
    log_pdf_mid = mid - log_scales - 2.0 * F.softplus(mid)
    log_bin_width = math.log(levels / 2)
    log_probs = torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(
            x > upper_edge,
            log_one_minus_cdf_minus,
            torch.where(delta > 1e-5, torch.log(torch.clamp(delta, min=1e-12)), log_pdf_mid - log_bin_width),
        ),
    )
    log_probs = log_probs.sum(dim=3) + torch.log_softmax(pi, dim=-1)  # (N,H,W,M)
    return torch.logsumexp(log_probs, dim=-1)  # (N,H,W)


def dmol_sample(
    logits: Tensor,
    num_mixtures: int,
    *,
    noise: Noise | None = None,
    temperature: float = 1.0,
    u_mix: Tensor | None = None,
    u_logistic: Tensor | None = None,
) -> Tensor:
    """Draw pixels in [-1, 1], shape (N,H,W,3), from DMoL parameters ``logits`` (N,H,W,10M);
    grey parameters (N,H,W,3M) give (N,H,W,1).

    ``temperature`` scales both noises: 1 is the reference sampler, 0 is noise-free (most likely
    component, logistic mean). ``u_mix`` (N,H,W,M) and ``u_logistic`` (N,H,W,3) inject the uniforms
    in (1e-5, 1-1e-5) instead of drawing them (component uniforms are drawn first).
    """
    logits = logits.float()
    pi, means, log_scales, coeffs = _split_dmol(logits, num_mixtures)
    n, h, w, _ = logits.shape
    c = 1 if coeffs is None else 3
    device = logits.device
    noise = noise or BatchNoise()
    if u_mix is None:
        u_mix = open_uniform(noise.uniform((n, h, w, num_mixtures), device=device))
    if u_logistic is None:
        u_logistic = open_uniform(noise.uniform((n, h, w, c), device=device))
    if temperature == 0:
        k = pi.argmax(dim=-1)
        logistic = torch.zeros_like(u_logistic)
    else:
        k = torch.argmax(pi - temperature * torch.log(-torch.log(u_mix)), dim=-1)  # (N,H,W)
        logistic = temperature * (torch.log(u_logistic) - torch.log(1.0 - u_logistic))
    idx = k[..., None, None].expand(n, h, w, c, 1)
    mean = means.gather(-1, idx).squeeze(-1)  # (N,H,W,C)
    log_scale = log_scales.gather(-1, idx).squeeze(-1)
    x = mean + torch.exp(log_scale) * logistic
    if coeffs is None:
        return torch.clamp(x, -1.0, 1.0)  # (N,H,W,1)
    coeff = coeffs.gather(-1, idx).squeeze(-1)
    r = torch.clamp(x[..., 0], -1.0, 1.0)
    g = torch.clamp(x[..., 1] + coeff[..., 0] * r, -1.0, 1.0)
    b = torch.clamp(x[..., 2] + coeff[..., 1] * r + coeff[..., 2] * g, -1.0, 1.0)
    return torch.stack([r, g, b], dim=-1)


def open_uniform(u: Tensor) -> Tensor:
    """Map [0, 1) to [1e-5, 1 - 1e-5] as the reference's ``uniform_(1e-5, 1 - 1e-5)`` does."""
    return u * (1.0 - 2e-5) + 1e-5


def to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] floats -> uint8 pixels by truncation, as the reference does."""
    return torch.clamp((x.float() + 1.0) * 127.5, 0.0, 255.0).to(torch.uint8)
