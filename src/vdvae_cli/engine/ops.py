"""What you do with a VDVAE or an NVAE: plain functions over (model, tensors, options).

Every family's network satisfies :class:`vdvae_cli.engine.interface.LatentModel`; what differs (network input,
likelihood, output pixels, importance weights) is asked of the model's family object.

Images cross this boundary as uint8 NHWC tensors (the reference's convention); latents as a list
with one (N, Z, r, r) tensor per latent layer, in decoder order (lowest resolution first).
Every function runs under ``torch.inference_mode`` except :func:`elbo` with ``grad=True``
(training). Randomness comes from ``noise``: a :class:`~vdvae_cli.engine.distributions.Noise`, a
``torch.Generator``, or a list of per-image generators.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal, Sequence, cast

import torch

from .interface import FamilyConfig
from .distributions import Noise, as_noise
from .registry import family_of
from .interface import first_parameter
from .interface import LatentModel

if TYPE_CHECKING:
    from .learned_prior import TopPrior

Tensor = torch.Tensor
Temperatures = float | Sequence[float]
NoiseLike = Noise | torch.Generator | Sequence[torch.Generator] | None
Posterior = Literal["sample", "mean"]
Callback = Callable[[int, int], None]  # (images done, images total)

# --------------------------------------------------------------------------------------------------
# Pixels <-> network tensors


def as_channels(images: Tensor, channels: int) -> Tensor:
    """uint8 NHWC ``images`` with ``channels`` channels: RGB to grey by the ITU-R BT.601 luma,
    rounded (exact for grey stored as RGB, R = G = B), grey to RGB by repetition."""
    have = images.shape[-1]
    if have == channels:
        return images
    if channels == 1 and have == 3:
        x = images.to(torch.int32)
        return ((299 * x[..., 0] + 587 * x[..., 1] + 114 * x[..., 2] + 500) // 1000).to(torch.uint8)[..., None]
    if channels == 3 and have == 1:
        return images.expand(*images.shape[:-1], 3)
    raise ValueError(f"images with {have} channels for a model of {channels}")


def check_finite(t: Tensor, what: str) -> None:
    """Refuse NaN or infinity where a picture or a number will be made from ``t`` (rather than
    writing a black image or a NaN and exiting 0)."""
    if not bool(torch.isfinite(t).all()):
        from ..base.errors import NumericalError

        raise NumericalError(
            f"{what} is not finite (NaN or infinity): the weights or latents overflow"
            + (f" in {str(t.dtype).removeprefix('torch.')}" if t.dtype != torch.float32 else ""),
            hint="try --dtype fp32, a lower --temp, or check the model file",
        )


def _param(model: LatentModel) -> Tensor:
    return first_parameter(model)


def _input(model: LatentModel, images: Tensor, dtype: torch.dtype) -> Tensor:
    """The encoder's input for uint8 NHWC ``images`` (the model's family decides)."""
    return family_of(model).model_input(model, images, dtype)


def _check_output_temperature(output_temperature: float) -> None:
    from ..base.safety import MAX_TEMPERATURE

    if not (isinstance(output_temperature, (int, float)) and 0 <= output_temperature <= MAX_TEMPERATURE):
        from ..base.errors import TemperatureSpecError

        raise TemperatureSpecError(f"output temperature {output_temperature!r} is not a number from 0 to {MAX_TEMPERATURE:g}")


def _pixels(model: LatentModel, px_z: Tensor, noise: Noise, output_temperature: float) -> Tensor:
    _check_output_temperature(output_temperature)
    logits = model.logits(px_z)
    check_finite(logits, "the model's output")
    return family_of(model).pixels(model, logits, noise, output_temperature)


@torch.inference_mode()
def _draw_pixels(model: LatentModel, n: int, output_temperature: float, noise: Noise) -> Tensor:
    _check_output_temperature(output_temperature)
    return family_of(model).draw_pixels(model, n, noise, output_temperature)


def require_latent_layers(model: LatentModel | FamilyConfig, what: str) -> None:
    """Refuse, in one line, to run ``what`` (an operation on latents) on a model without latent layers."""
    cfg = cast(FamilyConfig, getattr(model, "cfg", model))
    if cfg.n_layers == 0:
        from ..base.errors import UsageError

        raise UsageError(f"{what} needs latent layers, and model {cfg.name} ({family_of(cfg).name}) has none: "
                         "it models the pixels directly",
                         hint="sample, eval, info and train work with it; use a VAE (vdvae or nvae) for this")


def layer_temperatures(cfg: FamilyConfig, temperatures: Temperatures) -> list[float]:
    """One checked temperature per latent layer, from one number or a list of them."""
    from .temperature import check_temperatures

    if isinstance(temperatures, (int, float)):
        return check_temperatures([float(temperatures)] * cfg.n_layers)
    temps = [float(t) for t in temperatures]
    if len(temps) != cfg.n_layers:
        raise ValueError(f"{len(temps)} temperatures for a model with {cfg.n_layers} latent layers")
    return check_temperatures(temps)


# --------------------------------------------------------------------------------------------------
# Encoding and decoding


@torch.inference_mode()
def encode(
    model: LatentModel, images: Tensor, *, posterior: Posterior = "sample", noise: NoiseLike = None, n_layers: int | None = None
) -> list[Tensor]:
    """Posterior latents of ``images`` (uint8 NHWC): one (N, Z, r, r) float32 tensor per layer.

    ``n_layers`` stops after that many leading layers (a prefix costs only its own layers)."""
    require_latent_layers(model, "encode")
    p = _param(model)
    n_layers = model.cfg.n_layers if n_layers is None else n_layers
    if n_layers == 0:
        return []
    acts = model.encoder(_input(model, images.to(p.device), p.dtype))
    out = model.decoder(images.shape[0], acts, posterior_mean=posterior == "mean", noise=as_noise(noise),
                        want_latents=True, stop_after=n_layers)
    return [z.float() for z in out.latents]


@torch.inference_mode()
def decode(
    model: LatentModel,
    latents: Sequence[Tensor | None],
    *,
    n: int | None = None,
    temperatures: Temperatures = 1.0,
    output_temperature: float = 1.0,
    noise: NoiseLike = None,
    prior: "TopPrior | None" = None,
) -> Tensor:
    """Images (uint8 NHWC) from a latent prefix (or any subset: None entries stay free).

    Layers without a latent are sampled from the prior at ``temperatures``; with a learned
    ``prior``, the layers it covers come from it (conditioned on the given leading layers).
    """
    require_latent_layers(model, "decode")
    given = [z for z in latents if z is not None]
    if n is None:
        if not given:
            raise ValueError("decode needs n when no latent is given")
        n = given[0].shape[0]
    p = _param(model)
    src = as_noise(noise)
    temps = layer_temperatures(model.cfg, temperatures)
    latents = [None if z is None else z.to(device=p.device, dtype=p.dtype) for z in latents]
    if prior is not None:
        latents = with_learned_prior(prior, latents, n, temps, src, p)
    out = model.decoder(n, latents=latents, temperatures=temps, noise=src)
    return _pixels(model, out.px_z, src, output_temperature)


def with_learned_prior(prior: "TopPrior", latents: list[Tensor | None], n: int, temps: Sequence[float],
                        noise: Noise, like: Tensor) -> list[Tensor | None]:
    """``latents`` with the learned prior's layers filled in after the given leading ones."""
    lead = 0
    while lead < min(len(latents), prior.layers) and latents[lead] is not None:
        lead += 1
    if not prior.completes(lead):  # all its layers given, or given some and it draws only from none
        return latents
    if any(z is not None for z in latents[lead : prior.layers]):
        from ..base.errors import UsageError

        raise UsageError(f"the learned prior draws its {prior.layers} layers in order, so it cannot fill layer {lead} "
                         "around a given later one", hint="give a leading run of layers, or use --prior model")
    given = [z for z in latents[:lead] if z is not None]
    top = prior.complete(n, given, temps, noise, like.device)
    return [z.to(device=like.device, dtype=like.dtype) for z in top] + list(latents[prior.layers :])


