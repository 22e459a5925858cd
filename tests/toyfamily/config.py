"""The toy family's frozen config: two latent layers, 1x1 then 4x4, over 8x8 RGB images."""

from __future__ import annotations

from dataclasses import dataclass, field

from vdvae_cli.base.errors import ConfigError
from vdvae_cli.engine.configbase import LatentStackConfig


@dataclass(frozen=True)
class ToyLayer:
    index: int
    res: int
    zdim: int
    width: int

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.zdim, self.res, self.res)


@dataclass(frozen=True)
class ToyConfig(LatentStackConfig):
    name: str = "toy8"
    dataset: str = "custom"
    width: int = 8
    zdim: int = 2
    family: str = field(default="toy", init=False, repr=False, compare=False)
    decoder_layers: tuple[ToyLayer, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for what, value in (("width", self.width), ("zdim", self.zdim)):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 64:
                raise ConfigError(f"toy config: {what} must be a whole number from 1 to 64")
        layers = (ToyLayer(0, 1, self.zdim, self.width), ToyLayer(1, 4, self.zdim, self.width))
        object.__setattr__(self, "decoder_layers", layers)

    image_size = 8
    image_channels = 3

    @property
    def n_dims(self) -> int:
        return self.image_size * self.image_size * self.image_channels
