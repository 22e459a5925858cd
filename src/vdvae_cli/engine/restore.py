"""Restoring images with a hierarchical VAE as the prior: inpainting, upscaling, denoising, deblurring.

The method is PnP-HVAE (Prost, Houdard, Almansa & Papadakis, *Inverse problem regularization with
hierarchical variational autoencoders*, ICCV 2023, arXiv:2303.11217), written once over the family
interface, so it runs on every model ``vdvae`` can load. For an observation ``y = A x + n`` with a
known linear operator ``A`` and white Gaussian noise ``n`` of standard deviation ``sigma``, it
alternates two steps from an initial guess ``x_0``:

1. **Encode / decode** (the prior step): ``mu_k = D(E(x_{k-1}))``, one encoder and one top-down
   decoder pass. The first ``keep_layers`` latent layers come from the posterior ``q(z | x_{k-1})``
   (its mean, or a sample), the deeper ones are drawn from the prior at ``temperatures``; the
   pixels are the output distribution's noise-free value (output temperature 0).
2. **Data fidelity**: ``x_k = argmin_x |A x - y|^2 / (2 sigma^2) + |x - mu_k|^2 / (2 gamma^2)``,
   in closed form for each operator here (``gamma`` is the decoder's standard deviation, a
   parameter of the method as in the paper).

The paper's prior step blends each layer's posterior and prior means by their precisions
(``z = argmin -log q(z | x) - (1/T^2 - 1) log p(z)``). That blend needs both distributions inside
the decoder pass, which the family interface does not expose (and NVAE's flows have no closed
form), so this module uses the interface's own controls instead: the paper's ``T = 1`` step
(posterior means, ``z = E[q(z | x)]``) for the kept layers, and the paper's
``sample_from_prior_after`` option (layers past a depth drawn from the prior) for the rest, at a
temperature. Drawing those deeper layers and, with ``posterior="sample"``, the kept ones, gives
diverse solutions; ``posterior="mean"`` with every layer kept is deterministic.

Images cross this boundary as uint8 NHWC tensors (as in :mod:`vdvae_cli.engine.ops`); the
operators work on float (N, 3, H, W) images in [0, 1]. Every random draw goes through ``noise``
(a per-image :class:`~vdvae_cli.engine.distributions.PerImageNoise` makes image ``i`` independent
of the batch it runs in). Nothing here knows which family the model belongs to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch
import torch.nn.functional as F

from . import ops
from .distributions import PerImageNoise, as_noise
from .interface import LatentModel, first_parameter
from .registry import family_of
from .ops import NoiseLike, Posterior, Temperatures

if TYPE_CHECKING:
    from .learned_prior import TopPrior

Tensor = torch.Tensor
Callback = Callable[[int, int], None]  # (steps done, steps total)

# The standard deviation of rounding to 8 bits, on the 0-1 scale: the noise every 8-bit observation
# carries even when no other noise was added (a uniform error of one grey level, 1/255/sqrt(12)).
QUANTISATION_SIGMA = 1.0 / 255.0 / math.sqrt(12.0)

# --------------------------------------------------------------------------------------------------
# Pixels <-> the operators' float images


def to_unit(images: Tensor) -> Tensor:
    """uint8 NHWC -> float32 NCHW in [0, 1]."""
    return images.permute(0, 3, 1, 2).float() / 255.0


def to_uint8(x: Tensor) -> Tensor:
    """float NCHW in [0, 1] -> uint8 NHWC, rounded to the nearest grey level."""
    return (x.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


# --------------------------------------------------------------------------------------------------
# Degradations: y = A x + n, each with the closed-form data-fidelity step of PnP-HVAE


class Degradation:
    """A known linear degradation of (N, 3, H, W) images in [0, 1] with white Gaussian noise of
    standard deviation ``sigma``; ``y`` is always the observation as floats in [0, 1]."""

    sigma: float = 0.0

    def apply(self, x: Tensor) -> Tensor:
        """``A x``."""
        raise NotImplementedError

    def residual(self, x: Tensor, y: Tensor) -> Tensor:
        """``A x - y`` flattened per image, over the observed values only: (N, m)."""
        return (self.apply(x) - y).flatten(1)

    def observed_count(self, x: Tensor) -> Tensor:
        """How many values each image's observation holds, (N,) float."""
        return torch.full((x.shape[0],), float(self.apply(x[:1]).numel()))

    def initial(self, y: Tensor) -> Tensor:
        """The starting image ``x_0`` (N, 3, H, W)."""
        raise NotImplementedError

    def data_step(self, mu: Tensor, y: Tensor, gamma: float) -> Tensor:
        """``argmin_x |A x - y|^2 / (2 sigma^2) + |x - mu|^2 / (2 gamma^2)``, kept in [0, 1]."""
        raise NotImplementedError

    def output(self, x: Tensor, observed: Tensor) -> Tensor:
        """The uint8 NHWC answer for the final estimate ``x``; ``observed`` is the input as uint8 NHWC
        (inpainting copies its kept pixels from it)."""
        return to_uint8(x)


