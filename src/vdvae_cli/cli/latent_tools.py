"""``vdvae interpolate | ood | fid``: what people do with a hierarchical VAE's latents besides sampling.

Each command checks its options and outputs first, loads the model, then calls one library function
per batch (:mod:`vdvae_cli.tools.interpolate`, :mod:`vdvae_cli.tools.ood`, :mod:`vdvae_cli.tools.fid`).
"""

from __future__ import annotations

import math
import time
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, Sequence

import typer

from ._app import command, out
from ._run import (
    BatchOpt, NoResizeOpt, Session, check_batch_size, check_keep_args, check_output_temp, check_positive,
    collect_inputs, draws_noise, keep_count, plan_images, read_shard, refuse_distributed, MAX_FRAMES,
    MAX_IMPORTANCE_SAMPLES, MAX_SCALE, MAX_STEPS, MAX_VARIATIONS,
)
from .generate import (
    OutputTempOpt, Posterior, PosteriorOpt, ReadjustItersOpt, ReadjustOpt, TempOpt, readjust_if_asked,
    resolve_temperatures,
)
from .options import CompileOpt, DeviceOpt, DtypeOpt, ForceOpt, JsonOpt, ModelOpt, OfflineOpt, PriorOpt, QuietOpt, SeedOpt
from ..base.errors import UsageError
from ..base.safety import MAX_SEED, MAX_TEMPERATURE
from ..base.images import ImageWriter

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ..engine.interface import FamilyConfig

ANIMATIONS = {".gif": "GIF", ".webp": "WEBP"}
LN2 = math.log(2)


class Method(str, Enum):
    slerp = "slerp"
    lerp = "lerp"


class Rest(str, Enum):
    held = "held"
    resample = "resample"


class Score(str, Enum):
    llr = "llr"
    complexity = "complexity"


PathLayersOpt = Annotated[Optional[str], typer.Option(
    "--keep-layers", "-k", metavar="K|all", help="Interpolate the first K latent layers (a number, or 'all').",
    show_default=False,
)]
PathResOpt = Annotated[Optional[int], typer.Option(
    "--keep-res", metavar="R", help="Interpolate every latent layer at resolution <= R (a model resolution).",
    show_default=False,
)]


# --------------------------------------------------------------------------------------------------
# interpolate


class FramesWriter(ImageWriter):
    """An :class:`ImageWriter` for interpolation frames: a grid has one row per segment, a .gif or
    .webp file is an animation, and every frame can be enlarged (nearest neighbour) first."""

    def __init__(self, base: ImageWriter, *, columns: int, scale: int = 1, animation: str | None = None,
                 fps: float = 12.0):
        super().__init__(base.kind, base.target, base.names, grid=base.grid, force=base.force, stdout=base.stdout,
                         fmt=base.fmt)
        self.columns, self.scale, self.animation, self.fps = columns, scale, animation, fps

    def _enlarge(self, images: Sequence["np.ndarray"]) -> list["np.ndarray"]:
        import numpy as np

        s = self.scale
        return [np.asarray(img) if s == 1 else np.asarray(img).repeat(s, axis=0).repeat(s, axis=1) for img in images]

    def write(self, indices: Sequence[int], images: Sequence["np.ndarray"]) -> list[tuple[int, str]]:
        return super().write(indices, self._enlarge(images))

    def check_size(self, image_size: int) -> None:
        """Refuse, before any work, a grid or animation whose frames would not fit in memory: they are
        all held until the file is encoded (frames to a folder are written as they are made)."""
        from ..base.safety import available_memory, human_bytes

        side = image_size * self.scale
        super().check_size(side)
        if self.animation is None and not self.grid:
            return
        need = 3 * len(self.names) * side * side * 3  # the frames, the encoder's copy and its output
        free = available_memory()
        if free is not None and need > free // 2:
            what = f"a {self.animation} of" if self.animation else "a grid of"
            raise UsageError(f"{what} {len(self.names):,} frames of {side}x{side} needs about {human_bytes(need)} "
                             f"of memory; {human_bytes(free)} is available",
                             hint="write the frames to a folder (-o DIR/), or use fewer --steps or a smaller --scale")

    def _encode_held(self, order: list[int], images: list["np.ndarray"]) -> bytes:
        from ..base.images import encode_image, make_grid

        if self.animation is not None:
            return encode_animation(images, self.animation, self.fps)
        if self.grid:
            return encode_image(make_grid(images, columns=self.columns), self.fmt)
        return super()._encode_held(order, images)


