"""What a training recipe leaves to the model family: the optimizer, the scalar the gradient follows,
any state of its own that a resumed run must get back, and the defaults of a run.

The loop (:func:`vdvae_cli.train.train`) and one step (:class:`.step.Updater`) are the same for every
family; each family's object hands out its :class:`Recipe` (``Family.training_recipe``) and its
:class:`TrainDefaults` (``Family.train_defaults``). VDVAE's recipe is :class:`VDVAERecipe` below;
NVAE's lives with its family (:mod:`vdvae_cli.nvae.training`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Protocol

import torch

from ..errors import UsageError

if TYPE_CHECKING:
    from ..train import TrainConfig

Tensor = torch.Tensor


@dataclass(frozen=True)
class LossTerms:
    """One training pass's per-image terms, in nats per dimension (as :func:`vdvae_cli.ops.elbo`
    gives them) and their batch mean: ``elbo`` is what the run reports as its loss."""

    elbo: Tensor  # () mean negative ELBO
    distortion: Tensor  # (N,)
    rate: Tensor  # (N,)
    kl_layers: Tensor  # (N, L)
    kl_prior: Tensor  # (N, L): kl_layers with gradients to the prior only when the recipe splits the KL


@dataclass(frozen=True)
class TrainDefaults:
    """A family's starting point for a run: :class:`TrainConfig` fields (``settings``), whether the
    learning rate decays when the length is known (``decay``), and whether a run ended by its time
    limit may leave its length open (``open_ended``: a recipe whose schedules are fractions of the
    run needs a length, so a time limit then only stops it early)."""

    settings: Mapping[str, Any] = field(default_factory=dict)
    decay: bool = False
    open_ended: bool = True


class Recipe(Protocol):
    """The family-specific part of training."""

    split_kl: bool  # ask the pass for each layer's KL with gradients to the prior only
    find_unused_parameters: bool  # DDP must look for parameters the pass leaves without gradient

    def optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer: ...
    def objective(self, model: torch.nn.Module, step: int, terms: LossTerms) -> Tensor:
        """The scalar ``backward`` runs on at step ``step`` (0-based)."""
        ...
    def log_values(self, step: int) -> dict[str, float]:
        """Schedule values worth a line in the run's log at ``step``."""
        ...
    def state_dict(self) -> dict[str, Tensor]:
        """Tensors a resumed run needs to continue exactly (saved in ``state.pt``)."""
        ...
    def load_state_dict(self, state: Mapping[str, Tensor]) -> None: ...


class VDVAERecipe:
    """openai/vdvae: AdamW (decoupled weight decay), the negative ELBO as the objective, and the
    trainer's optional aids against posterior collapse (:func:`.step.objective`)."""

    def __init__(self, cfg: Any, tc: "TrainConfig", total: int):
        if tc.family_options:
            raise UsageError(f"VDVAE training has no family options (got {', '.join(sorted(tc.family_options))})",
                             hint="--recipe KEY=VALUE sets an NVAE's recipe; a VDVAE's has options of its own")
        self.cfg, self.tc = cfg, tc
        self.split_kl = bool(tc.kl_warmup or tc.free_bits)
        self.find_unused_parameters = _unused_encoder_blocks(cfg) or tc.coarse_steps > 0

    def optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        tc = self.tc
        return torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=tc.betas, eps=tc.adam_eps, weight_decay=tc.wd)

    def objective(self, model: torch.nn.Module, step: int, terms: LossTerms) -> Tensor:
        if not self.split_kl:
            return terms.elbo
        from .step import objective

        return objective(self.tc, step, terms.distortion, terms.kl_layers, self.cfg.n_dims, terms.kl_prior)

    def log_values(self, step: int) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        if state:
            raise ValueError(f"unexpected recipe state {', '.join(sorted(state))}")


def _unused_encoder_blocks(cfg: Any) -> bool:
    """Whether some encoder blocks feed no decoder resolution (DDP must then look for unused params)."""
    used = set(cfg.resolutions)
    last_needed = max((i for i, layer in enumerate(cfg.encoder_layers) if layer.out_res in used), default=-1)
    return last_needed < len(cfg.encoder_layers) - 1