def _noise_weight(sigma: float, gamma: float) -> float:
    """The weight ``gamma^2 / (gamma^2 + sigma^2)`` that the observation gets against the decoder."""
    return gamma * gamma / (gamma * gamma + sigma * sigma)


@dataclass
class Inpaint(Degradation):
    """Missing pixels: ``A`` keeps the pixels where ``keep`` is True, ``(N, 1, H, W)`` bool. No noise:
    the kept pixels are returned unchanged, bit for bit."""

    keep: Tensor

    def apply(self, x: Tensor) -> Tensor:
        return x * self.keep

    def residual(self, x: Tensor, y: Tensor) -> Tensor:
        keep = self.keep.expand_as(x).flatten(1)
        diff = (x - y).flatten(1)
        return torch.where(keep, diff, torch.zeros_like(diff))

    def observed_count(self, x: Tensor) -> Tensor:
        return self.keep.expand_as(x).flatten(1).sum(dim=1).clamp(min=1).float()

    def initial(self, y: Tensor) -> Tensor:
        return fill_holes(y, self.keep)

    def data_step(self, mu: Tensor, y: Tensor, gamma: float) -> Tensor:
        return torch.where(self.keep, y, mu)

    def output(self, x: Tensor, observed: Tensor) -> Tensor:
        keep = self.keep.permute(0, 2, 3, 1).to(observed.device)  # (N, H, W, 1)
        return torch.where(keep, observed, to_uint8(x).to(observed.device))


