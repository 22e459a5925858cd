"""``vdvae train``: train or fine-tune a VDVAE or an NVAE on a folder of images or a uint8 array."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from ._app import command, emit_json, say
from .options import DeviceOpt, ForceOpt, JsonOpt, QuietOpt
from ..base.errors import UsageError

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

_EPILOG = (
    "Examples:\n\n"
    "  vdvae train photos/ -o runs/mine\n\n"
    "  vdvae train photos/ -o runs/mine --config small64 --time-limit 30\n\n"
    "  vdvae train photos/ -o runs/nv --config nvae-small32 --steps 3000   (an NVAE, NVAE's own recipe)\n\n"
    "  vdvae train photos/ -o runs/px --config pixelcnn-small32 --time-limit 60   (a PixelCNN++)\n\n"
    "  vdvae train --resume runs/mine --time-limit 60\n\n"
    "  vdvae train faces.npy --init digits32 -o runs/finetune --steps 2000 --lr 5e-5\n\n"
    "  vdvae train digits.npz --hparams scripts/digits32.json -o runs/digits --steps 7500\n\n"
    "  torchrun --nproc-per-node 4 -m vdvae_cli train imgs.npz --config cifar10 -o runs/c10 --dtype bf16\n\n"
    "Without --config the model is the small32 preset (0.8M parameters, 32x32), sized for a CPU. Options "
    "not given are sized to the data and the time limit: 10% held out, a batch near a quarter of the "
    "images (4-32), 30 epochs (500-20,000 steps) or until --time-limit, warm-up and 10 evaluations "
    "to match; run.json records every value the run used. The run folder gets run.json, state.pt (resume), "
    "model.safetensors (EMA weights for `vdvae sample --model RUN/model.safetensors`), log.jsonl, "
    "curves.png, samples/step-N.png and, "
    "with tensorboard installed, tensorboard/. A --hparams JSON (a VDVAE) uses the reference's field names "
    "(width, zdim, enc_blocks, dec_blocks, custom_width_str, bottleneck_multiple, num_mixtures, "
    "image_size, dataset, image_channels: 1 for grey); without a 'preprocessing' object the input "
    "shift/scale are the training pixels' mean/std. A JSON with \"family\": \"nvae\" is an NVAE in "
    "its official args' field names (plus grey: true for one channel).\n\n"
    "The exported model recommends the sampling temperatures (--temp, --output-temp; the defaults of "
    "`vdvae sample`) whose samples are nearest to the held-out images: 48 samples at each of --temp 1, 0.85, "
    "0.7 times --output-temp 1, 0.5, 0, compared with the held-out images by the Frechet distance of "
    "diagonal Gaussians over simple image features (8x8 block means of the colours and of the "
    "neighbouring-pixel differences)."
)


def _parse_coarse_first(text: str) -> dict[str, int]:
    res, sep, steps = text.partition(":")
    if not sep or not res.strip().isdigit() or not steps.strip().isdigit():
        raise UsageError(f"--coarse-first {text!r} is not RES:STEPS", hint="e.g. --coarse-first 4:1500")
    return {"coarse_res": int(res), "coarse_steps": int(steps)}


def _parse_free_bits_res(items: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        res, sep, bits = item.partition("=")
        try:
            value = float(bits)
        except ValueError:
            value = -1.0
        if not sep or not res.strip().isdigit() or not (value >= 0 and math.isfinite(value)):
            raise UsageError(f"--free-bits-res {item!r} is not RES=BITS", hint="e.g. --free-bits-res 32=200")
        out[str(int(res))] = value
    return out


def _parse_recipe_options(items: list[str]) -> dict[str, Any]:
    """``--recipe KEY=VALUE`` items -> the family recipe's options (values: numbers, true or false);
    the family's recipe checks the names and ranges when the run starts."""
    from ..base.safety import loads

    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--recipe {item!r} is not KEY=VALUE", hint="e.g. --recipe weight_decay_norm=0.1")
        try:
            value = loads(text.strip())
        except ValueError:
            value = None
        if isinstance(value, bool) or isinstance(value, (int, float)):
            out[key.strip()] = value
        else:
            raise UsageError(f"--recipe {item!r}: the value must be a number, true or false")
    return out