def sample(
    model: LatentModel,
    n: int,
    *,
    temperatures: Temperatures = 1.0,
    output_temperature: float = 1.0,
    noise: NoiseLike = None,
    prior: "TopPrior | None" = None,
) -> Tensor:
    """``n`` unconditional samples (uint8 NHWC) at per-layer ``temperatures`` (the layers a learned
    ``prior`` covers drawn from it).

    A model with no latent layers (an autoregressive family: PixelCNN++) is drawn by its family,
    pixel by pixel (``Family.draw_pixels``); ``temperatures`` do not apply to it."""
    if model.cfg.n_layers == 0:
        return _draw_pixels(model, n, output_temperature, as_noise(noise))
    return decode(model, [], n=n, temperatures=temperatures, output_temperature=output_temperature, noise=noise,
                  prior=prior)


@torch.inference_mode()
def reconstruct(
    model: LatentModel,
    images: Tensor,
    *,
    keep_layers: int | None = None,
    posterior: Posterior = "sample",
    temperatures: Temperatures = 1.0,
    output_temperature: float = 1.0,
    noise: NoiseLike = None,
    prior: "TopPrior | None" = None,
) -> Tensor:
    """Keep the first ``keep_layers`` latent layers (default: all) from the posterior of ``images``
    and sample the rest from the prior, in one decoder pass (two with a learned ``prior`` that
    covers layers beyond the kept ones: the kept latents first, then the completion)."""
    require_latent_layers(model, "reconstruct")
    cfg = model.cfg
    keep = cfg.n_layers if keep_layers is None else keep_layers
    if not 0 <= keep <= cfg.n_layers:
        raise ValueError(f"keep_layers={keep} but the model has {cfg.n_layers} latent layers")
    p = _param(model)
    src = as_noise(noise)
    if prior is not None and prior.completes(keep):
        kept = encode(model, images, posterior=posterior, noise=src, n_layers=keep)
        return decode(model, kept, n=images.shape[0], temperatures=temperatures, output_temperature=output_temperature,
                      noise=src, prior=prior)
    acts = model.encoder(_input(model, images.to(p.device), p.dtype)) if keep else None
    out = model.decoder(images.shape[0], acts, n_posterior=keep, posterior_mean=posterior == "mean",
                        temperatures=layer_temperatures(cfg, temperatures), noise=src)
    return _pixels(model, out.px_z, src, output_temperature)