@dataclass
class AreaDownsample(Degradation):
    """Upscaling: ``A`` averages each ``factor`` x ``factor`` block (area averaging, as PIL's BOX
    filter and ``torch.nn.functional.avg_pool2d`` do). With ``sigma == 0`` the data step is the exact
    projection onto the images whose block averages equal ``y`` within [0, 1]."""

    factor: int
    sigma: float = 0.0

    def apply(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.factor)

    def _up(self, low: Tensor) -> Tensor:
        return low.repeat_interleave(self.factor, dim=2).repeat_interleave(self.factor, dim=3)

    def initial(self, y: Tensor) -> Tensor:
        size = (y.shape[2] * self.factor, y.shape[3] * self.factor)
        guess = F.interpolate(y, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
        return self.project(guess, y)

    def data_step(self, mu: Tensor, y: Tensor, gamma: float) -> Tensor:
        if self.sigma == 0:
            return self.project(mu, y)
        # Woodbury with A A^T = I / F^2: x = mu + A^T (A A^T + sigma^2 / gamma^2)^-1 (y - A mu)
        weight = gamma * gamma / (gamma * gamma + self.factor**2 * self.sigma**2)
        return (mu + self._up(y - self.apply(mu)) * weight).clamp(0, 1)

    def project(self, x: Tensor, y: Tensor, iters: int = 24) -> Tensor:
        """The nearest image to ``x`` in [0, 1] whose block averages are ``y``: within each block
        that is ``clamp(x + c, 0, 1)`` for the one shift ``c`` that makes the mean right, found by
        bisection (the mean is monotone in ``c``)."""
        lo = -F.max_pool2d(x, self.factor)  # every pixel of the block clamps to 0: the mean is 0 <= y
        hi = 1 + F.max_pool2d(-x, self.factor)  # every pixel clamps to 1: the mean is 1 >= y
        for _ in range(iters):
            c = (lo + hi) / 2
            too_high = self.apply((x + self._up(c)).clamp(0, 1)) > y
            hi = torch.where(too_high, c, hi)
            lo = torch.where(too_high, lo, c)
        return (x + self._up((lo + hi) / 2)).clamp(0, 1)


@dataclass
class Denoise(Degradation):
    """Additive white Gaussian noise: ``A`` is the identity."""

    sigma: float

    def apply(self, x: Tensor) -> Tensor:
        return x

    def initial(self, y: Tensor) -> Tensor:
        return y

    def data_step(self, mu: Tensor, y: Tensor, gamma: float) -> Tensor:
        sigma = math.hypot(self.sigma, QUANTISATION_SIGMA)
        w = _noise_weight(sigma, gamma)
        return (w * y + (1 - w) * mu).clamp(0, 1)


def gaussian_kernel(std: float) -> Tensor:
    """A normalised 2-D Gaussian of standard deviation ``std`` pixels, radius ``ceil(3 std)``: (k, k)."""
    radius = max(1, math.ceil(3 * std))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (t / std) ** 2)
    k = torch.outer(g, g)
    return (k / k.sum()).float()


@dataclass
class GaussianBlur(Degradation):
    """A known Gaussian blur of standard deviation ``std`` pixels, as a circular convolution (the
    image wraps around at its edges), plus noise ``sigma``. The data step is the Wiener-type
    solution in the Fourier domain."""

    std: float
    sigma: float = 0.0

    def _otf(self, shape: Sequence[int], device: torch.device) -> Tensor:
        """The kernel's transfer function on an (H, W) grid, its centre at (0, 0)."""
        h, w = shape[-2], shape[-1]
        k = gaussian_kernel(self.std)
        r = k.shape[0] // 2
        if k.shape[0] > min(h, w):
            raise ValueError(f"a blur of std {self.std} (kernel {k.shape[0]} pixels) does not fit a {h}x{w} image")
        grid = torch.zeros(h, w)
        grid[: k.shape[0], : k.shape[1]] = k
        grid = torch.roll(grid, shifts=(-r, -r), dims=(0, 1))
        return torch.fft.rfft2(grid.to(device))

    def apply(self, x: Tensor) -> Tensor:
        otf = self._otf(x.shape, x.device)
        return torch.fft.irfft2(torch.fft.rfft2(x.float()) * otf, s=x.shape[-2:])

    def initial(self, y: Tensor) -> Tensor:
        return self.data_step(y, y, 0.1)

    def data_step(self, mu: Tensor, y: Tensor, gamma: float) -> Tensor:
        otf = self._otf(y.shape, y.device)
        sigma = math.hypot(self.sigma, QUANTISATION_SIGMA)
        g2, s2 = gamma * gamma, sigma * sigma
        num = g2 * otf.conj() * torch.fft.rfft2(y.float()) + s2 * torch.fft.rfft2(mu.float())
        den = g2 * otf.abs() ** 2 + s2
        return torch.fft.irfft2(num / den, s=y.shape[-2:]).clamp(0, 1)


