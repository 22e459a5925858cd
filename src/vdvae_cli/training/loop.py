"""Train or fine-tune a model of any family: one importable function, :func:`train`.

What differs between the families' recipes (optimizer, objective, the recipe's own resumable state,
defaults) comes from the model family's recipe object (the contract is
:mod:`vdvae_cli.engine.recipe`); the loop below is shared.

The loop: the recipe's objective on each batch, linear learning-rate warm-up and an optional cosine
decay, gradient-norm clipping and update skipping with a guard against skipping forever, an
exponential moving average (EMA) of the weights where the recipe keeps one (evaluation, sample grids
and the exported model use it), a wall-clock limit, bf16 autocast with fp32 master weights,
channels-last layout, and resumable checkpoints that hold everything that decides the next step (model, EMA,
optimizer, step, noise-generator states), so a resumed CPU run continues bit for bit.

This module holds the run's configuration and the loop; each concern the loop calls on lives in
:mod:`vdvae_cli.training` (schedule, step, evaluation, run folder, curves). Several processes:
launch with ``torchrun``; :func:`train` notices an initialised ``torch.distributed`` process group,
wraps the loss in DistributedDataParallel, gives each rank its shard of every epoch, and lets only
rank 0 write or report.
"""

from __future__ import annotations

import inspect
import json
import time
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, cast

import torch

from .data import ShardedBatches, holdout_split
from ..engine.distributions import BatchNoise
from ..base.errors import TrainingError, UsageError
from ..engine.registry import family_of
from .curves import Curves
from .evaluation import evaluate_heldout, save_grid, visualise
from .rundir import RunDir, read_run
from .schedule import UNTIL_TIME_LIMIT
from .schedule import lr_at, progressive_stage
from .step import ElboLoss, Updater
from .temperatures import choose_temperatures, passes
from ..engine.ops import sample
from ..engine.recipe import TrainConfig, kl_weight, objective

if TYPE_CHECKING:
    from ..engine.interface import LatentModel

Tensor = torch.Tensor
Callback = Callable[[dict[str, Any]], None]

__all__ = ["TrainConfig", "TrainResult", "train", "read_run", "lr_at", "ElboLoss", "kl_weight", "objective",
           "evaluate_heldout", "save_grid", "visualise"]

