"""The interface of a learned prior over a VAE's top latents, flattened to (N, D): what the engine's
ops call (:class:`vdvae_cli.engine.learned_prior.TopPrior`) and what each kind implements (the MADE in
:mod:`.learned_prior`, the spatial prior in :mod:`.spatial_prior`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .distributions import Noise

Tensor = torch.Tensor


class LatentPrior(nn.Module):
    """What the ops need from a learned prior over (N, D) latents."""

    kind: str  # the companion file's "kind": which class rebuilds it
    has_density = True  # False: log_prob_dims refuses (an exemplar prior), so likelihoods use the model's prior
    # False: draws only from nothing given (an exemplar prior); after given leading layers (reconstruct
    # --keep-layers, decode of a prefix) the model's own prior draws the rest
    conditional = True
    cfg: Any  # a frozen config with to_dict(), from_dict() and parameter_count()

    def log_prob(self, z: Tensor) -> Tensor:  # (N, D) -> (N,) nats
        return self.log_prob_dims(z).sum(-1)

    def log_prob_dims(self, z: Tensor) -> Tensor:  # (N, D) -> (N, D): log p(z_d | z_<d)
        raise NotImplementedError

    def sample(self, n: int, noise: Noise, *, temp: float | Tensor = 1.0,
               device: torch.device | None = None, given: Tensor | None = None) -> Tensor:  # (n, D)
        raise NotImplementedError
