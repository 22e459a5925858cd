"""NVAE behind the common interface (:class:`vdvae_cli.engine.interface.Family`).

This module is read to describe a file (``vdvae info``, the shipped models' listing), so it imports
no torch: the pixel conventions and the functions that apply them are in :mod:`.pixels`, the
network in :mod:`.network`, each imported by the method that needs it.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .config import NVAEConfig

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from ...engine.distributions import Noise
    from ...engine.interface import DecoderOutput, OfficialCheckpoint
    from ...engine.recipe import TrainConfig
    from ...engine.recipe import Recipe, TrainDefaults
    from .network import NVAE


class NVAEFamily:
    """NVAE (Vahdat & Kautz 2020): :mod:`vdvae_cli.families.nvae`."""

    name = "nvae"
    config_key = "nvae_config"

    def config_from_dict(self, data: Mapping[str, Any]) -> NVAEConfig:
        return NVAEConfig.from_dict(data)

    def network(self, cfg: NVAEConfig) -> "NVAE":
        from .network import NVAE

        return NVAE(cfg)

    def state_shapes(self, cfg: NVAEConfig) -> "OrderedDict[str, tuple[int, ...]]":
        from .network import network_shapes

        return network_shapes(cfg)

    def activation_bytes(self, cfg: NVAEConfig, itemsize: int = 4, *, encoder: bool = True) -> int:
        # Channels double as the resolution halves, so every state below the pre-processing holds
        # about C * S^2 / 2^P values: the encoder keeps one per group for the decoder, plus a cell's
        # temporaries at full resolution (expansion 6, a few alive) and the output head (float32).
        size, width = cfg.image_size, max(cfg.num_channels_enc, cfg.num_channels_dec)
        per_state = width * size * size // 2 ** cfg.num_preprocess_blocks
        groups = sum(cfg.groups_per_scale)
        temporaries = 12 * width * size * size
        head = 10 * cfg.num_mixture_dec * size * size * 4
        return ((2 if encoder else 1) * groups * per_state + temporaries) * itemsize + 3 * head

    def model_input(self, model: Any, images: Tensor, dtype: torch.dtype) -> Tensor:
        from .pixels import unit_images

        return unit_images(model.cfg, images).to(dtype)

    def nll(self, model: Any, logits: Tensor, images: Tensor) -> Tensor:
        from .pixels import recon_log_prob, unit_images

        cfg = model.cfg
        return -recon_log_prob(cfg, logits, unit_images(cfg, images.to(logits.device))) / cfg.n_dims

    def pixels(self, model: Any, logits: Tensor, noise: "Noise", output_temperature: float) -> Tensor:
        from ...engine.distributions import to_uint8
        from .pixels import output_unit

        x = output_unit(model.cfg, logits, noise, output_temperature)
        return to_uint8(x.expand(*x.shape[:3], 3))

    def log_ratio(self, model: Any, out: "DecoderOutput") -> Tensor:
        return sum(  # type: ignore[return-value]
            (t["log_p"].float() - t["log_q"].float()).sum(dim=(1, 2, 3)) for t in out.trace if "log_q" in t
        )

    def readjust_bn(self, model: Any, temperatures: Sequence[float], cache_dir: Path, *, iters: int) -> str:
        from .batchnorm import readjust_cached

        loaded, path = readjust_cached(model, temperatures, cache_dir, iters=iters)
        if loaded:
            return f"BatchNorm statistics for these temperatures loaded from {path}"
        return f"BatchNorm statistics re-adjusted ({iters} prior passes of 16), kept in {path}"

    def train_defaults(self, name: str | None) -> "TrainDefaults":
        from .training import train_defaults

        return train_defaults(name)

    def training_recipe(self, cfg: NVAEConfig, tc: "TrainConfig", total: int) -> "Recipe":
        from .training import NVAERecipe

        return NVAERecipe(cfg, tc, total)

    def prepare_for_inference(self, model: Any, *, fuse: bool, compile: bool) -> None:
        # BatchNorm and weight normalisation folded into the convs, oneDNN's fused kernels on CPU
        # (fused.py); compile has nothing of its own to add for NVAE yet
        if fuse:
            from .fused import fuse_cells

            fuse_cells(model, channels_last=True)  # the engine asks for fusion in channels-last only

    def official_names(self) -> tuple[str, ...]:
        from .config import README_ARGS

        return tuple(f"nvae-{name}" for name in README_ARGS)

    def official_config(self, name: str) -> NVAEConfig:
        from .config import readme_config

        return readme_config(name.removeprefix("nvae-"))

    def preset_names(self) -> tuple[str, ...]:
        from .presets import NVAE_PRESETS

        return tuple(NVAE_PRESETS)

    def preset_image_size(self, name: str) -> int:
        from .config import image_size_of
        from .presets import NVAE_PRESETS

        return image_size_of(NVAE_PRESETS[name]["dataset"])

    def preset_config(self, name: str, images: Tensor, *, run_name: str | None = None) -> NVAEConfig:
        from .presets import NVAE_PRESETS

        return NVAEConfig(**NVAE_PRESETS[name], name=run_name or name)

    def hparams_config(self, path: Path, images_at: Any, *, size_hint: int | None = None) -> "tuple[NVAEConfig, Tensor]":
        """An NVAE from a JSON object in its official ``args`` field names with ``"family": "nvae"``
        (plus ``grey``, ``name``); its name defaults to the file's stem."""
        from ...engine.configbase import config_from_json_file

        cfg = config_from_json_file(NVAEConfig, path)
        return cfg, images_at(cfg.image_size)

    def stores_layout(self, path: Path) -> bool:
        from .official import looks_official

        return looks_official(path)

    def official_layout(self, config: Any = None, hparams: Path | None = None, *, name: str | None = None) -> None:
        if config is not None or hparams is not None:
            from ...base.errors import UsageError

            raise UsageError("this is an NVAE checkpoint: its stored args give the layout", hint="drop --config/--hparams")
        return None

    def load_official(self, path: Path, layout: Any = None, *, state: Any = None) -> "OfficialCheckpoint":
        from .official import load_official

        return load_official(path, layout)


FAMILY = NVAEFamily()
