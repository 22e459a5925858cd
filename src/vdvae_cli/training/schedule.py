"""When things happen in a run: the learning rate of each step, and the defaults that size a run to
its data and its time budget (what ``vdvae train FOLDER -o RUN`` uses for every option not given)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from ..engine.recipe import TrainConfig

UNTIL_TIME_LIMIT = 10_000_000  # steps of a run that the time limit ends


def lr_at(tc: "TrainConfig", step: int, total: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then constant or cosine."""
    scale = min(1.0, (step + 1) / tc.warmup) if tc.warmup else 1.0
    if tc.lr_schedule == "cosine" and step >= tc.warmup:
        progress = min(1.0, (step - tc.warmup) / max(1, total - tc.warmup))
        scale = tc.lr_final + (1.0 - tc.lr_final) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return tc.lr * scale


def progressive_stage(cfg: Any, tc: "TrainConfig", step: int) -> tuple[int, int] | None:
    """The decoder's ``stage=(a, b)`` at ``step`` under the progressive recipe (``tc.progressive_steps``
    steps per latent resolution, finest first), or None (every level trains jointly: the recipe is
    off, or its stages are over).

    Stage j (0-based) trains the j + 1 finest resolutions: the layers of coarser ones (indices < a)
    take z = 0, the layers of the newest, coarsest trained one (a <= index < b) are fitted under a
    fixed N(0, I) prior, the finer ones under their learned, conditional priors. Layers are in
    decoder order, coarse to fine, so each resolution's layers are one run of indices.
    """
    per = tc.progressive_steps
    resolutions = sorted(cfg.resolutions)
    if not per or step >= per * len(resolutions):
        return None
    j = step // per
    newest = len(resolutions) - 1 - j
    first_active = cfg.layers_up_to_res(resolutions[newest - 1]) if newest > 0 else 0
    return first_active, cfg.layers_up_to_res(resolutions[newest])


def ema_decay(tc: "TrainConfig", step: int) -> float:
    """The EMA's decay at ``step``: ``ema_rate``, or with ``ema_warmup`` at most (1 + step) / (10 + step),
    so that the average of a young run follows its weights instead of its random initialisation."""
    return min(tc.ema_rate, (1.0 + step) / (10.0 + step)) if tc.ema_warmup else tc.ema_rate


def auto_settings(n_images: int, given: Mapping[str, Any], *, world: int = 1, decay: bool = False,
                  open_ended: bool = True) -> dict[str, Any]:
    """The :class:`TrainConfig` fields that ``given`` (the user's choices) leaves open, sized to a
    data set of ``n_images`` and to ``given["time_limit"]`` (seconds, or None).

    * held out: 10% (at least 1 image), evaluated on at most 1,000 of them;
    * batch: a power of two near a quarter of the training images, between 4 and 32 per process;
    * length: 30 epochs, between 500 and 20,000 steps; with a time limit, until the time is up
      (unless not ``open_ended``: a recipe whose schedules are fractions of the run keeps its length
      and the time limit only stops it early, resumably);
    * learning rate: cosine decay when ``decay`` and the length is known, else constant (a run
      that the time limit ends does not know its length in advance);
    * warm-up: 5% of the steps (10 to 100), or a tenth of the time limit at one step per second;
    * evaluation: 10 times per run (and once before the first step), or every tenth of the time limit.
    """
    out: dict[str, Any] = {}
    time_limit = given.get("time_limit")
    holdout = given.get("holdout", 0.1)
    n_held = max(1, round(n_images * holdout)) if holdout < 1 else int(holdout)
    if "holdout" not in given:
        out["holdout"] = n_held if round(n_images * holdout) < 1 else holdout
    n_train = max(1, n_images - n_held)
    batch = given.get("batch_size")
    if batch is None:
        batch = min(32, max(4, 2 ** int(math.log2(max(1, n_train // (4 * world))))), max(1, n_train // world))
        out["batch_size"] = batch
    steps_per_epoch = max(1, n_train // (batch * world))
    steps = given.get("steps")
    if steps is None and given.get("epochs") is None:
        if time_limit and open_ended:
            steps = UNTIL_TIME_LIMIT
        else:
            steps = min(20_000, max(500, 30 * steps_per_epoch))
        out["steps"] = steps
    elif steps is None:
        steps = given["epochs"] * steps_per_epoch
    if "lr_schedule" not in given:
        out["lr_schedule"] = "cosine" if decay and steps < UNTIL_TIME_LIMIT else "constant"
    if "warmup" not in given:
        if time_limit and steps >= UNTIL_TIME_LIMIT:
            out["warmup"] = int(min(100, max(10, time_limit / 10)))
        else:
            out["warmup"] = int(min(100, max(10, steps // 20)))
    if "eval_every" not in given:
        if time_limit and steps >= UNTIL_TIME_LIMIT:
            out["eval_seconds"] = max(2.0, time_limit / 10)
        else:
            out["eval_every"] = max(1, steps // 10)
        out["eval_at_start"] = True
    if "max_eval" not in given:
        out["max_eval"] = 1000
    return out