def encode_animation(frames: Sequence["np.ndarray"], fmt: str, fps: float) -> bytes:
    """Frames (uint8 (H, W, 3)) as an endlessly looping GIF or lossless WebP."""
    import io

    from PIL import Image

    pictures = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    options: dict[str, Any] = {"save_all": True, "append_images": pictures[1:], "duration": round(1000 / fps),
                               "loop": 0}
    if fmt == "WEBP":
        options["lossless"] = True
    pictures[0].save(buf, format=fmt, **options)
    return buf.getvalue()


def _plan_frames(output: str | None, names: Sequence[str], *, grid: bool, force: bool, json_out: bool, columns: int,
                 scale: int, fps: float) -> FramesWriter:
    from ..base.images import check_output_file

    suffix = Path(output).suffix.lower() if output and output != "-" else ""
    if output and suffix in ANIMATIONS and not grid:
        if suffix == ".webp":
            from PIL import features

            if not features.check("webp"):
                raise UsageError("this Pillow has no WebP support", hint="write a .gif, or install Pillow with WebP")
        path = Path(output)
        check_output_file(path, force)
        base = ImageWriter("file", path, names, grid=False, force=force, stdout=None, fmt=ANIMATIONS[suffix])
        return FramesWriter(base, columns=columns, scale=scale, animation=ANIMATIONS[suffix], fps=fps)
    base = plan_images(output, names, grid=grid, force=force, json_out=json_out)
    return FramesWriter(base, columns=columns, scale=scale, fps=fps)


def _chosen_layers(layers: str | None, keep_layers: str | None, keep_res: int | None, cfg: "FamilyConfig") -> list[int]:
    from ..engine.temperature import parse_layer_spec

    if layers is not None:
        return parse_layer_spec(layers, cfg, "--layers")
    return list(range(keep_count(keep_layers, keep_res, cfg, default=cfg.n_layers)))


