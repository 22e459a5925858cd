"""PixelCNN++'s training recipe: Adam(W) on the exact negative log-likelihood (a model with no latent
layers has no rate term, so the trainer's negative ELBO *is* its loss)."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from ...base.errors import UsageError
from ...engine.recipe import LossTerms, TrainConfig

Tensor = torch.Tensor


class PixelCNNRecipe:
    split_kl = False
    find_unused_parameters = False

    def __init__(self, cfg: Any, tc: "TrainConfig", total: int):
        if tc.family_options:
            raise UsageError(f"PixelCNN++ training has no family options (got {', '.join(sorted(tc.family_options))})")
        if tc.kl_warmup or tc.free_bits or any(dict(tc.free_bits_res).values()) or tc.coarse_steps:
            raise UsageError("a PixelCNN++ has no latent layers: KL warm-up, free bits and the coarse-first "
                             "curriculum do not apply", hint="drop --kl-warmup, --free-bits, --free-bits-res, --coarse-*")
        self.cfg, self.tc = cfg, tc

    def optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        tc = self.tc
        return torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=tc.betas, eps=tc.adam_eps, weight_decay=tc.wd)

    def objective(self, model: torch.nn.Module, step: int, terms: LossTerms) -> Tensor:
        return terms.elbo

    def log_values(self, step: int) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        if state:
            raise ValueError(f"unexpected recipe state {', '.join(sorted(state))}")
