"""``vdvae sample | reconstruct | mix | encode | decode``: images from a VDVAE's latent hierarchy.

Each command checks its options and its output first, loads the model, then runs one ``ops``
function per batch. Seeds: image ``i`` of a run depends only on ``(--seed, i)``, whatever
``--batch-size`` is. Temperatures (``--temp``) apply to every layer drawn from the prior.
"""

from __future__ import annotations

import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional, Sequence

import typer

from ._app import command, write_stdout
from ._run import (
    BatchOpt, NoResizeOpt, Session, check_batch_size, check_keep_args, check_output_temp, check_positive, collect_inputs,
    MAX_IMAGES, MAX_VARIATIONS, SkipExistingOpt, draws_noise, keep_count, plan_images, read_shard, refuse_distributed, stdout_is_tty,
)
from .options import CompileOpt, DeviceOpt, DtypeOpt, ForceOpt, JsonOpt, ModelOpt, OfflineOpt, PriorOpt, QuietOpt, SeedOpt
from ..base.errors import CheckpointError, LatentsError, OutputError, UsageError
from ..engine.temperature import parse_temperature_spec


class Posterior(str, Enum):
    sample = "sample"
    mean = "mean"


class LatentFormat(str, Enum):
    safetensors = "safetensors"
    npz = "npz"


TempOpt = Annotated[Optional[str], typer.Option(
    "--temp", "-t", metavar="T|SPEC",
    help="Prior temperature of the free layers (0 to 10): one number, or a spec such as "
    "'0.8,0-5=1.0,r32=0.5,12=0.3' (layer N, range A-B or A-, rN = every layer at resolution N, "
    "A-B=t0:t1 a linear ramp; later entries win). Layer numbers as in `vdvae info`. "
    "Default: the temperature the model file recommends (`vdvae info` shows it), else 1.0.",
    show_default=False,
)]


def resolve_temperatures(temp: str | None, output_temp: float | None, vae) -> tuple[str, list[float], float]:
    """(the --temp spec in force, its per-layer temperatures, the --output-temp in force): each as
    given, else as the model file recommends, else 1.0 (the model's own distributions)."""
    spec = temp if temp is not None else (vae.default_temperature or "1.0")
    try:
        temps = parse_temperature_spec(spec, vae.cfg)
    except UsageError as exc:
        if temp is not None:
            raise
        raise _unusable("temperature", spec, exc, "--temp") from None
    if output_temp is not None or vae.default_output_temperature is None:
        return spec, temps, 1.0 if output_temp is None else output_temp
    try:
        pixel = float(vae.default_output_temperature)
        check_output_temp(pixel)
    except (UsageError, ValueError) as exc:
        raise _unusable("output temperature", vae.default_output_temperature, exc, "--output-temp") from None
    return spec, temps, pixel


def _unusable(what: str, value: str, exc: Exception, option: str) -> CheckpointError:
    return CheckpointError(f"the model's recommended {what} {value!r} is unusable: {exc}", hint=f"pass {option}")


OutputTempOpt = Annotated[Optional[float], typer.Option(
    "--output-temp", metavar="T", help="Pixel (DMoL) sampling temperature (0 to 10): 1 as the model samples, 0 the "
    "most likely pixels. "
    "Default: what the model file recommends (`vdvae info` shows it), else 1.0.",
    show_default=False,
)]
OutOpt = Annotated[Optional[str], typer.Option(
    "--output", "-o", metavar="FILE|DIR/|-",
    help="FILE.png (one image, or the grid), DIR/ (one PNG per image), or - for stdout. "
    "Default: stdout when it is not a terminal.",
    show_default=False,
)]
GridOpt = Annotated[bool, typer.Option("--grid", help="Tile all images into one image, in index order.")]
ReconstructGridOpt = Annotated[bool, typer.Option(
    "--grid", help="Tile into one image: each input, then its reconstruction (pairs, in input order).")]
MixGridOpt = Annotated[bool, typer.Option(
    "--grid", help="Tile into one image: with B, A, B and their mix for each B; without B, A first, then its "
    "N completions (N + 1 tiles).")]
