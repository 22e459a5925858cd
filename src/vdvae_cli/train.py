"""Train or fine-tune a VDVAE or an NVAE: one importable function, :func:`train`.

What differs between the families' recipes (optimizer, objective, the recipe's own resumable state,
defaults) comes from the model family's recipe object (:mod:`vdvae_cli.training.recipe`; NVAE's in
:mod:`vdvae_cli.nvae.training`); the loop below is shared.

VDVAE's recipe (openai/vdvae, see the spec's §11): negative ELBO in nats/dim as the loss; AdamW with
decoupled weight decay and betas (0.9, 0.9); linear learning-rate warm-up; gradient-norm clipping
and update skipping; an exponential moving average (EMA) of the weights, which is what evaluation,
sample grids and the exported model use. Beyond the reference: a guard against skipping forever, an
optional cosine decay, a wall-clock limit, bf16 autocast with fp32 master weights, channels-last
layout, and resumable checkpoints that hold everything that decides the next step (model, EMA,
optimizer, step, noise-generator states), so a resumed CPU run continues bit for bit.

This module holds the run's configuration and the loop; each concern the loop calls on lives in
:mod:`vdvae_cli.training` (schedule, step, evaluation, run folder, curves). Several processes:
launch with ``torchrun``; :func:`train` notices an initialised ``torch.distributed`` process group,
wraps the loss in DistributedDataParallel, gives each rank its shard of every epoch, and lets only
rank 0 write or report.
"""

from __future__ import annotations

import json
import math
import time
from copy import deepcopy
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, cast

import torch

from .data import ShardedBatches, holdout_split
from .distributions import BatchNoise
from .errors import TrainingError, UsageError
from .family import family_of
from .training.curves import Curves
from .training.evaluation import evaluate_heldout, save_grid, visualise
from .training.rundir import RunDir, read_run
from .training.schedule import lr_at
from .training.step import ElboLoss, Updater, kl_weight, objective

if TYPE_CHECKING:
    from .model import VAE

Tensor = torch.Tensor
Callback = Callable[[dict[str, Any]], None]

__all__ = ["TrainConfig", "TrainResult", "train", "read_run", "reference_recipe", "lr_at", "ElboLoss", "kl_weight", "objective",
           "evaluate_heldout", "save_grid", "visualise"]

# --------------------------------------------------------------------------------------------------
# Configuration


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
        if self.kl_warmup < 0 or not (self.free_bits >= 0 and math.isfinite(self.free_bits)):
            raise UsageError("kl_warmup must be >= 0 steps and free_bits a finite number >= 0")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        d["family_options"] = dict(self.family_options)
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


# Per official set: lr, grad_clip, skip_threshold, ema_rate, per-GPU batch (spec §1).
_REFERENCE_RECIPES: dict[str, dict[str, Any]] = {
    "cifar10": dict(lr=2e-4, grad_clip=200.0, skip_threshold=400.0, ema_rate=0.9999, batch_size=16),
    "imagenet32": dict(lr=1.5e-4, grad_clip=200.0, skip_threshold=300.0, ema_rate=0.999, batch_size=8),
    "imagenet64": dict(lr=1.5e-4, grad_clip=220.0, skip_threshold=380.0, ema_rate=0.999, batch_size=4),
    "ffhq256": dict(lr=1.5e-4, grad_clip=130.0, skip_threshold=180.0, ema_rate=0.999, batch_size=1),
    "ffhq1024": dict(lr=7e-5, grad_clip=360.0, skip_threshold=500.0, ema_rate=0.999, batch_size=1),
}


def reference_recipe(name: str) -> dict[str, Any]:
    """The training settings of an official hyperparameter set (empty for any other name)."""
    return dict(_REFERENCE_RECIPES.get(name, {}))



@dataclass
class TrainResult:
    step: int
    heldout_bpd: float | None
    model_path: Path | None
    stopped: str  # "done", "time limit"
    skipped: int
    elapsed_s: float
    history: list[dict[str, Any]]
    model: Any  # the trained (non-EMA) network, in train mode (a VDVAE's VAE or an NVAE)
    ema: Any  # the EMA network, in eval mode: what evaluation, grids and the exported file use


# --------------------------------------------------------------------------------------------------
# The loop