# --------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class TrainResult:
    step: int
    heldout_bpd: float | None
    model_path: Path | None
    stopped: str  # "done", "time limit"
    skipped: int
    elapsed_s: float
    history: list[dict[str, Any]]
    model: Any  # the trained (non-EMA) network, in train mode (any family's network)
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
    started: float | None = None,
) -> TrainResult:
    """Train ``model_cfg`` (a VDVAE or an NVAE config, with its family's recipe) on ``images``
    (uint8 NHWC, the whole data set; the held-out split is drawn here) and write the run to ``run_dir``.

    ``init_state`` starts from given weights (fine-tuning); ``resume=True`` continues the run saved
    in ``run_dir`` exactly where its last checkpoint left it (``tc`` may extend ``steps``/``epochs``;
    its ``time_limit`` counts from this call). ``callback`` receives event dicts (``event`` = start,
    step, eval, samples, checkpoint, temperatures, warning, done) on rank 0 only.

    ``tc.time_limit`` bounds the whole call, counted from ``started`` (a ``time.monotonic()`` value,
    e.g. when the command began; default: now): the loop stops early enough for the final
    evaluation, sample grid, temperature choice and export to end within it, by their measured (or,
    before they have run once, estimated) durations. The exported model recommends the sampling
    temperatures whose samples are nearest to the held-out images (:mod:`.temperatures`).
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
    _check_progressive(model_cfg, tc, total)

    # the run folder, and the state to resume from
    run = RunDir(run_dir, rank=rank)
    saved = run.open(resume=resume, force=force, world=world)
    _barrier(world)
    run.create({"family": family.name, "model_config": model_cfg.to_dict(), "train_config": tc.to_dict(), "data": dict(data_info or {}),
                "n_images": len(images), "n_train": len(train_images), "n_heldout": len(heldout),
                "world_size": world, "steps_total": total, "steps_per_epoch": spe}, fresh=not resume)

    model, ema, opt, noise_gen = _build(model_cfg, tc, device, init_state, rank, recipe)
    if tc.progressive_steps and not _takes_stage(model.decoder):
        raise UsageError(f"the {family.name} family's decoder has no progressive stages (no stage= option)",
                         hint="drop --progressive")
    step = 0
    history: list[dict[str, Any]] = []
    if saved is not None:
        step, history = _restore(saved, model, ema, opt, noise_gen, recipe, rank)
    updater = Updater(model, ema, opt, _loss_module(model, recipe, device, noise_gen, world), tc, recipe,
                      total=total, world=world, coarse_layers=coarse_layers,
                      skipped=int(saved["skipped"]) if saved else 0)
    curves = Curves(run.path, enabled=rank == 0, start_step=step)
    choose_count = min(48, max(16, len(heldout)))  # images per pass of the temperature choice
    # A model with no latent layers (PixelCNN++) draws an image in H x W network passes: it makes no
    # temperature choice (its own distribution, output temperature 1, is the recommendation), no
    # timing pass, and one small grid at the end (unless --sample-every asks for more).
    latent_free = model_cfg.n_layers == 0
    grid_columns = min(4, tc.grid_columns) if latent_free else tc.grid_columns  # one row of samples, or four
    clock = _Clock(tc, float(saved["elapsed_s"]) if saved else 0.0, started=started,
                   n_eval=len(heldout), n_choose=0 if latent_free else choose_count * passes(),
                   draw_passes=model_cfg.image_size**2 // 2 if latent_free else 1,
                   grid_images=grid_columns if latent_free else 4 * grid_columns)
    chosen: dict[str, str] = {}  # the recommended temperatures, once chosen (the export's metadata)
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

    def choose() -> None:
        """The temperatures the exported model recommends, chosen on the held-out images (rank 0)."""
        if rank != 0 or not len(heldout) or latent_free:
            return
        with clock.timing("choose"):
            choice = choose_temperatures(ema, heldout, n=choose_count, seed=tc.seed)
        chosen.update(default_temperature=f"{choice.temperature:g}",
                      default_output_temperature=f"{choice.output_temperature:g}")
        record = {**choice.record(), "step": step}
        run.log(record)
        emit(record)

    def checkpoint(kind: str) -> None:
        state = _state(model, ema, opt, recipe, step, updater.skipped, _gather_rng(noise_gen, world), world,
                       history, clock.elapsed())
        meta = {**_export_meta(data_info, step, len(train_images), len(heldout), tc, history), **chosen}
        run.save(state, ema, model_cfg, meta, keep=bool(tc.keep_every and step % tc.keep_every == 0))
        run.log({"event": "checkpoint", "step": step, "kind": kind})
        emit({"event": "checkpoint", "step": step, "path": str(run.state_path), "model": str(run.model_path)})

    emit({"event": "start", "step": step, "total": total, "steps_per_epoch": spe, "n_train": len(train_images),
          "n_heldout": len(heldout), "world_size": world, "params": sum(p.numel() for p in model.parameters()),
          "model": model_cfg.name, "config": tc.to_dict()})
    if tc.time_limit is not None and not latent_free:  # one of the temperature choice's sampling passes: what the budget goes by
        with clock.timing("pass"):
            sample(ema, choose_count, noise=torch.Generator(device=device).manual_seed(tc.seed))
    if tc.eval_at_start and step == 0 and not history:
        evaluate()
    stopped = "done"
    # the progressive recipe's stage of the step before (a resumed run logs only a stage it starts)
    last_stage: object = progressive_stage(model_cfg, tc, step - 1) if step else "before the first step"
    while step < total:
        stage = progressive_stage(model_cfg, tc, step)
        if tc.progressive_steps and stage != last_stage:
            record = _stage_record(model_cfg, stage, step)
            run.log(record)
            emit(record)
        last_stage = stage
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
        if rank == 0 and (last or (_every(step, tc.sample_every) if tc.sample_every else evaluating and not latent_free)):
            with clock.timing("samples"):
                path = visualise(ema, heldout, run.path / "samples" / f"step-{step:07d}.png",
                                 columns=grid_columns, seed=tc.seed)
            emit({"event": "samples", "step": step, "path": str(path)})
        if last:
            choose()
        if last or (_every(step, tc.ckpt_every) if tc.ckpt_every else evaluating):
            with clock.timing("checkpoint"):
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


def _check_progressive(cfg: Any, tc: TrainConfig, total: int) -> None:
    """The progressive recipe needs latent layers in coarse-to-fine order and room for its stages."""
    if not tc.progressive_steps:
        return
    if cfg.n_layers == 0:
        raise UsageError("this model has no latent layers: the progressive recipe does not apply", hint="drop --progressive")
    res = [layer.res for layer in cfg.decoder_layers]
    if res != sorted(res):
        raise UsageError("the progressive recipe needs the latent layers in coarse-to-fine order")
    stages = len(cfg.resolutions)
    if total < UNTIL_TIME_LIMIT and total <= stages * tc.progressive_steps:
        raise UsageError(f"--progressive {tc.progressive_steps} makes {stages} stages of that many steps, "
                         f"which a {total}-step run would not finish",
                         hint=f"use --progressive {max(1, total // (2 * stages))} or fewer (half the run), or more steps")


def _takes_stage(decoder: Any) -> bool:
    """Whether a model's decoder (a function, or a module's forward) accepts the progressive recipe's stage=."""
    fn = decoder.forward if isinstance(decoder, torch.nn.Module) else decoder
    params = inspect.signature(fn).parameters
    return "stage" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _stage_record(cfg: Any, stage: tuple[int, int] | None, step: int) -> dict[str, Any]:
    """A log line for a new stage of the progressive recipe."""
    if stage is None:
        return {"event": "stage", "step": step, "message": "progressive recipe: every latent level now trains jointly"}
    a, b = stage
    res = cfg.decoder_layers[a].res
    return {"event": "stage", "step": step, "layers": [a, cfg.n_layers], "fixed_prior_layers": [a, b],
            "message": f"progressive recipe: training latent layers {a}-{cfg.n_layers - 1} (resolution {res} and finer); "
                       f"layers {a}-{b - 1} under a fixed N(0, I) prior, layers before {a} at z = 0"}