KeepLayersOpt = Annotated[Optional[str], typer.Option(
    "--keep-layers", "-k", metavar="K|all", help="Keep the first K latent layers (a number, or 'all').", show_default=False,
)]
KeepResOpt = Annotated[Optional[int], typer.Option(
    "--keep-res", metavar="R", help="Keep every latent layer at resolution <= R (a model resolution).", show_default=False,
)]
ReadjustOpt = Annotated[bool, typer.Option(
    "--readjust-bn",
    help="NVAE: before sampling, fit BatchNorm statistics to prior samples at --temp (train-mode passes "
    "of 16, as the official sampler does); kept in the cache, so a later run with the same model and "
    "temperatures starts at once.",
)]
ReadjustItersOpt = Annotated[int, typer.Option(
    "--readjust-iters", help="Passes for --readjust-bn (the official sampler uses 500).", min=1, max=100_000,
)]
PosteriorOpt = Annotated[Posterior, typer.Option(
    "--posterior", help="Take kept latents as the posterior mean (deterministic) or a posterior sample.",
)]


def prior_facts(top, lead: int | None) -> dict | None:
    """Which learned prior drew layers of an output (for --json): None when none did, e.g. when it
    covers no layer past the ``lead`` kept ones, or draws only from nothing given (an exemplar prior)."""
    if top is None or lead is None or not top.completes(lead):
        return None
    return {"kind": top.prior.kind, "layers": top.layers, "path": top.source}


def readjust_if_asked(run: Session, vae, temps: list[float], enabled: bool, iters: int) -> None:
    """--readjust-bn: fit the model's BatchNorm statistics to prior passes at ``temps`` (NVAE)."""
    if enabled:
        from ..engine.registry import family_of
        from ..modelfiles.paths import cache_dir

        run.announce()  # the model's line first: the re-adjustment is about that model
        run.info(family_of(vae).readjust_bn(vae, temps, cache_dir(), iters=iters))


# --------------------------------------------------------------------------------------------------
# sample


@command(
    "sample",
    help=(
        "Draw unconditional samples from the model's prior.\n\n"
        "Image i of a run depends only on (--seed, i): the same with any --batch-size. Without --seed a seed "
        "is chosen and printed on stderr (and in --json), so the run can be repeated."
    ),
    epilog="Examples:\n\n"
    "  vdvae sample --model ffhq256 --temp 0.6 -o face.png\n\n"
    "  vdvae sample -n 16 --grid --seed 7 -o grid.png\n\n"
    "  vdvae sample -n 100 --temp '0.9,r32=0.5' --batch-size 25 -o samples/\n\n"
    "  vdvae sample -n 1 -o - | vdvae reconstruct - --keep-layers 5 -o out.png\n\n"
    "  torchrun --nproc-per-node 4 -m vdvae_cli sample -n 100000 --seed 1 --dtype bf16 -o samples/",
)
def sample(
    num: Annotated[int, typer.Option("--num", "-n", metavar="N", help="How many images.")] = 1,
    temp: TempOpt = None,
    output_temp: OutputTempOpt = None,
    output: OutOpt = None,
    grid: GridOpt = False,
    seed: SeedOpt = None,
    batch_size: BatchOpt = "auto",
    readjust_bn: ReadjustOpt = False,
    readjust_iters: ReadjustItersOpt = 500,
    force: ForceOpt = False,
    skip_existing: SkipExistingOpt = False,
    model: ModelOpt = None,
    offline: OfflineOpt = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "fp32",
    compile: CompileOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    prior: PriorOpt = "auto",
) -> None:
    from ..engine import ops
    from ..base.images import numbered_names

    check_positive("-n", num, MAX_IMAGES)
    check_batch_size(batch_size)
    check_output_temp(output_temp)
    writer = plan_images(output, numbered_names("sample", num), grid=grid, force=force, json_out=json_out,
                         skip_existing=skip_existing)
    run = Session(quiet=quiet, json_out=json_out)
    vae = run.load_model(model, device, dtype, compile=compile, offline=offline, latents=False)
    top = run.load_prior(prior)
    if temp is not None and vae.cfg.n_layers == 0:
        run.info(f"--temp {temp} does not apply: model {vae.cfg.name} has no latent layers (--output-temp does)")
    temp, temps, output_temp = resolve_temperatures(temp, output_temp, vae)
    readjust_if_asked(run, vae, temps, readjust_bn, readjust_iters)
    seed = run.seed(seed, random=draws_noise(temps, output_temp))

    def make(indices: list[int]):
        return ops.sample(vae, len(indices), temperatures=temps, output_temperature=output_temp,
                          noise=run.noise(seed, indices), prior=top)

    def record(i: int) -> dict:
        return {"index": i, "input": None, "seed": seed, "model": vae.cfg.name, "temp": temp, "temperatures": temps,
                "output_temp": output_temp, "prior": prior_facts(top, 0)}

    run.generate(writer, num, batch_size, make, record, "sampling")


