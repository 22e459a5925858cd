"""NVAE's training recipe (Vahdat & Kautz 2020; NVlabs/NVAE ``train.py``), as plain functions and
the :class:`NVAERecipe` object the trainer's loop asks for (:class:`vdvae_cli.engine.recipe.Recipe`).

The objective, in nats per image::

    loss = mean_batch(recon + beta * KL_bal) + lambda * (spectral term + BN term)

* ``beta`` (:func:`kl_coeff`): the KL warm-up ``max(min((step - c) / a, 1), beta_min)``, with
  ``a = kl_anneal_portion * total`` and ``c = kl_const_portion * total`` steps.
* ``KL_bal`` (:func:`balanced_kl`): while ``beta < 1`` each latent group's KL is weighted by
  ``gamma_k``, proportional to its batch-mean ``|KL| + 0.01`` over ``alpha_k`` (:func:`balance_alpha`),
  normalised to mean 1 and held constant for the gradient; from ``beta = 1`` on, the plain sum.
* the spectral term (:class:`SpectralNorms`): the sum over every convolution of its largest singular
  value, estimated by power iteration on vectors kept from step to step (resumable state); the BN
  term (:func:`bn_term`): the sum over BatchNorm layers of ``max |gamma|``; ``lambda``
  (:func:`norm_coeff`): ``weight_decay_norm``, or annealed from ``weight_decay_norm_init`` with beta.
* Adamax (eps 1e-3, betas 0.9/0.999) with L2 weight decay 3e-4 added to the gradient
  (:func:`adamax`); the learning rate warms up linearly and then follows a cosine down to
  ``learning_rate_min`` (the trainer's ``lr_schedule="cosine"`` with ``lr_final = min / lr``).
* no EMA of the weights (``ema_rate = 0``: the evaluated and exported copy is the trained one, with
  its BatchNorm running statistics), no gradient clipping, only non-finite steps are skipped.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ...base.errors import UsageError
from .config import NVAEConfig
from .network import WNConv2d

if TYPE_CHECKING:
    from ...engine.recipe import TrainConfig
    from ...engine.recipe import LossTerms, TrainDefaults

Tensor = torch.Tensor

KL_FLOOR = 0.01  # added to each group's mean |KL| (nats) before balancing
POWER_EPS = 1e-3  # normalisation eps of the power iteration
FIRST_ITERATIONS = 40  # power-iteration steps the first time a weight shape is met (10x the usual)


# --------------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class NVAERecipeConfig:
    """NVAE's own training settings (official ``args`` names), kept in ``TrainConfig.family_options``."""

    kl_anneal_portion: float = 0.3
    kl_const_portion: float = 1e-4
    kl_const_coeff: float = 1e-4
    weight_decay_norm: float = 0.0
    weight_decay_norm_init: float = 10.0
    weight_decay_norm_anneal: bool = False
    power_iterations: int = 4

    def __post_init__(self) -> None:
        for name in ("kl_anneal_portion", "kl_const_portion", "kl_const_coeff", "weight_decay_norm",
                     "weight_decay_norm_init"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
                raise UsageError(f"{name} must be a finite number >= 0, got {v!r}")
        if not self.kl_anneal_portion > 0 or self.kl_const_coeff > 1:
            raise UsageError("kl_anneal_portion must be > 0 and kl_const_coeff at most 1")
        if not isinstance(self.weight_decay_norm_anneal, bool):
            raise UsageError(f"weight_decay_norm_anneal must be true or false, got {self.weight_decay_norm_anneal!r}")
        if self.weight_decay_norm_anneal and not (self.weight_decay_norm > 0 and self.weight_decay_norm_init > 0):
            raise UsageError("an annealed weight_decay_norm needs weight_decay_norm and weight_decay_norm_init > 0")
        p = self.power_iterations
        if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 100:
            raise UsageError(f"power_iterations must be a whole number from 1 to 100, got {p!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "NVAERecipeConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown NVAE training option(s): {', '.join(map(str, unknown[:8]))}",
                             hint=f"known: {', '.join(sorted(known))}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Per README training command (spec §2.1): per-GPU batch, learning rate, spectral coefficient.
_OFFICIAL: dict[str, dict[str, Any]] = {
    "nvae-mnist": dict(batch_size=200, lr=1e-2, weight_decay_norm=1e-2),
    "nvae-cifar10": dict(batch_size=32, lr=1e-2, weight_decay_norm=1e-2),
    "nvae-celeba64": dict(batch_size=16, lr=1e-2, weight_decay_norm=1e-1),
    "nvae-imagenet32": dict(batch_size=24, lr=1e-2, weight_decay_norm=1e-2, weight_decay_norm_anneal=True,
                            weight_decay_norm_init=1.0),
    "nvae-celebahq256": dict(batch_size=4, lr=1e-2, weight_decay_norm=1e-2, weight_decay_norm_anneal=True,
                             weight_decay_norm_init=1.0),
    "nvae-ffhq256": dict(batch_size=4, lr=8e-3, weight_decay_norm=1e-1, weight_decay_norm_anneal=True,
                         weight_decay_norm_init=1.0),
}
# The CPU preset (presets.py): the recipe as NVAE sets it, with MNIST's and CIFAR-10's spectral coefficient.
_PRESET: dict[str, Any] = dict(lr=1e-2, weight_decay_norm=1e-2)
LEARNING_RATE_MIN = 1e-4


def train_defaults(name: str | None) -> "TrainDefaults":
    """The recipe's :class:`TrainConfig` fields for an official NVAE architecture (``nvae-cifar10``,
    ...), the CPU preset, or ``None`` (fine-tuning: the parser's defaults)."""
    from .presets import NVAE_PRESETS
    from ...engine.recipe import TrainDefaults

    chosen = dict(_OFFICIAL.get(name or "", _PRESET if name in NVAE_PRESETS else {}))
    lr = chosen.pop("lr", 1e-2)
    batch = chosen.pop("batch_size", None)
    settings: dict[str, Any] = dict(
        lr=lr, wd=3e-4, betas=(0.9, 0.999), adam_eps=1e-3, lr_schedule="cosine",
        lr_final=LEARNING_RATE_MIN / lr, grad_clip=0.0, skip_threshold=-1.0, ema_rate=0.0,
        family_options=NVAERecipeConfig(**chosen).to_dict(),
    )
    if batch is not None:
        settings["batch_size"] = batch
    return TrainDefaults(settings, decay=True, open_ended=False)


# --------------------------------------------------------------------------------------------------
# KL warm-up and balancing


def kl_coeff(step: int, total: int, rc: NVAERecipeConfig) -> float:
    """beta at optimizer step ``step`` (0-based) of a ``total``-step run."""
    anneal = rc.kl_anneal_portion * total
    const = rc.kl_const_portion * total
    return max(min((step - const) / anneal, 1.0), rc.kl_const_coeff)


def balance_alpha(cfg: NVAEConfig) -> Tensor:
    """alpha_k of every latent group, decoder order: ``4^j / (groups at decoder scale j)`` for the
    group's scale ``j`` (0 = coarsest), divided by the smallest (NVAE's "square" scheme). (G,)"""
    counts: dict[int, int] = {}
    for g in cfg.decoder_layers:
        counts[g.scale] = counts.get(g.scale, 0) + 1
    alpha = torch.tensor([4.0**g.scale / counts[g.scale] for g in cfg.decoder_layers], dtype=torch.float64)
    return (alpha / alpha.min()).float()


def balance_coefficients(kl_all: Tensor, alpha: Tensor) -> Tensor:
    """gamma_k for per-image group KLs ``kl_all`` (N, G) in nats: ``(mean_batch |KL_k| + 0.01) / alpha_k``
    times the sum of the numerators, normalised to mean 1, without gradient. (G,)"""
    kl_all = kl_all.detach()
    gamma = kl_all.abs().mean(dim=0) + KL_FLOOR
    gamma = gamma / alpha.to(gamma) * gamma.sum()
    return gamma / gamma.mean()


def balanced_kl(kl_all: Tensor, beta: float, alpha: Tensor) -> Tensor:
    """Each image's KL as the objective counts it (N,): balanced while ``beta < 1``, else the sum."""
    if beta >= 1.0:
        return kl_all.sum(dim=1)
    return (kl_all * balance_coefficients(kl_all, alpha)).sum(dim=1)


# --------------------------------------------------------------------------------------------------
# Spectral and BatchNorm regularisers


def norm_coeff(beta: float, rc: NVAERecipeConfig) -> float:
    """lambda: ``weight_decay_norm``, or with annealing the geometric interpolation from
    ``weight_decay_norm_init`` (beta = 0) to ``weight_decay_norm`` (beta = 1)."""
    if not rc.weight_decay_norm_anneal:
        return rc.weight_decay_norm
    return math.exp((1.0 - beta) * math.log(rc.weight_decay_norm_init) + beta * math.log(rc.weight_decay_norm))


def conv_weights(model: nn.Module) -> list[Tensor]:
    """Every convolution's effective weight as a (C_out, C_in/groups * kh * kw) matrix, with
    gradients: weight-normalised convs (the autoregressive ones masked) as they compute, plain convs as is."""
    out = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            w = m.effective_weight() if isinstance(m, WNConv2d) else m.weight
            out.append(w.reshape(w.shape[0], -1))
    return out


class SpectralNorms:
    """The sum of the largest singular values of ``model``'s convolutions, by power iteration.

    Weights of the same shape form one batch; each batch keeps its left and right vectors ``u``
    (B, rows) and ``v`` (B, cols) from call to call, so ``iterations`` steps per call suffice after
    ``FIRST_ITERATIONS`` at the start. The vectors start from ``generator``'s normal draws.
    """

    def __init__(self, iterations: int = 4, generator: torch.Generator | None = None):
        self.iterations = iterations
        self.generator = generator or torch.Generator().manual_seed(0)
        self.u: dict[str, Tensor] = {}
        self.v: dict[str, Tensor] = {}

    def _start(self, key: str, shape: torch.Size, device: torch.device) -> None:
        b, rows, cols = shape
        u = torch.randn(b, rows, generator=self.generator)
        v = torch.randn(b, cols, generator=self.generator)
        self.u[key] = F.normalize(u, dim=1, eps=POWER_EPS).to(device)
        self.v[key] = F.normalize(v, dim=1, eps=POWER_EPS).to(device)

    def __call__(self, weights: list[Tensor]) -> Tensor:
        batches: dict[str, list[Tensor]] = {}
        for w in weights:
            batches.setdefault(f"{w.shape[0]}x{w.shape[1]}", []).append(w)
        total = torch.zeros((), device=weights[0].device if weights else None)
        for key, ws in batches.items():
            w = torch.stack(ws).float()  # (B, rows, cols)
            steps = self.iterations
            if key not in self.u or self.u[key].shape[0] != w.shape[0]:
                self._start(key, w.shape, w.device)
                steps = FIRST_ITERATIONS
            u, v = self.u[key].to(w.device), self.v[key].to(w.device)  # a resumed state comes on the CPU
            self.u[key], self.v[key] = power_iteration(w.detach(), u, v, steps)
            sigma = torch.einsum("br,brc,bc->b", self.u[key], w, self.v[key])  # (B,)
            total = total + sigma.sum()
        return total

    def state_dict(self) -> dict[str, Tensor]:
        return {**{f"u.{k}": t for k, t in self.u.items()}, **{f"v.{k}": t for k, t in self.v.items()}}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        u = {k[2:]: t for k, t in state.items() if k.startswith("u.")}
        v = {k[2:]: t for k, t in state.items() if k.startswith("v.")}
        if set(u) != set(v) or len(u) + len(v) != len(state):
            raise ValueError("the spectral-norm state is not pairs of u and v vectors")
        self.u, self.v = dict(u), dict(v)


@torch.no_grad()
def power_iteration(w: Tensor, u: Tensor, v: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """``steps`` rounds of ``v <- W^T u / |.|``, ``u <- W v / |.|`` for a batch of matrices ``w``
    (B, rows, cols); ``u^T W v`` then estimates each one's largest singular value."""
    for _ in range(steps):
        v = F.normalize(torch.einsum("br,brc->bc", u, w), dim=1, eps=POWER_EPS)
        u = F.normalize(torch.einsum("brc,bc->br", w, v), dim=1, eps=POWER_EPS)
    return u, v


def bn_term(model: nn.Module) -> Tensor:
    """The sum over affine BatchNorm layers of the largest ``|gamma|``."""
    terms = [m.weight.abs().max() for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def adamax(model: nn.Module, tc: "TrainConfig") -> torch.optim.Optimizer:
    """Adamax with the run's lr, betas and eps; ``tc.wd`` is L2 weight decay added to the gradient."""
    return torch.optim.Adamax(model.parameters(), lr=tc.lr, betas=tc.betas, eps=tc.adam_eps, weight_decay=tc.wd)


# --------------------------------------------------------------------------------------------------
# The recipe object


_VDVAE_ONLY = {"kl_warmup": "--kl-warmup", "free_bits": "--free-bits", "free_bits_res": "--free-bits-res",
               "coarse_steps": "--coarse-first"}


class NVAERecipe:
    """NVAE's recipe for one run of ``total`` steps (:class:`vdvae_cli.engine.recipe.Recipe`)."""

    split_kl = False
    find_unused_parameters = False

    def __init__(self, cfg: NVAEConfig, tc: "TrainConfig", total: int):
        given = [flag for name, flag in _VDVAE_ONLY.items() if getattr(tc, name)]
        if given:
            raise UsageError(f"{', '.join(given)} {'is a' if len(given) == 1 else 'are'} VDVAE option"
                             f"{'' if len(given) == 1 else 's'}; NVAE's recipe has its own KL warm-up and KL balancing",
                             hint="drop it for an NVAE model")
        self.cfg, self.tc, self.total = cfg, tc, total
        # the progressive recipe's stages leave the untrained groups' encoder and prior without gradients
        self.find_unused_parameters = tc.progressive_steps > 0
        self.rc = NVAERecipeConfig.from_dict(tc.family_options)
        self.alpha = balance_alpha(cfg)
        self.spectral = SpectralNorms(self.rc.power_iterations, torch.Generator().manual_seed(tc.seed + 7919))

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return adamax(model, self.tc)

    def objective(self, model: nn.Module, step: int, terms: "LossTerms") -> Tensor:
        n_dims = self.cfg.n_dims
        beta = kl_coeff(step, self.total, self.rc)
        recon = terms.distortion * n_dims  # (N,) nats
        kl = balanced_kl(terms.kl_layers * n_dims, beta, self.alpha)  # (N,) nats
        loss = (recon + beta * kl).mean()
        lam = norm_coeff(beta, self.rc)
        if lam > 0:
            loss = loss + lam * (self.spectral(conv_weights(model)) + bn_term(model).to(loss))
        return loss

    def log_values(self, step: int) -> dict[str, float]:
        beta = kl_coeff(step, self.total, self.rc)
        return {"kl_coeff": round(beta, 6), "norm_coeff": round(norm_coeff(beta, self.rc), 6)}

    def state_dict(self) -> dict[str, Tensor]:
        return {f"spectral.{k}": t for k, t in self.spectral.state_dict().items()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        if any(not k.startswith("spectral.") for k in state):
            raise ValueError("unexpected entries in the NVAE recipe state")
        self.spectral.load_state_dict({k[len("spectral."):]: t for k, t in state.items()})
