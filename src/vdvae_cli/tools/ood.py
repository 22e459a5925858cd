"""Out-of-distribution scores from a hierarchical VAE, and the metrics that judge them.

The likelihood-ratio score of Havtorn et al. 2021, *Hierarchical VAEs Know What They Don't Know*
(ICML), compares two bounds on log p(x):

* the ELBO ``L``, with every latent layer inferred from the posterior;
* the looser bound ``L>k``, where the ``k`` latent layers nearest the pixels (the paper's z_1..z_k;
  here the *last* k layers in decoder order, the finest resolutions) are drawn from their
  conditional prior p(z_<=k | z_>k) instead, so only the coarser, more semantic layers carry
  information about x: ``L>k = E[log p(x | z) + log p(z_>k) - log q(z_>k | x)]``.

``LLR>k = L - L>k``. Low-level statistics dominate the likelihood itself (why a Fashion-MNIST model
rates MNIST digits *more* likely, Nalisnick et al. 2019), but they cancel in the ratio, which
is large when the coarse layers explain the image badly: higher means more likely out of
distribution. Both bounds can be importance-weighted with S samples (``samples``); the
authors' own script draws the k prior layers at their mean (``prior_temperature=0``), which makes
``L>k`` a score rather than a bound.

Values here are in nats per dimension, as :func:`vdvae_cli.engine.ops.elbo` returns them (negated:
``nll = -L / D``), so ``score = nll_k - nll``.

The second score, input complexity (Serra et al. 2020), needs only the ELBO: the negative ELBO minus
the image's size as a PNG, both per dimension (:func:`complexity_scores`). A model file may record
which score and k its card found best on held-out data (``vdvae ood`` uses them without --score/--k).

Metrics treat the out-of-distribution set as the positive class and a higher score as "more
out of distribution": AUROC, AUPRC (average precision) and the false-positive rate at 80% true
positives, as in the paper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..engine import ops
from ..engine.interface import LatentModel

Tensor = torch.Tensor

DEFAULT_K = 1  # the paper's choice for its three-layer HVAE; see default_k


@dataclass
class OODResult:
    """Per-image negative bounds (nats/dim) and the score ``looser - elbo`` (higher: more OOD)."""

    elbo: Tensor  # (N,) -L / D: the negative ELBO (importance-weighted when samples > 1)
    looser: Tensor  # (N,) -L>k / D
    k: int

    @property
    def score(self) -> Tensor:
        return self.looser - self.elbo


def check_k(model: LatentModel, k: int) -> None:
    n = model.cfg.n_layers
    if not 1 <= k <= n:
        raise ValueError(f"k={k} but the model has {n} latent layers (use 1 to {n})")


def llr_scores(
    model: LatentModel,
    images: Tensor,
    *,
    k: int = DEFAULT_K,
    samples: int = 1,
    samples_k: int | None = None,
    prior_temperature: float = 1.0,
    noise: ops.NoiseLike = None,
) -> OODResult:
    """LLR>k scores of ``images`` (uint8 NHWC).

    ``samples`` importance samples for the ELBO and ``samples_k`` (default: the same) for L>k.
    The ELBO pass draws first from ``noise``, so with a per-image noise source the ELBO equals
    what :func:`vdvae_cli.engine.ops.elbo` (and ``vdvae eval``) computes with the same seed.
    """
    check_k(model, k)
    from ..engine.distributions import as_noise

    src = as_noise(noise)  # one stream for both passes: the ELBO draws first
    n_layers = model.cfg.n_layers
    full = ops.elbo(model, images, samples=samples, noise=src)
    looser = ops.elbo(model, images, samples=samples_k or samples, noise=src, n_posterior=n_layers - k,
                      temperatures=prior_temperature)
    return OODResult(full.nll_bound, looser.nll_bound, k)


# --------------------------------------------------------------------------------------------------
# Input complexity (Serra et al. 2020)

SCORES = ("llr", "complexity")


def png_bits_per_dim(images: Tensor, channels: int | None = None) -> Tensor:
    """Each uint8 NHWC image's size as a PNG (zlib at its strongest, Pillow's own filter choice), in
    bits per sub-pixel: a generic lossless compressor's estimate of how complex the image is. With
    ``channels``, the images are first brought to that many (as a model of that many reads them)."""
    import io

    from PIL import Image

    if channels is not None:
        images = ops.as_channels(images, channels)
    x = images.detach().to("cpu", torch.uint8).numpy()
    sizes = []
    for im in x:
        buf = io.BytesIO()
        Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im).save(buf, format="PNG", optimize=True)
        sizes.append(8.0 * len(buf.getbuffer()) / im.size)
    return torch.tensor(sizes, dtype=torch.float64)


@dataclass
class ComplexityResult:
    """Per-image negative ELBO and PNG size, both in nats per dimension; ``score = elbo - png``."""

    elbo: Tensor  # (N,) -L / D, as in OODResult
    png: Tensor  # (N,) the PNG's size / D, in nats

    @property
    def score(self) -> Tensor:
        return self.elbo.double() - self.png


def complexity_scores(model: LatentModel, images: Tensor, *, samples: int = 1,
                      noise: ops.NoiseLike = None) -> ComplexityResult:
    """The input-complexity score of Serra et al. 2020, *Input complexity and out-of-distribution
    detection with likelihood-based generative models* (ICLR): the model's code length minus a
    generic compressor's, ``-log2 p(x) - L_png(x)`` per dimension, with the negative ELBO standing in
    for ``-log2 p(x)``. Simple images (a digit on black) get short codes from every model; the
    difference keeps only what this model finds surprising. Higher: more likely out of
    distribution. The ELBO draws from ``noise`` as :func:`llr_scores`'s first pass does."""
    full = ops.elbo(model, images, samples=samples, noise=noise)
    return ComplexityResult(full.nll_bound, png_bits_per_dim(images, model.cfg.image_channels) * math.log(2.0))