def train(
    model_cfg: Any,
    tc: TrainConfig,
    images: Tensor,
    run_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    init_state: Mapping[str, Tensor] | None = None,
    resume: bool = False,
    force: bool = False,
    data_info: Mapping[str, Any] | None = None,
    callback: Callback | None = None,
) -> TrainResult:
    """Train ``model_cfg`` (a VDVAE or an NVAE config, with its family's recipe) on ``images``
    (uint8 NHWC, the whole data set; the held-out split is drawn here) and write the run to ``run_dir``.

    ``init_state`` starts from given weights (fine-tuning); ``resume=True`` continues the run saved
    in ``run_dir`` exactly where its last checkpoint left it (``tc`` may extend ``steps``/``epochs``;
    its ``time_limit`` counts from this call). ``callback`` receives event dicts (``event`` = start,
    step, eval, samples, checkpoint, warning, done) on rank 0 only.
    """
    device = torch.device(device)
    rank, world = _rank_world()
    emit: Callback = callback if (callback is not None and rank == 0) else (lambda e: None)
    coarse_layers = _check(model_cfg, tc, images)

    # data: the held-out split and this rank's batches
    train_idx, held_idx = holdout_split(len(images), tc.holdout, tc.split_seed)
    train_images, heldout = images[train_idx], images[held_idx][: tc.max_eval]
    batches = ShardedBatches(len(train_images), tc.batch_size, tc.seed, rank, world)
    spe = batches.steps_per_epoch
    total = tc.steps if tc.steps is not None else tc.epochs * spe  # type: ignore[operator]
    eval_every = tc.eval_every or (None if tc.eval_seconds else spe)
    family = family_of(model_cfg)
    recipe = family.training_recipe(model_cfg, tc, total)  # refuses options the family's recipe lacks

    # the run folder, and the state to resume from
    run = RunDir(run_dir, rank=rank)
    saved = run.open(resume=resume, force=force, world=world)
    _barrier(world)
    run.create({"family": family.name, "model_config": model_cfg.to_dict(), "train_config": tc.to_dict(), "data": dict(data_info or {}),
                "n_images": len(images), "n_train": len(train_images), "n_heldout": len(heldout),
                "world_size": world, "steps_total": total, "steps_per_epoch": spe}, fresh=not resume)

    model, ema, opt, noise_gen = _build(model_cfg, tc, device, init_state, rank, recipe)
    step = 0
    history: list[dict[str, Any]] = []
    if saved is not None:
        step, history = _restore(saved, model, ema, opt, noise_gen, recipe, rank)
    updater = Updater(model, ema, opt, _loss_module(model, recipe, device, noise_gen, world), tc, recipe,
                      total=total, world=world, coarse_layers=coarse_layers,
                      skipped=int(saved["skipped"]) if saved else 0)
    curves = Curves(run.path, enabled=rank == 0, start_step=step)
    clock = _Clock(tc, float(saved["elapsed_s"]) if saved else 0.0)
    window = _Window()

    def evaluate() -> None:
        clock.evaluating()
        stats = evaluate_heldout(ema, heldout, batch_size=tc.eval_batch_size, seed=tc.seed, autocast=updater.autocast)
        record = {"event": "eval", "step": step, "epoch": round(step / spe, 3), **_rounded(stats), **window.take(),
                  "lr": lr_at(tc, max(0, step - 1), total), **recipe.log_values(max(0, step - 1)),
                  "skipped": updater.skipped,
                  "elapsed_s": round(clock.elapsed(), 1)}
        history.append(record)
        run.log(record)
        curves.evaluation(record, history)
        clock.evaluated()
        emit(record)

    def checkpoint(kind: str) -> None:
        state = _state(model, ema, opt, recipe, step, updater.skipped, _gather_rng(noise_gen, world), world,
                       history, clock.elapsed())
        run.save(state, ema, model_cfg, _export_meta(data_info, step, len(train_images), len(heldout), tc, history),
                 keep=bool(tc.keep_every and step % tc.keep_every == 0))
        run.log({"event": "checkpoint", "step": step, "kind": kind})
        emit({"event": "checkpoint", "step": step, "path": str(run.state_path), "model": str(run.model_path)})

    emit({"event": "start", "step": step, "total": total, "steps_per_epoch": spe, "n_train": len(train_images),
          "n_heldout": len(heldout), "world_size": world, "params": sum(p.numel() for p in model.parameters()),
          "model": model_cfg.name, "config": tc.to_dict()})
    if tc.eval_at_start and step == 0 and not history:
        evaluate()
    stopped = "done"
    while step < total:
        result = updater(train_images[batches.indices(step)].to(device), step, clock.flags())
        step += 1
        window.add(result)
        curves.step(step, result.loss_bpd, result.grad_norm)
        if result.warning:
            run.log({"event": "warning", "step": step - 1, "message": result.warning})
            emit({"event": "warning", "step": step - 1, "message": result.warning})
        emit({"event": "step", "step": step, "total": total, "loss_bpd": result.loss_bpd,
              "distortion_bpd": result.distortion_bpd, "rate_bpd": result.rate_bpd, "grad_norm": result.grad_norm,
              "skipped": result.skipped})
        out_of_time, eval_due = result.flags
        last = step >= total or out_of_time
        evaluating = last or eval_due or _every(step, eval_every)
        if evaluating:
            evaluate()
        if rank == 0 and (last or (_every(step, tc.sample_every) if tc.sample_every else evaluating)):
            path = visualise(ema, heldout, run.path / "samples" / f"step-{step:07d}.png",
                             columns=tc.grid_columns, seed=tc.seed)
            emit({"event": "samples", "step": step, "path": str(path)})
        if last or (_every(step, tc.ckpt_every) if tc.ckpt_every else evaluating):
            checkpoint("final" if step >= total else "time limit" if out_of_time else "periodic")
        if out_of_time and step < total:
            stopped = "time limit"
            break
    curves.close()

    last_bpd = history[-1]["heldout_bpd"] if history else None
    emit({"event": "done", "step": step, "stopped": stopped, "heldout_bpd": last_bpd, "skipped": updater.skipped,
          "elapsed_s": round(clock.elapsed(), 1), "model": str(run.model_path)})
    return TrainResult(step, last_bpd, run.model_path if rank == 0 else None, stopped, updater.skipped,
                       clock.elapsed(), history, model, ema)


