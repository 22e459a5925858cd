"""What a run measures and shows: held-out bits/dim of the EMA weights, and sample grids."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .data import shard_range
from ..engine.interface import first_parameter
from ..engine.ops import elbo, reconstruct, sample

if TYPE_CHECKING:
    from ..engine.interface import LatentModel

Tensor = torch.Tensor
LN2 = math.log(2.0)


def _dist() -> tuple[bool, int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return True, dist.get_rank(), dist.get_world_size()
    return False, 0, 1


@torch.no_grad()
def evaluate_heldout(
    model: LatentModel, images: Tensor, *, batch_size: int = 64, seed: int = 0, autocast: bool = False
) -> dict[str, Any]:
    """Mean negative ELBO of ``images`` in bits/dim (with its distortion/rate split and each latent
    layer's KL in bits per image), summed over
    this process's part when ``torch.distributed`` is initialised and reduced over all ranks."""
    distributed, rank, world = _dist()
    part = images[shard_range(len(images), rank, world)] if distributed else images
    p = first_parameter(model)
    g = torch.Generator(device=p.device).manual_seed(seed)
    n_layers = model.cfg.n_layers
    sums = torch.zeros(4 + n_layers, dtype=torch.float64, device=p.device)  # elbo, distortion, rate, count, KLs
    for start in range(0, len(part), batch_size):
        batch = part[start : start + batch_size]
        with torch.autocast(p.device.type, dtype=torch.bfloat16, enabled=autocast):
            out = elbo(model, batch, noise=g)
        d, r = out.distortion.double(), out.rate.double()
        sums += torch.cat([torch.stack([(d + r).sum(), d.sum(), r.sum(), d.new_tensor(float(len(batch)))]),
                           out.kl_per_layer.double().sum(0)])
    if distributed:
        import torch.distributed as dist

        dist.all_reduce(sums)
    count = max(float(sums[3]), 1.0)
    return {
        "heldout_bpd": float(sums[0]) / count / LN2,
        "distortion_bpd": float(sums[1]) / count / LN2,
        "rate_bpd": float(sums[2]) / count / LN2,
        "heldout_images": int(sums[3]),
        # each latent layer's KL in bits per image: a layer near 0 carries nothing (collapse)
        "layer_bits": [round(float(v) / count / LN2 * model.cfg.n_dims, 2) for v in sums[4:]],
    }


def save_grid(images: Tensor, path: Path, columns: int) -> Path:
    """Write uint8 NHWC ``images`` as one PNG grid (1-pixel grey gaps), atomically."""
    import numpy as np
    from PIL import Image

    n, h, w, c = images.shape
    rows = -(-n // columns)
    canvas = np.full((rows * (h + 1) + 1, columns * (w + 1) + 1, c), 128, dtype=np.uint8)
    for i, img in enumerate(images.cpu().numpy()):
        r, col = divmod(i, columns)
        canvas[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + col * (w + 1) : 1 + col * (w + 1) + w] = img
    from ..base.atomic import _write_error, atomic_write_with

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(path.parent, exc) from None
    atomic_write_with(path, lambda f: Image.fromarray(canvas).save(f, format="PNG"))
    return path


def visualise(model: LatentModel, heldout: Tensor, path: Path, *, columns: int, seed: int) -> Path:
    """The reference-style grid: originals, posterior-mean reconstructions, samples at t=1 and t=0.8.
    A model with no latent layers (PixelCNN++, drawn pixel by pixel): originals and one row of samples."""
    g = torch.Generator(device=first_parameter(model).device)
    originals = heldout[:columns]
    if model.cfg.n_layers == 0:
        drawn = sample(model, columns, noise=g.manual_seed(seed + 1))
        return save_grid(torch.cat([originals.to(drawn.device), drawn]), path, columns)
    recon = reconstruct(model, originals, posterior="mean", noise=g.manual_seed(seed))
    rows = [originals.to(recon.device), recon]
    for t in (1.0, 0.8):
        rows.append(sample(model, 2 * columns, temperatures=t, noise=g.manual_seed(seed + 1)))
    return save_grid(torch.cat(rows), path, columns)
