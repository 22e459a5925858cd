"""NVAE presets sized for a CPU: ``vdvae train FOLDER --config nvae-small32``.

``nvae-small32`` is an NVAE (``res_mbconv`` cells, squeeze-and-excitation, one flow pair per group,
residual posterior) of 6 latent groups at 8x8 and 16x16 with 8-16 channels; it trains with NVAE's
own recipe (:mod:`.training`).
"""

from __future__ import annotations

from typing import Any

# NVAE presets: official ``args`` field names (nvae.config.NVAEConfig); ``custom_N`` = N x N RGB.
NVAE_PRESETS: dict[str, dict[str, Any]] = {
    "nvae-small32": dict(
        dataset="custom_32", arch_instance="res_mbconv", num_channels_enc=8, num_channels_dec=8,
        num_latent_scales=2, num_groups_per_scale=4, ada_groups=True, num_latent_per_group=8,
        num_preprocess_blocks=1, num_preprocess_cells=2, num_postprocess_blocks=1, num_postprocess_cells=2,
        num_cell_per_cond_enc=1, num_cell_per_cond_dec=1, num_nf=1, use_se=True, res_dist=True, num_mixture_dec=5,
    ),
}