# --------------------------------------------------------------------------------------------------
# reconstruct


@command(
    "reconstruct",
    help=(
        "Encode each image, keep its first K latent layers, sample the rest from the prior.\n\n"
        "--keep-layers all (the default) is a full reconstruction; fewer layers keep the coarse content and "
        "let the model re-imagine the details at --temp. Image i depends only on (--seed, i).\n\n"
        "In a folder, outputs are named STEM_recon.png (with an index in front when that would not sort in "
        "input order)."
    ),
    epilog="Examples:\n\n"
    "  vdvae reconstruct photo.png -o recon.png\n\n"
    "  vdvae reconstruct photos/ --keep-layers 20 --temp 0.8 -o recon/\n\n"
    "  vdvae reconstruct face.jpg --keep-res 16 -o coarse.png\n\n"
    "  cat photo.png | vdvae reconstruct - --posterior sample --output-temp 0 > recon.png",
)
def reconstruct(
    images: Annotated[list[str], typer.Argument(
        metavar="IMG", help="Image files, folders, or - for an image on stdin.", show_default=False)],
    keep_layers: KeepLayersOpt = None,
    keep_res: KeepResOpt = None,
    posterior: PosteriorOpt = Posterior.mean,
    temp: TempOpt = None,
    output_temp: OutputTempOpt = None,
    output: OutOpt = None,
    grid: ReconstructGridOpt = False,
    no_resize: NoResizeOpt = False,
    seed: SeedOpt = None,
    batch_size: BatchOpt = "auto",
    readjust_bn: ReadjustOpt = False,
    readjust_iters: ReadjustItersOpt = 500,
    force: ForceOpt = False,
    skip_existing: SkipExistingOpt = False,
    model: ModelOpt = None,
    offline: OfflineOpt = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "fp32",
    compile: CompileOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    prior: PriorOpt = "auto",
) -> None:
    from ..engine import ops
    from ..base.images import derived_names, read_image

    check_keep_args(keep_layers, keep_res)
    check_batch_size(batch_size)
    check_output_temp(output_temp)
    sources = collect_inputs(images)
    writer = plan_images(output, derived_names([s.stem for s in sources], "recon"), grid=grid, force=force,
                         json_out=json_out, skip_existing=skip_existing)
    run = Session(quiet=quiet, json_out=json_out)
    vae = run.load_model(model, device, dtype, compile=compile, offline=offline)
    top = run.load_prior(prior)
    keep = keep_count(keep_layers, keep_res, vae.cfg, default=vae.cfg.n_layers)
    temp, temps, output_temp = resolve_temperatures(temp, output_temp, vae)
    readjust_if_asked(run, vae, temps, readjust_bn, readjust_iters)
    mine, pixels = read_shard(run, sources, vae.cfg.image_size, no_resize, skip=writer.existing)
    seed = run.seed(seed, random=draws_noise(temps[keep:], output_temp, posterior.value))
    if grid:  # each input beside its reconstruction
        writer.show_beside(lambda i: [read_image(sources[i], vae.cfg.image_size, resize=not no_resize)],
                           per_output=2, caption="{n} input/reconstruction pair{s}")

    def make(indices: list[int]):
        return ops.reconstruct(vae, pixels(indices), keep_layers=keep, posterior=posterior.value,
                               temperatures=temps, output_temperature=output_temp, noise=run.noise(seed, indices), prior=top)

    def record(i: int) -> dict:
        return {"index": i, "input": sources[i].name, "keep_layers": keep, "posterior": posterior.value,
                "seed": seed, "model": vae.cfg.name, "temp": temp, "temperatures": temps, "output_temp": output_temp,
                "prior": prior_facts(top, keep)}

    run.generate(writer, len(sources), batch_size, make, record, "reconstructing", indices=mine)


# --------------------------------------------------------------------------------------------------
# mix


