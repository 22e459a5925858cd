"""The sampling temperatures a trained model recommends, chosen on held-out images.

A young model samples badly at temperature 1: its priors are wider than the posteriors it learnt,
and its pixel distribution (a DMoL, or NVAE's) puts independent noise on every pixel, so samples
come out as coloured speckle while the held-out likelihood is already good. Lower latent
temperatures and a lower pixel temperature give samples that look much more like the data.

What "look like the data" means here, cheaply and without a trained classifier: every image is
described by a fixed feature vector (its 8x8 block means per channel: the layout and colour, and the
8x8 block means of the absolute differences between neighbouring grey pixels: how much fine
texture or speckle it has), and two sets of images are compared by the Fréchet distance between
diagonal Gaussians fitted to their features, ``mean over features of (mu_a - mu_b)^2 + (sd_a - sd_b)^2``
(pixel units squared). The candidates (latent temperature x pixel temperature) are each sampled
with the same noise, and the pair whose samples are nearest to the held-out images is recommended;
ties go to the higher temperatures (more diverse samples).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..engine.interface import LatentModel, first_parameter
from ..engine.ops import sample

LATENT_TEMPERATURES = (1.0, 0.85, 0.7)
PIXEL_TEMPERATURES = (1.0, 0.5, 0.0)
GRID = 8  # block means over an 8x8 grid of cells


@dataclass
class TemperatureChoice:
    temperature: float
    output_temperature: float
    distance: float  # of the chosen pair's samples to the held-out images
    at_one: float  # the same distance at temperature 1, output temperature 1 (the model's own distributions)
    n_images: int
    seconds: float
    table: list[dict[str, float]] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {"event": "temperatures", "temperature": self.temperature, "output_temperature": self.output_temperature,
                "distance": round(self.distance, 4), "distance_at_1": round(self.at_one, 4),
                "n_images": self.n_images, "seconds": round(self.seconds, 2), "table": self.table}


def image_features(images: Tensor) -> Tensor:
    """(N, F) float features of uint8 NHWC images: 8x8 block means per channel, and 8x8 block means of
    the absolute horizontal and vertical differences of the grey image."""
    x = images.permute(0, 3, 1, 2).float()  # (N, C, H, W)
    cells = max(1, min(GRID, x.shape[-1]))
    layout = F.adaptive_avg_pool2d(x, cells).flatten(1)  # (N, C * cells^2)
    grey = x.mean(1, keepdim=True)  # (N, 1, H, W)
    dx = (grey[..., :, 1:] - grey[..., :, :-1]).abs()
    dy = (grey[..., 1:, :] - grey[..., :-1, :]).abs()
    texture = [F.adaptive_avg_pool2d(d, cells).flatten(1) for d in (dx, dy)]
    return torch.cat([layout, *texture], dim=1)


def feature_distance(a: Tensor, b: Tensor) -> float:
    """The Fréchet distance between diagonal Gaussians fitted to two (N, F) feature sets, per feature."""
    mu = (a.mean(0) - b.mean(0)).pow(2)
    sd = (a.std(0, unbiased=False) - b.std(0, unbiased=False)).pow(2)
    return float((mu + sd).mean())


def choose_temperatures(model: LatentModel, heldout: Tensor, *, n: int = 48, seed: int = 0) -> TemperatureChoice:
    """Sample ``n`` images (at most as many as are held out, at least 16) at every candidate pair of
    temperatures with the same noise and return the pair nearest to the held-out images."""
    t0 = time.perf_counter()
    count = max(16, min(n, len(heldout)))
    reference = image_features(heldout[:count].cpu())
    device = first_parameter(model).device
    table = []
    for t in LATENT_TEMPERATURES:
        for pixel in PIXEL_TEMPERATURES:
            noise = torch.Generator(device=device).manual_seed(seed)
            images = sample(model, count, temperatures=t, output_temperature=pixel, noise=noise).cpu()
            table.append({"temperature": t, "output_temperature": pixel,
                          "distance": round(feature_distance(image_features(images), reference), 4)})
    best = min(table, key=lambda row: (row["distance"], -row["temperature"], -row["output_temperature"]))
    at_one = next(row["distance"] for row in table if row["temperature"] == 1.0 and row["output_temperature"] == 1.0)
    return TemperatureChoice(best["temperature"], best["output_temperature"], best["distance"], at_one, count,
                             time.perf_counter() - t0, table)


def passes() -> int:
    """How many sampling passes :func:`choose_temperatures` makes (for the time budget)."""
    return len(LATENT_TEMPERATURES) * len(PIXEL_TEMPERATURES)