@torch.inference_mode()
def mix(
    model: LatentModel,
    prefix: Sequence[Tensor],
    rest_images: Tensor | None,
    *,
    n: int | None = None,
    posterior: Posterior = "sample",
    temperatures: Temperatures = 1.0,
    output_temperature: float = 1.0,
    noise: NoiseLike = None,
    prior: "TopPrior | None" = None,
) -> Tensor:
    """Latent-prefix mixing: the given ``prefix`` latents (e.g. ``encode(model, a, n_layers=K)``) fix
    the first K layers; the rest come from the posterior of ``rest_images`` *given that prefix*, or
    from the prior when ``rest_images`` is None.

    The rest is inferred conditionally (B's encoder activations meet the prefix's decoder state), so
    the completion fits the prefix; an empty prefix is B's reconstruction and a full one is A's.
    A prefix with batch 1 is shared by every row; the batch is ``n`` or the rows of ``rest_images``.
    """
    require_latent_layers(model, "mix")
    cfg = model.cfg
    if len(prefix) > cfg.n_layers:
        raise ValueError(f"a prefix of {len(prefix)} layers but the model has {cfg.n_layers} latent layers")
    if n is None:
        n = rest_images.shape[0] if rest_images is not None else max((z.shape[0] for z in prefix), default=1)
    p = _param(model)
    src = as_noise(noise)
    latents = [z.to(device=p.device, dtype=p.dtype).expand(n, -1, -1, -1) for z in prefix]
    if prior is not None and rest_images is None and len(prefix) < prior.layers:
        return decode(model, latents, n=n, temperatures=temperatures, output_temperature=output_temperature,
                      noise=src, prior=prior)
    acts = None
    if rest_images is not None:
        acts = model.encoder(_input(model, rest_images.to(p.device), p.dtype))
    out = model.decoder(n, acts, latents=latents, posterior_mean=posterior == "mean",
                        temperatures=layer_temperatures(cfg, temperatures), noise=src)
    return _pixels(model, out.px_z, src, output_temperature)


