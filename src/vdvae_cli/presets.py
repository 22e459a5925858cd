"""Model presets sized for a CPU: ``vdvae train FOLDER --config small32`` (the default), ``small64``,
or the NVAE ``nvae-small32``.

The official architectures (``--config cifar10``, ...) have 40-125M parameters and take GPU-weeks;
a preset is a VDVAE of under a million parameters that learns something in minutes on a laptop CPU.
``small32`` is the architecture of the shipped ``digits32`` model (15 latent layers at 1, 4, 8, 16
and 32; see weights/README.md); ``small64`` adds a 64x64 level. The input shift/scale are the
training pixels' mean and standard deviation, as the reference sets them for its datasets.

Each preset comes with the training recipe that worked for ``digits32`` on a 2-core CPU: a high
learning rate with cosine decay, a generous gradient clip, update skipping only on spikes, and an EMA
that follows closely while a short run is young (``ema_warmup``).

``nvae-small32`` is an NVAE (``res_mbconv`` cells, squeeze-and-excitation, one flow pair per group,
residual posterior) of 6 latent groups at 8x8 and 16x16 with 8-16 channels; it trains with NVAE's
own recipe (:mod:`vdvae_cli.nvae.training`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeGuard

if TYPE_CHECKING:
    import torch

    from .config import VDVAEConfig
    from .nvae.config import NVAEConfig

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
# NVAE presets: official ``args`` field names (nvae.config.NVAEConfig); ``custom_N`` = N x N RGB.
NVAE_PRESETS: dict[str, dict[str, Any]] = {
    "nvae-small32": dict(
        dataset="custom_32", arch_instance="res_mbconv", num_channels_enc=8, num_channels_dec=8,
        num_latent_scales=2, num_groups_per_scale=4, ada_groups=True, num_latent_per_group=8,
        num_preprocess_blocks=1, num_preprocess_cells=2, num_postprocess_blocks=1, num_postprocess_cells=2,
        num_cell_per_cond_enc=1, num_cell_per_cond_dec=1, num_nf=1, use_se=True, res_dist=True, num_mixture_dec=5,
    ),
}
PRESET_NAMES = (*PRESETS, *NVAE_PRESETS)
DEFAULT_PRESET = "small32"

# What worked for digits32 (weights/README.md): per-process batch and steps come from the data.
# The cosine decay comes from training.schedule.auto_settings(decay=True) when the length is known.
PRESET_RECIPE: dict[str, Any] = dict(lr=1e-3, grad_clip=400.0, skip_threshold=5000.0, ema_rate=0.995, ema_warmup=True)


def is_preset(name: str | None) -> TypeGuard[str]:
    return name in PRESETS or name in NVAE_PRESETS


def preset_image_size(name: str) -> int:
    if name in NVAE_PRESETS:
        from .nvae.config import image_size_of

        return image_size_of(NVAE_PRESETS[name]["dataset"])
    return int(PRESETS[name]["image_size"])


def preset_config(name: str, images: "torch.Tensor", *, run_name: str | None = None) -> "VDVAEConfig | NVAEConfig":
    """The preset's config; a VDVAE's input shift/scale come from ``images`` (uint8 NHWC at its size)."""
    if name in NVAE_PRESETS:
        from .nvae.config import NVAEConfig

        return NVAEConfig(**NVAE_PRESETS[name], name=run_name or name)
    from .config import config_from_reference
    from .data import pixel_stats

    mean, std = pixel_stats(images)
    hps = dict(PRESETS[name], dataset="custom", preprocessing={"shift": -mean, "scale": 1.0 / std})
    return config_from_reference(hps, name=run_name or name)


# --------------------------------------------------------------------------------------------------
# The official architectures a run can start from, by name (VDVAE's hps.py sets; NVAE's README
# training commands as ``nvae-<name>``)


def official_names() -> tuple[str, ...]:
    from .config import OFFICIAL_NAMES
    from .nvae.config import README_ARGS

    return (*OFFICIAL_NAMES, *(f"nvae-{name}" for name in README_ARGS))


def official_architecture(name: str) -> "VDVAEConfig | NVAEConfig":
    """The config of an official architecture named by :func:`official_names`."""
    from .config import OFFICIAL_NAMES, official_config
    from .nvae.config import readme_config

    return official_config(name) if name in OFFICIAL_NAMES else readme_config(name.removeprefix("nvae-"))
