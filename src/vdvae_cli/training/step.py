"""One optimizer step, for every family: the family's recipe (:mod:`.recipe`) gives the scalar the
gradient follows; the negative ELBO in nats/dim is what is reported.

Gradients are clipped to ``grad_clip`` (0: not at all); an update
(optimizer step and EMA update) is *skipped* when the pre-clip gradient norm reaches
``skip_threshold`` or the loss is not finite, and the run stops with a clear message once
``max_skips`` updates in a row were skipped (the trap of openai/vdvae#25, where the gradient norm of
a fresh model sits above the threshold forever).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from ..engine.distributions import BatchNoise
from ..base.errors import TrainingError
from ..engine.ops import elbo
from ..engine.recipe import LossTerms, Recipe
from .schedule import ema_decay, lr_at, progressive_stage

if TYPE_CHECKING:
    from ..engine.interface import LatentModel

Tensor = torch.Tensor
LN2 = math.log(2.0)


class ElboLoss(nn.Module):
    """Wraps a model (either family) so that one ``forward`` computes the per-image negative ELBO terms.

    DistributedDataParallel synchronises gradients of whatever runs inside ``forward``, so the
    training pass goes through this module rather than calling ``model.encoder``/``decoder``.
    """

    def __init__(self, model: LatentModel):  # the API's model type; an NVAE offers the same surface (family.LatentModel)
        super().__init__()
        self.model = model
        self.noise: BatchNoise | None = None
        self.n_posterior: int | None = None  # None: every layer inferred
        self.split_kl = False  # also return each layer's KL with gradients to the prior only
        self.stage: tuple[int, int] | None = None  # the progressive recipe's stage (schedule.progressive_stage)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # images (N, H, W, C) uint8
        out = elbo(self.model, images, noise=self.noise, grad=True, n_posterior=self.n_posterior,
                   split_kl=self.split_kl, stage=self.stage)
        kl_prior = out.kl_prior_per_layer if out.kl_prior_per_layer is not None else out.kl_per_layer
        return out.distortion, out.rate, out.kl_per_layer, kl_prior  # (N,), (N,), (N, L), (N, L) nats/dim


@dataclass(frozen=True)
class StepResult:
    loss_bpd: float
    distortion_bpd: float
    rate_bpd: float
    grad_norm: float
    skipped: bool
    flags: tuple[bool, ...]  # the caller's flags, true when true on any process
    warning: str | None = None


class Updater:
    """Applies optimizer steps to ``model`` (through ``loss_fn``, which may be DDP-wrapped) and keeps
    the EMA ``ema`` of its weights. Counts skipped updates; raises :class:`TrainingError` when the
    model has stopped learning."""

    def __init__(self, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer, loss_fn: nn.Module, tc,
                 recipe: Recipe, *, total: int, world: int, coarse_layers: int | None, skipped: int = 0):
        self.model, self.ema, self.opt, self.loss_fn, self.tc, self.recipe = model, ema, opt, loss_fn, tc, recipe
        self.params = list(model.parameters())
        self.buffers = [(be, b) for be, b in zip(ema.buffers(), model.buffers())]  # BatchNorm statistics
        self.total, self.world, self.coarse_layers = total, world, coarse_layers
        self.skipped, self.consecutive = skipped, 0
        # under DDP the ElboLoss is its .module, which Module.__getattr__ types as Tensor | Module
        self.inner = cast(ElboLoss, loss_fn.module if world > 1 else loss_fn)
        self.autocast = tc.dtype == "bf16"

    def __call__(self, batch: Tensor, step: int, flags: tuple[bool, ...] = ()) -> StepResult:
        tc = self.tc
        for group in self.opt.param_groups:
            group["lr"] = lr_at(tc, step, self.total)
        self.inner.n_posterior = self.coarse_layers if step < tc.coarse_steps else None
        self.inner.stage = progressive_stage(self.inner.model.cfg, tc, step)
        self.inner.split_kl = self.recipe.split_kl
        device = batch.device.type
        with torch.autocast(device, dtype=torch.bfloat16, enabled=self.autocast):
            distortion, rate, kl_layers, kl_prior = self.loss_fn(batch)
        loss = (distortion + rate).mean()  # the negative ELBO: what is reported
        self.recipe.objective(self.model, step, LossTerms(loss, distortion, rate, kl_layers, kl_prior)).backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, tc.grad_clip or math.inf))
        stats = torch.tensor([float(loss.detach()), float(distortion.detach().mean()), float(rate.detach().mean()),
                              *map(float, flags)], dtype=torch.float64, device=batch.device)
        if self.world > 1:  # one collective: mean losses, and each flag raised if any rank raised it
            import torch.distributed as dist

            dist.all_reduce(stats)
            stats[:3] /= self.world
        loss_v, dist_v, rate_v, *raised = (float(s) for s in stats)
        finite = math.isfinite(loss_v) and math.isfinite(grad_norm)
        skip = not finite or (tc.skip_threshold != -1 and grad_norm >= tc.skip_threshold)
        if skip:
            warning = self._skip(step, finite, grad_norm)
        else:
            self._update(step)
            warning = None
        self.opt.zero_grad(set_to_none=True)
        return StepResult(loss_v / LN2, dist_v / LN2, rate_v / LN2, grad_norm, skip,
                          tuple(r > 0 for r in raised), warning)

    def _update(self, step: int) -> None:
        self.consecutive = 0
        self.opt.step()
        with torch.no_grad():
            weight = 1.0 - ema_decay(self.tc, step)
            for pe, p in zip(self.ema.parameters(), self.params):
                pe.lerp_(p, weight)
            for be, b in self.buffers:  # running statistics are not averaged: the EMA takes the latest
                be.copy_(b)

    def _skip(self, step: int, finite: bool, grad_norm: float) -> str | None:
        tc = self.tc
        self.skipped += 1
        self.consecutive += 1
        why = "non-finite loss" if not finite else f"grad norm {grad_norm:.1f} >= {tc.skip_threshold:g}"
        if self.consecutive >= tc.max_skips:
            raise TrainingError(
                f"the last {self.consecutive} updates were all skipped ({why}): the model is not learning",
                hint="raise --skip-threshold (or -1 to skip only non-finite steps), lower --lr, "
                "or raise --grad-clip (see openai/vdvae#25)",
            )
        if self.consecutive in (1, 10) or self.consecutive % 50 == 0:
            return f"step {step}: update skipped ({why}); {self.consecutive} in a row, {self.skipped} in all"
        return None
