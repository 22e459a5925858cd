"""Typed, immutable PixelCNN++ hyperparameters (Salimans et al. 2017, section 2 and 3).

The network has three resolutions (the image, 1/2, 1/4), ``nr_resnet`` gated ResNet blocks per
resolution on the way down and one per kept activation on the way up (``nr_resnet + 1``, but
``nr_resnet`` at the coarsest), ``nr_filters`` channels throughout
and a discretized mixture of ``nr_logistic_mix`` logistics per pixel (with the channel dependence
inside the pixel for RGB). It has no latent layers: ``decoder_layers`` is empty, so every command
that needs latents refuses it in one line. Torch-free, so reading a file's header stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...base.errors import ConfigError
from ...engine.configbase import LatentStackConfig

# Inclusive bounds of the integer fields: generous for any real use, small enough that a hostile
# file cannot ask for an absurd network before its tensors are checked.
_BOUNDS: dict[str, tuple[int, int]] = {
    "image_size": (4, 256), "channels": (1, 3), "nr_resnet": (1, 16), "nr_filters": (1, 1024),
    "nr_logistic_mix": (1, 64),
}


@dataclass(frozen=True)
class PixelCNNConfig(LatentStackConfig):
    image_size: int = 32  # a multiple of 4: the network halves the image twice
    channels: int = 3  # 3 (RGB) or 1 (grey)
    nr_resnet: int = 5
    nr_filters: int = 160
    nr_logistic_mix: int = 10
    dropout: float = 0.5  # inside each gated ResNet block, training only
    dataset: str = "custom"
    name: str = "pixelcnn"

    family: str = field(default="pixelcnn", init=False, repr=False, compare=False)
    decoder_layers: tuple[Any, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, (lo, hi) in _BOUNDS.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                raise ConfigError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 (grey) or 3 (RGB), got {self.channels}")
        if self.image_size % 4:
            raise ConfigError(f"image_size must be a multiple of 4 (the network halves it twice), got {self.image_size}")
        if not isinstance(self.dropout, (int, float)) or isinstance(self.dropout, bool) or not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if not isinstance(self.dataset, str) or not isinstance(self.name, str) or not self.name:
            raise ConfigError("dataset and name must be non-empty strings")

    @property
    def image_channels(self) -> int:
        return self.channels

    @property
    def num_mixtures(self) -> int:
        return self.nr_logistic_mix

    @property
    def output_channels(self) -> int:
        """DMoL parameters per pixel: 10 per component for RGB, 3 for grey."""
        return (10 if self.channels == 3 else 3) * self.nr_logistic_mix

    @property
    def n_dims(self) -> int:
        return self.channels * self.image_size**2