def fill_holes(x: Tensor, keep: Tensor) -> Tensor:
    """A smooth first guess for the missing pixels: each hole takes the average of the known pixels
    around it, coarse to fine (a pyramid of masked averages), then a few smoothing sweeps inside the
    holes. Known pixels are unchanged."""
    keep_f = keep.to(x.dtype)
    if bool(keep.all()):
        return x
    h, w = x.shape[-2:]
    if not bool(keep.any()) or min(h, w) <= 1:
        known = (x * keep_f).sum(dim=(1, 2, 3), keepdim=True)
        count = keep_f.sum(dim=(1, 2, 3), keepdim=True) * x.shape[1]
        fill = torch.where(count > 0, known / count.clamp(min=1), torch.full_like(known, 0.5))
        return torch.where(keep, x, fill.expand_as(x))
    weight = F.avg_pool2d(keep_f, 2, ceil_mode=True)
    coarse = F.avg_pool2d(x * keep_f, 2, ceil_mode=True) / weight.clamp(min=1e-8)
    coarse = fill_holes(coarse, weight > 0)
    guess = torch.where(keep, x, F.interpolate(coarse, size=(h, w), mode="nearest"))
    box = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=x.dtype, device=x.device) / 4
    box = box.expand(x.shape[1], 1, 3, 3)
    for _ in range(8):
        smooth = F.conv2d(F.pad(guess, (1, 1, 1, 1), mode="replicate"), box, groups=x.shape[1])
        guess = torch.where(keep, x, smooth)
    return guess


# --------------------------------------------------------------------------------------------------
# The PnP-HVAE iteration


PIXEL_SAMPLES = 8  # draws of the output distribution averaged into the decoder's mean


def decoder_mean_noise(n: int, device: torch.device | None = None) -> PerImageNoise:
    """The noise the decoder's mean is estimated with: the same fixed stream for every image, so the
    estimate depends on neither the seed nor the batch (``posterior="mean"`` stays deterministic)."""
    gens = []
    for _ in range(n):
        g = torch.Generator()
        g.manual_seed(0x5EED)
        gens.append(g)
    return PerImageNoise(gens)


@torch.inference_mode()
def autoencode(
    model: LatentModel,
    x: Tensor,
    *,
    keep_layers: int | None = None,
    posterior: Posterior = "mean",
    temperatures: Temperatures = 1.0,
    noise: NoiseLike = None,
    pixel_samples: int = PIXEL_SAMPLES,
    prior: "TopPrior | None" = None,
) -> Tensor:
    """The prior step ``D(E(x))`` of float NCHW images in [0, 1]: one encoder and one decoder pass
    (the first ``keep_layers`` layers from the posterior, the rest from the prior at
    ``temperatures``, drawn with ``noise``; the layers a learned ``prior`` covers beyond the kept
    ones drawn from it, given the kept ones), then the mean of the output distribution, estimated
    from ``pixel_samples`` draws of the family's pixels (0: its noise-free pixels, output
    temperature 0). Returns float NCHW in [0, 1]."""
    cfg = model.cfg
    keep = cfg.n_layers if keep_layers is None else keep_layers
    if not 0 <= keep <= cfg.n_layers:
        raise ValueError(f"keep_layers={keep} but the model has {cfg.n_layers} latent layers")
    temps = ops.layer_temperatures(cfg, temperatures)
    family = family_of(model)
    p = first_parameter(model)
    n = x.shape[0]
    images = to_uint8(x).to(p.device)
    src = as_noise(noise)
    if prior is not None and prior.completes(keep):  # the kept latents first, then the learned prior's completion
        kept: list[Tensor | None] = list(ops.encode(model, images, posterior=posterior, noise=src, n_layers=keep))
        latents = ops.with_learned_prior(prior, kept, n, temps, src, p)
        out = model.decoder(n, None, latents=latents, temperatures=temps, noise=src)
    else:
        acts = model.encoder(family.model_input(model, images, p.dtype)) if keep else None
        out = model.decoder(n, acts, n_posterior=keep, posterior_mean=posterior == "mean", temperatures=temps,
                            noise=src)
    logits = model.logits(out.px_z)
    ops.check_finite(logits, "the model's output")
    if pixel_samples < 1:
        mean = family.pixels(model, logits, src, 0.0).float()
    else:
        draws = decoder_mean_noise(n)
        mean = torch.stack([family.pixels(model, logits, draws, 1.0).float() for _ in range(pixel_samples)]).mean(0)
    return (mean.permute(0, 3, 1, 2) / 255.0).to(x.device)


