"""VDVAE's training recipe (openai/vdvae, the spec's section 11): AdamW with decoupled weight decay,
the negative ELBO as the objective (with the trainer's optional aids against posterior collapse),
and the reference's settings per official architecture."""

from __future__ import annotations

from typing import Any

import torch

from ...base.errors import UsageError
from ...engine.recipe import AdamWRecipe, LossTerms, TrainConfig

Tensor = torch.Tensor


class VDVAERecipe(AdamWRecipe):
    """openai/vdvae: AdamW (decoupled weight decay), the negative ELBO as the objective, and the
    trainer's optional aids against posterior collapse (:func:`.step.objective`)."""

    def __init__(self, cfg: Any, tc: "TrainConfig", total: int):
        if tc.family_options:
            raise UsageError(f"VDVAE training has no family options (got {', '.join(sorted(tc.family_options))})",
                             hint="--recipe KEY=VALUE sets an NVAE's recipe; a VDVAE's has options of its own")
        self.cfg, self.tc = cfg, tc
        unknown = sorted(set(map(int, dict(tc.free_bits_res))) - set(cfg.resolutions))
        if unknown:
            raise UsageError(f"--free-bits-res names resolution {unknown[0]}, which has no latent layer in this model",
                             hint=f"its latent resolutions: {', '.join(map(str, cfg.resolutions))}")
        self.split_kl = bool(tc.kl_warmup or tc.free_bits or any(dict(tc.free_bits_res).values()))
        self.find_unused_parameters = _unused_encoder_blocks(cfg) or tc.coarse_steps > 0 or tc.progressive_steps > 0

    def objective(self, model: torch.nn.Module, step: int, terms: LossTerms) -> Tensor:
        if not self.split_kl:
            return terms.elbo
        from ...engine.recipe import free_bits_floors, objective

        floors = free_bits_floors(self.tc, [layer.res for layer in self.cfg.decoder_layers], self.cfg.n_dims)
        return objective(self.tc, step, terms.distortion, terms.kl_layers, self.cfg.n_dims, terms.kl_prior, floors)


def _unused_encoder_blocks(cfg: Any) -> bool:
    """Whether some encoder blocks feed no decoder resolution (DDP must then look for unused params)."""
    used = set(cfg.resolutions)
    last_needed = max((i for i, layer in enumerate(cfg.encoder_layers) if layer.out_res in used), default=-1)
    return last_needed < len(cfg.encoder_layers) - 1


def reference_recipe(name: str) -> dict[str, Any]:
    """The training settings of an official hyperparameter set (empty for any other name)."""
    return dict(_REFERENCE_RECIPES.get(name, {}))


# Per official set: lr, grad_clip, skip_threshold, ema_rate, per-GPU batch (spec §1).
_REFERENCE_RECIPES: dict[str, dict[str, Any]] = {
    "cifar10": dict(lr=2e-4, grad_clip=200.0, skip_threshold=400.0, ema_rate=0.9999, batch_size=16),
    "imagenet32": dict(lr=1.5e-4, grad_clip=200.0, skip_threshold=300.0, ema_rate=0.999, batch_size=8),
    "imagenet64": dict(lr=1.5e-4, grad_clip=220.0, skip_threshold=380.0, ema_rate=0.999, batch_size=4),
    "ffhq256": dict(lr=1.5e-4, grad_clip=130.0, skip_threshold=180.0, ema_rate=0.999, batch_size=1),
    "ffhq1024": dict(lr=7e-5, grad_clip=360.0, skip_threshold=500.0, ema_rate=0.999, batch_size=1),
}
