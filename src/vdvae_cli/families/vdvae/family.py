"""VDVAE behind the common interface (:class:`vdvae_cli.engine.interface.Family`).

This module is read to describe a file (``vdvae info``), so it imports no torch: each method imports
what it needs (the network, the pixel maths, the recipe) when it is called.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from ...engine.distributions import Noise
    from ...engine.interface import DecoderOutput, OfficialCheckpoint
    from ...engine.recipe import Recipe, TrainConfig, TrainDefaults
    from .config import VDVAEConfig


class VDVAEFamily:
    """Very Deep VAEs (Child 2021): :mod:`.config`, :mod:`.model`."""

    name = "vdvae"
    config_key = "vdvae_config"

    def config_from_dict(self, data: Mapping[str, Any]) -> "VDVAEConfig":
        from .config import VDVAEConfig

        return VDVAEConfig.from_dict(data)

    def network(self, cfg: "VDVAEConfig") -> "torch.nn.Module":
        from .model import VAE

        return VAE(cfg)

    def state_shapes(self, cfg: "VDVAEConfig") -> "OrderedDict[str, tuple[int, ...]]":
        from .shapes import vdvae_state_shapes

        return vdvae_state_shapes(cfg)  # from the config alone: not even a meta-device module

    def activation_bytes(self, cfg: "VDVAEConfig", itemsize: int = 4, *, encoder: bool = True) -> int:
        from .shapes import vdvae_activation_bytes

        return vdvae_activation_bytes(cfg, itemsize, encoder=encoder)

    def model_input(self, model: Any, images: "Tensor", dtype: "torch.dtype") -> "Tensor":
        from .pixels import model_input

        return model_input(model.cfg, images, dtype)

    def nll(self, model: Any, logits: "Tensor", images: "Tensor") -> "Tensor":
        from ...engine.distributions import dmol_nll
        from .pixels import loss_target

        cfg = model.cfg
        return dmol_nll(logits, loss_target(cfg, images), cfg.num_mixtures, low_bit=cfg.low_bit)

    def pixels(self, model: Any, logits: "Tensor", noise: "Noise", output_temperature: float) -> "Tensor":
        from ...engine.distributions import dmol_sample, to_uint8

        x = dmol_sample(logits, model.cfg.num_mixtures, noise=noise, temperature=output_temperature)
        return to_uint8(x.expand(*x.shape[:3], 3))  # grey models write grey as RGB (R = G = B)

    def log_ratio(self, model: Any, out: "DecoderOutput") -> "Tensor":
        from ...engine.distributions import gaussian_log_prob

        return sum(  # type: ignore[return-value]
            (gaussian_log_prob(t["z"].float(), t["pm"].float(), t["pv"].float())
             - gaussian_log_prob(t["z"].float(), t["qm"].float(), t["qv"].float())).sum(dim=(1, 2, 3))
            for t in out.trace
            if "qm" in t  # layers drawn from the prior have q = p: ratio 1
        )

    def readjust_bn(self, model: Any, temperatures: Sequence[float], cache_dir: Path, *, iters: int) -> str:
        from ...base.errors import UsageError

        raise UsageError("--readjust-bn re-estimates BatchNorm statistics, and a VDVAE has no BatchNorm",
                         hint="it is for NVAE models")

    def prepare_for_inference(self, model: Any, *, fuse: bool, compile: bool) -> None:
        from .fused import compile_blocks, fuse_blocks

        if compile:
            compile_blocks(model)
        elif fuse:
            fuse_blocks(model)

    # --- training -----------------------------------------------------------------------------

    def train_defaults(self, name: str | None) -> "TrainDefaults":
        from ...engine.recipe import TrainDefaults
        from .presets import PRESET_RECIPE, PRESETS
        from .training import reference_recipe

        if name in PRESETS:
            return TrainDefaults(dict(PRESET_RECIPE), decay=True)
        return TrainDefaults(reference_recipe(name) if name else {})

    def training_recipe(self, cfg: "VDVAEConfig", tc: "TrainConfig", total: int) -> "Recipe":
        from .training import VDVAERecipe

        return VDVAERecipe(cfg, tc, total)

    def official_names(self) -> tuple[str, ...]:
        from .config import OFFICIAL_NAMES

        return OFFICIAL_NAMES

    def official_config(self, name: str) -> "VDVAEConfig":
        from .config import official_config

        return official_config(name)

    def preset_names(self) -> tuple[str, ...]:
        from .presets import PRESETS

        return tuple(PRESETS)

    def preset_image_size(self, name: str) -> int:
        from .presets import preset_image_size

        return preset_image_size(name)

    def preset_config(self, name: str, images: "Tensor", *, run_name: str | None = None) -> "VDVAEConfig":
        from .presets import preset_config

        return preset_config(name, images, run_name=run_name)

    def hparams_config(self, path: Path, images_at: Any, *, size_hint: int | None = None) -> "tuple[VDVAEConfig, Tensor]":
        from .presets import hparams_config

        return hparams_config(path, images_at, size_hint=size_hint)

    # --- official checkpoints -----------------------------------------------------------------

    def stores_layout(self, path: Path) -> bool:
        return False  # openai/vdvae saves a bare state_dict: the layout comes from --config or --hparams

    def official_layout(self, config: Any = None, hparams: Path | None = None, *,
                        name: str | None = None) -> "VDVAEConfig | None":
        from .official import official_layout

        return official_layout(config, hparams, name=name)

    def load_official(self, path: Path, layout: Any = None, *, state: Any = None) -> "OfficialCheckpoint":
        from .official import load_official

        return load_official(path, layout, state=state)


FAMILY = VDVAEFamily()