@command(
    "mix",
    help=(
        "Latent-prefix mixing: the first K layers from A, the rest from B given that prefix.\n\n"
        "B's remaining layers are inferred from its posterior conditioned on A's prefix, so the completion "
        "fits. With no B they are sampled from the prior at --temp, and -n N shows one prefix "
        "with N completions. With --posterior mean (the default) every output shares exactly one prefix of A. "
        "--keep-layers all gives A's reconstruction, --keep-layers 0 gives B's.\n\n"
        "In a folder, outputs are named A_B_mix.png, or A_mix_00000.png for variations."
    ),
    epilog="Examples:\n\n"
    "  vdvae mix a.png b.png --keep-layers 10 -o mixed.png\n\n"
    "  vdvae mix a.png others/ --keep-res 8 -o mixes/\n\n"
    "  vdvae mix a.png --keep-res 16 -n 16 --temp 0.7 --grid -o variations.png",
)
def mix(
    a: Annotated[str, typer.Argument(
        metavar="A", help="Image A: its first K latent layers are kept (a file, or -).", show_default=False)],
    b: Annotated[Optional[list[str]], typer.Argument(
        metavar="B", show_default=False,
        help="Images B (files, folders, -): each gives the remaining layers. None: sample them from the prior.")] = None,
    keep_layers: KeepLayersOpt = None,
    keep_res: KeepResOpt = None,
    n_variations: Annotated[int, typer.Option(
        "--num", "-n", "--n-variations", metavar="N",
        help="Without B: how many completions of A's prefix to draw (-n as in sample).")] = 1,
    posterior: PosteriorOpt = Posterior.mean,
    temp: TempOpt = None,
    output_temp: OutputTempOpt = None,
    output: OutOpt = None,
    grid: MixGridOpt = False,
    no_resize: NoResizeOpt = False,
    seed: SeedOpt = None,
    batch_size: BatchOpt = "auto",
    readjust_bn: ReadjustOpt = False,
    readjust_iters: ReadjustItersOpt = 500,
    force: ForceOpt = False,
    skip_existing: SkipExistingOpt = False,
    model: ModelOpt = None,
    offline: OfflineOpt = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "fp32",
    compile: CompileOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    prior: PriorOpt = "auto",
) -> None:
    import torch

    from ..engine import ops
    from ..base.images import derived_names, numbered_names, read_image

    check_keep_args(keep_layers, keep_res)
    if keep_layers is None and keep_res is None:
        raise UsageError("mix needs --keep-layers K or --keep-res R (how much of A to keep)")
    check_positive("-n", n_variations, MAX_VARIATIONS)
    check_batch_size(batch_size)
    check_output_temp(output_temp)
    if b and n_variations != 1:
        raise UsageError("-n draws completions from the prior, so it takes no B images",
                         hint="drop B, or drop -n")
    if a == "-" and b and "-" in b:
        raise UsageError("'-' (stdin) is given more than once", hint="stdin can be read only once")
    a_sources = collect_inputs([a])
    if len(a_sources) != 1:
        raise UsageError(f"A must be one image, but {a} holds {len(a_sources)}", hint="give one file as A")
    source_a = a_sources[0]
    b_sources = collect_inputs(b) if b else []
    names: Sequence[str]
    if b_sources:
        names = derived_names([f"{source_a.stem}_{s.stem}" for s in b_sources], "mix")
    else:
        names = numbered_names(f"{source_a.stem}_mix", n_variations)
    writer = plan_images(output, names, grid=grid, force=force, json_out=json_out, skip_existing=skip_existing)
    run = Session(quiet=quiet, json_out=json_out)
    vae = run.load_model(model, device, dtype, compile=compile, offline=offline)
    top = run.load_prior(prior)
    keep = keep_count(keep_layers, keep_res, vae.cfg, default=0)
    temp, temps, output_temp = resolve_temperatures(temp, output_temp, vae)
    readjust_if_asked(run, vae, temps, readjust_bn, readjust_iters)
    size, resize = vae.cfg.image_size, not no_resize
    image_a = read_image(source_a, size, resize=resize, notify=run.info)
    pixels_a = torch.from_numpy(image_a[None].copy())
    total = len(b_sources) or n_variations
    mine, pixels_b = (read_shard(run, b_sources, size, no_resize, skip=writer.existing) if b_sources
                      else (None, None))
    seed = run.seed(seed, random=draws_noise([] if b_sources else temps[keep:], output_temp, posterior.value))
    if grid:  # A, B and their mix side by side; or A before its variations
        if b_sources:
            writer.show_beside(lambda i: [image_a, read_image(b_sources[i], size, resize=resize)],
                               per_output=3, caption="{n} A/B/mix triple{s}")
        else:
            writer.show_beside(None, lead=[image_a], caption="A and {n} completion{s} of its prefix")

    # A's prefix is encoded once and shared by every output row (its own noise stream, index -1).
    prefix = ops.encode(vae, pixels_a, posterior=posterior.value, noise=run.noise(seed, [-1]), n_layers=keep)

    def make(indices: list[int]):
        rest = pixels_b(indices) if pixels_b is not None else None
        return ops.mix(vae, prefix, rest, n=len(indices), posterior=posterior.value, temperatures=temps,
                       output_temperature=output_temp, noise=run.noise(seed, indices), prior=top)

    def record(i: int) -> dict:
        return {"index": i, "input": source_a.name, "input_b": b_sources[i].name if b_sources else None,
                "keep_layers": keep, "posterior": posterior.value, "seed": seed, "model": vae.cfg.name,
                "temp": temp, "temperatures": temps, "output_temp": output_temp}

    run.generate(writer, total, batch_size, make, record, "mixing", indices=mine)