# --------------------------------------------------------------------------------------------------
# Detection metrics (positives: out of distribution; higher score: more out of distribution)


@dataclass(frozen=True)
class DetectionMetrics:
    auroc: float
    auprc: float
    fpr80: float

    def as_dict(self) -> dict[str, float]:
        return {"auroc": self.auroc, "auprc": self.auprc, "fpr80": self.fpr80}


def _labelled(in_scores: Tensor, out_scores: Tensor) -> tuple[Tensor, Tensor]:
    scores = torch.cat([in_scores.double().flatten(), out_scores.double().flatten()])
    labels = torch.cat([torch.zeros(in_scores.numel()), torch.ones(out_scores.numel())]).double()
    if in_scores.numel() == 0 or out_scores.numel() == 0:
        raise ValueError("detection metrics need at least one in- and one out-of-distribution score")
    if not torch.isfinite(scores).all():
        raise ValueError("scores must be finite")
    return scores, labels


def _curve(scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """True and false positive counts at each distinct threshold, from the highest score down
    (tied scores enter together)."""
    order = torch.argsort(scores, descending=True, stable=True)
    s, y = scores[order], labels[order]
    last_of_tie = torch.cat([s[1:] != s[:-1], torch.tensor([True])])
    tp = torch.cumsum(y, 0)[last_of_tie]
    fp = torch.cumsum(1 - y, 0)[last_of_tie]
    return tp, fp


def auroc(in_scores: Tensor, out_scores: Tensor) -> float:
    """Area under the ROC curve: P(out score > in score) + P(tie) / 2 (the Mann-Whitney U)."""
    scores, labels = _labelled(in_scores, out_scores)
    tp, fp = _curve(scores, labels)
    tpr = torch.cat([torch.zeros(1, dtype=tp.dtype), tp / tp[-1]])
    fpr = torch.cat([torch.zeros(1, dtype=fp.dtype), fp / fp[-1]])
    return float(torch.trapezoid(tpr, fpr))


def auprc(in_scores: Tensor, out_scores: Tensor) -> float:
    """Average precision: sum over thresholds of (recall step) x precision."""
    scores, labels = _labelled(in_scores, out_scores)
    tp, fp = _curve(scores, labels)
    precision = tp / (tp + fp)
    recall = tp / tp[-1]
    steps = torch.diff(recall, prepend=torch.zeros(1, dtype=recall.dtype))
    return float((steps * precision).sum())


def fpr_at_tpr(in_scores: Tensor, out_scores: Tensor, tpr: float = 0.8) -> float:
    """The lowest false-positive rate of a threshold that flags at least ``tpr`` of the positives."""
    scores, labels = _labelled(in_scores, out_scores)
    tp, fp = _curve(scores, labels)
    reached = tp / tp[-1] >= tpr - 1e-12
    return float((fp / fp[-1])[reached].min())


def detection_metrics(in_scores: Tensor, out_scores: Tensor) -> DetectionMetrics:
    return DetectionMetrics(auroc(in_scores, out_scores), auprc(in_scores, out_scores),
                            fpr_at_tpr(in_scores, out_scores, 0.8))
