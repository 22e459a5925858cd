"""``vdvae train``: train or fine-tune a VDVAE on a folder of images or a uint8 array."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ._app import command
from .options import DeviceOpt, DtypeOpt, ForceOpt, JsonOpt, QuietOpt
from ..errors import UsageError

_EPILOG = (
    "Examples:\n\n"
    "  vdvae train photos/ --hparams small32.json -o runs/mine --steps 20000\n\n"
    "  vdvae train faces.npy --init digits32 -o runs/finetune --steps 2000 --lr 5e-5\n\n"
    "  vdvae train --resume runs/mine --steps 40000\n\n"
    "  torchrun --nproc-per-node 4 -m vdvae_cli train imgs.npz --config cifar10 -o runs/c10 --dtype bf16\n\n"
    "The run folder gets run.json, state.pt (resume), model.safetensors (EMA weights for "
    "`vdvae sample --model RUN/model.safetensors`), log.jsonl and samples/step-N.png. "
    "A --hparams JSON uses the reference's field names (width, zdim, enc_blocks, dec_blocks, "
    "custom_width_str, bottleneck_multiple, num_mixtures, image_size, dataset); without a "
    "'preprocessing' object the input shift/scale are the training pixels' mean/std."
)


def _parse_coarse_first(text: str) -> dict[str, int]:
    res, sep, steps = text.partition(":")
    if not sep or not res.strip().isdigit() or not steps.strip().isdigit():
        raise UsageError(f"--coarse-first {text!r} is not RES:STEPS", hint="e.g. --coarse-first 4:1500")
    return {"coarse_res": int(res), "coarse_steps": int(steps)}


def _resolve_model_config(config: str | None, hparams: Path | None, init: str | None, data: Path, image_size_hint):
    """(model config, init state or None, images) from the mutually exclusive model sources."""
    from ..config import config_from_reference, official_config, read_hparams_file
    from ..data import load_images, pixel_stats

    given = [x for x in (config, hparams, init) if x is not None]
    if len(given) != 1:
        raise UsageError("give exactly one of --config NAME, --hparams FILE.json or --init MODEL",
                         hint="--init starts from a trained model (fine-tuning)")
    if init is not None:
        from ..checkpoint import read_checkpoint
        from ..hub import resolve_model

        cfg, state = read_checkpoint(Path(os.fspath(resolve_model(init))))
        return cfg, state, load_images(data, cfg.image_size)
    if config is not None:
        cfg = official_config(config)
        return cfg, None, load_images(data, cfg.image_size)
    hps = dict(read_hparams_file(hparams))  # type: ignore[arg-type]
    size = hps.get("image_size") or image_size_hint
    images = load_images(data, size)
    if not size:
        hps["image_size"] = int(images.shape[1])
    from ..config import _DATASETS  # the reference datasets carry their own constants

    if hps.get("dataset") not in _DATASETS and "preprocessing" not in hps:
        mean, std = pixel_stats(images)
        hps["preprocessing"] = {"shift": -mean, "scale": 1.0 / std}
    name = hps.get("name") or hparams.stem  # type: ignore[union-attr]
    return config_from_reference(hps, name=name), None, images


@command("train", epilog=_EPILOG)
def train_cmd(
    data: Annotated[Optional[Path], typer.Argument(help="Folder of images, or an .npy/.npz uint8 (N, H, W[, C]) array.", show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Run folder to create.", show_default=False)] = None,
    config: Annotated[Optional[str], typer.Option("--config", "-c", help="Official architecture (cifar10, imagenet32, ...), trained with its reference recipe.", show_default=False)] = None,
    hparams: Annotated[Optional[Path], typer.Option("--hparams", help="Architecture as reference-style JSON (or an official -log.jsonl).", show_default=False)] = None,
    init: Annotated[Optional[str], typer.Option("--init", help="Fine-tune: start from this model (registry name or .safetensors).", show_default=False)] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue the run in this folder from its last checkpoint.", show_default=False)] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Total optimizer steps (default: 10 epochs).", show_default=False)] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Total epochs (instead of --steps).", show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", help="Images per step per process [32].", show_default=False)] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate [1.5e-4].", show_default=False)] = None,
    wd: Annotated[Optional[float], typer.Option("--wd", help="Decoupled weight decay [0.01].", show_default=False)] = None,
    warmup: Annotated[Optional[int], typer.Option("--warmup", help="Linear warm-up steps [100].", show_default=False)] = None,
    lr_schedule: Annotated[Optional[str], typer.Option("--lr-schedule", help="constant (reference) or cosine.", show_default=False)] = None,
    grad_clip: Annotated[Optional[float], typer.Option("--grad-clip", help="Clip the gradient norm to this [200].", show_default=False)] = None,
    skip_threshold: Annotated[Optional[float], typer.Option("--skip-threshold", help="Skip updates whose gradient norm reaches this; -1 = only non-finite ones [400].", show_default=False)] = None,
    max_skips: Annotated[Optional[int], typer.Option("--max-skips", help="Stop after this many skipped updates in a row [100].", show_default=False)] = None,
    ema_rate: Annotated[Optional[float], typer.Option("--ema-rate", help="EMA decay of the weights [0.999].", show_default=False)] = None,
    holdout: Annotated[Optional[float], typer.Option("--holdout", help="Held-out images: a fraction < 1 or a count [0.1].", show_default=False)] = None,
    eval_every: Annotated[Optional[int], typer.Option("--eval-every", help="Steps between held-out evaluations [one epoch].", show_default=False)] = None,
    sample_every: Annotated[Optional[int], typer.Option("--sample-every", help="Steps between sample grids [= --eval-every].", show_default=False)] = None,
    ckpt_every: Annotated[Optional[int], typer.Option("--ckpt-every", help="Steps between checkpoints [= --eval-every].", show_default=False)] = None,
    keep_every: Annotated[Optional[int], typer.Option("--keep-every", help="Also keep step-N.pt copies at this interval.", show_default=False)] = None,
    max_eval: Annotated[Optional[int], typer.Option("--max-eval", help="Evaluate on at most this many held-out images.", show_default=False)] = None,
    time_limit: Annotated[Optional[float], typer.Option("--time-limit", help="Minutes; then checkpoint and stop (resumable).", show_default=False)] = None,
    coarse_first: Annotated[Optional[str], typer.Option("--coarse-first", metavar="RES:STEPS", help="Curriculum: for the first STEPS steps infer only the latent layers at resolution <= RES (the rest come from the prior), so the coarse layers learn the global content first. Off by default (the reference recipe).", show_default=False)] = None,
    kl_warmup: Annotated[Optional[int], typer.Option("--kl-warmup", metavar="STEPS", help="Against posterior collapse: raise the KL term's weight in the objective linearly from 0 to 1 over STEPS steps (the reported loss stays the ELBO). Off by default.", show_default=False)] = None,
    free_bits: Annotated[Optional[float], typer.Option("--free-bits", metavar="BITS", help="Against posterior collapse: count each latent layer's batch-mean KL as at least BITS bits per image in the objective. Off by default.", show_default=False)] = None,
    image_size: Annotated[Optional[int], typer.Option("--image-size", help="With --hparams lacking image_size: resize/crop to this.", show_default=False)] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of initialisation, data order and training noise [0].", show_default=False)] = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "fp32",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    force: ForceOpt = False,
) -> None:
    """Train a VDVAE with the reference recipe (AdamW, warm-up, clipping, update skipping, EMA).

    Reports the held-out negative ELBO in bits/dim at every evaluation (one JSON line each with
    --json), writes sample grids and resumable checkpoints, and exports the EMA weights as a
    self-describing safetensors file. Under torchrun every process trains on its own shard
    (DistributedDataParallel: NCCL on GPUs, gloo on CPU); only rank 0 writes.
    """
    from ..train import TrainConfig, read_run, reference_recipe, train

    overrides: dict[str, Any] = {
        k: v for k, v in dict(
            steps=steps, epochs=epochs, batch_size=batch_size, lr=lr, wd=wd, warmup=warmup,
            lr_schedule=lr_schedule, grad_clip=grad_clip, skip_threshold=skip_threshold, max_skips=max_skips,
            ema_rate=ema_rate, holdout=holdout, eval_every=eval_every, sample_every=sample_every,
            ckpt_every=ckpt_every, keep_every=keep_every, max_eval=max_eval, seed=seed,
            kl_warmup=kl_warmup, free_bits=free_bits,
            time_limit=None if time_limit is None else time_limit * 60.0,
        ).items() if v is not None
    }
    if coarse_first is not None:
        overrides.update(_parse_coarse_first(coarse_first))
    if dtype not in ("fp32", "bf16"):
        raise UsageError(f"--dtype {dtype!r} cannot train", hint="use fp32, or bf16 (autocast, fp32 master weights)")
    if steps is not None and epochs is not None:
        raise UsageError("give --steps or --epochs, not both")

    if resume is not None:
        if any(x is not None for x in (config, hparams, init)):
            raise UsageError("--resume takes the architecture from the run; drop --config/--hparams/--init")
        if output is not None and output.resolve() != resume.resolve():
            raise UsageError("--resume continues in its own folder; drop -o")
        cfg, tc, info = read_run(resume)
        fixed = {"batch_size", "seed", "holdout"} & set(overrides)
        if fixed:
            raise UsageError(f"--{sorted(fixed)[0].replace('_', '-')} cannot change when resuming",
                             hint="start a new run (e.g. --init RUN/model.safetensors) to change it")
        if "steps" in overrides:
            tc = tc.replace(epochs=None)
        if "epochs" in overrides:
            tc = tc.replace(steps=None)
        tc = tc.replace(**overrides, dtype=dtype if dtype != "fp32" else tc.dtype)
        data_path = Path(data) if data is not None else Path(info["data"].get("path", ""))
        from ..data import load_images

        if not str(data_path) or not data_path.exists():
            raise UsageError(f"the run's data {data_path} is not there", hint="pass DATA again")
        images, init_state, run_dir = load_images(data_path, cfg.image_size), None, resume
        data_info = dict(info["data"], path=str(data_path))
    else:
        if data is None:
            raise UsageError("missing DATA (a folder of images or an .npy/.npz array)")
        if output is None:
            raise UsageError("missing -o RUN_DIR (the folder to write the run to)")
        cfg, init_state, images = _resolve_model_config(config, hparams, init, data, image_size)
        base: dict[str, Any] = reference_recipe(config) if config else {}
        base.update(overrides)
        if "steps" not in base and "epochs" not in base:
            base["epochs"] = 10
        tc = TrainConfig(**base, dtype=dtype)
        run_dir = output
        data_info = {"dataset": cfg.dataset if cfg.dataset != "custom" else data.stem, "path": str(data)}

    from ..runtime import init_distributed

    dev, shard = init_distributed(device)
    rank = shard.rank
    callback = _Reporter(json_out=json_out, quiet=quiet) if rank == 0 else None
    try:
        result = train(cfg, tc, images, run_dir, device=dev, init_state=init_state, resume=resume is not None,
                       force=force, data_info=data_info, callback=callback)
    finally:
        if callback is not None:
            callback.close()
    if rank == 0 and not quiet:
        bpd = "n/a" if result.heldout_bpd is None else f"{result.heldout_bpd:.4f}"
        how = "stopped at the time limit; continue with --resume" if result.stopped == "time limit" else "done"
        print(f"{how}: step {result.step}, held-out {bpd} bits/dim, {result.skipped} skipped update(s); "
              f"model: {result.model_path}", file=sys.stderr)


class _Reporter:
    """Renders training events: a rich progress bar and eval lines on stderr, JSON evals on stdout."""

    def __init__(self, *, json_out: bool, quiet: bool):
        self.json_out, self.quiet = json_out, quiet
        self.progress = None
        self.task = None
        self.last_eval = "-"

    def _start(self, total: int, done: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
            TextColumn("held-out {task.fields[heldout]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=Console(stderr=True), transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=total, completed=done, loss="loss -", heldout="-")

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "eval" and self.json_out:
            print(json.dumps(event), flush=True)
        if self.quiet:
            return
        if kind == "start":
            self._start(event["total"], event["step"])
        elif kind == "step" and self.progress is not None:
            self.progress.update(self.task, completed=event["step"], loss=f"loss {event['loss_bpd']:.3f} b/d")
        elif kind == "eval":
            self.last_eval = f"{event['heldout_bpd']:.4f} b/d"
            line = (f"step {event['step']} (epoch {event['epoch']}): held-out {event['heldout_bpd']:.4f} bits/dim "
                    f"(distortion {event['distortion_bpd']:.4f}, rate {event['rate_bpd']:.4f})")
            if event.get("train_bpd") is not None:
                line += f", train {event['train_bpd']:.4f}"
            self._print(line)
            if self.progress is not None:
                self.progress.update(self.task, heldout=self.last_eval)
        elif kind == "warning":
            self._print(f"warning: {event['message']}")

    def _print(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text, highlight=False, markup=False, soft_wrap=True)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
