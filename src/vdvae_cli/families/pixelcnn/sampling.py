"""Pixels in and out of a PixelCNN++, and drawing images pixel by pixel.

A PixelCNN++ draws an image in raster order, one pixel (all its channels) at a time: the network
gives that pixel's mixture given the pixels already drawn, the pixel is drawn and written into the
canvas, and the next pass sees it. That is H x W network passes per batch.

**What is recomputed.** The network is causal in rows: an output row depends only on input rows at
or above it, and every layer's top rows are computed from the top rows below it alone (each
halving keeps an even number of rows). So a pass for a pixel on row ``i`` runs on the canvas's top
``rows(i)`` rows only (``i + 1`` rounded up to a multiple of 4, the two halvings): about half the
work of full passes over a square image, with the same numbers for the rows it keeps. ``cached=False``
runs every pass on the whole canvas; the tests hold both to the same pixels bit for bit.

**Pixels.** A draw is rounded to the nearest 8-bit level (:func:`to_pixels`), the level whose
bin holds it; the canvas holds those levels, as the training images do.

**Noise.** Every uniform a batch needs (the component's Gumbel and each channel's logistic, for
every pixel) is drawn up front from the batch's :class:`~vdvae_cli.engine.distributions.Noise`
in one call each, so image ``i`` depends only on its own generator whatever the pass order.
"""

from __future__ import annotations

import torch

from ...engine.distributions import Noise, dmol_sample, open_uniform
from .config import PixelCNNConfig

Tensor = torch.Tensor


def network_input(cfg: PixelCNNConfig, images: Tensor) -> Tensor:
    """uint8 NHWC -> network input NCHW in [-1, 1] (grey for a one-channel model), float32."""
    from ...engine.ops import as_channels

    return (as_channels(images, cfg.channels).float() / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()


def dmol_target(cfg: PixelCNNConfig, images: Tensor) -> Tensor:
    """uint8 NHWC -> DMoL target NHWC in [-1, 1]."""
    from ...engine.ops import as_channels

    return as_channels(images, cfg.channels).float() / 127.5 - 1.0


def to_pixels(x: Tensor) -> Tensor:
    """Drawn values in [-1, 1] -> uint8 pixels, *rounded* to the nearest level: the bin whose
    probability the likelihood gives (level k covers ``(x + 1) * 127.5`` in [k - 1/2, k + 1/2]),
    so the next pass conditions on the pixel the model's mixture put the draw in."""
    return torch.round((x.float() + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)


def rows_needed(row: int, size: int) -> int:
    """How many top rows of the canvas a pass for a pixel on ``row`` must see: ``row + 1`` rounded
    up to a multiple of 4 (so both halvings keep whole row pairs)."""
    return min(size, (row // 4 + 1) * 4)


@torch.inference_mode()
def draw(model, n: int, noise: Noise, output_temperature: float, *, cached: bool = True) -> Tensor:
    """``n`` images (uint8 NHWC, RGB even for a grey model) drawn pixel by pixel."""
    cfg: PixelCNNConfig = model.cfg
    p = next(model.parameters())
    size, c, m = cfg.image_size, cfg.channels, cfg.nr_logistic_mix
    u_mix = open_uniform(noise.uniform((n, size, size, m), device=p.device))
    u_logistic = open_uniform(noise.uniform((n, size, size, c), device=p.device))
    canvas = torch.zeros(n, c, size, size, dtype=p.dtype, device=p.device)
    pixels = torch.zeros(n, size, size, c, dtype=torch.uint8, device=p.device)
    was_folded = all(getattr(mod, "folded", None) is not None for mod in _weight_normed(model))
    if not was_folded:
        model.fold_weight_norm()
    try:
        for i in range(size):
            rows = rows_needed(i, size) if cached else size
            for j in range(size):
                logits = model(canvas[:, :, :rows])[:, i : i + 1, j : j + 1]  # (n, 1, 1, K)
                x = dmol_sample(logits, m, temperature=output_temperature,
                                u_mix=u_mix[:, i : i + 1, j : j + 1], u_logistic=u_logistic[:, i : i + 1, j : j + 1])
                drawn = to_pixels(x)[:, 0, 0]  # (n, c)
                pixels[:, i, j] = drawn
                canvas[:, :, i, j] = (drawn.float() / 127.5 - 1.0).to(p.dtype)
    finally:
        if not was_folded:
            for mod in _weight_normed(model):
                mod.folded = None
    return pixels.expand(n, size, size, 3) if c == 1 else pixels


def _weight_normed(model) -> list:
    from .network import WNConv

    return [mod for mod in model.modules() if isinstance(mod, WNConv)]