DEFAULT_PRESET = "small32"  # the architecture of the shipped models: a VDVAE sized for a CPU


def _resolve_model_config(config: str | None, hparams: Path | None, init: str | None, data: Path, image_size_hint,
                          run_name: str, skipped):
    """(model config, init state or None, images, name) from the mutually exclusive model sources;
    none given means the default CPU preset. ``name`` is the preset or official architecture the
    family's recipe defaults go by (None for --init and --hparams). ``skipped`` hears of image files
    that could not be read."""
    from ..engine.registry import architecture_family, family_named
    from ..training.data import load_images

    given = [x for x in (config, hparams, init) if x is not None]
    if len(given) > 1:
        raise UsageError("give exactly one of --config NAME, --hparams FILE.json or --init MODEL",
                         hint="--init starts from a trained model (fine-tuning)")
    if not given:
        config = DEFAULT_PRESET
    if init is not None:
        from ..modelfiles.cache import fetch_model
        from ..modelfiles.checkpoint import read_checkpoint
        from .models import download_progress

        with download_progress(False) as progress:  # a named model downloads on first use
            cfg, state = read_checkpoint(fetch_model(init, progress=progress).path)
        # a fine-tuned model is a new model: it takes the run's name, not its parent's
        return cfg.replace(name=run_name), state, load_images(data, cfg.image_size, skipped=skipped), None
    if config is not None:
        family = architecture_family(config)
        if config in family.preset_names():
            size = family.preset_image_size(config)
            images = load_images(data, image_size_hint or size, skipped=skipped)
            if images.shape[1] != size:
                raise UsageError(f"--config {config} trains on {size}x{size} images",
                                 hint="drop --image-size, or pick the preset of that size (small32, small64)")
            return family.preset_config(config, images, run_name=run_name), None, images, config
        arch = family.official_config(config)
        return arch, None, load_images(data, arch.image_size, skipped=skipped), config
    assert hparams is not None
    from ..base.filekind import require_regular_file

    require_regular_file(hparams, "hyperparameters")
    # --hparams FILE: the reference VDVAE's field names (hps.py), or a family's own JSON that names
    # it ({"family": "nvae", ...}: NVAE's official args)
    cfg, images = family_named(_hparams_family(hparams)).hparams_config(
        hparams, lambda size: load_images(data, size, skipped=skipped), size_hint=image_size_hint)
    return cfg, None, images, None


def _hparams_family(path: Path) -> str:
    """The family an --hparams file names (``"family"`` in a JSON object), else VDVAE; files that are
    not one small JSON object (an official -log.jsonl) are the reference VDVAE's."""
    from ..base.safety import loads

    try:
        if path.stat().st_size > 1 << 20:
            return "vdvae"
        data = loads(path.read_bytes())
    except (OSError, ValueError):
        return "vdvae"  # the VDVAE reader reports what is wrong with the file
    family = data.get("family", "vdvae") if isinstance(data, dict) else "vdvae"
    return family if isinstance(family, str) else "vdvae"


def _check_config_name(config: str | None) -> None:
    from ..engine.registry import architecture_family

    if config is not None:
        architecture_family(config)  # an unknown name is one UsageError listing the known ones


def _train_dtype(spec: str, device) -> str:
    """``--dtype auto``: bf16 autocast where the device computes bf16 natively, else fp32."""
    if spec in ("fp32", "bf16"):
        return spec
    if spec != "auto":
        raise UsageError(f"--dtype {spec!r} cannot train", hint="use auto, fp32, or bf16 (autocast, fp32 master weights)")
    from ..engine.runtime import fast_bf16

    return "bf16" if fast_bf16(device) else "fp32"