# --------------------------------------------------------------------------------------------------
# encode / decode


@command(
    "encode",
    help=(
        "Encode images to a latents file: one (N, Z, r, r) tensor per latent layer, in safetensors.\n\n"
        "Tensors are named layer.00, layer.01, ... in decoder order, as `vdvae info` numbers the layers. The "
        "metadata holds the model's identity, the image names and the posterior kind, so `vdvae decode` can "
        "check that the file belongs to its model. Edit the tensors with any tool (keep the metadata); a "
        "deleted layer is sampled from the prior when decoding.\n\n"
        "--format npz (the default for -o FILE.npz) writes one flat (N, D) float32 array of the kept layers "
        "instead, with the layer shapes and the model's fingerprint, for tools that want one vector per image."
    ),
    epilog="Examples:\n\n"
    "  vdvae encode a.png b.png -o latents.safetensors\n\n"
    "  vdvae encode photos/ --posterior sample --seed 3 -o photos.safetensors\n\n"
    "  vdvae encode face.png -o - | vdvae decode - --keep-layers 20 -o face2.png\n\n"
    "  vdvae encode stimuli/ --model imagenet64 --keep-layers 31 --posterior sample --seed 0 -o train.npz\n\n"
    "  python -c \"from safetensors.torch import load_file; print(load_file('latents.safetensors').keys())\"",
)
def encode(
    images: Annotated[list[str], typer.Argument(
        metavar="IMG", help="Image files, folders, or - for an image on stdin.", show_default=False)],
    output: Annotated[Optional[str], typer.Option(
        "--output", "-o", metavar="FILE|-", help="Latents file (.safetensors or .npz), or - for stdout. Default: stdout "
        "when it is not a terminal.", show_default=False)] = None,
    fmt: Annotated[Optional[LatentFormat], typer.Option(
        "--format", help="safetensors (one tensor per layer) or npz (one flat (N, D) array). Default: from the -o "
        "suffix, else safetensors.", show_default=False)] = None,
    keep_layers: KeepLayersOpt = None,
    keep_res: KeepResOpt = None,
    posterior: PosteriorOpt = Posterior.mean,
    no_resize: NoResizeOpt = False,
    seed: SeedOpt = None,
    batch_size: BatchOpt = "auto",
    force: ForceOpt = False,
    model: ModelOpt = None,
    offline: OfflineOpt = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "fp32",
    compile: CompileOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    import torch

    from ..engine.latents import latents_bytes
    from ..tools.latents_npz import npz_bytes
    from ..engine import ops

    check_batch_size(batch_size)
    check_keep_args(keep_layers, keep_res)
    refuse_distributed("encode")
    sources = collect_inputs(images)
    target = _latents_target(output, force, json_out, fmt)
    if fmt is None:
        fmt = LatentFormat.npz if target is not None and target.suffix.lower() == ".npz" else LatentFormat.safetensors
    run = Session(quiet=quiet, json_out=json_out)
    vae = run.load_model(model, device, dtype, compile=compile, offline=offline)
    keep = keep_count(keep_layers, keep_res, vae.cfg, default=vae.cfg.n_layers)
    if keep == 0:
        raise UsageError("--keep-layers 0 would encode nothing", hint="keep at least one layer")
    mine, pixels = read_shard(run, sources, vae.cfg.image_size, no_resize)
    seed = run.seed(seed) if posterior is Posterior.sample else seed
    parts: list[list[torch.Tensor]] = []
    run.announce()

    def encode_batch(indices: list[int]) -> list[torch.Tensor]:
        noise = run.noise(seed, indices) if seed is not None else None
        return [z.cpu() for z in ops.encode(vae, pixels(indices), posterior=posterior.value, noise=noise, n_layers=keep)]

    with run.progress(len(mine), "encoding") as advance:
        for indices, zs in run.batches(mine, batch_size, encode_batch):
            parts.append(zs)
            advance(len(indices))
    layers = [torch.cat([p[i] for p in parts]) for i in range(keep)]
    names = [sources[i].name for i in mine]
    from ..engine.statedict import digest_of

    if fmt is LatentFormat.npz:
        blob = npz_bytes(layers, vae.cfg, names, posterior=posterior.value, weights=digest_of(vae))
    else:
        blob = latents_bytes(layers, vae.cfg, names, posterior=posterior.value, seed=seed, weights=digest_of(vae),
                             metadata={"model_ref": run.model_ref or ""})
    if target is None:
        write_stdout(blob)
        where = "-"
    else:
        from ..base.atomic import atomic_write_bytes

        atomic_write_bytes(target, blob, force=force)
        where = str(target)
    run.info(f"wrote latents of {len(names)} image{'s' if len(names) != 1 else ''} ({keep} layers, "
             f"{len(blob) / 1e6:.2f} MB) to {where}")
    if json_out:
        run.emit({"type": "latents", "path": where, "inputs": names, "layers": keep, "format": fmt.value, "posterior": posterior.value,
                  "seed": seed, "model": vae.cfg.name, "bytes": len(blob),
                  "seconds": round(time.perf_counter() - run.started, 4)})
    run.finish(len(sources))


@command(
    "decode",
    help=(
        "Decode a latents file to images: its first K layers are kept, the rest sampled at --temp.\n\n"
        "The file (safetensors or npz from `vdvae encode`) must come from the same model (its fingerprint is "
        "checked); layers it does not hold are sampled from the prior. In a folder, outputs are named "
        "after the encoded images: STEM_decoded.png."
    ),
    epilog="Examples:\n\n"
    "  vdvae decode latents.safetensors -o decoded/\n\n"
    "  vdvae decode latents.safetensors --keep-layers 10 --temp 0.7 --seed 1 -o decoded/\n\n"
    "  vdvae encode face.png -o - | vdvae decode - --keep-res 16 -o face2.png",
)
def decode(
    latents: Annotated[str, typer.Argument(
        metavar="LATENTS", help="A latents file from `vdvae encode`, or - for stdin.", show_default=False)],
    keep_layers: KeepLayersOpt = None,
    keep_res: KeepResOpt = None,
    temp: TempOpt = None,
    output_temp: OutputTempOpt = None,
    output: OutOpt = None,
    grid: GridOpt = False,
    seed: SeedOpt = None,
    batch_size: BatchOpt = "auto",
    readjust_bn: ReadjustOpt = False,
    readjust_iters: ReadjustItersOpt = 500,
    force: ForceOpt = False,
    skip_existing: SkipExistingOpt = False,
    model: ModelOpt = None,
    offline: OfflineOpt = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "fp32",
    compile: CompileOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    prior: PriorOpt = "auto",
) -> None:
    from ..engine import ops
    from ..base.images import derived_names
    from ..engine.latents import load_latents
    from ..tools.latents_npz import is_npz, load_npz_latents

    check_keep_args(keep_layers, keep_res)
    check_batch_size(batch_size)
    check_output_temp(output_temp)
    data, label = _read_latents_bytes(latents)
    run = Session(quiet=quiet, json_out=json_out)
    vae = run.load_model(model, device, dtype, compile=compile, offline=offline)
    top = run.load_prior(prior)
    read = load_npz_latents if is_npz(data) else load_latents
    from ..engine.statedict import digest_of

    content = read(data, vae.cfg, label=label, weights=digest_of(vae))
    keep = keep_count(keep_layers, keep_res, vae.cfg, default=vae.cfg.n_layers)
    temp, temps, output_temp = resolve_temperatures(temp, output_temp, vae)
    readjust_if_asked(run, vae, temps, readjust_bn, readjust_iters)
    writer = plan_images(output, derived_names([Path(n).stem or "stdin" for n in content.names], "decoded"),
                         grid=grid, force=force, json_out=json_out, skip_existing=skip_existing)
    layers = [z if i < keep else None for i, z in enumerate(content.layers)]
    # what the record says came from the file: every layer it gave, and keep_layers only where those
    # are the first K (a file without some layer, or an npz of K layers, leaves the rest to the prior)
    given_layers = [i for i, z in enumerate(layers) if z is not None]
    kept = len(given_layers) if given_layers == list(range(len(given_layers))) else None
    seed = run.seed(seed, random=draws_noise([t for t, z in zip(temps, layers) if z is None], output_temp))

    def make(indices: list[int]):
        given = [None if z is None else z[indices] for z in layers]
        return ops.decode(vae, given, n=len(indices), temperatures=temps, output_temperature=output_temp,
                          noise=run.noise(seed, indices), prior=top)

    def record(i: int) -> dict:
        return {"index": i, "input": content.names[i], "latents": label, "keep_layers": kept,
                "layers_from_latents": given_layers, "seed": seed,
                "model": vae.cfg.name, "temp": temp, "temperatures": temps, "output_temp": output_temp}

    run.generate(writer, content.n, batch_size, make, record, "decoding")


# --------------------------------------------------------------------------------------------------
# helpers


def _latents_target(output: str | None, force: bool, json_out: bool,
                    fmt: LatentFormat | None = None) -> Path | None:
    """The latents file to write, or None for stdout; checked before any work."""
    from ..base.images import IMAGE_SUFFIXES, check_output_file

    if output is None or output == "-":
        if json_out:
            raise UsageError("--json prints results on stdout, so the latents need -o FILE.safetensors (or .npz)")
        if getattr(sys.stdout, "closed_stream", False):
            raise OutputError("cannot write to stdout: it is closed",
                              hint="redirect stdout to a file, or write to a file with -o")
        if stdout_is_tty():
            if output is None:
                raise UsageError("no -o given and stdout is a terminal",
                                 hint="add -o latents.safetensors, or redirect: ... > latents.safetensors")
            raise OutputError("refusing to write binary latents to a terminal",
                              hint="redirect stdout (... -o - > latents.safetensors) or give -o FILE")
        return None
    target = Path(output)
    suffix = target.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        raise UsageError(f"-o {output}: latents are written as a .safetensors file, not an image",
                         hint="e.g. -o latents.safetensors")
    if suffix not in (".safetensors", ".npz"):  # z.txt would get binary safetensors under a text name
        raise UsageError(f"-o {output}: a latents file ends in .safetensors or .npz",
                         hint="e.g. -o latents.safetensors, or -o latents.npz for one flat array")
    if fmt is not None and suffix != f".{fmt.value}":
        raise UsageError(f"-o {output} with --format {fmt.value}: the file name says {suffix[1:]}",
                         hint=f"name it with .{fmt.value}, or leave --format out")
    check_output_file(target, force)
    return target


def _read_latents_bytes(arg: str) -> tuple[bytes, str]:
    if arg == "-":
        stream = getattr(sys.stdin, "buffer", None)
        if stream is None or sys.stdin.isatty():
            raise UsageError("'-' reads latents from stdin, but stdin is a terminal",
                             hint="pipe them in: vdvae encode img.png -o - | vdvae decode -")
        from ..base.images import read_stream

        def looks(head: bytes) -> str | None:
            return None if len(head) >= 9 and head[8:9] == b"{" else "it does not start like a safetensors file"

        data = read_stream(stream, "stdin", check=looks, what="latents", error=LatentsError)
        if not data:
            raise LatentsError("no latents on stdin (it was empty)")
        return data, "stdin"
    from ..base.safety import MAX_STDIN_BYTES, available_memory, clean, human_bytes

    path = Path(arg)
    label = clean(arg)
    try:
        if not path.is_file():
            raise LatentsError(f"no such file: {label}" if not path.exists() else f"{label} is not a file")
        size = path.stat().st_size
        free = available_memory()
        if size > max(MAX_STDIN_BYTES, (free or 0) // 2):
            raise LatentsError(f"{label} is {human_bytes(size)}, more than this process can hold "
                               f"({human_bytes(free)} available)")
        return path.read_bytes(), arg
    except OSError as exc:
        raise LatentsError(f"cannot read {label}: {exc.strerror or exc}") from None