# --------------------------------------------------------------------------------------------------
# Likelihood


@dataclass
class ElboResult:
    """Per-image negative ELBO terms in nats per dimension (divide by ln 2 for bits)."""

    distortion: Tensor  # (N,)
    rate: Tensor  # (N,)
    kl_per_layer: Tensor  # (N, L): each layer's KL / n_dims
    nll_bound: Tensor  # (N,): distortion + rate, or the importance-weighted bound when samples > 1
    # (N, L), only with split_kl: the same values as kl_per_layer, but gradients reach the prior
    # only (kl_per_layer's then reach the posterior only)
    kl_prior_per_layer: Tensor | None = None

    @property
    def elbo(self) -> Tensor:
        return self.distortion + self.rate

    def bits(self, t: Tensor) -> Tensor:
        return t / math.log(2)


def elbo(
    model: LatentModel,
    images: Tensor,
    *,
    samples: int = 1,
    noise: NoiseLike = None,
    eps: Sequence[Tensor] | None = None,
    grad: bool = False,
    n_posterior: int | None = None,
    temperatures: Temperatures = 1.0,
    split_kl: bool = False,
    prior: "TopPrior | None" = None,
    stage: tuple[int, int] | None = None,
) -> ElboResult:
    """Negative ELBO of ``images`` (uint8 NHWC) in nats/dim, with its distortion/rate split.

    The rate uses the analytic per-layer KL, as the reference does. With ``samples`` K > 1 the
    ``nll_bound`` is the importance-weighted bound log(1/K sum_k p(x, z_k) / q(z_k | x)) with K
    posterior samples (tighter than the ELBO); distortion/rate are then means over the K draws.
    ``grad=True`` keeps the autograd graph (training). ``n_posterior`` < L infers only the first
    layers and draws the rest from the prior (q = p there: KL 0, still a bound on -log p(x)); the
    trainer's ``coarse_first`` curriculum uses it. ``temperatures`` scale the prior of the layers drawn
    from it (1: the bound; 0: the prior mean, a score rather than a bound). ``split_kl`` (training)
    also returns ``kl_prior_per_layer``: see :class:`ElboResult`.

    With a learned ``prior``, the layers it covers are scored under it: their KL becomes the
    one-sample estimate ``log q(z | x) - log p_learned(z)`` at the posterior draw (per layer, the
    learned prior's conditionals of that layer's dimensions), still an unbiased bound's term.

    ``stage`` (training, the progressive recipe) is passed to the decoder: the bound is then that of
    the stage's model (untrained layers at z = 0, the newest level under N(0, I)).
    """
    with torch.set_grad_enabled(grad), torch.inference_mode(not grad):
        return _elbo(model, images, samples, as_noise(noise), eps, n_posterior, temperatures, split_kl, prior, stage)