@command("train", epilog=_EPILOG)
def train_cmd(
    data: Annotated[Optional[Path], typer.Argument(help="Folder of images, or an .npy/.npz uint8 (N, H, W[, C]) array.", show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Run folder to create.", show_default=False)] = None,
    config: Annotated[Optional[str], typer.Option("--config", "-c", metavar="NAME", help="small32, small64, nvae-small32, pixelcnn-small32 or pixelcnn-grey32 (presets sized for a CPU; default small32), or an official architecture (VDVAE: cifar10, imagenet32, ...; NVAE: nvae-cifar10, nvae-celeba64, ...; PixelCNN++: pixelcnn-cifar10) trained with its family's recipe.", show_default=False)] = None,
    hparams: Annotated[Optional[Path], typer.Option("--hparams", help="Architecture as reference-style JSON (or an official -log.jsonl).", show_default=False)] = None,
    init: Annotated[Optional[str], typer.Option("--init", help="Fine-tune: start from this model (registry name or .safetensors).", show_default=False)] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue the run in this folder from its last checkpoint.", show_default=False)] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Total optimizer steps. Default: 30 epochs, at least 500 and at most 20,000 steps; with --time-limit a VDVAE trains until the time is up.", show_default=False)] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Total epochs (instead of --steps).", show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", help="Images per step per process. Default: a power of two near a quarter of the training images, 4 to 32 (an official architecture: its reference batch).", show_default=False)] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate. Default: 1e-3 for the CPU presets (small32, small64; no --config); an official VDVAE architecture's reference rate (7e-5 to 2e-4); 1.5e-4 with --hparams or --init of a VDVAE; NVAE 1e-2 (official architectures: their README's).", show_default=False)] = None,
    wd: Annotated[Optional[float], typer.Option("--wd", help="Weight decay [VDVAE: 0.01, decoupled (AdamW); NVAE: 3e-4, L2 (Adamax)].", show_default=False)] = None,
    warmup: Annotated[Optional[int], typer.Option("--warmup", help="Linear warm-up steps. Default: 5% of the steps, 10 to 100 (with --time-limit and no length: a tenth of the limit in seconds, 10 to 100).", show_default=False)] = None,
    lr_schedule: Annotated[Optional[str], typer.Option("--lr-schedule", help="constant or cosine (a decay to a tenth; NVAE to 1e-4). Default: cosine for presets and NVAE, constant for official VDVAE architectures, --hparams, --init and runs the time limit ends.", show_default=False)] = None,
    grad_clip: Annotated[Optional[float], typer.Option("--grad-clip", help="Clip the gradient norm to this; 0 = no clipping. Default: 400 for the presets; an official VDVAE architecture's own (130 to 360); 200 with --hparams or --init; NVAE 0.", show_default=False)] = None,
    skip_threshold: Annotated[Optional[float], typer.Option("--skip-threshold", help="Skip updates whose gradient norm reaches this; -1 = only non-finite ones. Default: 5000 for the presets; an official VDVAE architecture's own (180 to 500); 400 with --hparams or --init; NVAE -1.", show_default=False)] = None,
    max_skips: Annotated[Optional[int], typer.Option("--max-skips", help="Stop after this many skipped updates in a row [100].", show_default=False)] = None,
    ema_rate: Annotated[Optional[float], typer.Option("--ema-rate", help="EMA decay of the weights; 0 = no EMA. Default: 0.995 for the presets (at most (1+step)/(10+step) early on); an official VDVAE architecture's own (0.999 or 0.9999); 0.999 with --hparams or --init; NVAE 0.", show_default=False)] = None,
    holdout: Annotated[Optional[float], typer.Option("--holdout", help="Held-out images: a fraction < 1 or a count. Default: 0.1 (at least one image; at most 1,000 are evaluated).", show_default=False)] = None,
    eval_every: Annotated[Optional[int], typer.Option("--eval-every", help="Steps between held-out evaluations. Default: a tenth of the run, plus one before the first step (with --time-limit and no length: every tenth of the limit).", show_default=False)] = None,
    sample_every: Annotated[Optional[int], typer.Option("--sample-every", help="Steps between sample grids [= --eval-every].", show_default=False)] = None,
    ckpt_every: Annotated[Optional[int], typer.Option("--ckpt-every", help="Steps between checkpoints [= --eval-every].", show_default=False)] = None,
    keep_every: Annotated[Optional[int], typer.Option("--keep-every", help="Also keep step-N.pt copies at this interval.", show_default=False)] = None,
    max_eval: Annotated[Optional[int], typer.Option("--max-eval", help="Evaluate on at most this many held-out images. Default: 1000.", show_default=False)] = None,
    time_limit: Annotated[Optional[float], typer.Option("--time-limit", metavar="MINUTES", help="The whole command ends within this many minutes (from now, also when resuming): training stops early enough for the final evaluation, sample grid, temperature choice and export; --resume continues.", show_default=False)] = None,
    coarse_first: Annotated[Optional[str], typer.Option("--coarse-first", metavar="RES:STEPS", help="Curriculum: for the first STEPS steps infer only the latent layers at resolution <= RES (the rest come from the prior), so the coarse layers learn the global content first. Off by default (the reference recipe).", show_default=False)] = None,
    progressive: Annotated[Optional[int], typer.Option("--progressive", metavar="STEPS", help="The progressive recipe: train the latent levels one resolution at a time, finest first, STEPS steps each (the levels not reached yet take z = 0; the newest is fitted under a fixed N(0, I) prior), then all jointly; `vdvae prior fit` then puts a learned prior on the top. Off by default (joint training).", show_default=False)] = None,
    kl_warmup: Annotated[Optional[int], typer.Option("--kl-warmup", metavar="STEPS", help="Against posterior collapse: raise the KL term's weight in the objective linearly from 0 to 1 over STEPS steps (the reported loss stays the ELBO). Off by default.", show_default=False)] = None,
    recipe_options: Annotated[Optional[list[str]], typer.Option("--recipe", metavar="KEY=VALUE", help="A setting of the model family's own recipe, repeatable. NVAE: kl_anneal_portion, kl_const_portion, kl_const_coeff (the KL warm-up), weight_decay_norm (the spectral/BN coefficient), weight_decay_norm_init, weight_decay_norm_anneal, power_iterations.", show_default=False)] = None,
    free_bits: Annotated[Optional[float], typer.Option("--free-bits", metavar="BITS", help="Against posterior collapse: count each latent layer's batch-mean KL as at least BITS bits per image in the posterior's objective (the prior still learns the full KL). Off by default.", show_default=False)] = None,
    free_bits_res: Annotated[Optional[list[str]], typer.Option("--free-bits-res", metavar="RES=BITS", help="A free-bits floor for the latent layers at resolution RES (repeatable; replaces --free-bits there), e.g. --free-bits-res 32=200: a rate kept on purpose where the pixels' detail lives.", show_default=False)] = None,
    image_size: Annotated[Optional[int], typer.Option("--image-size", help="With --hparams lacking image_size: resize/crop to this.", show_default=False)] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of initialisation, data order and training noise [0].", show_default=False)] = None,
    device: DeviceOpt = "auto",
    dtype: Annotated[str, typer.Option(
        "--dtype", metavar="auto|fp32|bf16",
        help="auto: bf16 autocast (fp32 master weights) where the CPU or GPU computes bf16 natively, else fp32.")] = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    force: ForceOpt = False,
) -> None:
    """Train a VDVAE, an NVAE or a PixelCNN++ on a folder of images: `vdvae train FOLDER -o RUN` works with defaults.

    Reports the held-out negative ELBO in bits/dim at every evaluation (one JSON line each with
    --json), writes sample grids and resumable checkpoints, and exports the evaluated weights (a
    VDVAE's EMA; an NVAE's trained weights and BatchNorm statistics) as a self-describing
    safetensors file. An NVAE (--config nvae-small32, nvae-cifar10, ...) trains with NVAE's recipe.
    Under torchrun every process trains on its own shard (DistributedDataParallel: NCCL on GPUs,
    gloo on CPU); only rank 0 writes.
    """
    import time

    started = time.monotonic()  # --time-limit counts from here: the whole command, export included
    from ..engine.recipe import TrainConfig
    from ..training.loop import read_run, train

    overrides: dict[str, Any] = {
        k: v for k, v in dict(
            steps=steps, epochs=epochs, batch_size=batch_size, lr=lr, wd=wd, warmup=warmup,
            lr_schedule=lr_schedule, grad_clip=grad_clip, skip_threshold=skip_threshold, max_skips=max_skips,
            ema_rate=ema_rate, holdout=holdout, eval_every=eval_every, sample_every=sample_every,
            ckpt_every=ckpt_every, keep_every=keep_every, max_eval=max_eval, seed=seed,
            kl_warmup=kl_warmup, free_bits=free_bits, progressive_steps=progressive,
            time_limit=None if time_limit is None else time_limit * 60.0,
        ).items() if v is not None
    }
    if coarse_first is not None:
        overrides.update(_parse_coarse_first(coarse_first))
    if free_bits_res:
        overrides["free_bits_res"] = _parse_free_bits_res(free_bits_res)
    recipe_given = _parse_recipe_options(recipe_options or [])
    if dtype not in ("auto", "fp32", "bf16"):
        raise UsageError(f"--dtype {dtype!r} cannot train", hint="use auto, fp32, or bf16 (autocast, fp32 master weights)")
    if steps is not None and epochs is not None:
        raise UsageError("give --steps or --epochs, not both")
    _check_config_name(config)
    from ..training.data import load_images
    from ..engine.runtime import init_distributed

    def skipped(message: str) -> None:
        if not quiet:
            say(f"warning: {message}")

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
        tc = tc.replace(**overrides, dtype=tc.dtype if dtype == "auto" else dtype,
                        family_options={**tc.family_options, **recipe_given})
        data_path = Path(data) if data is not None else Path(info["data"].get("path", ""))
        if not str(data_path) or not data_path.exists():
            raise UsageError(f"the run's data {data_path} is not there", hint="pass DATA again")
        images, init_state, run_dir = load_images(data_path, cfg.image_size, skipped=skipped), None, resume
        data_info = dict(info["data"], path=str(data_path))
        dev, shard = init_distributed(device)
    else:
        if data is None:
            raise UsageError("missing DATA (a folder of images or an .npy/.npz array)")
        if output is None:
            raise UsageError("missing -o RUN_DIR (the folder to write the run to)")
        cfg, init_state, images, name = _resolve_model_config(config, hparams, init, data, image_size,
                                                              output.resolve().name, skipped)
        from ..engine.registry import family_of
        from ..training.schedule import auto_settings

        defaults = family_of(cfg).train_defaults(name)
        given = {**defaults.settings, **overrides}
        if recipe_given:
            given["family_options"] = {**given.get("family_options", {}), **recipe_given}
        dev, shard = init_distributed(device)
        auto = auto_settings(len(images), given, world=shard.world, decay=defaults.decay, open_ended=defaults.open_ended)
        tc = TrainConfig(**{**given, **auto}, dtype=_train_dtype(dtype, dev))
        run_dir = output
        own_data = cfg.dataset.partition("_")[0] == "custom"  # a preset or --hparams model of one's own data
        data_info = {"dataset": data.stem if own_data else cfg.dataset, "path": str(data)}

    rank = shard.rank
    callback = _Reporter(json_out=json_out, quiet=quiet) if rank == 0 else None
    before = _folder_listing(run_dir) if resume is None else None
    try:
        result = train(cfg, tc, images, run_dir, device=dev, init_state=init_state, resume=resume is not None,
                       force=force, data_info=data_info, callback=callback, started=started)
    except Exception as exc:
        if rank == 0 and resume is None:
            _after_failure(run_dir, before, exc)
        raise
    finally:
        if callback is not None:
            callback.close()
    if rank == 0 and not quiet:
        bpd = "n/a" if result.heldout_bpd is None else f"{result.heldout_bpd:.4f}"
        how = "stopped at the time limit; continue with --resume" if result.stopped == "time limit" else "done"
        say(f"{how}: step {result.step}, held-out {bpd} bits/dim, {result.skipped} skipped update(s); "
            f"model: {result.model_path}")
        assert callback is not None
        if callback.temperatures is not None:
            t = callback.temperatures
            say(f"recommended --temp {t['temperature']:g} --output-temp {t['output_temperature']:g} "
                f"(the samples nearest to the held-out images; at 1 and 1: {t['distance_at_1']:.1f}, "
                f"chosen: {t['distance']:.1f}); they are the model's defaults")
        if result.model_path is not None:
            import shlex

            say(f"sample with: vdvae sample --model {shlex.quote(str(result.model_path))} -n 16 --grid -o grid.png")


