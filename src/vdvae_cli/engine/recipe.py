"""What a training recipe leaves to the model family: the optimizer, the scalar the gradient follows,
any state of its own that a resumed run must get back, and the defaults of a run.

The loop (:func:`vdvae_cli.training.loop.train`) and one step (:class:`.step.Updater`) are the same for every
family; each family's object hands out its :class:`Recipe` (``Family.training_recipe``) and its
:class:`TrainDefaults` (``Family.train_defaults``). Each family's recipe lives in its folder (``families/<name>/training.py``).
:class:`TrainConfig` is the run's settings that the loop and the recipe both read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

import torch

from ..base.errors import UsageError
from ..base.safety import MAX_SEED
import math
from dataclasses import asdict, fields, replace


Tensor = torch.Tensor
LN2 = math.log(2.0)


@dataclass(frozen=True)
class LossTerms:
    """One training pass's per-image terms, in nats per dimension (as :func:`vdvae_cli.engine.ops.elbo`
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


class AdamWRecipe:
    """The parts a plain recipe shares: AdamW with the run's settings, no schedule values of its
    own to log, no state a resumed run needs. A family's recipe subclasses it and sets its objective."""

    split_kl = False
    find_unused_parameters = False
    tc: "TrainConfig"

    def optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        tc = self.tc
        return torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=tc.betas, eps=tc.adam_eps, weight_decay=tc.wd)

    def log_values(self, step: int) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        if state:
            raise ValueError(f"unexpected recipe state {', '.join(sorted(state))}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything about a run except the network. Defaults are the reference's (hps.py): the
    argparse defaults, with the named sets' shared ``wd=0.01`` and ``warmup_iters=100``."""

    lr: float = 1.5e-4
    wd: float = 0.01
    betas: tuple[float, float] = (0.9, 0.9)
    adam_eps: float = 1e-8
    warmup: int = 100  # steps of linear warm-up from lr/warmup to lr
    lr_schedule: str = "constant"  # "constant" (reference) or "cosine" (decay to lr * lr_final after warm-up)
    lr_final: float = 0.1
    grad_clip: float = 200.0  # 0: no clipping (NVAE's recipe)
    skip_threshold: float = 400.0  # skip the update when grad norm >= this; -1 never skips on size
    max_skips: int = 100  # stop when this many updates in a row were skipped
    ema_rate: float = 0.999
    batch_size: int = 32  # per process
    steps: int | None = None  # total optimizer steps (counting skipped ones); or give epochs
    epochs: int | None = None
    eval_every: int | None = None  # steps; None = once per epoch
    sample_every: int | None = None  # steps; None = with every evaluation
    ckpt_every: int | None = None  # steps; None = with every evaluation
    keep_every: int | None = None  # also keep step-N.pt copies at this interval
    holdout: float = 0.1  # fraction (< 1) or count of images held out for evaluation
    eval_batch_size: int = 64
    max_eval: int | None = None  # evaluate on at most this many held-out images
    grid_columns: int = 8
    seed: int = 0  # initialisation, data order and training noise
    split_seed: int = 0  # the held-out split (kept apart so a new seed keeps the same split)
    dtype: str = "fp32"  # "fp32" or "bf16" (autocast; fp32 master weights and loss maths)
    time_limit: float | None = None  # seconds; checkpoint and stop (resumable) when exceeded
    # Curriculum: for the first coarse_steps steps only latent layers at resolution <= coarse_res are
    # inferred (the rest come from the prior), so coarse layers learn to carry the global content
    # before finer layers can take it over locally. 0 = off (the reference recipe).
    coarse_res: int | None = None
    coarse_steps: int = 0
    # The progressive recipe (0 = off): latent levels (resolutions) are trained one at a time, finest
    # first, this many steps each: the levels not reached yet take z = 0, the newest one is fitted
    # under a fixed N(0, I) prior, finer ones under their learned priors; after the last (coarsest)
    # stage every level trains jointly. See training.schedule.progressive_stage.
    progressive_steps: int = 0
    ema_warmup: bool = False  # EMA decay at most (1 + step) / (10 + step): a young run's average follows it
    eval_seconds: float | None = None  # also evaluate every this many seconds (runs ended by time_limit)
    eval_at_start: bool = False  # evaluate the initial model too (step 0 on the curves)
    channels_last: bool = True  # memory layout of the network (faster convolutions, same maths)
    # Against posterior collapse (both 0 = off, the reference recipe). They change the objective the
    # gradient follows, never the reported loss (always the negative ELBO). kl_warmup: the KL term's
    # weight rises linearly from 0 to 1 over this many steps (Bowman et al. 2016; Sonderby et al.
    # 2016). free_bits: each latent layer's batch-mean KL counts as at least this many bits per
    # image, so a layer below the floor is not pushed further towards the prior (Kingma et al. 2016).
    # Both act on the posterior's side of the KL only; the prior always follows the full KL
    # (training.step.objective).
    kl_warmup: int = 0
    free_bits: float = 0.0
    # Per latent resolution, a floor that replaces free_bits for the layers at that resolution
    # ({"32": 200.0}: each 32x32 layer's KL counts as at least 200 bits per image): a rate kept on
    # purpose where the pixels' detail lives. Empty: free_bits everywhere.
    free_bits_res: Mapping[str, float] = field(default_factory=dict)
    # Settings only the model family's recipe reads (NVAE: nvae.training.NVAERecipeConfig); checked
    # by the recipe when the run starts.
    family_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.steps is None) == (self.epochs is None):
            raise UsageError("give exactly one of steps or epochs")
        for name in ("steps", "epochs", "eval_every", "sample_every", "ckpt_every", "keep_every", "max_eval"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise UsageError(f"{name} must be a positive whole number, got {v!r}")
        if self.lr <= 0 or self.wd < 0 or self.grad_clip < 0:
            raise UsageError("lr must be > 0, and wd and grad_clip >= 0 (grad_clip 0: no clipping)")
        if not (0 <= self.betas[0] < 1 and 0 <= self.betas[1] < 1):
            raise UsageError(f"betas must lie in [0, 1), got {self.betas}")
        if not 0 <= self.ema_rate < 1:
            raise UsageError(f"ema_rate must lie in [0, 1), got {self.ema_rate}")
        if self.skip_threshold != -1 and self.skip_threshold <= 0:
            raise UsageError("skip_threshold must be > 0, or -1 to turn size-based skipping off")
        if self.lr_schedule not in ("constant", "cosine"):
            raise UsageError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.dtype not in ("fp32", "bf16"):
            raise UsageError(
                f"training dtype {self.dtype!r} is not supported",
                hint="use fp32, or bf16 (autocast with fp32 master weights); fp16 would need loss scaling",
            )
        if self.batch_size < 1 or self.eval_batch_size < 1 or self.warmup < 0 or self.max_skips < 1:
            raise UsageError("batch sizes and max_skips must be >= 1 and warmup >= 0")
        if self.holdout <= 0:
            raise UsageError("a held-out split is required (holdout > 0)")
        if self.eval_seconds is not None and not self.eval_seconds > 0:
            raise UsageError(f"eval_seconds must be > 0, got {self.eval_seconds!r}")
        if self.time_limit is not None and not self.time_limit > 0:
            raise UsageError(f"the time limit must be > 0, got {self.time_limit!r}")
        if self.coarse_steps < 0 or (self.coarse_steps > 0 and self.coarse_res is None):
            raise UsageError("coarse_steps needs coarse_res (the highest resolution inferred meanwhile)")
        if self.progressive_steps < 0 or (self.progressive_steps and self.coarse_steps):
            raise UsageError("progressive_steps must be >= 0, and the progressive recipe (finest level first) "
                             "cannot run with the coarse-first curriculum (coarsest first)")
        if self.kl_warmup < 0 or not (self.free_bits >= 0 and math.isfinite(self.free_bits)):
            raise UsageError("kl_warmup must be >= 0 steps and free_bits a finite number >= 0")
        for name in ("seed", "split_seed"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_SEED:
                raise UsageError(f"{name} must be a whole number from 0 to {MAX_SEED:,}, got {v!r}")
        for res, bits in dict(self.free_bits_res).items():
            if not str(res).isdigit() or not isinstance(bits, (int, float)) or not (bits >= 0 and math.isfinite(bits)):
                raise UsageError(f"free_bits_res {res!r}: {bits!r} is not a resolution and a finite number of bits >= 0")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        d["family_options"] = dict(self.family_options)
        d["free_bits_res"] = dict(self.free_bits_res)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        if "betas" in kwargs:
            kwargs["betas"] = tuple(kwargs["betas"])
        kwargs.setdefault("channels_last", False)  # runs saved before it existed ran NCHW: resume them so
        return cls(**kwargs)

    def replace(self, **changes: Any) -> "TrainConfig":
        return replace(self, **changes)


def kl_weight(tc, step: int) -> float:
    """Weight of the KL term in the objective at step ``step`` (0-based): 1 without KL warm-up."""
    return min(1.0, (step + 1) / tc.kl_warmup) if tc.kl_warmup else 1.0


def free_bits_floors(tc, resolutions: Sequence[int], n_dims: int) -> Tensor | None:
    """Each layer's free-bits floor in nats/dim (layers at resolution ``resolutions[i]``): the
    run's ``free_bits_res`` for that resolution, else ``free_bits``; None when every floor is 0."""
    by_res = {int(r): float(b) for r, b in dict(getattr(tc, "free_bits_res", {}) or {}).items()}
    bits = [by_res.get(int(r), float(tc.free_bits)) for r in resolutions]
    if not any(bits):
        return None
    return torch.tensor(bits, dtype=torch.float32) * (LN2 / n_dims)


def objective(tc, step: int, distortion: Tensor, kl_per_layer: Tensor, n_dims: int,
              kl_prior_per_layer: Tensor | None = None, floors: Tensor | None = None) -> Tensor:
    """The scalar the gradient follows (nats/dim): the mean negative ELBO, unless the run asks for
    help against posterior collapse: the KL term weighted by :func:`kl_weight` (``kl_warmup``) and
    each layer's batch-mean KL floored at ``free_bits`` bits per image. The reported loss is always
    the negative ELBO.

    Given ``kl_prior_per_layer`` (the same KL values with gradients to the prior only, while
    ``kl_per_layer``'s reach the posterior only), the warm-up weight and the floor hold back the
    *posterior* alone: the prior still follows the full KL of every layer. Floored on both sides, a
    layer under the floor gives its prior no gradient at all, so the prior never learns what the
    posterior encodes there and samples drawn from it miss the content that reconstructions have.
    """
    kl = kl_per_layer.mean(0)  # (L,)
    if floors is not None:  # per layer (free_bits_floors)
        kl = torch.maximum(kl, floors.to(device=kl.device, dtype=kl.dtype))
    elif tc.free_bits:
        kl = kl.clamp(min=tc.free_bits * LN2 / n_dims)
    total = distortion.mean() + kl_weight(tc, step) * kl.sum()
    if kl_prior_per_layer is not None:
        prior_side = kl_prior_per_layer.mean(0).sum()
        total = total + (prior_side - prior_side.detach())  # gradient only: the value stays the objective's
    return total
