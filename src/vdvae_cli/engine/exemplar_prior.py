"""An exemplar prior over a VAE's top latent layers: the mixture of the model's own posteriors over a
stored set of training images (the Exemplar VAE of Norouzi et al. 2020; the VampPrior of Tomczak &
Welling 2018 with training images as its pseudo-inputs).

A draw picks one stored image uniformly and draws the covered layers from the model's posterior of
it, ``z_<K ~ q(z_<K | x_n)``; the layers below come from the model's own prior as usual. It draws
only from nothing given (``conditional = False``): after given leading layers (``reconstruct
--keep-layers``, a decoded prefix) the model's own prior draws the rest, since the mixture's
conditional would weigh every stored image by its posterior density at the given layers, which the
decoders do not compute for given latents. What the covered layers carry per image is the posterior's rate there
(the card reports it), so a draw shares only that much with its exemplar, and the deeper layers are
drawn afresh.

It has no network and nothing to fit: its "parameters" are the images (uint8, at the model's channels). It
needs the model to draw (:meth:`ExemplarPrior.attach`, done by the reader that checks the file
against its model), and it has no tractable density here (the mixture's would need every stored
image's posterior at every evaluated latent), so likelihood commands use the model's own prior.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch

from vdvae_cli.base.errors import UsageError
from .distributions import Noise
from .latent_prior import LatentPrior

Tensor = torch.Tensor

# (images uint8 NHWC, noise) -> the covered layers' latents, (N, Z, r, r) each
PosteriorDraw = Callable[[Tensor, Noise], list[Tensor]]

MAX_EXEMPLARS = 1 << 20


@dataclass(frozen=True)
class ExemplarConfig:
    """The stored images' count and shape, and the covered layers' flattened dimension."""

    dim: int
    count: int
    size: int
    channels: int

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")
        if not 1 <= self.count <= MAX_EXEMPLARS:
            raise ValueError(f"count must be 1 to {MAX_EXEMPLARS}, got {self.count}")
        if not 1 <= self.size <= 4096:
            raise ValueError(f"size must be 1 to 4096, got {self.size}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")

    def parameter_count(self) -> int:
        """How many numbers the file holds: the images' pixels."""
        return self.count * self.size * self.size * self.channels

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ExemplarConfig:
        return cls(dim=int(d["dim"]), count=int(d["count"]), size=int(d["size"]), channels=int(d["channels"]))


class ExemplarPrior(LatentPrior):
    """A uniform mixture of the model's posteriors over ``images`` (uint8, N x size x size x channels)."""

    kind = "exemplar"
    has_density = False
    conditional = False

    def __init__(self, cfg: ExemplarConfig):
        super().__init__()
        self.cfg = cfg
        self.images: Tensor
        self.register_buffer("images", torch.zeros(cfg.count, cfg.size, cfg.size, cfg.channels, dtype=torch.uint8))
        self._draw: PosteriorDraw | None = None

    def attach(self, draw: PosteriorDraw, shapes: Sequence[Sequence[int]]) -> None:
        """Give the prior its model: ``draw`` samples the covered layers' posterior of some images;
        ``shapes`` are the covered layers' latent shapes (Z, r, r), in order."""
        dims = sum(math.prod(int(v) for v in s) for s in shapes)
        if dims != self.cfg.dim:
            raise ValueError(f"the covered layers have {dims} dims, not {self.cfg.dim}")
        self._draw = draw

    def log_prob_dims(self, z: Tensor) -> Tensor:
        raise UsageError("an exemplar prior has no density here (it would need every stored image's posterior at "
                         "every latent evaluated)", hint="use --prior model for likelihoods")

    @torch.no_grad()
    def pick(self, n: int, noise: Noise) -> Tensor:
        """``n`` exemplar indices, uniform, drawn from ``noise`` (one uniform number per draw)."""
        u = noise.uniform((n,), device=self.images.device)
        return (u * self.cfg.count).long().clamp_(0, self.cfg.count - 1)

    @torch.no_grad()
    def sample(self, n: int, noise: Noise, *, temp: float | Tensor = 1.0,
               device: torch.device | None = None, given: Tensor | None = None) -> Tensor:
        """``n`` draws of the covered layers, flattened (n, dim): each from the posterior of a stored
        image picked uniformly. Nothing may be given (see the module's note).

        ``temp`` does not apply: a covered layer is a posterior draw at the spread the posterior has."""
        if self._draw is None:
            raise RuntimeError("an exemplar prior draws through its model: attach() it first")
        if given is not None and given.shape[1] > 0:
            raise ValueError("an exemplar prior draws its layers from nothing given")
        images = self.images.index_select(0, self.pick(n, noise))
        latents = self._draw(images, noise)
        flat = torch.cat([z.float().reshape(n, -1) for z in latents], dim=1)
        return flat.to(device) if device is not None else flat
