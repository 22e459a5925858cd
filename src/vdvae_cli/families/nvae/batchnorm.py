"""BatchNorm re-adjustment: NVAE's statistics for sampling at a temperature.

NVAE's samplers (``evaluate.py --readjust_bn``) put the model in train mode and run ``iters`` prior
passes at the sampling temperature, so every BatchNorm's running statistics become an exponential
average (momentum 0.05) of prior-sample statistics; only decoder-side layers move. This is that
procedure as a function, plus the BatchNorm buffers as a plain state so they can be stored and
reused without the passes.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ...engine.distributions import Noise

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


def cache_key(model: nn.Module, temperatures: Sequence[float], iters: int, batch: int, seed: int) -> str:
    """What the re-adjusted statistics depend on: the weights, every layer's temperature, the number
    and size of the passes, the seed of their noise, and the dtype they ran in."""
    from ...engine.statedict import digest_of, weights_digest

    digest = digest_of(model) or weights_digest(model.state_dict())
    dtype = str(next(model.parameters()).dtype)
    text = json.dumps([digest, [float(t) for t in temperatures], iters, batch, seed, dtype])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def readjust_cached(
    model: nn.Module,
    temperatures: Sequence[float],
    cache_dir: Path,
    *,
    iters: int = 500,
    batch: int = 16,
    seed: int = 0,
) -> tuple[bool, Path]:
    """:func:`readjust_bn` with its result kept in ``cache_dir`` (one small safetensors file per
    key of :func:`cache_key`), so a later run with the same model and temperatures starts at once.
    The passes draw from ``torch.Generator().manual_seed(seed)``, so a cached file holds exactly
    what recomputing would give. Returns (loaded from the cache, the file)."""
    from safetensors.torch import load_file, save

    from ...base.atomic import atomic_write_bytes
    from ...engine.distributions import BatchNoise

    path = Path(cache_dir) / "bn" / f"{cache_key(model, temperatures, iters, batch, seed)}.safetensors"
    names = list(bn_state(model))
    if path.is_file():
        try:
            stats = load_file(str(path))
        except Exception:  # a damaged cache file is recomputed
            stats = {}
        if set(stats) == set(names):
            device = next(model.parameters()).device
            model.load_state_dict({k: v.to(device) for k, v in stats.items()}, strict=False)
            return True, path
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    readjust_bn(model, temperatures, iters=iters, batch=batch, noise=BatchNoise(generator))
    blob = save({k: v.cpu().contiguous() for k, v in bn_state(model).items()},
                metadata={"temperatures": json.dumps([float(t) for t in temperatures]), "iters": str(iters),
                          "batch": str(batch), "seed": str(seed)})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, blob, force=True)
    return False, path
