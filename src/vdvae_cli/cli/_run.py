"""What the model commands share: loading the model, seeds and per-image noise, the batch loop
with a progress bar on stderr, messages on stderr and JSON lines on stdout.

Importing this module does not import torch (``vdvae --help`` stays fast); the functions that need
it import it when called.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from typing import TYPE_CHECKING, Annotated, Any, Callable, Iterator, Sequence

import typer

from ..errors import UsageError
from .options import default_model

if TYPE_CHECKING:
    import torch

    from ..config import VDVAEConfig
    from ..distributions import PerImageNoise
    from ..images import ImageSource, ImageWriter
    from ..model import VAE

BatchOpt = Annotated[str, typer.Option(
    "--batch-size", "-b",
    help="Images per forward pass, or auto: on a GPU the largest batch that fits (grown until memory runs out), "
    "on a CPU a small batch that fits in memory.",
)]
NoResizeOpt = Annotated[bool, typer.Option(
    "--no-resize", help="Refuse images whose size differs from the model's, instead of centre-cropping and resizing.",
)]


class Session:
    """One command run: where its messages go, the model it loaded, its seed."""

    def __init__(self, *, quiet: bool = False, json_out: bool = False):
        from ..runtime import Shard

        self.quiet = quiet
        self.json_out = json_out
        self.started = time.perf_counter()
        self.model: VAE | None = None
        self.shard = Shard()  # under torchrun: this process's rank and the number of processes
        self._notes: list[str] = []  # said once the options have passed every check (see announce)

    # -- messages ---------------------------------------------------------------------------------

    def info(self, message: str) -> None:
        """A log line on stderr (silenced by --quiet; under torchrun only rank 0 speaks)."""
        if not self.quiet and self.shard.main:
            print(message, file=sys.stderr, flush=True)

    def emit(self, obj: dict[str, Any]) -> None:
        """One JSON object on one line of stdout."""
        print(json.dumps(obj, ensure_ascii=False), flush=True)

    @contextlib.contextmanager
    def progress(self, total: int, label: str) -> Iterator[Callable[[int], None]]:
        """A rich progress bar on stderr when it is a terminal (and not --quiet); yields ``advance(n)``."""
        if self.quiet or total <= 1 or not sys.stderr.isatty() or not self.shard.main:
            yield lambda n: None
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task(label, total=total)
            yield lambda n: bar.advance(task, n)

    # -- model, seeds, noise ----------------------------------------------------------------------

    def load_model(self, ref: str | None, device: str = "auto", dtype: str = "fp32", *, compile: bool = False) -> "VAE":
        from ..hub import load_model
        from ..runtime import configure_backends, init_distributed, launched_distributed, prepare_for_inference

        t0 = time.perf_counter()
        where: "str | torch.device" = device
        if launched_distributed():
            where, self.shard = init_distributed(device)
        model = prepare_for_inference(load_model(default_model(ref), device=where, dtype=dtype), compile=compile)
        configure_backends(model.decoder.gain.device, model.decoder.gain.dtype)
        self.model = model
        cfg = model.cfg
        param = model.decoder.gain
        processes = f", {self.shard.world} processes" if self.shard.world > 1 else ""
        self._notes.append(f"model {cfg.name}: {cfg.image_size}x{cfg.image_size}, {cfg.n_layers} latent layers, "
                           f"on {param.device} in {str(param.dtype).removeprefix('torch.')}{processes} "
                           f"(loaded in {time.perf_counter() - t0:.1f}s)")
        return model

    @property
    def device(self) -> "torch.device":
        assert self.model is not None
        return self.model.decoder.gain.device

    def seed(self, seed: int | None) -> int:
        """The run's seed: the one given, or a fresh one that is reported so the run can be repeated."""
        if seed is None:
            from ..runtime import fresh_seed

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

    def my_indices(self, total: int) -> list[int]:
        """The images this process makes: all of them, or under torchrun every world-th one."""
        return self.shard.indices(total)

    def batch_size(self, spec: str) -> int | None:
        """``--batch-size``: a number, or None for auto on a GPU; auto on a CPU is fixed from memory."""
        from ..runtime import cpu_batch_size

        if str(spec).strip().lower() != "auto":
            return parse_batch_size(spec)
        if self.device.type == "cuda":
            return None
        assert self.model is not None
        cfg = self.model.cfg
        itemsize = self.model.decoder.gain.element_size()
        biggest = max(layer.width * layer.res**2 for layer in cfg.decoder_layers)
        return cpu_batch_size(12 * biggest * itemsize)

    def batches(self, indices: Sequence[int], batch_size: str,
                fn: Callable[[list[int]], Any]) -> Iterator[tuple[list[int], Any]]:
        """``(slice, fn(slice))`` over ``indices`` at ``--batch-size`` (see :func:`runtime.run_in_batches`)."""
        from ..runtime import run_in_batches

        yield from run_in_batches(indices, fn, batch_size=self.batch_size(batch_size), device=self.device)

    def announce(self) -> None:
        """Say which model runs and which seed was chosen: once every check has passed, so that a
        rejected request prints nothing but its one error line."""
        for note in self._notes:
            self.info(note)
        self._notes.clear()

    def noise(self, seed: int, indices: Sequence[int]) -> "PerImageNoise":
        """One generator per image index, so image ``i`` depends only on ``(seed, i)``."""
        from ..distributions import PerImageNoise
        from ..runtime import image_generators

        return PerImageNoise(image_generators(seed, indices, self.device))

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
        seconds: dict[int, float] = {}
        mine = self.my_indices(total) if indices is None else list(indices)
        shared_output = self.shard.world > 1 and writer.kind != "dir"
        held: list[tuple[int, Any, float]] = []
        self.announce()
        self.barrier()  # every process has checked the outputs before any writes one

        def report(done: list[tuple[int, str]]) -> None:
            if self.json_out:
                for i, where in done:
                    self.emit({**record(i), "path": where, "seconds": round(seconds[i], 4)})

        with self.progress(len(mine), label) as advance:
            t0 = time.perf_counter()
            for chunk, images in self.batches(mine, batch_size, make_batch):
                images = images.cpu().numpy()
                per_image = (time.perf_counter() - t0) / len(chunk)
                if shared_output:
                    held.extend((i, img, per_image) for i, img in zip(chunk, images))
                else:
                    seconds.update((i, per_image) for i in chunk)
                    report(writer.write(chunk, images))
                advance(len(chunk))
                t0 = time.perf_counter()
        if shared_output:
            held = self.gather(held)
            if self.shard.main:
                seconds.update((i, sec) for i, _, sec in held)
                report(writer.write([i for i, _, _ in held], [img for _, img, _ in held]))
        if self.shard.main:
            report(writer.finish())
        self.barrier()
        self.info(f"wrote {total} image{'s' if total != 1 else ''} to {writer.label} "
                  f"in {time.perf_counter() - self.started:.1f}s")


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
    from ..runtime import launched_distributed

    if launched_distributed():
        raise UsageError(f"{what} writes one file, so it does not split across processes",
                         hint="run it without torchrun")