def restore(
    model: LatentModel,
    degradation: Degradation,
    observed: Tensor,
    *,
    steps: int = 10,
    keep_layers: int | None = None,
    posterior: Posterior = "sample",
    temperatures: Temperatures = 1.0,
    decoder_std: float = 0.05,
    consistency: bool = True,
    pixel_samples: int = PIXEL_SAMPLES,
    noise: NoiseLike = None,
    callback: Callback | None = None,
    prior: "TopPrior | None" = None,
) -> Tensor:
    """Restore ``observed`` (uint8 NHWC: the degraded images, or for upscaling the small ones) with
    ``steps`` PnP-HVAE iterations; returns uint8 NHWC images of the model's size.

    ``consistency=False`` returns the decoder's last image ``mu_K`` instead of the data-consistent
    ``x_K`` (for inpainting: without the kept pixels copied back). A learned ``prior`` draws the
    layers it covers beyond the kept ones (:func:`autoencode`).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not decoder_std > 0:
        raise ValueError(f"decoder_std must be positive, got {decoder_std}")
    src = as_noise(noise)
    y = to_unit(observed)
    x = degradation.initial(y)
    mu = x
    for k in range(steps):
        mu = autoencode(model, x, keep_layers=keep_layers, posterior=posterior, temperatures=temperatures,
                        noise=src, pixel_samples=pixel_samples, prior=prior)
        x = degradation.data_step(mu, y, decoder_std)
        if callback is not None:
            callback(k + 1, steps)
    if not consistency:
        return to_uint8(mu)
    return degradation.output(x, observed)


@dataclass
class Fit:
    """How a restored image fits: per image, (N,) each."""

    data_rmse: Tensor  # RMS of A x - y over the observed values, in grey levels (0-255)
    data_nats: Tensor  # |A x - y|^2 / (2 sigma^2) per image dimension (sigma: the noise and 8-bit rounding)
    prior_nats: Tensor  # the model's negative ELBO of x per dimension: an upper bound on -log p(x) / dims
    objective: Tensor  # data_nats + prior_nats: -log p(y | x) - log p(x) per dimension, up to a constant


def fit(
    model: LatentModel, degradation: Degradation, restored: Tensor, observed: Tensor, *, noise: NoiseLike = None
) -> Fit:
    """The data-fit error and the MAP objective ``-log p(y | x) - log p(x)`` of ``restored`` images
    (uint8 NHWC) for the ``observed`` ones, with the negative ELBO standing in for ``-log p(x)``."""
    x, y = to_unit(restored), to_unit(observed)
    r = degradation.residual(x, y)
    counted = degradation.observed_count(x)
    sq = (r.double() ** 2).sum(dim=1)
    rmse = (sq / counted.double()).sqrt() * 255.0
    sigma = math.hypot(degradation.sigma, QUANTISATION_SIGMA)
    n_dims = x[0].numel()
    data = sq / (2 * sigma * sigma) / n_dims
    prior = ops.elbo(model, restored, noise=noise).elbo.double().cpu()
    return Fit(rmse.float(), data.float(), prior.float(), (data + prior).float())


# --------------------------------------------------------------------------------------------------
# Defaults per task (the commands' and the benchmark's)


@dataclass(frozen=True)
class TaskDefaults:
    steps: int
    decoder_std: float  # gamma, on the 0-1 scale


TASK_DEFAULTS = {
    "inpaint": TaskDefaults(steps=10, decoder_std=0.05),
    "upscale": TaskDefaults(steps=10, decoder_std=0.05),
    "denoise": TaskDefaults(steps=10, decoder_std=0.2),
    "deblur": TaskDefaults(steps=10, decoder_std=0.2),
}


def default_keep_layers(cfg, kind: str, posterior: Posterior) -> int:
    """How many leading latent layers the prior step takes from the posterior when not told."""
    return cfg.n_layers