def _folder_listing(folder: Path) -> set[str] | None:
    """The names in ``folder`` before a new run starts there (None: the folder does not exist)."""
    try:
        return {p.name for p in folder.iterdir()}
    except FileNotFoundError:
        return None
    except OSError:
        return set()


def _after_failure(folder: Path, before: set[str] | None, exc: Exception) -> None:
    """A new run that failed (a full disk, a non-finite loss, ...) leaves either a resumable folder,
    said in the error's hint, or nothing: what it wrote before its first checkpoint is removed, so
    that the same command can run again without --force. Files that were there before are kept."""
    import shutil

    from ..base.errors import VDVAEError
    from ..training.rundir import STATE_FILE

    def tell(text: str) -> None:
        if isinstance(exc, VDVAEError):
            exc.hint = f"{exc.hint}; {text}" if exc.hint else text

    if (folder / STATE_FILE).is_file():
        tell(f"the run folder keeps its last checkpoint: continue with vdvae train --resume {folder}")
        return
    try:
        if before is None:
            shutil.rmtree(folder)
            tell(f"nothing resumable had been written, so {folder} was removed")
            return
        for path in folder.iterdir():
            if path.name not in before:
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        tell(f"nothing resumable had been written; the files this run made in {folder} were removed")
    except OSError:
        tell(f"nothing resumable was written; remove {folder} or pass --force to start over")