def _learned_terms(prior: "TopPrior", trace: Sequence[dict[str, Tensor]]) -> tuple[Tensor, Tensor]:
    """For the layers a learned prior covers, from a traced posterior pass: (N, K) per-layer
    ``log q(z | x) - log p_learned(z)`` in nats, and (N,) ``log p_learned(z) - log p_model(z)`` (what
    replacing the model's prior adds to an importance weight's log)."""
    from .learned_prior import posterior_log_densities

    top = list(trace[: prior.layers])
    if len(top) < prior.layers:
        raise ValueError(f"a traced pass of {len(top)} layers for a learned prior over {prior.layers}")
    dens = [posterior_log_densities(t) for t in top]
    log_q = torch.stack([q for q, _ in dens], dim=1)
    log_p_model = torch.stack([p for _, p in dens], dim=1)
    log_p = prior.log_prob_layers([t["z"].float() for t in top]).to(log_q.device)
    return log_q - log_p, (log_p - log_p_model).sum(dim=1)


def _per_layer(kls: Sequence[Tensor | None] | None, zero: Tensor, n_dims: int) -> Tensor:
    """(N, L) each layer's KL per image in nats/dim from per-element KLs; ``zero`` (N,) where a layer
    came from its prior (None)."""
    assert kls is not None, "the decoder pass was not asked for KLs"
    if not kls:  # a model with no latent layers: no rate
        return zero.new_zeros(zero.shape[0], 0)
    return torch.stack([zero if k is None else k.sum(dim=(1, 2, 3)) for k in kls], dim=1) / n_dims


def _elbo(model: LatentModel, images: Tensor, samples: int, noise: Noise, eps: Sequence[Tensor] | None,
          n_posterior: int | None = None, temperatures: Temperatures = 1.0, split_kl: bool = False,
          prior: "TopPrior | None" = None, stage: tuple[int, int] | None = None) -> ElboResult:
    cfg = model.cfg
    if prior is not None and n_posterior is not None and n_posterior < prior.layers:
        raise ValueError(f"a learned prior over {prior.layers} layers needs them inferred (n_posterior={n_posterior})")
    p = _param(model)
    images = images.to(p.device)
    n, n_dims = images.shape[0], cfg.n_dims
    acts = model.encoder(_input(model, images, p.dtype))
    family = family_of(model)
    temps = layer_temperatures(cfg, temperatures)
    dists, rates, kls, prior_kls, log_weights = [], [], [], [], []
    for _ in range(samples):
        extra = {} if stage is None else {"stage": stage}  # (a plugin's decoder need not know the recipe)
        out = model.decoder(n, acts, n_posterior=n_posterior, temperatures=temps, noise=noise, eps=eps,
                            want_kl="split" if split_kl else True, trace=samples > 1 or prior is not None, **extra)
        dist = family.nll(model, model.logits(out.px_z), images)
        zero = dist.new_zeros(n)
        kl = _per_layer(out.kl, zero, n_dims)
        swap = None
        if prior is not None:  # the covered layers' terms under the learned prior, and how the log-weight moves
            learned, swap = _learned_terms(prior, out.trace)
            kl = torch.cat([learned / n_dims, kl[:, prior.layers :]], dim=1)
        if split_kl:
            prior_kls.append(_per_layer(out.kl_prior, zero, n_dims))
        dists.append(dist)
        kls.append(kl)
        rates.append(kl.sum(dim=1))
        if samples > 1:
            log_ratio = family.log_ratio(model, out)  # layers drawn from the prior have q = p: ratio 1
            if swap is not None:
                log_ratio = log_ratio + swap
            log_weights.append(-dist * n_dims + log_ratio)
    distortion = torch.stack(dists).mean(0)
    rate = torch.stack(rates).mean(0)
    kl_per_layer = torch.stack(kls).mean(0)
    if samples > 1:
        bound = -(torch.logsumexp(torch.stack(log_weights), dim=0) - math.log(samples)) / n_dims
    else:
        bound = distortion + rate
    kl_prior = torch.stack(prior_kls).mean(0) if split_kl else None
    return ElboResult(distortion, rate, kl_per_layer, bound, kl_prior)
