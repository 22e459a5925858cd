"""NVAE's pixels: uint8 images to the network's data tensor, the output distribution's
log-likelihood, and output pixels drawn at a temperature.

Pixels: uint8 images are divided by 255 (then reduced to ``num_x_bits`` as NVAE's ``pre_process``
does); the network maps them to ``2x - 1`` itself. MNIST-style models take grey 28x28 images,
padded by 2 to 32, binarised at 128 (NVAE binarises stochastically, even at test time; a fixed
threshold makes our numbers repeatable); their likelihood covers the central 28x28.

Output pixels, at output temperature ``t``:

* DMoL: the component is drawn with Gumbel noise scaled by ``t`` and the logistic noise is scaled
  by ``t`` (NVAE's ``sample(t)`` *divides* the scale by ``t``, so its ``t < 1`` is noisier: PR #54);
  ``t = 1`` equals NVAE's ``sample()``, ``t = 0`` is the most likely component's mean (NVAE's
  noiseless sample).
* Bernoulli: ``t = 0`` gives the probability as a grey level (what NVAE saves), otherwise each pixel
  is drawn (the Bernoulli has no temperature of its own: any ``t > 0`` draws from it as is).
* Normal (``num_mixture_dec = 1``): ``mu + t * sigma * eps``, clamped (NVAE ignores ``t``: PR #55).

Floats in [-1, 1] become 8-bit pixels by truncating ``(x + 1) * 127.5``, as for VDVAE (``Family.pixels``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ...engine.distributions import dmol_log_prob, dmol_sample
from .config import NVAEConfig
from .distributions import bernoulli_log_prob, normal_log_p, normal_params

if TYPE_CHECKING:
    from ...engine.distributions import Noise

Tensor = torch.Tensor
DMOL_UPPER_EDGE = 0.99  # NVAE's threshold for the upper tail (the 8-bit value 254 is a tail too)


def unit_images(cfg: NVAEConfig, images: Tensor) -> Tensor:
    """uint8 NHWC -> NVAE's data tensor NCHW in [0, 1] (bit-reduced; MNIST: grey, padded, binary)."""
    x = images.float()
    if cfg.binary:
        x = x.mean(dim=-1, keepdim=True) if x.shape[-1] == 3 else x[..., :1]
        x = (x >= 128).float()
        x = F.pad(x.permute(0, 3, 1, 2), (2, 2, 2, 2))  # (N, 1, 32, 32)
        return x
    if cfg.grey:
        from ...engine.ops import as_channels

        x = as_channels(images, 1).float()
    x = x.permute(0, 3, 1, 2) / 255.0
    if cfg.num_x_bits != 8:
        x = torch.floor(x * 255.0 / 2 ** (8 - cfg.num_x_bits)) / (2**cfg.num_x_bits - 1)
    return x


def recon_log_prob(cfg: NVAEConfig, logits: Tensor, x: Tensor) -> Tensor:
    """log p(x | z) per image (N,) in nats, for NVAE data ``x`` (NCHW in [0, 1]) and NCHW logits."""
    logits, x = logits.float(), x.float()
    if cfg.likelihood == "bernoulli":
        return bernoulli_log_prob(logits, x)[:, :, 2:-2, 2:-2].sum(dim=(1, 2, 3))
    if cfg.likelihood == "normal":
        c = cfg.image_channels
        mu, sigma = normal_params(logits[:, :c], logits[:, c:])
        return normal_log_p(2 * x - 1, mu, sigma).sum(dim=(1, 2, 3))
    per_pixel = dmol_log_prob(logits.permute(0, 2, 3, 1), (2 * x - 1).permute(0, 2, 3, 1), cfg.num_mixture_dec,
                              bits=cfg.num_x_bits, upper_edge=DMOL_UPPER_EDGE)  # (N, H, W)
    return per_pixel.sum(dim=(1, 2))


def output_unit(cfg: NVAEConfig, logits: Tensor, noise: "Noise", t: float) -> Tensor:
    """Pixels in [-1, 1], NHWC with the model's channels, drawn at output temperature ``t``."""
    logits = logits.float()
    if cfg.likelihood == "bernoulli":
        p = torch.sigmoid(logits).permute(0, 2, 3, 1)  # (N, H, W, 1)
        u = noise.uniform(p.shape, device=p.device)
        x = p if t == 0 else (u < p).float()
        return 2 * x[:, 2:-2, 2:-2] - 1
    if cfg.likelihood == "normal":
        c = cfg.image_channels
        mu, sigma = normal_params(logits[:, :c], logits[:, c:], t)
        e = noise.normal(mu.shape, device=mu.device)
        return torch.clamp(mu + sigma * e, -1.0, 1.0).permute(0, 2, 3, 1)
    return dmol_sample(logits.permute(0, 2, 3, 1), cfg.num_mixture_dec, noise=noise, temperature=t)