def check_positive(name: str, value: int) -> None:
    if value < 1:
        raise UsageError(f"{name} must be at least 1, got {value}")


def check_output_temp(value: float | None) -> None:
    """--output-temp, when given (None: the model's recommendation, checked once it is loaded)."""
    if value is None:
        return
    if not value >= 0 or value == float("inf"):
        raise UsageError(f"--output-temp must be a finite number >= 0, got {value}",
                         hint="1 samples pixels as the model does, 0 takes the most likely value")


def check_keep_args(keep_layers: str | None, keep_res: int | None) -> None:
    """Checks that need no model: not both, and --keep-layers is a count or 'all'."""
    if keep_layers is not None and keep_res is not None:
        raise UsageError("--keep-layers and --keep-res both say how many layers to keep",
                         hint="give one of them")
    if keep_layers is not None and keep_layers != "all" and not (keep_layers.isascii() and keep_layers.isdigit()):
        raise UsageError(f"--keep-layers {keep_layers!r} is not a whole number >= 0 or 'all'")


def keep_count(keep_layers: str | None, keep_res: int | None, cfg: "VDVAEConfig", *, default: int) -> int:
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
    from ..images import collect_images

    return collect_images(args, stdin=getattr(sys.stdin, "buffer", None), stdin_is_tty=_isatty(sys.stdin))


def plan_images(output: str | None, names: Sequence[str], *, grid: bool = False, force: bool = False,
                json_out: bool = False) -> "ImageWriter":
    """Where the images go (checked now, before any work): see :func:`vdvae_cli.images.plan_output`."""
    from ..images import plan_output

    return plan_output(output, names, grid=grid, force=force, stdout=getattr(sys.stdout, "buffer", None),
                       stdout_is_tty=_isatty(sys.stdout), json_out=json_out)


def read_pixels(run: Session, sources: Sequence[Any], size: int, no_resize: bool) -> "torch.Tensor":
    """Decode ``sources`` to one uint8 NHWC tensor at the model's size (resizing is reported)."""
    import torch

    from ..images import read_images

    return torch.from_numpy(read_images(sources, size, resize=not no_resize, notify=run.info))


def read_shard(run: Session, sources: Sequence[Any], size: int,
               no_resize: bool) -> "tuple[list[int], Callable[[list[int]], torch.Tensor]]":
    """Decode this process's share of ``sources`` (all of them without torchrun); return its input
    indices and ``pixels(indices)``, the uint8 NHWC rows of those inputs."""
    mine = run.my_indices(len(sources))
    pixels = read_pixels(run, [sources[i] for i in mine], size, no_resize)
    row_of = {i: k for k, i in enumerate(mine)}
    return mine, lambda indices: pixels[[row_of[i] for i in indices]]


def stdout_is_tty() -> bool:
    return _isatty(sys.stdout)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
