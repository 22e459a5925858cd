"""What the model commands share: loading the model, seeds and per-image noise, the batch loop
with a progress bar on stderr, messages on stderr and JSON lines on stdout.

Importing this module does not import torch (``vdvae --help`` stays fast); the functions that need
it import it when called.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import TYPE_CHECKING, Annotated, Any, Callable, Collection, Iterator, Sequence

import typer

from ..base.errors import UsageError
from ._app import emit_json, say
from .options import default_model

if TYPE_CHECKING:
    import torch

    from ..engine.interface import FamilyConfig
    from ..engine.distributions import PerImageNoise
    from ..modelfiles.resolve import ResolvedModel
    from ..base.images import ImageSource, ImageWriter
    from ..engine.interface import LatentModel
    from ..engine.learned_prior import TopPrior
    from pathlib import Path

BatchOpt = Annotated[str, typer.Option(
    "--batch-size", "-b", metavar="N|auto",
    help="Images per forward pass, or auto: on a GPU the largest batch that fits (grown until memory runs out), "
    "on a CPU a small batch that fits in memory.",
)]
NoResizeOpt = Annotated[bool, typer.Option(
    "--no-resize", help="Refuse images whose size differs from the model's, instead of centre-cropping and resizing.",
)]


SHOWN_FAILURES = 5  # folder jobs: unreadable inputs named one line each, then only counted


class Session:
    """One command run: where its messages go, the model it loaded, its seed."""

    def __init__(self, *, quiet: bool = False, json_out: bool = False):
        from ..engine.runtime import Shard

        self.quiet = quiet
        self.json_out = json_out
        self.started = time.perf_counter()
        self.model: LatentModel | None = None
        self.model_ref: str | None = None  # what --model can name to load this model again
        self.model_path: "Path | None" = None  # the loaded model's file, and where it came from
        self.model_source: str | None = None
        self.shard = Shard()  # under torchrun: this process's rank and the number of processes
        self._notes: list[str] = []  # said once the options have passed every check (see announce)
        self.failed: list[str] = []  # inputs that could not be read (each reported when it failed)

    # -- messages ---------------------------------------------------------------------------------

    def info(self, message: str) -> None:
        """A log line on stderr (silenced by --quiet; under torchrun only rank 0 speaks)."""
        if not self.quiet and self.shard.main:
            say(message)

    def input_failed(self, name: str, exc: Exception) -> None:
        """One input could not be read: say so on one line now (even with --quiet; the first
        :data:`SHOWN_FAILURES` of them, the rest are counted), go on with the others, and fail at
        the end (:meth:`finish`)."""
        if len(self.failed) < SHOWN_FAILURES:
            hint = getattr(exc, "hint", None)
            say(f"error: {exc}" + (f" ({hint})" if hint else ""))
        elif len(self.failed) == SHOWN_FAILURES:
            say("error: more inputs could not be read (counted below)")
        self.failed.append(name)

    def finish(self, total: int) -> None:
        """Exit 1 with one summary line when some of the ``total`` inputs could not be read (under
        torchrun, ``failed`` must hold every process's failures: see :meth:`gather`)."""
        failed = self.failed
        if failed:
            shown = ", ".join(failed[:5]) + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
            done = f"; the other {total - len(failed)} were processed" if total > len(failed) else ""
            if self.shard.main:
                say(f"error: {len(failed)} of {total} inputs could not be read: {shown}{done}")
            raise typer.Exit(1)

    def emit(self, obj: dict[str, Any]) -> None:
        """One strict JSON object on one line of stdout, in one write: ranks of a torchrun job share
        the stream, and a separate write of the newline let two records meet on one line."""
        emit_json(obj)

    @contextlib.contextmanager
    def progress(self, total: int, label: str) -> Iterator[Callable[[int], None]]:
        """A rich progress bar on stderr when it is a terminal (and not --quiet); yields ``advance(n)``."""
        from ._progress import bar_wanted, stderr_progress

        if self.quiet or total <= 1 or not bar_wanted(json_out=self.json_out) or not self.shard.main:
            yield lambda n: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with stderr_progress(*columns) as bar:
            task = bar.add_task(label, total=total)
            yield lambda n: bar.advance(task, n)

    # -- model, seeds, noise ----------------------------------------------------------------------

    def load_model(self, ref: str | None, device: str = "auto", dtype: str = "fp32", *, compile: bool = False,
                   offline: bool = False, latents: bool = True) -> "LatentModel":
        """The model ``ref`` names, ready for inference. ``latents``: the command works on latent
        layers, so a model without any (PixelCNN++) is refused in one line, before any work."""
        from ..engine.interface import first_parameter
        from ..modelfiles.resolve import load_model
        from ..engine.runtime import (configure_backends, freeze_startup_objects, init_distributed,
                                      launched_distributed, prepare_for_inference)

        freeze_startup_objects()
        t0 = time.perf_counter()
        where: "str | torch.device" = device
        if launched_distributed():
            where, self.shard = init_distributed(device)
        resolved = self._fetch(default_model(ref), offline)
        self.model_ref = resolved.name if resolved.source in ("shipped", "official") else (
            resolved.detail if resolved.source == "hub" else str(resolved.path.resolve()))
        loaded = load_model(resolved, device=where, dtype=dtype)
        self.model_path, self.model_source = resolved.path, resolved.source
        if latents:
            from ..engine.ops import require_latent_layers

            require_latent_layers(loaded, f"`vdvae {command_name()}`")
        model = prepare_for_inference(loaded, compile=compile)
        param = first_parameter(model)
        configure_backends(param.device, param.dtype)
        self.model = model
        cfg = model.cfg
        processes = f", {self.shard.world} processes" if self.shard.world > 1 else ""
        layers = f"{cfg.n_layers} latent layers" if cfg.n_layers else "no latent layers (drawn pixel by pixel)"
        self._notes.append(f"model {cfg.name}: {cfg.image_size}x{cfg.image_size}, {layers}, "
                           f"on {param.device} in {str(param.dtype).removeprefix('torch.')}{processes} "
                           f"(loaded in {time.perf_counter() - t0:.1f}s)")
        if compile:  # torch.compile works when first called: say what the first batch waits for
            self._notes.append("compiling the network (--compile): the first batch waits for it, often a minute")
        return model

    def load_prior(self, choice: str | None, *, density: bool = False) -> "TopPrior | None":
        """The learned prior ``--prior`` asks for, for the loaded model: ``model`` none; ``learned`` the
        companion file beside the model (required); ``auto`` (default) the companion when there is
        one; anything else a companion file's path. Says on stderr which prior draws the top layers.

        ``density``: the command scores latents under the prior (likelihoods). A prior without a density
        (an exemplar prior) is then refused when asked for by name, and passed over, with a note, under auto."""
        from pathlib import Path

        from ..base.errors import UsageError
        from ..engine.companion import companion_path

        assert self.model is not None
        choice = (choice or "auto").strip()
        if choice == "model" or self.model.cfg.n_layers == 0:
            return None
        if choice in ("auto", "learned"):
            if self.model_path is None:
                return None
            path = companion_path(self.model_path)
        else:
            path = Path(choice)
        if not path.exists():  # (one that exists but is not a file is refused by read_prior)
            if choice == "auto":
                return None
            raise UsageError(f"no learned prior at {path}" if choice != "learned"
                             else f"model {self.model.cfg.name} has no learned prior beside it ({path})",
                             hint="fit one with `vdvae prior fit MODEL IMAGES`, or use --prior model")
        from ..modelfiles.priors import read_prior

        top = read_prior(path, self.model)
        if density and not top.prior.has_density:
            if choice == "auto":
                self._notes.append(f"{path} is an exemplar prior, which has no density: likelihoods use the model's own prior")
                return None
            raise UsageError(f"{path} is an exemplar prior, which has no density to score latents with",
                             hint="use --prior model (the model's own prior) for likelihoods")
        if top.prior.kind == "exemplar":
            self._notes.append(f"exemplar prior over latent layers 0-{top.layers - 1} from {path}: those layers are posterior "
                               f"draws of one of its {top.prior.cfg.count:,} stored images, --temp applies below them; after kept "
                               "layers the model's own prior draws (--prior model: the model's own throughout)")
        else:
            self._notes.append(f"learned prior over latent layers 0-{top.layers - 1} from {path} (--prior model: the "
                               "model's own)")
        return top

    def _fetch(self, ref: str | None, offline: bool) -> "ResolvedModel":
        """The model's file; a named model's first use downloads it. Under torchrun rank 0 downloads
        while the others wait, and a failure reaches every process (none is left waiting)."""
        from ..modelfiles.cache import fetch_model
        from ..base.errors import VDVAEError
        from .models import download_progress

        if self.shard.world == 1:
            with download_progress(self.quiet) as progress:
                return fetch_model(ref, offline=offline, progress=progress)
        failure = None
        if self.shard.main:
            try:
                with download_progress(self.quiet) as progress:
                    fetch_model(ref, offline=offline, progress=progress)
            except VDVAEError as exc:
                failure = (type(exc), str(exc), exc.hint)
        failure = self.broadcast(failure)
        if failure is not None:
            kind, message, hint = failure
            raise kind(message, hint=hint)
        return fetch_model(ref, offline=True)  # on this machine now

    @property
    def device(self) -> "torch.device":
        from ..engine.interface import first_parameter

        assert self.model is not None
        return first_parameter(self.model).device

    def seed(self, seed: int | None, *, random: bool = True) -> int:
        """The run's seed: the one given, or a fresh one that is reported so the run can be repeated.
        A run that draws no noise (``random`` false: see :func:`draws_noise`) makes the same images
        with any seed, so none is drawn or reported (its records say seed 0)."""
        if seed is None and not random:
            return 0
        if seed is None:
            from ..engine.runtime import fresh_seed

            seed = self.broadcast(fresh_seed())  # every process must draw with the same seed
            self._notes.append(f"seed {seed} (repeat this run with --seed {seed})")
        return seed

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every process (the value itself when there is one process)."""
        if self.shard.world == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, items: list[Any]) -> list[Any]:
        """Every process's ``items``, concatenated, on every process."""
        if self.shard.world == 1:
            return items
        import torch.distributed as dist

        parts: list[Any] = [None] * self.shard.world
        dist.all_gather_object(parts, items)
        return [x for part in parts for x in part]

    def barrier(self) -> None:
        if self.shard.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def my_indices(self, total: int) -> Sequence[int]:
        """The images this process makes: all of them, or under torchrun every world-th one."""
        return self.shard.indices(total)

    def batch_size(self, spec: str) -> int | None:
        """``--batch-size``: a number, or None for auto on a GPU; auto on a CPU is fixed from memory."""
        from ..engine.interface import first_parameter
        from ..engine.runtime import cpu_batch_size

        if str(spec).strip().lower() != "auto":
            return parse_batch_size(spec)
        if self.device.type == "cuda":
            return None
        assert self.model is not None
        cfg = self.model.cfg
        itemsize = first_parameter(self.model).element_size()
        if not cfg.decoder_layers:  # no latent layers (PixelCNN++): its family's estimate of a pass
            from ..engine.registry import family_of

            return cpu_batch_size(family_of(cfg).activation_bytes(cfg, itemsize, encoder=False))
        biggest = max(layer.width * layer.res**2 for layer in cfg.decoder_layers)
        return cpu_batch_size(12 * biggest * itemsize)

    def batches(self, indices: Sequence[int], batch_size: str,
                fn: Callable[[list[int]], Any]) -> Iterator[tuple[list[int], Any]]:
        """``(slice, fn(slice))`` over ``indices`` at ``--batch-size`` (see :func:`runtime.run_in_batches`)."""
        from ..engine.runtime import run_in_batches

        yield from run_in_batches(indices, fn, batch_size=self.batch_size(batch_size), device=self.device)

    def announce(self) -> None:
        """Say which model runs and which seed was chosen: once every check has passed, so that a
        rejected request prints nothing but its one error line."""
        for note in self._notes:
            self.info(note)
        self._notes.clear()

    def noise(self, seed: int, indices: Sequence[int]) -> "PerImageNoise":
        """One generator per image index, so image ``i`` depends only on ``(seed, i)``."""
        from ..engine.distributions import PerImageNoise
        from ..engine.runtime import image_generators

        return PerImageNoise(image_generators(seed, indices))

    # -- the batch loop ---------------------------------------------------------------------------

    def generate(
        self,
        writer: "ImageWriter",
        total: int,
        batch_size: str,
        make_batch: Callable[[list[int]], "torch.Tensor"],
        record: Callable[[int], dict[str, Any]],
        label: str,
        indices: Sequence[int] | None = None,
    ) -> None:
        """Make images ``batch_size`` at a time (``make_batch(indices)`` -> uint8 NHWC), hand them to
        ``writer``, and print one JSON record per image once it is written.

        ``indices`` are this process's images (default :meth:`my_indices`). Under torchrun each
        process writes its own files into a folder; a single file, a grid or stdout is written by
        rank 0 once it has gathered every process's images.
        """
        timing: dict[int, tuple[float, int]] = {}  # index -> (seconds of its batch, images in it)
        mine = self.my_indices(total) if indices is None else list(indices)
        assert self.model is not None
        writer.check_size(self.model.cfg.image_size)
        if writer.existing:  # --skip-existing: made by an earlier run (else `mine` stays a lazy range)
            mine = [i for i in mine if i not in writer.existing]
        shared_output = self.shard.world > 1 and writer.kind != "dir"
        held: list[tuple[int, Any, tuple[float, int]]] = []
        self.announce()
        self.barrier()  # every process has checked the outputs before any writes one

        def report(done: list[tuple[int, str]]) -> None:
            if not self.json_out:
                timing.clear()  # nothing to say per image: keep no record of it
            else:
                for i, where in done:
                    batch_seconds, batch_size = timing.pop(i)
                    self.emit({"type": "image", **record(i), "path": where,
                               "batch_seconds": round(batch_seconds, 4), "batch_size": batch_size})

        from ..base.errors import activity
        from ..engine.runtime import across_cores

        size = self.model.cfg.image_size
        with self.progress(len(mine), label) as advance, activity(
                f"{label} {size}x{size} images", hint="use a smaller --batch-size, or --dtype bf16"):
            t0 = time.perf_counter()
            for chunk, images in self.batches(mine, batch_size, across_cores(make_batch, self.device)):
                images = images.cpu().numpy()
                batch = (time.perf_counter() - t0, len(chunk))
                if shared_output:
                    held.extend((i, img, batch) for i, img in zip(chunk, images))
                else:
                    timing.update((i, batch) for i in chunk)
                    report(writer.write(chunk, images))
                advance(len(chunk))
                t0 = time.perf_counter()
        if shared_output:
            held = self.gather(held)
            if self.shard.main:
                timing.update((i, batch) for i, _, batch in held)
                report(writer.write([i for i, _, _ in held], [img for _, img, _ in held]))
        if self.shard.main:
            report(writer.finish())
        self.barrier()
        self.failed = self.gather(self.failed)
        made = total - len(writer.existing) - len(self.failed)
        kept = f" (kept {len(writer.existing)} that existed)" if writer.existing else ""
        self.info(f"wrote {writer.describe(made)}{kept} "
                  f"in {time.perf_counter() - self.started:.1f}s")
        self.finish(total)


def command_name() -> str:
    """The running subcommand's name (``reconstruct``), for messages."""
    from ._app import RUNNING

    return RUNNING[-1] if RUNNING else "this command"


def draws_noise(temperatures: Sequence[float], output_temp: float, posterior: str = "mean") -> bool:
    """Whether a run draws any noise: a latent layer from the prior at a temperature above 0 (pass
    the temperatures of the layers the prior gives), a posterior sample, or pixels above 0."""
    return posterior == "sample" or output_temp > 0 or any(t > 0 for t in temperatures)


def parse_batch_size(spec: str) -> int:
    text = str(spec).strip().lower()
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise UsageError(f"--batch-size must be a whole number >= 1 or auto, got {spec!r}")
    return int(text)


def check_batch_size(spec: str) -> None:
    if str(spec).strip().lower() != "auto":
        parse_batch_size(spec)


def refuse_distributed(what: str) -> None:
    """For commands that write one file from all their inputs: they run as one process."""
    from ..engine.runtime import launched_distributed

    if launched_distributed():
        raise UsageError(f"{what} writes one file, so it does not split across processes",
                         hint="run it without torchrun")


# Bounds on counts, checked where the options are parsed: each keeps a request's time and memory
# finite and says so in one line, instead of a run that never ends or memory that runs out.
MAX_IMAGES = 10**9  # sample -n: written one batch at a time, names made as they are needed
MAX_VARIATIONS = 10**6  # per input image (reconstruct -n, restore -n), and fid's --kid-subset
MAX_IMPORTANCE_SAMPLES = 5000  # eval/ood --samples: each a full pass over every image
MAX_SCALE = 64  # interpolate --scale
MAX_STEPS = 100_000  # interpolate --steps (frames per segment)
MAX_FRAMES = 10**6  # interpolate: keys x steps


def check_positive(name: str, value: int, most: int) -> None:
    """``value`` is a whole number from 1 to ``most`` (a bound that keeps time and memory finite)."""
    if not 1 <= value <= most:
        raise UsageError(f"{name} must be 1 to {most:,}, got {value}")


def check_output_temp(value: float | None) -> None:
    """--output-temp, when given (None: the model's recommendation, checked once it is loaded)."""
    from ..base.safety import MAX_TEMPERATURE

    if value is None:
        return
    if not 0 <= value <= MAX_TEMPERATURE:
        raise UsageError(f"--output-temp must be a number from 0 to {MAX_TEMPERATURE:g}, got {value}",
                         hint="1 samples pixels as the model does, 0 takes the most likely value")


def check_keep_args(keep_layers: str | None, keep_res: int | None) -> None:
    """Checks that need no model: not both, and --keep-layers is a count or 'all'."""
    if keep_layers is not None and keep_res is not None:
        raise UsageError("--keep-layers and --keep-res both say how many layers to keep",
                         hint="give one of them")
    if keep_layers is not None and keep_layers != "all" and not (keep_layers.isascii() and keep_layers.isdigit()):
        raise UsageError(f"--keep-layers {keep_layers!r} is not a whole number >= 0 or 'all'")


def keep_count(keep_layers: str | None, keep_res: int | None, cfg: "FamilyConfig", *, default: int) -> int:
    """How many leading latent layers to keep, from --keep-layers K|all or --keep-res R (both already
    through :func:`check_keep_args`, before the model was loaded)."""
    if keep_res is not None:
        if keep_res not in cfg.resolutions:
            raise UsageError(f"--keep-res {keep_res} is not a resolution of model {cfg.name}",
                             hint=f"choose one of {', '.join(map(str, cfg.resolutions))}")
        return cfg.layers_up_to_res(keep_res)
    if keep_layers is None:
        return default
    if keep_layers == "all":
        return cfg.n_layers
    keep = int(keep_layers)
    if keep > cfg.n_layers:
        raise UsageError(f"--keep-layers {keep} but model {cfg.name} has {cfg.n_layers} latent layers",
                         hint=f"use 0 to {cfg.n_layers}, or all")
    return keep


def collect_inputs(args: Sequence[str]) -> "list[ImageSource]":
    """Image sources for the command-line arguments (files, folders, ``-`` for stdin)."""
    from ..base.images import collect_images

    return collect_images(args, stdin=getattr(sys.stdin, "buffer", None), stdin_is_tty=_isatty(sys.stdin))


SkipExistingOpt = Annotated[bool, typer.Option(
    "--skip-existing", help="With -o DIR/: keep the outputs an earlier run already wrote and make only the "
    "missing ones (resumes a folder job; no --force needed).",
)]


def plan_images(output: str | None, names: Sequence[str], *, grid: bool = False, force: bool = False,
                json_out: bool = False, skip_existing: bool = False) -> "ImageWriter":
    """Where the images go (checked now, before any work): see :func:`vdvae_cli.base.images.plan_output`."""
    from ..base.images import plan_output

    if skip_existing and force:
        raise UsageError("--skip-existing keeps existing outputs and --force replaces them", hint="give one of them")
    return plan_output(output, names, grid=grid, force=force, stdout=getattr(sys.stdout, "buffer", None),
                       stdout_is_tty=_isatty(sys.stdout), json_out=json_out, skip_existing=skip_existing)


def read_shard(run: Session, sources: Sequence[Any], size: int, no_resize: bool,
               skip: Collection[int] = ()) -> "tuple[list[int], Callable[[list[int]], torch.Tensor]]":
    """Decode this process's share of ``sources`` (all of them without torchrun), leaving out the
    indices in ``skip``; return the input indices that were read and ``pixels(indices)``, their
    uint8 NHWC rows. An unreadable input among several is reported and left out (the run fails at
    its end, see :meth:`Session.finish`); a single input that cannot be read is an error at once."""
    import numpy as np
    import torch

    from ..base.errors import ImageError
    from ..base.images import read_image

    mine, rows = [], []
    for i in run.my_indices(len(sources)):
        if i in skip:
            continue
        try:
            rows.append(read_image(sources[i], size, resize=not no_resize, notify=run.info))
        except ImageError as exc:
            if len(sources) == 1:
                raise
            run.input_failed(sources[i].name, exc)
        else:
            mine.append(i)
    pixels = torch.from_numpy(np.stack(rows)) if rows else torch.zeros(0, size, size, 3, dtype=torch.uint8)
    row_of = {i: k for k, i in enumerate(mine)}
    return mine, lambda indices: pixels[[row_of[i] for i in indices]]


def stdout_is_tty() -> bool:
    return _isatty(sys.stdout)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
