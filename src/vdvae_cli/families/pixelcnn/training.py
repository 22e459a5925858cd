"""PixelCNN++'s training recipe: Adam(W) on the exact negative log-likelihood (a model with no latent
layers has no rate term, so the trainer's negative ELBO *is* its loss)."""

from __future__ import annotations

from typing import Any

import torch

from ...base.errors import UsageError
from ...engine.recipe import AdamWRecipe, LossTerms, TrainConfig

Tensor = torch.Tensor


class PixelCNNRecipe(AdamWRecipe):
    def __init__(self, cfg: Any, tc: "TrainConfig", total: int):
        if tc.family_options:
            raise UsageError(f"PixelCNN++ training has no family options (got {', '.join(sorted(tc.family_options))})")
        if (tc.kl_warmup or tc.free_bits or any(dict(tc.free_bits_res).values()) or tc.coarse_steps
                or tc.progressive_steps):
            raise UsageError("a PixelCNN++ has no latent layers: KL warm-up, free bits, the coarse-first curriculum "
                             "and the progressive recipe do not apply",
                             hint="drop --kl-warmup, --free-bits, --free-bits-res, --coarse-first, --progressive")
        self.cfg, self.tc = cfg, tc

    def objective(self, model: torch.nn.Module, step: int, terms: LossTerms) -> Tensor:
        return terms.elbo
