"""VDVAE presets sized for a CPU: ``vdvae train FOLDER --config small32`` (the default), ``small64``.

The official architectures (``--config cifar10``, ...) have 40-125M parameters and take GPU-weeks;
a preset is a VDVAE of under a million parameters that learns something in minutes on a laptop CPU.
``small32`` is the architecture of the shipped ``digits32`` model (15 latent layers at 1, 4, 8, 16
and 32; see weights/README.md); ``small64`` adds a 64x64 level. The input shift/scale are the
training pixels' mean and standard deviation, as the reference sets them for its datasets.

Each preset comes with the training recipe that worked for ``digits32`` on a 2-core CPU: a high
learning rate with cosine decay, a generous gradient clip, update skipping only on spikes, and an EMA
that follows closely while a short run is young (``ema_warmup``).

"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path
    from typing import Callable

    import torch

    from .config import VDVAEConfig

_COMMON = dict(bottleneck_multiple=0.25, zdim=8, num_mixtures=5, no_bias_above=64, width=32)

PRESETS: dict[str, dict[str, Any]] = {
    "small32": dict(
        _COMMON, image_size=32, custom_width_str="32:32,16:64,8:96,4:96,1:96",
        enc_blocks="32x1,32d2,16x1,16d2,8x2,8d2,4x4,4d4,1x3",
        dec_blocks="1x3,4m1,4x7,8m4,8x1,16m8,32m16",
    ),
    "small64": dict(
        _COMMON, image_size=64, custom_width_str="64:32,32:32,16:64,8:96,4:96,1:96",
        enc_blocks="64x1,64d2,32x1,32d2,16x1,16d2,8x2,8d2,4x4,4d4,1x3",
        dec_blocks="1x3,4m1,4x7,8m4,8x1,16m8,32m16,64m32",
    ),
}

# What worked for digits32 (weights/README.md): per-process batch and steps come from the data.
# The cosine decay comes from training.schedule.auto_settings(decay=True) when the length is known.
PRESET_RECIPE: dict[str, Any] = dict(lr=1e-3, grad_clip=400.0, skip_threshold=5000.0, ema_rate=0.995, ema_warmup=True)


def preset_image_size(name: str) -> int:
    return int(PRESETS[name]["image_size"])


def preset_config(name: str, images: "torch.Tensor", *, run_name: str | None = None) -> "VDVAEConfig":
    """The preset's config; a VDVAE's input shift/scale come from ``images`` (uint8 NHWC at its size)."""
    from .config import config_from_reference

    mean, std = pixel_stats(images)
    hps = dict(PRESETS[name], dataset="custom", preprocessing={"shift": -mean, "scale": 1.0 / std})
    return config_from_reference(hps, name=run_name or name)


def pixel_stats(images: "torch.Tensor", limit: int = 10_000) -> tuple[float, float]:
    """Mean and standard deviation of the pixel values (0..255) of up to ``limit`` images.

    The reference sets each data set's input shift/scale to ``-mean`` and ``1 / std`` this way.
    """
    x = images[:limit].double()
    return float(x.mean()), max(float(x.std()), 1e-3)


def hparams_config(path: "Path", images_at: "Callable[[int | None], torch.Tensor]", *,
                   size_hint: int | None = None) -> "tuple[VDVAEConfig, torch.Tensor]":
    """``vdvae train --hparams FILE``: any architecture in the reference's field names, and the
    training images read at its size. A data set the reference does not know gets its input
    shift/scale from the images' statistics, as the presets do."""
    from .config import _DATASETS, config_from_reference, read_hparams_file

    hps = dict(read_hparams_file(path))
    size = hps.get("image_size") or size_hint
    images = images_at(size)
    if not size:
        hps["image_size"] = int(images.shape[1])
    if hps.get("dataset") not in _DATASETS and "preprocessing" not in hps:
        mean, std = pixel_stats(images)
        hps["preprocessing"] = {"shift": -mean, "scale": 1.0 / std}
    name = hps.get("name") or path.stem
    return config_from_reference(hps, name=name), images