def _build(cfg: Any, tc: TrainConfig, device: torch.device, init_state, rank: int, recipe):
    """Model, EMA copy, optimizer (the recipe's) and the training-noise generator, all from ``tc.seed``."""
    with torch.random.fork_rng(devices=[]):  # the constructor's default init draws from the global RNG
        torch.manual_seed(tc.seed)
        model = cast("LatentModel", family_of(cfg).network(cfg))
    if init_state is not None:
        model.load_state_dict(init_state, strict=True)
    model.to(device).train()
    if tc.channels_last:
        model.to(memory_format=torch.channels_last)
    ema = deepcopy(model).eval().requires_grad_(False)
    opt = recipe.optimizer(model)
    noise_gen = torch.Generator(device=device).manual_seed((tc.seed * 1_000_003 + rank) & ((1 << 64) - 1))
    return model, ema, opt, noise_gen


def _loss_module(model: LatentModel, recipe, device: torch.device, noise_gen, world: int) -> torch.nn.Module:
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
    from ..base.safety import first_line, loads

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
    """This call's wall clock: the time limit counts from the start of *this* call (or the
    ``started`` time given: when the command began), so a resumed run gets the time it is given now;
    ``elapsed`` adds the time of the calls before, for the record. Evaluations by the clock come every
    ``eval_seconds``, but never take more than a fifth of the time.

    The limit holds for the whole call: training stops once the time left is what the final phase
    needs (an evaluation, the sample grid, the temperature choice and the checkpoint with its export),
    by the durations measured so far, each estimated until it has run once."""

    MARGIN = 1.25  # the final phase's estimate is scaled by this, plus SLACK seconds (exit, late writes)
    SLACK = 2.0

    def __init__(self, tc: TrainConfig, before: float, *, started: float | None = None, n_eval: int = 0,
                 n_choose: int = 0, draw_passes: int = 1, grid_images: int | None = None):
        self.tc, self.before = tc, before
        self.draw_passes = draw_passes  # network passes to draw one image (H x W / 2 for PixelCNN++)
        self.grid_images = 4 * tc.grid_columns if grid_images is None else grid_images
        now = time.monotonic()
        self.start = started if started is not None else now
        self.last_eval = self.eval_started = now
        self.eval_seconds = 0.0  # how long the last evaluation took
        self.n_eval, self.n_choose = n_eval, n_choose  # images evaluated; images the temperature choice samples
        self.took: dict[str, float] = {}  # the last duration of each timed part of the final phase
        self.last_step = now
        self.step_seconds = 0.0  # of the latest optimizer step

    @contextmanager
    def timing(self, part: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.took[part] = time.monotonic() - t0

    def final_phase(self) -> float:
        """Seconds the final evaluation, grid, temperature choice and checkpoint will take (estimated)."""
        if "pass" in self.took and self.n_choose:  # one timed sampling pass of the temperature choice
            sampling = self.took["pass"] * passes() / self.n_choose
        elif self.eval_seconds and self.n_eval:
            sampling = self.eval_seconds / self.n_eval * self.draw_passes
        else:
            sampling = self.step_seconds / max(1, self.tc.batch_size) * self.draw_passes
        # an evaluation encodes and decodes every held-out image: about two sampling passes' work per image
        evaluation = self.eval_seconds or 2 * sampling / self.draw_passes * self.n_eval
        choose = self.took.get("choose", self.n_choose * sampling)
        grid = self.took.get("samples", self.grid_images * sampling)
        save = self.took.get("checkpoint", 1.0)
        return self.MARGIN * (self.step_seconds + evaluation + choose + grid + save) + self.SLACK

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
        self.step_seconds, self.last_step = now - self.last_step, now
        over = self.tc.time_limit is not None and now - self.start + self.final_phase() >= self.tc.time_limit
        due = (self.tc.eval_seconds is not None
               and now - self.last_eval >= max(self.tc.eval_seconds, 4 * self.eval_seconds))
        return over, due
