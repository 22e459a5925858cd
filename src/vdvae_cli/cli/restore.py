"""``vdvae inpaint | upscale | denoise | deblur``: restoring images with the model as the prior.

Each command reads its inputs and checks every option before the model loads, builds the known
degradation (:mod:`vdvae_cli.engine.restore`) and runs PnP-HVAE (Prost et al., ICCV 2023) batch by
batch through :meth:`Session.generate`. Output ``i`` is solution ``i % N`` of input ``i // N`` and
depends only on ``(--seed, i)``, whatever ``--batch-size`` is.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any, Callable, Optional, Sequence

import typer

from ._app import command
from ._run import BatchOpt, NoResizeOpt, Session, SkipExistingOpt, check_batch_size, check_keep_args, check_positive, \
    collect_inputs, keep_count, plan_images, MAX_VARIATIONS
from .generate import GridOpt, KeepLayersOpt, KeepResOpt, OutOpt, Posterior, TempOpt, resolve_temperatures
from .options import CompileOpt, DeviceOpt, ForceOpt, JsonOpt, ModelOpt, OfflineOpt, PriorOpt, QuietOpt, SeedOpt
from ..base.errors import ImageError, UsageError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ..base.images import ImageSource
    from ..engine.restore import Degradation

METHOD = ("PnP-HVAE (Prost, Houdard, Almansa & Papadakis, 'Inverse problem regularization with hierarchical "
          "variational autoencoders', ICCV 2023, arXiv:2303.11217)")
HOW = (
    "Method: " + METHOD + ". From a first guess, each of --steps iterations encodes the current image and decodes "
    "it (the first --keep-layers latent layers from the posterior, its mean with --posterior mean or a sample, the "
    "deeper ones drawn from the prior at --temp; the decoder's mean as pixels), then solves the data-fidelity step "
    "argmin |A x - y|^2 / 2 sigma^2 + |x - decoded|^2 / 2 gamma^2 in closed form (gamma: --decoder-std). "
    "-n N gives N solutions per input (posterior samples); --posterior mean is the deterministic answer."
)
EXAMPLES_TAIL = "  vdvae {cmd} photo.png {opts} -n 3 --grid --seed 1 -o grid.png\n\n" \
    "  vdvae {cmd} photos/ {opts} --posterior mean --json -o restored/ > fit.jsonl"

StepsOpt = Annotated[Optional[int], typer.Option(
    "--steps", metavar="K", help="Iterations (encode/decode + data step), 1 to 1000. Default: the task's (10).",
    show_default=False)]
NumOpt = Annotated[int, typer.Option("--num", "-n", metavar="N", help="Solutions per input image.")]
RestorePosteriorOpt = Annotated[Posterior, typer.Option(
    "--posterior", help="Kept latent layers as posterior samples (diverse solutions) or the posterior mean "
    "(with every layer kept: one deterministic answer).")]
DecoderStdOpt = Annotated[Optional[float], typer.Option(
    "--decoder-std", metavar="G", help="gamma, the decoder's standard deviation on the 0-1 scale (0 < G <= 1): larger "
    "trusts the observation more, smaller the model more. Default: the task's.", show_default=False)]
NoConsistencyOpt = Annotated[bool, typer.Option(
    "--no-consistency", help="Write the decoder's last image instead of the data-consistent one (inpaint: without "
    "the kept pixels copied back; upscale: not projected onto the input).")]
RestoreDtypeOpt = Annotated[str, typer.Option(
    "--dtype", metavar="auto|fp32|bf16|fp16",
    help="The network's dtype; auto: bf16 where the device computes it natively (faster), else fp32.")]

MAX_STEPS = 1000


# --------------------------------------------------------------------------------------------------
# Checks that need no model


def check_sigma(sigma: float, option: str = "--sigma", *, zero_ok: bool = False) -> None:
    low_ok = sigma >= 0 if zero_ok else sigma > 0
    if not (math.isfinite(sigma) and low_ok and sigma <= 1):
        hint = (f"the noise is on the 0-1 scale: {sigma:g} grey levels is {option} {sigma / 255:.4g}"
                if math.isfinite(sigma) and 1 < sigma <= 255 else "0.1 is 25.5 grey levels")
        bound = "from 0" if zero_ok else "above 0"
        raise UsageError(f"{option} must be a number {bound} to 1 (a standard deviation on the 0-1 scale), got {sigma:g}",
                         hint=hint)


def parse_blur(spec: str) -> float:
    """``gaussian:S`` -> S (the blur's standard deviation in pixels, 0 < S <= 20)."""
    kind, _, value = spec.strip().partition(":")
    if kind.strip().lower() != "gaussian" or not value.strip():
        raise UsageError(f"--blur {spec!r} is not a blur this command knows", hint="use gaussian:S, e.g. gaussian:1.5")
    try:
        std = float(value)
    except ValueError:
        raise UsageError(f"--blur {spec!r}: {value.strip()!r} is not a number", hint="use gaussian:S, e.g. gaussian:1.5") \
            from None
    if not (math.isfinite(std) and 0 < std <= 20):
        raise UsageError(f"--blur {spec!r}: the standard deviation must be above 0 and at most 20 pixels")
    return std


def _check_common(num: int, steps: int | None, decoder_std: float | None, batch_size: str,
                  keep_layers: str | None, keep_res: int | None) -> None:
    check_positive("-n", num, MAX_VARIATIONS)
    if steps is not None and not 1 <= steps <= MAX_STEPS:
        raise UsageError(f"--steps must be from 1 to {MAX_STEPS}, got {steps}")
    if decoder_std is not None and not (math.isfinite(decoder_std) and 0 < decoder_std <= 1):
        raise UsageError(f"--decoder-std must be above 0 and at most 1 (0-1 scale), got {decoder_std:g}")
    check_batch_size(batch_size)
    check_keep_args(keep_layers, keep_res)


def _resolve_dtype(dtype: str, device: str) -> str:
    if dtype.strip().lower() != "auto":
        return dtype
    from ..engine.runtime import fast_bf16, pick_device

    return "bf16" if fast_bf16(pick_device(device)) else "fp32"


def _output_names(sources: Sequence["ImageSource"], task: str, num: int) -> list[str]:
    """``STEM_TASK.png`` per input, or ``STEM_TASK_J.png`` for its N solutions."""
    from ..base.images import derived_names

    base = derived_names([s.stem for s in sources], task)
    if num == 1:
        return base
    width = len(str(num - 1))
    return [f"{b[:-4]}_{j:0{width}d}.png" for b in base for j in range(num)]


# --------------------------------------------------------------------------------------------------
# Reading inputs and masks


def _read_all(run: Session, sources: Sequence["ImageSource"], read: Callable[["ImageSource"], Any]) -> dict[int, Any]:
    """``read(source)`` for every input (its index -> the result). One unreadable input among several is
    reported and left out (the run fails at its end); a single one is an error at once."""
    out = {}
    for i, source in enumerate(sources):
        try:
            out[i] = read(source)
        except (ImageError, UsageError) as exc:
            if len(sources) == 1:
                raise
            run.input_failed(source.name, exc)
    return out


def _fit_nearest(mask: "np.ndarray", size: int) -> "np.ndarray":
    """A (h, w) bool mask centre-cropped to a square and resized to ``size`` with nearest neighbours
    (the crop ``read_image`` gives an image of the same shape)."""
    import numpy as np
    from PIL import Image

    h, w = mask.shape
    if (h, w) == (size, size):
        return mask
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = Image.fromarray((mask[top:top + side, left:left + side] * 255).astype(np.uint8))
    return np.asarray(square.resize((size, size), Image.Resampling.NEAREST)) > 127


def read_mask(source: "ImageSource", size: int) -> "np.ndarray":
    """The pixels to fill of a mask image (white = fill, black = keep), (size, size) bool."""
    from ..base.images import read_image
    from ..base.safety import clean

    rgb = read_image(source, None)
    fill = _fit_nearest(rgb.mean(axis=-1) > 127.5, size)
    name = clean(source.name)
    if not fill.any():
        raise UsageError(f"mask {name} has no white pixels, so there is nothing to fill",
                         hint="white marks the pixels to fill, black the pixels to keep")
    if fill.all():
        raise UsageError(f"mask {name} is white everywhere, so no pixel is kept",
                         hint="white marks the pixels to fill, black the pixels to keep; `vdvae sample` draws whole images")
    return fill


def mask_sources(mask: str, sources: Sequence["ImageSource"]) -> list["ImageSource"]:
    """The mask of each input: one file for all of them, or from a folder the file with the input's
    name (or stem, any image suffix)."""
    from pathlib import Path

    from ..base.images import collect_images
    from ..base.safety import clean

    path = Path(mask)
    if not path.is_dir():
        (single,) = collect_images([mask])
        return [single] * len(sources)
    found = collect_images([mask])
    by_name = {s.path.name if s.path else s.name: s for s in found}
    by_stem: dict[str, Any] = {}
    for s in found:
        by_stem.setdefault(s.stem, s)
    out = []
    for s in sources:
        name = s.path.name if s.path is not None else s.name
        match = by_name.get(name) or by_stem.get(s.stem)
        if match is None:
            raise UsageError(f"folder {clean(mask)} holds no mask for {clean(s.name)}",
                             hint=f"add {clean(mask)}/{clean(s.stem)}.png, or give one mask file for every input")
        out.append(match)
    return out


# --------------------------------------------------------------------------------------------------
# The shared command body


def _restore(
    task: str,
    *,
    images: list[str],
    make_op: Callable[[list[int], "Any"], "Degradation"],
    read_input: Callable[[Session, "ImageSource", int], "np.ndarray"],
    beside: Callable[["np.ndarray", Any], list["np.ndarray"]],
    settings: dict[str, Any],
    prepare: Callable[[Session, Sequence["ImageSource"], int], dict[int, Any]] | None,
    check_size: Callable[[int], None] | None,
    num: int, steps: int | None, decoder_std: float | None, keep_layers: str | None, keep_res: int | None,
    posterior: Posterior, temp: str | None, no_consistency: bool, output: str | None, grid: bool,
    seed: int | None, batch_size: str, force: bool, skip_existing: bool, model: str | None, offline: bool,
    device: str, dtype: str, compile: bool, json_out: bool, quiet: bool, prior: str = "auto",
) -> None:
    import numpy as np
    import torch

    from ..engine import restore as R

    _check_common(num, steps, decoder_std, batch_size, keep_layers, keep_res)
    sources = collect_inputs(images)
    writer = plan_images(output, _output_names(sources, task, num), grid=grid, force=force, json_out=json_out,
                         skip_existing=skip_existing)
    defaults = R.TASK_DEFAULTS[task]
    steps = defaults.steps if steps is None else steps
    gamma = defaults.decoder_std if decoder_std is None else decoder_std
    run = Session(quiet=quiet, json_out=json_out)
    vae = run.load_model(model, device, _resolve_dtype(dtype, device), compile=compile, offline=offline)
    cfg = vae.cfg
    size = cfg.image_size
    if check_size is not None:
        check_size(size)
    keep = keep_count(keep_layers, keep_res, cfg, default=R.default_keep_layers(cfg, task, posterior.value))
    top = run.load_prior(prior)
    spec, temps, _ = resolve_temperatures(temp, None, vae)
    deterministic = posterior is Posterior.mean and all(t == 0 for t in temps[keep:])
    if deterministic and num > 1:
        raise UsageError(f"--posterior mean{' with every layer kept' if keep == cfg.n_layers else ' at --temp 0'} is "
                         f"deterministic, so -n {num} would give {num} identical solutions",
                         hint="drop -n, or use --posterior sample (or --keep-layers K with a --temp above 0)")
    rows = _read_all(run, sources, lambda s: read_input(run, s, size))
    extra = prepare(run, sources, size) if prepare is not None else {}
    ready = [i for i in rows if prepare is None or i in extra]
    mine = [i * num + j for i in ready for j in range(num) if i * num + j not in writer.existing]
    seed = run.seed(seed)
    if grid:
        writer.show_beside(lambda i: beside(rows[i // num], extra.get(i // num)), group=num)
    fits: dict[int, dict[str, float]] = {}

    def make(indices: list[int]) -> "torch.Tensor":
        inputs = [i // num for i in indices]
        observed = torch.from_numpy(np.stack([rows[k] for k in inputs]))
        op = make_op(inputs, extra)
        out = R.restore(vae, op, observed, steps=steps, keep_layers=keep, posterior=posterior.value,
                        temperatures=temps, decoder_std=gamma, consistency=not no_consistency,
                        noise=run.noise(seed, indices), prior=top)
        if json_out:
            fit = R.fit(vae, op, out, observed, noise=run.noise(seed, indices))
            for r, i in enumerate(indices):
                fits[i] = {"data_rmse": round(float(fit.data_rmse[r]), 4), "data_nats": round(float(fit.data_nats[r]), 6),
                           "prior_nats": round(float(fit.prior_nats[r]), 6), "objective": round(float(fit.objective[r]), 6)}
        return out

    def record(i: int) -> dict:
        return {"index": i, "input": sources[i // num].name, "solution": i % num, "task": task, **settings,
                "steps": steps, "keep_layers": keep, "posterior": posterior.value, "decoder_std": gamma,
                "consistency": not no_consistency, "seed": seed, "model": cfg.name, "temp": spec,
                "temperatures": temps, **fits.pop(i, {})}

    run.generate(writer, len(sources) * num, batch_size, make, record, f"{task} ({steps} steps)", indices=mine)


def _read_fitted(run: Session, source: "ImageSource", size: int, no_resize: bool) -> "np.ndarray":
    from ..base.images import read_image

    return read_image(source, size, resize=not no_resize, notify=run.info)


def _same_as_input(row: "np.ndarray", extra: Any) -> list["np.ndarray"]:
    return [row]


# --------------------------------------------------------------------------------------------------
# inpaint


@command(
    "inpaint",
    help=(
        "Fill the masked pixels of each image with what the model finds plausible.\n\n"
        "MASK is an image: white = pixels to fill, black = pixels to keep (the convention of diffusers and most "
        "inpainting tools); a mask of another size is centre-cropped and resized with nearest neighbours, as the "
        "image is. --mask DIR/ holds one mask per input, found by the input's file name (or stem). The kept "
        "pixels are returned unchanged, bit for bit (of the image at the model's size); holes start from a smooth "
        "fill of their surroundings.\n\n" + HOW + "\n\n"
        "Outputs are named STEM_inpaint.png, or STEM_inpaint_J.png for -n N solutions. --grid shows per input: the "
        "input, the mask, the solutions. --json prints per solution the data-fit error (data_rmse: RMS difference "
        "on the kept pixels, grey levels) and the objective (-log p(y|x) - log p(x) per dimension in nats, the "
        "model's negative ELBO standing in for -log p(x))."
    ),
    epilog="Examples:\n\n  vdvae inpaint photo.png --mask hole.png -o filled.png\n\n"
    + EXAMPLES_TAIL.format(cmd="inpaint", opts="--mask hole.png").replace("photos/ --mask hole.png", "photos/ --mask masks/"),
)
def inpaint(
    images: Annotated[list[str], typer.Argument(metavar="IMG", help="Image files, folders, or - for stdin.",
                                                show_default=False)],
    mask: Annotated[str, typer.Option("--mask", metavar="MASK|DIR/", help="White = fill, black = keep; a folder: "
                                      "one mask per input name.", show_default=False)],
    num: NumOpt = 1,
    steps: StepsOpt = None,
    posterior: RestorePosteriorOpt = Posterior.sample,
    keep_layers: KeepLayersOpt = None,
    keep_res: KeepResOpt = None,
    temp: TempOpt = None,
    decoder_std: DecoderStdOpt = None,
    no_consistency: NoConsistencyOpt = False,
    output: OutOpt = None,
    grid: GridOpt = False,
    no_resize: NoResizeOpt = False,
    seed: SeedOpt = None,
    batch_size: BatchOpt = "auto",
    force: ForceOpt = False,
    skip_existing: SkipExistingOpt = False,
    model: ModelOpt = None,
    offline: OfflineOpt = False,
    device: DeviceOpt = "auto",
    dtype: RestoreDtypeOpt = "auto",
    compile: CompileOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    prior: PriorOpt = "auto",
) -> None:
    import numpy as np

    def prepare(run: Session, sources, size: int) -> dict[int, Any]:
        masks = mask_sources(mask, sources)
        single = len({m.name for m in masks}) == 1
        fills: dict[str, Any] = {}
        out: dict[int, Any] = {}
        for i, source in enumerate(sources):
            try:
                if masks[i].name not in fills:
                    fills[masks[i].name] = read_mask(masks[i], size)
                out[i] = fills[masks[i].name]
            except (ImageError, UsageError) as exc:
                if len(sources) == 1 or single:
                    raise
                run.input_failed(source.name, exc)
        return out

    def make_op(inputs: list[int], extra: dict[int, Any]):
        import torch

        from ..engine.restore import Inpaint

        keep = ~torch.from_numpy(np.stack([extra[k] for k in inputs]))
        return Inpaint(keep[:, None])

    def beside(row, fill):
        return [row, np.repeat((fill * 255).astype(np.uint8)[..., None], 3, axis=-1)]

    if mask.strip() == "-":  # collect_images would blame a terminal, whatever stdin is
        raise UsageError("--mask - : a mask is read from a file or a folder, not from stdin",
                         hint="save the mask as a PNG and give its path")
    _restore("inpaint", images=images, make_op=make_op,
             read_input=lambda run, s, size: _read_fitted(run, s, size, no_resize), beside=beside, settings={"mask": mask},
             prepare=prepare, check_size=None, num=num, steps=steps, decoder_std=decoder_std, keep_layers=keep_layers,
             keep_res=keep_res, posterior=posterior, temp=temp, no_consistency=no_consistency, output=output, grid=grid,
             seed=seed, batch_size=batch_size, force=force, skip_existing=skip_existing, model=model, offline=offline,
             device=device, dtype=dtype, compile=compile, json_out=json_out, quiet=quiet, prior=prior)


# --------------------------------------------------------------------------------------------------
# upscale


@command(
    "upscale",
    help=(
        "Upscale small images by --factor F to the model's size, with the model filling in the detail.\n\n"
        "Each IMG must be the model's size divided by F (8x8 for a 32x32 model at F = 4). The degradation "
        "assumed is area averaging: every pixel of IMG is the mean of an F x F block of the answer (PIL's BOX "
        "downscaling, torch's avg_pool2d). The answer is consistent with it: averaged back down and rounded, "
        "it equals IMG within one grey level (--no-consistency writes the decoder's image instead). --sigma adds "
        "noise to the model of the observation. Starts from a bicubic enlargement.\n\n" + HOW + "\n\n"
        "Outputs are named STEM_upscale.png (STEM_upscale_J.png for -n N). --grid shows per input: the input "
        "(enlarged with nearest neighbours), the solutions. --json adds data_rmse (RMS difference between the "
        "answer averaged down and IMG, grey levels) and the objective."
    ),
    epilog="Examples:\n\n  vdvae upscale small.png --factor 4 -o large.png\n\n"
    + EXAMPLES_TAIL.format(cmd="upscale", opts="--factor 4"),
)
def upscale(
    images: Annotated[list[str], typer.Argument(metavar="IMG", help="Image files, folders, or - for stdin.",
                                                show_default=False)],
    factor: Annotated[int, typer.Option("--factor", "-F", metavar="2|4|8", help="The scale factor.")] = 4,
    sigma: Annotated[float, typer.Option("--sigma", metavar="S", help="Noise in IMG (0-1 scale), besides 8-bit rounding.")] = 0.0,
    num: NumOpt = 1,
    steps: StepsOpt = None,
    posterior: RestorePosteriorOpt = Posterior.sample,
    keep_layers: KeepLayersOpt = None,
    keep_res: KeepResOpt = None,
    temp: TempOpt = None,
    decoder_std: DecoderStdOpt = None,
    no_consistency: NoConsistencyOpt = False,
    output: OutOpt = None,
    grid: GridOpt = False,
    seed: SeedOpt = None,
    batch_size: BatchOpt = "auto",
    force: ForceOpt = False,
    skip_existing: SkipExistingOpt = False,
    model: ModelOpt = None,
    offline: OfflineOpt = False,
    device: DeviceOpt = "auto",
    dtype: RestoreDtypeOpt = "auto",
    compile: CompileOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    prior: PriorOpt = "auto",
) -> None:
    import numpy as np

    if factor not in (2, 4, 8):
        raise UsageError(f"--factor must be 2, 4 or 8, got {factor}")
    check_sigma(sigma, zero_ok=True)

    def check_size(size: int) -> None:
        if size % factor:
            raise UsageError(f"the model's images are {size}x{size}, which --factor {factor} does not divide",
                             hint="choose a factor that divides the model's size")

    def read_small(run: Session, source, size: int):
        from ..base.images import read_image
        from ..base.safety import clean

        small = size // factor
        img = read_image(source, None)
        if img.shape[:2] != (small, small):
            h, w = img.shape[:2]
            raise ImageError(f"{clean(source.name)} is {w}x{h}, but upscaling by {factor} to this model's {size}x{size} "
                             f"takes {small}x{small} images",
                             hint=f"give {small}x{small} images, or another --factor")
        return img

    def make_op(inputs, extra):
        from ..engine.restore import AreaDownsample

        return AreaDownsample(factor, sigma)

    def beside(row, extra):
        return [np.repeat(np.repeat(row, factor, axis=0), factor, axis=1)]

    _restore("upscale", images=images, make_op=make_op, read_input=read_small, beside=beside,
             settings={"factor": factor, "sigma": sigma}, prepare=None, check_size=check_size, num=num, steps=steps,
             decoder_std=decoder_std, keep_layers=keep_layers, keep_res=keep_res, posterior=posterior, temp=temp,
             no_consistency=no_consistency, output=output, grid=grid, seed=seed, batch_size=batch_size, force=force,
             skip_existing=skip_existing, model=model, offline=offline, device=device, dtype=dtype, compile=compile,
             json_out=json_out, quiet=quiet, prior=prior)


# --------------------------------------------------------------------------------------------------
# denoise


@command(
    "denoise",
    help=(
        "Remove additive white Gaussian noise of standard deviation --sigma (0-1 scale: 0.1 is 25.5 grey levels, "
        "the literature's usual 25/255).\n\n" + HOW + "\n\n"
        "Outputs are named STEM_denoise.png (STEM_denoise_J.png for -n N). --grid shows per input: the input, the "
        "solutions. --json adds data_rmse (RMS difference from the input, grey levels: about 255 x sigma for a "
        "good answer) and the objective."
    ),
    epilog="Examples:\n\n  vdvae denoise noisy.png --sigma 0.1 -o clean.png\n\n"
    + EXAMPLES_TAIL.format(cmd="denoise", opts="--sigma 0.1"),
)
def denoise(
    images: Annotated[list[str], typer.Argument(metavar="IMG", help="Image files, folders, or - for stdin.",
                                                show_default=False)],
    sigma: Annotated[float, typer.Option("--sigma", metavar="S", help="The noise's standard deviation, 0-1 scale.",
                                         show_default=False)],
    num: NumOpt = 1,
    steps: StepsOpt = None,
    posterior: RestorePosteriorOpt = Posterior.sample,
    keep_layers: KeepLayersOpt = None,
    keep_res: KeepResOpt = None,
    temp: TempOpt = None,
    decoder_std: DecoderStdOpt = None,
    no_consistency: NoConsistencyOpt = False,
    output: OutOpt = None,
    grid: GridOpt = False,
    no_resize: NoResizeOpt = False,
    seed: SeedOpt = None,
    batch_size: BatchOpt = "auto",
    force: ForceOpt = False,
    skip_existing: SkipExistingOpt = False,
    model: ModelOpt = None,
    offline: OfflineOpt = False,
    device: DeviceOpt = "auto",
    dtype: RestoreDtypeOpt = "auto",
    compile: CompileOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    prior: PriorOpt = "auto",
) -> None:
    check_sigma(sigma)

    def make_op(inputs, extra):
        from ..engine.restore import Denoise

        return Denoise(sigma)

    _restore("denoise", images=images, make_op=make_op,
             read_input=lambda run, s, size: _read_fitted(run, s, size, no_resize), beside=_same_as_input,
             settings={"sigma": sigma}, prepare=None, check_size=None, num=num, steps=steps, decoder_std=decoder_std,
             keep_layers=keep_layers, keep_res=keep_res, posterior=posterior, temp=temp, no_consistency=no_consistency,
             output=output, grid=grid, seed=seed, batch_size=batch_size, force=force, skip_existing=skip_existing,
             model=model, offline=offline, device=device, dtype=dtype, compile=compile, json_out=json_out, quiet=quiet, prior=prior)


# --------------------------------------------------------------------------------------------------
# deblur


@command(
    "deblur",
    help=(
        "Undo a known blur: --blur gaussian:S is a Gaussian of standard deviation S pixels, as a circular "
        "convolution (the image wraps around at its edges); --sigma is the noise added after it (0-1 scale; "
        "8-bit rounding is always allowed for).\n\n" + HOW + " The data step is a Wiener-type solution in the "
        "Fourier domain.\n\n"
        "Outputs are named STEM_deblur.png (STEM_deblur_J.png for -n N). --grid shows per input: the input, the "
        "solutions. --json adds data_rmse (RMS difference between the answer blurred again and the input, grey "
        "levels) and the objective."
    ),
    epilog="Examples:\n\n  vdvae deblur blurred.png --blur gaussian:1.5 --sigma 0.01 -o sharp.png\n\n"
    + EXAMPLES_TAIL.format(cmd="deblur", opts="--blur gaussian:1.5"),
)
def deblur(
    images: Annotated[list[str], typer.Argument(metavar="IMG", help="Image files, folders, or - for stdin.",
                                                show_default=False)],
    blur: Annotated[str, typer.Option("--blur", metavar="gaussian:S", help="The blur: a Gaussian of standard "
                                      "deviation S pixels.", show_default=False)],
    sigma: Annotated[float, typer.Option("--sigma", metavar="S", help="Noise added after the blur (0-1 scale).")] = 0.0,
    num: NumOpt = 1,
    steps: StepsOpt = None,
    posterior: RestorePosteriorOpt = Posterior.sample,
    keep_layers: KeepLayersOpt = None,
    keep_res: KeepResOpt = None,
    temp: TempOpt = None,
    decoder_std: DecoderStdOpt = None,
    no_consistency: NoConsistencyOpt = False,
    output: OutOpt = None,
    grid: GridOpt = False,
    no_resize: NoResizeOpt = False,
    seed: SeedOpt = None,
    batch_size: BatchOpt = "auto",
    force: ForceOpt = False,
    skip_existing: SkipExistingOpt = False,
    model: ModelOpt = None,
    offline: OfflineOpt = False,
    device: DeviceOpt = "auto",
    dtype: RestoreDtypeOpt = "auto",
    compile: CompileOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    prior: PriorOpt = "auto",
) -> None:
    std = parse_blur(blur)
    check_sigma(sigma, zero_ok=True)

    def check_size(size: int) -> None:
        from ..engine.restore import gaussian_kernel

        width = gaussian_kernel(std).shape[0]
        if width > size:
            raise UsageError(f"--blur {blur}: the kernel is {width} pixels wide, wider than the model's {size}x{size} "
                             "images", hint=f"use a standard deviation of at most {(size - 1) // 6} pixels for this model")

    def make_op(inputs, extra):
        from ..engine.restore import GaussianBlur

        return GaussianBlur(std, sigma)

    _restore("deblur", images=images, make_op=make_op,
             read_input=lambda run, s, size: _read_fitted(run, s, size, no_resize), beside=_same_as_input,
             settings={"blur": f"gaussian:{std:g}", "sigma": sigma}, prepare=None, check_size=check_size, num=num, steps=steps,
             decoder_std=decoder_std, keep_layers=keep_layers, keep_res=keep_res, posterior=posterior, temp=temp,
             no_consistency=no_consistency, output=output, grid=grid, seed=seed, batch_size=batch_size, force=force,
             skip_existing=skip_existing, model=model, offline=offline, device=device, dtype=dtype, compile=compile,
             json_out=json_out, quiet=quiet, prior=prior)