@command(
    "interpolate",
    help=(
        "Interpolate between images (or prior samples) in latent space, frame by frame.\n\n"
        "Each key is encoded (posterior mean by default); the chosen layers (--keep-layers, --keep-res or "
        "--layers; default all) are interpolated between consecutive keys, spherically (slerp) or linearly; "
        "the other layers are drawn from the prior at --temp, with the same noise in every frame (--rest held) "
        "or new noise per frame (--rest resample). --steps N frames per segment, ends included; --loop returns "
        "to the first key. With --seeds the keys are the samples `vdvae sample --seed S --temp T` draws.\n\n"
        "Output: an animation (-o path.gif or .webp), a grid with one row per segment (--grid -o grid.png), or "
        "one PNG per frame (-o frames/). --temp 0 --output-temp 0 is deterministic, and then the end frames are "
        "the keys' reconstructions."
    ),
    epilog="Examples:\n\n"
    "  vdvae interpolate a.png b.png --steps 16 -o morph.gif\n\n"
    "  vdvae interpolate a.png b.png c.png --loop --keep-res 8 --temp 0.6 --scale 4 -o loop.webp\n\n"
    "  vdvae interpolate --seeds 3 7 --temp 0.8 --steps 8 --grid -o grid.png\n\n"
    "  vdvae interpolate a.png b.png --layers 0-5,r16 --method lerp --temp 0 --output-temp 0 -o frames/",
)
def interpolate(
    keys: Annotated[list[str], typer.Argument(
        metavar="KEY", show_default=False,
        help="Images (files, folders, -) to pass through, in order; with --seeds, sample seeds.")],
    seeds: Annotated[bool, typer.Option(
        "--seeds", help="The KEYs are seeds: interpolate between the prior samples they draw at --temp.")] = False,
    steps: Annotated[int, typer.Option("--steps", "-s", help="Frames per segment, both ends included.")] = 8,
    loop: Annotated[bool, typer.Option("--loop", help="Go back from the last key to the first.")] = False,
    keep_layers: PathLayersOpt = None,
    keep_res: PathResOpt = None,
    layers: Annotated[Optional[str], typer.Option(
        "--layers", metavar="SPEC", help="Interpolate these layers: e.g. '0-5,r16,12' (N, A-B, A-, rRES).", show_default=False)] = None,
    method: Annotated[Method, typer.Option("--method", help="Spherical (slerp) or linear (lerp), per layer.")]
    = Method.slerp,
    rest: Annotated[Rest, typer.Option(
        "--rest", help="Layers not interpolated: the same prior noise in every frame, or new noise per frame.")]
    = Rest.held,
    posterior: PosteriorOpt = Posterior.mean,
    temp: TempOpt = None,
    output_temp: OutputTempOpt = None,
    output: Annotated[Optional[str], typer.Option(
        "--output", "-o", metavar="FILE|DIR/|-", show_default=False,
        help="FILE.gif or FILE.webp (animation), FILE.png with --grid, DIR/ (one PNG per frame), or -.")] = None,
    grid: Annotated[bool, typer.Option(
        "--grid", help="Tile the frames into one image, one row per segment (-o FILE.png).")] = False,
    fps: Annotated[float, typer.Option("--fps", help="Frames per second of an animation.")] = 12.0,
    scale: Annotated[int, typer.Option("--scale", help="Enlarge every frame N times (nearest neighbour).")] = 1,
    no_resize: NoResizeOpt = False,
    seed: SeedOpt = None,
    batch_size: BatchOpt = "auto",
    readjust_bn: ReadjustOpt = False,
    readjust_iters: ReadjustItersOpt = 500,
    force: ForceOpt = False,
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
    from ..base.images import numbered_names
    from ..tools.interpolate import interpolate_latents, path, prior_latents, select_layers

    check_keep_args(keep_layers, keep_res)
    if layers is not None and (keep_layers is not None or keep_res is not None):
        raise UsageError("--layers and --keep-layers/--keep-res both choose the layers", hint="give one of them")
    check_positive("--scale", scale, MAX_SCALE)
    if not 2 <= steps <= MAX_STEPS:
        raise UsageError(f"--steps must be 2 to {MAX_STEPS:,} (frames per segment, its two ends included), got {steps}")
    if not 0.01 <= fps <= 100:  # a GIF's frame lasts a whole number of 10 ms (at most 100 per second)
        raise UsageError(f"--fps must be 0.01 to 100 (frames per second of an animation), got {fps}")
    check_batch_size(batch_size)
    check_output_temp(output_temp)
    key_seeds: list[int] = []
    if seeds:
        if not all(k.isascii() and k.lstrip("-").isdigit() and len(k) <= 40 for k in keys):
            shown = " ".join(k if len(k) <= 40 else k[:20] + "..." for k in keys[:10])
            raise UsageError(f"--seeds takes whole numbers of at most 40 digits, got {shown}"[:300], hint="e.g. --seeds 3 7 11")
        key_seeds = [int(k) for k in keys]
        bad = [s for s in key_seeds if not 0 <= s <= MAX_SEED]
        if bad:
            raise UsageError(f"--seeds must be whole numbers from 0 to {MAX_SEED:,}, got {bad[0]}")
        names = [f"seed {s}" for s in key_seeds]
    else:
        sources = collect_inputs(keys)
        names = [s.name for s in sources]
    if len(names) < 2:
        raise UsageError(f"interpolation needs at least two keys, got {len(names)}",
                         hint="give two images (or a folder of them), or --seeds S1 S2")
    segments = len(names) - (0 if loop else 1)
    if segments * (steps - 1) + 1 > MAX_FRAMES:
        raise UsageError(f"{len(names)} keys x --steps {steps} make {segments * (steps - 1) + 1:,} frames "
                         f"(at most {MAX_FRAMES:,})", hint="fewer keys or fewer --steps")
    frames = path(len(names), steps, loop=loop)
    writer = _plan_frames(output, numbered_names("frame", len(frames)), grid=grid, force=force, json_out=json_out,
                          columns=steps - 1 if loop else steps, scale=scale, fps=fps)
    run = Session(quiet=quiet, json_out=json_out)
    vae = run.load_model(model, device, dtype, compile=compile, offline=offline)
    top = run.load_prior(prior) if seeds else None  # --seeds' keys are prior samples: drawn as sample draws them
    cfg = vae.cfg
    chosen = _chosen_layers(layers, keep_layers, keep_res, cfg)
    spec, temps, pixel_temp = resolve_temperatures(temp, output_temp, vae)
    readjust_if_asked(run, vae, temps, readjust_bn, readjust_iters)
    # the keys' posterior means (or --seeds' own draws), the held layers at --temp, the pixels
    seed = run.seed(seed, random=draws_noise([t for i, t in enumerate(temps) if i not in chosen], pixel_temp,
                                             "mean" if seeds else posterior.value))
    depth = max(chosen, default=-1) + 1  # keys are needed only up to the last chosen layer
    if seeds:
        parts = [prior_latents(vae, 1, temperatures=temps, noise=run.noise(s, [0]), n_layers=depth, prior=top)
                 for s in key_seeds]
        key_latents = [torch.cat([p[i] for p in parts]) for i in range(depth)]
    else:
        import numpy as np

        from ..base.images import read_image

        # every process needs every key (the frames are what torchrun shares out); keys are few
        pixels = torch.from_numpy(np.stack([read_image(src, cfg.image_size, resize=not no_resize, notify=run.info)
                                            for src in sources]))
        key_latents = ops.encode(vae, pixels, posterior=posterior.value, n_layers=depth,
                                 noise=run.noise(seed, [-1 - i for i in range(len(names))]))
    selected = select_layers(key_latents, chosen, cfg.n_layers)

    def make(indices: list[int]):
        # each batch's frames made when it is drawn: a long path never holds every frame's latents
        given = interpolate_latents(selected, [frames[i] for i in indices], method.value)
        frame_noise = run.noise(seed, [0] * len(indices) if rest is Rest.held else indices)
        return ops.decode(vae, given, n=len(indices), temperatures=temps, output_temperature=pixel_temp,
                          noise=frame_noise)

    def record(i: int) -> dict:
        a, b, t = frames[i]
        return {"index": i, "a": names[a], "b": names[b], "t": t, "layers": chosen, "method": method.value,
                "rest": rest.value, "posterior": None if seeds else posterior.value, "seed": seed, "model": cfg.name,
                "temp": spec, "temperatures": temps, "output_temp": pixel_temp}

    run.generate(writer, len(frames), batch_size, make, record, "interpolating")


# --------------------------------------------------------------------------------------------------
# ood


@command(
    "ood",
    help=(
        "Out-of-distribution scores: the likelihood ratio LLR>k of Havtorn et al. 2021, or the input-complexity "
        "score of Serra et al. 2020.\n\n"
        "llr: score = L - L>k, where L is the ELBO and L>k the looser bound with the k latent layers nearest the "
        "pixels (the last k in `vdvae info`, the finest resolutions) drawn from their conditional prior instead "
        "of the posterior. Low-level statistics that make the plain likelihood rank some foreign images as "
        "*more* likely cancel in the ratio.\n\n"
        "complexity: score = -ELBO minus the image's size as a PNG, both per dimension: a simple image (a digit "
        "on black) is cheap for every model, and the difference keeps what only this model finds surprising. "
        "One pass, no k.\n\n"
        "Higher scores mean more likely out of distribution. Values are in bits/dim; with --samples S > 1 the "
        "bounds are importance-weighted. The ELBO is the bound `vdvae eval` reports for the same --seed and "
        "--samples. Without --score and --k, ood uses what the model file records (its card chose it on "
        "held-out data; `vdvae info` shows it), else llr with k = 1.\n\n"
        "--in DIR --out DIR also reports AUROC, AUPRC and the false-positive rate at 80% true positives for the "
        "score and, for comparison, for the other score where it was computed and the plain negative ELBO "
        "(out-of-distribution images are the positives)."
    ),
    epilog="Examples:\n\n"
    "  vdvae ood photo.png other/ --json\n\n"
    "  vdvae ood --in test-set/ --out foreign/ --k 1 --samples 4 --seed 0\n\n"
    "  vdvae ood --in test-set/ --out foreign/ --score complexity\n\n"
    "  vdvae ood --in test-set/ --out foreign/ --json | tail -1 | jq .metrics",
)
def ood(
    images: Annotated[Optional[list[str]], typer.Argument(
        metavar="IMG", show_default=False, help="Image files, folders, or - for an image on stdin.")] = None,
    in_dir: Annotated[Optional[list[str]], typer.Option(
        "--in", metavar="PATH", show_default=False, help="In-distribution images (files or folders; repeatable).")] = None,
    out_dir: Annotated[Optional[list[str]], typer.Option(
        "--out", metavar="PATH", show_default=False, help="Out-of-distribution images (files or folders; repeatable).")] = None,
    score: Annotated[Optional[Score], typer.Option(
        "--score", show_default=False, help="llr (Havtorn et al. 2021) or complexity (Serra et al. 2020). Default: "
        "the score the model file records; else llr (also whenever --k is given).")] = None,
    k: Annotated[Optional[int], typer.Option(
        "--k", show_default=False, help="How many of the finest latent layers the looser bound draws from the prior "
        "(the paper's k; --score llr). Default: the k the model file records (`vdvae info` shows it; its card "
        "chose it on held-out data), else 1.")] = None,
    samples: Annotated[int, typer.Option("--samples", "-s", help="Importance samples for the ELBO.")] = 1,
    samples_k: Annotated[Optional[int], typer.Option(
        "--samples-k", help="Importance samples for L>k (default: --samples).", show_default=False)] = None,
    prior_temp: Annotated[Optional[float], typer.Option(
        "--prior-temp", show_default=False, help="Temperature of the k prior layers: 1 is the paper's bound, 0 "
        "their mean (as the authors' script does). Default: with --k absent, the temperature the model file "
        "records with its k; else 1.")] = None,
    no_resize: NoResizeOpt = False,
    seed: SeedOpt = None,
    batch_size: BatchOpt = "auto",
    model: ModelOpt = None,
    offline: OfflineOpt = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "fp32",
    compile: CompileOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    import torch

    from ..tools.ood import complexity_scores, detection_metrics, llr_scores, png_bits_per_dim

    _single_process("ood")
    sets = bool(in_dir) or bool(out_dir)
    if sets and images:
        raise UsageError("give images, or --in and --out, not both")
    if sets and not (in_dir and out_dir):
        raise UsageError("--in and --out go together (in- and out-of-distribution images)")
    if not sets and not images:
        raise UsageError("no images given", hint="pass images, or --in DIR --out DIR for detection metrics")
    if score is Score.complexity:
        given = [name for name, value in (("--k", k), ("--samples-k", samples_k), ("--prior-temp", prior_temp))
                 if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)} belong to --score llr; --score complexity has no looser bound")
    check_positive("--samples", samples, MAX_IMPORTANCE_SAMPLES)
    if samples_k is not None:
        check_positive("--samples-k", samples_k, MAX_IMPORTANCE_SAMPLES)
    if prior_temp is not None and not 0 <= prior_temp <= MAX_TEMPERATURE:  # checked before the model loads
        raise UsageError(f"--prior-temp must be a number from 0 to {MAX_TEMPERATURE:g}, got {prior_temp}")
    check_batch_size(batch_size)
    refuse_distributed("ood")  # the metrics need every score in one process
    if sets:
        in_sources, out_sources = collect_inputs(in_dir or []), collect_inputs(out_dir or [])
        sources, is_out = [*in_sources, *out_sources], [False] * len(in_sources) + [True] * len(out_sources)
    else:
        sources = collect_inputs(images or [])
        is_out = [False] * len(sources)
    run = Session(quiet=quiet, json_out=json_out)
    vae = run.load_model(model, device, dtype, compile=compile, offline=offline)
    cfg = vae.cfg
    from ..modelfiles.header import ood_score, ood_settings
    from ..tools.ood import DEFAULT_K

    recorded = getattr(vae, "default_ood", None)
    how = f" ({recorded['source']})" if recorded and recorded.get("source") else ""
    if score is None:
        kept = ood_score(recorded)
        if k is None and kept == "complexity":
            score = Score.complexity
            run.info(f"--score complexity: what the model file records{how}; give --score or --k to choose")
        else:
            score = Score.llr
    if score is Score.llr and k is None:
        settings = ood_settings(recorded, cfg.n_layers)
        if settings is None:
            k = DEFAULT_K
        else:
            k = settings[0]
            if prior_temp is None:
                prior_temp = settings[1]
            run.info(f"--k {k} --prior-temp {prior_temp:g}: what the model file records{how}; "
                     "give --k to choose")
    if prior_temp is None:
        prior_temp = 1.0
    llr = score is Score.llr
    if llr and not 1 <= (k or 0) <= cfg.n_layers:
        raise UsageError(f"--k {k} but model {cfg.name} has {cfg.n_layers} latent layers", hint=f"use 1 to {cfg.n_layers}")
    mine, pixels = read_shard(run, sources, cfg.image_size, no_resize)
    seed = run.seed(seed)
    rows: list[dict[str, Any]] = []
    run.announce()

    def score_batch(indices: list[int]):
        x = pixels(indices)
        if llr:
            return llr_scores(vae, x, k=k or DEFAULT_K, samples=samples, samples_k=samples_k,
                              prior_temperature=prior_temp, noise=run.noise(seed, indices)), png_bits_per_dim(x, cfg.image_channels)
        result = complexity_scores(vae, x, samples=samples, noise=run.noise(seed, indices))
        return result, result.png / LN2

    with run.progress(len(mine), "scoring") as advance:
        for indices, (result, png) in run.batches(mine, batch_size, score_batch):
            for j, i in enumerate(indices):
                elbo_bpd = float(result.elbo[j]) / LN2
                row = {"type": "image", "index": i, "input": sources[i].name, "score_kind": score.value,
                       "score": float(result.score[j]) / LN2, "elbo_bits_per_dim": elbo_bpd,
                       "png_bits_per_dim": float(png[j]), "complexity": elbo_bpd - float(png[j])}
                if llr:
                    row.update({"looser_bits_per_dim": float(result.looser[j]) / LN2, "k": k,
                                "samples_k": samples_k or samples, "prior_temp": prior_temp})
                row.update({"samples": samples, "seed": seed, "model": cfg.name})
                if sets:
                    row["set"] = "out" if is_out[i] else "in"
                rows.append(row)
                if json_out:
                    run.emit(row)
            advance(len(indices))
    label = f"LLR>{k}" if llr else "complexity"
    if not sets:
        if not json_out:
            width = max(5, *(len(r["input"]) for r in rows))
            out(f"{cfg.name}: {label} (bits/dim; higher = more likely out of distribution)")
            extra = f"  {f'-L>{k}':>9}" if llr else f"  {'PNG':>9}"
            out(f"{'image':<{width}}  {'score':>9}  {'-ELBO':>9}{extra}")
            for r in rows:
                last = r["looser_bits_per_dim"] if llr else r["png_bits_per_dim"]
                out(f"{r['input']:<{width}}  {r['score']:>9.4f}  {r['elbo_bits_per_dim']:>9.4f}  {last:>9.4f}")
        run.finish(len(sources))  # exit 1 with the count when some inputs could not be read
        return
    for side, flag in (("in", "--in"), ("out", "--out")):
        if not any(r["set"] == side for r in rows):  # every image of that side failed to read
            run.finish(len(sources))  # says how many could not be read, exit 1
            raise UsageError(f"{flag} holds no image that could be read")
    pick = lambda key, out: torch.tensor([r[key] for r in rows if (r["set"] == "out") == out])  # noqa: E731
    metrics = {name: detection_metrics(pick(key, False), pick(key, True))
               for name, key in (("llr", "score"), ("complexity", "complexity"), ("elbo", "elbo_bits_per_dim"))
               if llr or name != "llr"}
    summary: dict[str, Any] = {"type": "summary", "n_in": is_out.count(False), "n_out": is_out.count(True),
                               "score_kind": score.value, "metrics": metrics[score.value].as_dict(),
                               **{name: m.as_dict() for name, m in metrics.items()}}
    if llr:
        summary.update({"k": k, "samples_k": samples_k or samples, "prior_temp": prior_temp})
    summary.update({"samples": samples, "seed": seed, "model": cfg.name,
                    "seconds": round(time.perf_counter() - run.started, 4)})
    if json_out:
        run.emit(summary)
        run.finish(len(sources))
        return
    out(f"{cfg.name}: {summary['n_in']} in-distribution, {summary['n_out']} out-of-distribution images")
    out(f"{'score':<12}  {'AUROC':>6}  {'AUPRC':>6}  {'FPR80':>6}")
    labels = {"llr": f"LLR>{k}", "complexity": "complexity", "elbo": "-ELBO"}
    for name in sorted(metrics, key=lambda n: n != score.value):
        m = metrics[name]
        out(f"{labels[name]:<12}  {m.auroc:>6.3f}  {m.auprc:>6.3f}  {m.fpr80:>6.3f}")
    run.finish(len(sources))


# --------------------------------------------------------------------------------------------------
# fid


@command(
    "fid",
    help=(
        "FID and KID between two folders of images, or between model samples and a folder.\n\n"
        "Computed by torch-fidelity (the standard TensorFlow-compatible Inception features): install it with "
        "pip install 'vdvae-cli[fid]'. Its Inception weights are downloaded once into the cache (VDVAE_CACHE) "
        "and checked against their published hash. With -n N, N samples are drawn from --model at --temp "
        "(image i depends only on (--seed, i)) and compared with the one folder given."
    ),
    epilog="Examples:\n\n"
    "  vdvae fid samples/ reference/\n\n"
    "  vdvae fid reference/ --model digits32 -n 1000 --temp 0.8 --seed 0 --json",
)
def fid(
    folders: Annotated[list[str], typer.Argument(
        metavar="SAMPLES REFERENCE", show_default=False,
        help="Two folders of PNG/JPEG images; with -n, only the reference folder.")],
    num: Annotated[Optional[int], typer.Option(
        "--num", "-n", show_default=False, help="Draw this many samples from --model instead of a SAMPLES folder.")]
    = None,
    temp: TempOpt = None,
    output_temp: OutputTempOpt = None,
    kid_subset: Annotated[int, typer.Option("--kid-subset", help="KID subset size (lowered to the smaller set).")]
    = 1000,
    seed: SeedOpt = None,
    batch_size: BatchOpt = "auto",
    model: ModelOpt = None,
    offline: OfflineOpt = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "fp32",
    compile: CompileOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    prior: PriorOpt = "auto",
) -> None:
    from ..tools.fid import count_folder, fid_kid, inception_weights, require_torch_fidelity

    _single_process("fid")
    if num is None and len(folders) != 2:
        raise UsageError(f"fid compares two folders, got {len(folders)} argument(s)",
                         hint="vdvae fid SAMPLES REFERENCE, or vdvae fid REFERENCE --model M -n N")
    if num is not None and len(folders) != 1:
        raise UsageError("with -n the samples come from the model, so give only the REFERENCE folder")
    if num is not None and num < 2:
        raise UsageError(f"-n must be at least 2 for FID, got {num}")
    check_positive("--kid-subset", kid_subset, MAX_VARIATIONS)
    check_batch_size(batch_size)
    check_output_temp(output_temp)
    for folder in folders:
        count_folder(Path(folder))
    require_torch_fidelity()
    run = Session(quiet=quiet, json_out=json_out)
    weights = inception_weights(progress=_download_note(run))
    first: "str | torch.Tensor" = folders[0]
    what = f"{folders[0]} vs {folders[-1]}"
    drawn: dict[str, Any] = {}  # what the samples were drawn with (with -n)
    if num is not None:
        first, drawn = _draw_samples(run, num, temp, output_temp, seed, batch_size, model, device, dtype, compile,
                                      offline, prior)
        what = f"{num} samples of {drawn['model']} vs {folders[-1]}"
    run.announce()
    if run.model is None:
        from ..engine.runtime import pick_device

        where = str(pick_device(device))
    else:
        where = str(run.device)
    result = fid_kid(first, folders[-1], weights=weights, device=where, kid_subset_size=kid_subset)
    record = {**result.as_dict(), "samples": folders[0] if num is None else None, "reference": folders[-1],
              "seconds": round(time.perf_counter() - run.started, 4)}
    record.update(drawn)
    if json_out:
        run.emit(record)
        return
    out(f"{what}: FID {result.fid:.3f}, KID {result.kid_mean:.5f} ± {result.kid_std:.5f} "
        f"({result.n1} and {result.n2} images, KID subsets of {result.kid_subset_size})")


def _single_process(what: str) -> None:
    from ..engine.runtime import launched_distributed

    if launched_distributed():
        raise UsageError(f"{what} reports on all its images at once, so it does not split across processes",
                         hint="run it without torchrun")


def _download_note(run: Session):
    """Progress of the Inception download, as one line on stderr when it starts and when it ends."""
    said: set[str] = set()

    def report(p) -> None:
        if p.stage == "download" and "start" not in said:
            said.add("start")
            size = f" ({p.total / 1e6:.0f} MB)" if p.total else ""
            run.info(f"downloading the Inception weights{size} once into the cache...")
        elif p.stage == "done" and "start" in said:
            run.info(f"saved {p.filename}")

    return report


def _draw_samples(run: Session, num: int, temp: str | None, output_temp: float | None, seed: int | None,
                  batch_size: str, model: str | None, device: str, dtype: str,
                  compile: bool, offline: bool = False, prior: str = "auto") -> "tuple[torch.Tensor, dict[str, Any]]":
    """``num`` samples (uint8 NHWC, on the CPU), and the model, temperatures and seed they were drawn with."""
    import torch

    from ..engine import ops
    from ..engine.runtime import across_cores

    vae = run.load_model(model, device, dtype, compile=compile, offline=offline, latents=False)
    top = run.load_prior(prior)
    spec, temps, pixel_temp = resolve_temperatures(temp, output_temp, vae)
    seed = run.seed(seed)
    run.announce()
    parts = []

    def make(indices: list[int]):
        return ops.sample(vae, len(indices), temperatures=temps, output_temperature=pixel_temp,
                          noise=run.noise(seed, indices), prior=top).cpu()

    with run.progress(num, "sampling") as advance:
        for indices, images in run.batches(range(num), batch_size, across_cores(make, run.device)):
            parts.append(images)
            advance(len(indices))
    return torch.cat(parts), {"model": vae.cfg.name, "temp": spec, "output_temp": pixel_temp, "seed": seed}