# --------------------------------------------------------------------------------------------------
# The loop's helpers


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _check(model_cfg: Any, tc: TrainConfig, images: Tensor) -> int | None:
    """Up-front checks; returns how many leading layers the coarse-first curriculum infers."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise TrainingError(f"training images must be uint8 (N, H, W, 3), got {images.dtype} {tuple(images.shape)}")
    if images.shape[1] != model_cfg.image_size or images.shape[2] != model_cfg.image_size:
        raise TrainingError(
            f"images are {images.shape[2]}x{images.shape[1]} but the model is {model_cfg.image_size}x{model_cfg.image_size}"
        )
    if not tc.coarse_steps:
        return None
    if tc.coarse_res not in model_cfg.resolutions:
        raise UsageError(f"coarse resolution {tc.coarse_res} is not a resolution of this model",
                         hint=f"choose one of {', '.join(map(str, model_cfg.resolutions))}")
    return model_cfg.layers_up_to_res(tc.coarse_res)


def _build(cfg: Any, tc: TrainConfig, device: torch.device, init_state, rank: int, recipe):
    """Model, EMA copy, optimizer (the recipe's) and the training-noise generator, all from ``tc.seed``."""
    with torch.random.fork_rng(devices=[]):  # the constructor's default init draws from the global RNG
        torch.manual_seed(tc.seed)
        # VAE is the model type of the whole API; an NVAE network offers the same surface (family.LatentModel)
        model = cast("VAE", family_of(cfg).network(cfg))
    if init_state is not None:
        model.load_state_dict(init_state, strict=True)
    model.to(device).train()
    if tc.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs lack memory_format
    ema = deepcopy(model).eval().requires_grad_(False)
    opt = recipe.optimizer(model)
    noise_gen = torch.Generator(device=device).manual_seed(tc.seed * 1_000_003 + rank)
    return model, ema, opt, noise_gen


def _loss_module(model: VAE, recipe, device: torch.device, noise_gen, world: int) -> torch.nn.Module:
    elbo_loss = ElboLoss(model)
    elbo_loss.noise = BatchNoise(noise_gen)
    loss_fn: torch.nn.Module = elbo_loss
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        loss_fn = DistributedDataParallel(
            loss_fn,
            device_ids=[device.index or 0] if device.type == "cuda" else None,
            find_unused_parameters=recipe.find_unused_parameters,
        )
    return loss_fn


def _state(model, ema, opt, recipe, step, skipped, rng, world, history, elapsed_s) -> dict[str, Any]:
    """Everything that decides the next step, as plain tensors and strings (loaded weights_only)."""
    return {"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
            "recipe": recipe.state_dict(), "step": step, "skipped": skipped, "rng": rng, "world_size": world,
            "history": [json.dumps(h) for h in history], "elapsed_s": elapsed_s}


def _restore(saved, model, ema, opt, noise_gen, recipe, rank) -> tuple[int, list[dict[str, Any]]]:
    """Load a checked ``state.pt`` (:func:`.training.rundir.read_state`) into this run's objects; a
    state of another architecture or world size is one TrainingError."""
    from .safety import first_line, loads

    try:
        model.load_state_dict(saved["model"])
        ema.load_state_dict(saved["ema"])
        opt.load_state_dict(saved["optimizer"])
        recipe.load_state_dict(saved.get("recipe", {}))
        noise_gen.set_state(saved["rng"][rank])
        return int(saved["step"]), [loads(h) for h in saved.get("history", [])]
    except (RuntimeError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise TrainingError(f"the saved state does not fit this run: {first_line(exc)}",
                            hint="resume from an intact run, or start a new one") from None


def _gather_rng(noise_gen: torch.Generator, world: int) -> list[Tensor]:
    """Every rank's noise-generator state (a collective under DDP)."""
    if world == 1:
        return [noise_gen.get_state()]
    import torch.distributed as dist

    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, noise_gen.get_state())
    return gathered


def _export_meta(data_info, step, n_train, n_heldout, tc, history) -> dict[str, str]:
    last = history[-1] if history else {}
    return {
        "dataset": str((data_info or {}).get("dataset", "custom")),
        "train_steps": str(step),
        "train_images": str(n_train),
        "heldout_images": str(n_heldout),
        "heldout_bpd": f"{last['heldout_bpd']:.4f}" if "heldout_bpd" in last else "",
        "ema_rate": str(tc.ema_rate),
        "seed": str(tc.seed),
        "trainer": "vdvae train",
    }


def _every(step: int, interval: int | None) -> bool:
    return bool(interval) and step % interval == 0  # type: ignore[operator]


def _rounded(stats: Mapping[str, Any]) -> dict[str, Any]:
    return {k: round(v, 5) if isinstance(v, float) else v for k, v in stats.items()}


class _Window:
    """Means of the training loss and gradient norm over the updates since the last evaluation."""

    def __init__(self) -> None:
        self.loss = self.gnorm = 0.0
        self.n = 0

    def add(self, result) -> None:
        if not result.skipped:
            self.loss, self.gnorm, self.n = self.loss + result.loss_bpd, self.gnorm + result.grad_norm, self.n + 1

    def take(self) -> dict[str, float | None]:
        out = {"train_bpd": round(self.loss / self.n, 5) if self.n else None,
               "grad_norm": round(self.gnorm / self.n, 3) if self.n else None}
        self.loss = self.gnorm = 0.0
        self.n = 0
        return out


class _Clock:
    """This call's wall clock: the time limit counts from the start of *this* call (a resumed run
    gets the time it is given now); ``elapsed`` adds the time of the calls before, for the record.
    Evaluations by the clock come every ``eval_seconds``, but never take more than a fifth of the time."""

    def __init__(self, tc: TrainConfig, before: float):
        self.tc, self.before = tc, before
        self.start = self.last_eval = self.eval_started = time.monotonic()
        self.eval_seconds = 0.0  # how long the last evaluation took

    def elapsed(self) -> float:
        return self.before + time.monotonic() - self.start

    def evaluating(self) -> None:
        self.eval_started = time.monotonic()

    def evaluated(self) -> None:
        self.last_eval = time.monotonic()
        self.eval_seconds = self.last_eval - self.eval_started

    def flags(self) -> tuple[bool, bool]:
        """(out of time, an evaluation is due by the clock): agreed across processes by the step."""
        now = time.monotonic()
        over = self.tc.time_limit is not None and now - self.start >= self.tc.time_limit
        due = (self.tc.eval_seconds is not None
               and now - self.last_eval >= max(self.tc.eval_seconds, 4 * self.eval_seconds))
        return over, due
