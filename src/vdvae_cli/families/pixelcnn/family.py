"""PixelCNN++ behind the common interface (:class:`vdvae_cli.engine.interface.Family`).

A model with no latent layers: its "encoder" hands the image to the network, whose causal pass gives
every pixel's DMoL parameters given the pixels before it, so the engine's ELBO is the exact
negative log-likelihood (no rate term) and ``vdvae eval`` reports exact bits/dim. Sampling cannot
be one decoder pass: :meth:`PixelCNNFamily.draw_pixels` draws pixel by pixel
(:mod:`.sampling`). Pixels map to [-1, 1] as ``x / 127.5 - 1`` and back by truncation, as for the
VAEs. Imports no torch at module level (``vdvae info`` reads this module).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ...base.errors import UsageError

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from ...engine.distributions import Noise
    from ...engine.interface import DecoderOutput, OfficialCheckpoint
    from ...engine.recipe import Recipe, TrainConfig, TrainDefaults
    from .config import PixelCNNConfig

NO_LATENTS_HINT = "a PixelCNN++ models pixels directly: use sample, eval, info or train with it"


class PixelCNNFamily:
    """PixelCNN++ (Salimans et al. 2017): :mod:`.config`, :mod:`.network`, :mod:`.sampling`."""

    name = "pixelcnn"
    config_key = "pixelcnn_config"

    def config_from_dict(self, data: Mapping[str, Any]) -> "PixelCNNConfig":
        from .config import PixelCNNConfig

        return PixelCNNConfig.from_dict(data)

    def network(self, cfg: "PixelCNNConfig") -> "torch.nn.Module":
        from .network import PixelCNNPP

        return PixelCNNPP(cfg)

    def state_shapes(self, cfg: "PixelCNNConfig") -> "OrderedDict[str, tuple[int, ...]]":
        from .network import network_shapes

        return network_shapes(cfg)

    def activation_bytes(self, cfg: "PixelCNNConfig", itemsize: int = 4, *, encoder: bool = True) -> int:
        # Every gated block's output is kept for the way up (3 n + 3 per stream, at the three
        # resolutions: at most the full one's size each), plus a block's temporaries (concat_elu
        # doubles the channels, the gate's conv has 2 nf outputs) and the DMoL head in float32.
        full = cfg.nr_filters * cfg.image_size**2
        kept = 2 * (3 * cfg.nr_resnet + 3) * full
        temporaries = 12 * full
        head = 4 * cfg.output_channels * cfg.image_size**2 * 4
        return (kept + temporaries) * itemsize + head

    def model_input(self, model: Any, images: "Tensor", dtype: "torch.dtype") -> "Tensor":
        from .sampling import network_input

        return network_input(model.cfg, images).to(dtype)

    def nll(self, model: Any, logits: "Tensor", images: "Tensor") -> "Tensor":
        from ...engine.distributions import dmol_nll
        from .sampling import dmol_target

        return dmol_nll(logits, dmol_target(model.cfg, images.to(logits.device)), model.cfg.nr_logistic_mix)

    def pixels(self, model: Any, logits: "Tensor", noise: "Noise", output_temperature: float) -> "Tensor":
        # every pixel drawn from its distribution given the *true* pixels before it (teacher forcing):
        # what a caller holding a pass's parameters can draw; samples come from draw_pixels
        from ...engine.distributions import dmol_sample, to_uint8

        x = dmol_sample(logits, model.cfg.nr_logistic_mix, noise=noise, temperature=output_temperature)
        return to_uint8(x.expand(*x.shape[:3], 3))

    def draw_pixels(self, model: Any, n: int, noise: "Noise", output_temperature: float) -> "Tensor":
        """``n`` images (uint8 NHWC RGB) drawn pixel by pixel at ``output_temperature``."""
        from .sampling import draw

        return draw(model, n, noise, output_temperature)

    def log_ratio(self, model: Any, out: "DecoderOutput") -> "Tensor":
        raise UsageError("a PixelCNN++ has no latent layers: its likelihood is exact, so importance sampling "
                         "has nothing to tighten", hint="drop --samples (eval's one pass gives the exact bits/dim)")

    def readjust_bn(self, model: Any, temperatures: Sequence[float], cache_dir: Path, *, iters: int) -> str:
        raise UsageError("--readjust-bn re-estimates BatchNorm statistics, and a PixelCNN++ has no BatchNorm",
                         hint="it is for NVAE models")

    def prepare_for_inference(self, model: Any, *, fuse: bool, compile: bool) -> None:
        return None  # weight normalisation is folded for the length of a draw (sampling.draw)

    def train_defaults(self, name: str | None) -> "TrainDefaults":
        from ...engine.recipe import TrainDefaults
        from .presets import OFFICIAL, PAPER_RECIPE, PRESET_RECIPE, PRESETS

        if name in PRESETS:
            return TrainDefaults(dict(PRESET_RECIPE), decay=True)
        if name in OFFICIAL:
            return TrainDefaults(dict(PAPER_RECIPE, batch_size=16), decay=True)
        return TrainDefaults(dict(PAPER_RECIPE))

    def training_recipe(self, cfg: "PixelCNNConfig", tc: "TrainConfig", total: int) -> "Recipe":
        from .training import PixelCNNRecipe

        return PixelCNNRecipe(cfg, tc, total)

    def official_names(self) -> tuple[str, ...]:
        from .presets import OFFICIAL

        return tuple(OFFICIAL)

    def official_config(self, name: str) -> "PixelCNNConfig":
        from .config import PixelCNNConfig
        from .presets import OFFICIAL

        return PixelCNNConfig(**OFFICIAL[name], name=name)

    def preset_names(self) -> tuple[str, ...]:
        from .presets import PRESETS

        return tuple(PRESETS)

    def preset_image_size(self, name: str) -> int:
        from .presets import PRESETS

        return int(PRESETS[name]["image_size"])

    def preset_config(self, name: str, images: "Tensor", *, run_name: str | None = None) -> "PixelCNNConfig":
        from .config import PixelCNNConfig
        from .presets import PRESETS

        return PixelCNNConfig(**PRESETS[name], name=run_name or name)

    def hparams_config(self, path: Path, images_at: Any, *, size_hint: int | None = None) -> "tuple[PixelCNNConfig, Tensor]":
        """A PixelCNN++ from a JSON object of :class:`.config.PixelCNNConfig` fields with
        ``"family": "pixelcnn"``; its name defaults to the file's stem."""
        from ...engine.configbase import config_from_json_file
        from .config import PixelCNNConfig

        cfg = config_from_json_file(PixelCNNConfig, path)
        return cfg, images_at(cfg.image_size)

    def stores_layout(self, path: Path) -> bool:
        return False  # no official PixelCNN++ checkpoint is converted (the paper's is TensorFlow)

    def official_layout(self, config: Any = None, hparams: Path | None = None, *, name: str | None = None) -> None:
        raise UsageError("there is no official PixelCNN++ checkpoint to convert (the paper's is a TensorFlow one)",
                         hint="train one with vdvae train --config pixelcnn-small32")

    def load_official(self, path: Path, layout: Any = None, *, state: Any = None) -> "OfficialCheckpoint":
        self.official_layout()
        raise AssertionError  # unreachable


FAMILY = PixelCNNFamily()