class _Reporter:
    """Renders training events: a rich progress bar and eval lines on stderr, JSON evals on stdout."""

    def __init__(self, *, json_out: bool, quiet: bool):
        self.json_out, self.quiet = json_out, quiet
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self.last_eval = "-"
        self.temperatures: dict[str, Any] | None = None  # the export's recommended temperatures, once chosen

    def _start(self, total: int, done: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        from ._progress import bar_wanted, stderr_progress

        if not bar_wanted(json_out=self.json_out):
            return  # eval lines go to stderr through say()
        self.progress = stderr_progress(
            TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
            TextColumn("held-out {task.fields[heldout]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            transient=False,
        )
        self.progress.start()
        from ..training.schedule import UNTIL_TIME_LIMIT

        self.task = self.progress.add_task("train", total=None if total >= UNTIL_TIME_LIMIT else total, completed=done,
                                           loss="loss -", heldout="-")

    def _say_plan(self, e: dict[str, Any]) -> None:
        """One line that says what the run will do (most of it chosen from the data when not given)."""
        from ..training.schedule import UNTIL_TIME_LIMIT

        tc = e["config"]
        seconds = tc.get("time_limit")
        budget = "" if not seconds else f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
        if e["total"] >= UNTIL_TIME_LIMIT:
            length = f"for {budget}"
        else:
            length = f"{e['total']:,} steps ({e['total'] / e['steps_per_epoch']:.1f} epochs)"
            length += f", at most {budget}" if budget else ""
        start = f", from step {e['step']:,}" if e["step"] else ""
        say(f"training {e['model']} ({e['params'] / 1e6:.2f}M parameters, {tc['dtype']}) on {e['n_train']:,} images "
            f"({e['n_heldout']:,} held out), {tc['batch_size']} per step, {length}{start}")

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "eval" and self.json_out:
            emit_json(event)
        if kind == "temperatures":
            self.temperatures = event
        if self.quiet:
            return
        if kind == "start":
            self._say_plan(event)
            self._start(event["total"], event["step"])
        elif kind == "step":
            self._update(completed=event["step"], loss=f"loss {event['loss_bpd']:.3f} b/d")
        elif kind == "eval":
            self.last_eval = f"{event['heldout_bpd']:.4f} b/d"
            line = (f"step {event['step']} (epoch {event['epoch']}): held-out {event['heldout_bpd']:.4f} bits/dim "
                    f"(distortion {event['distortion_bpd']:.4f}, rate {event['rate_bpd']:.4f})")
            if event.get("train_bpd") is not None:
                line += f", train {event['train_bpd']:.4f}"
            self._print(line)
            self._update(heldout=self.last_eval)
        elif kind == "warning":
            self._print(f"warning: {event['message']}")
        elif kind == "stage":
            self._print(f"step {event['step']}: {event['message']}")

    def _update(self, **fields: Any) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, **fields)

    def _print(self, text: str) -> None:
        if self.progress is not None:
            from ..base.safety import clean

            self.progress.console.print(clean(text), highlight=False, markup=False, soft_wrap=True)
        else:
            say(text)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
