"""BatchNorm re-adjustment: NVAE's statistics for sampling at a temperature.

NVAE's samplers (``evaluate.py --readjust_bn``) put the model in train mode and run ``iters`` prior
passes at the sampling temperature, so every BatchNorm's running statistics become an exponential
average (momentum 0.05) of prior-sample statistics; only decoder-side layers move. This is that
procedure as a function, plus the BatchNorm buffers as a plain state so they can be stored and
reused without the passes.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

from ..distributions import Noise

Tensor = torch.Tensor


@torch.no_grad()
def readjust_bn(
    model: nn.Module,
    temperatures: float | Sequence[float],
    *,
    iters: int = 500,
    batch: int = 16,
    noise: Noise | None = None,
) -> None:
    """Re-estimate every BatchNorm's running statistics from ``iters`` train-mode prior passes of
    ``batch`` samples at ``temperatures``; the model is left in eval mode. Weights are untouched."""
    if iters < 1 or batch < 2:
        raise ValueError("BN re-adjustment needs iters >= 1 and a batch of at least 2")
    model.train()
    try:
        for _ in range(iters):
            model.decoder(batch, temperatures=temperatures, noise=noise)  # type: ignore[operator]
    finally:
        model.eval()


def bn_state(model: nn.Module) -> "OrderedDict[str, Tensor]":
    """The running statistics of every BatchNorm (``<module>.running_mean`` / ``running_var`` /
    ``num_batches_tracked``), copied."""
    out: "OrderedDict[str, Tensor]" = OrderedDict()
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            for key in ("running_mean", "running_var", "num_batches_tracked"):
                out[f"{name}.{key}"] = getattr(m, key).detach().clone()
    return out
