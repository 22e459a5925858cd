"""``vdvae models`` (what can be named with --model) and ``vdvae download`` (fetch one for offline use)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Iterator, Optional

import typer

from ._app import command, emit_json, out, say
from .options import ForceOpt, JsonOpt, QuietOpt

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from ..modelfiles.transfer import DownloadProgress, ProgressCallback


@contextmanager
def download_progress(quiet: bool) -> "Iterator[Optional[ProgressCallback]]":
    """A progress callback for the hub functions: a rich bar on a terminal, a few plain lines otherwise."""
    if quiet:
        yield None
        return
    from ..modelfiles.paths import human_size

    def connecting(event: "DownloadProgress") -> bool:
        """Say at once what the wait that follows is for (a first connection can take a while)."""
        if event.stage == "connect":
            say(f"fetching {event.filename} (first use; waiting for the network)")
        return event.stage == "connect"

    if not sys.stderr.isatty():
        said: set[tuple[str, str]] = set()

        def plain(event: "DownloadProgress") -> None:
            if connecting(event):
                return
            key = (event.stage, event.filename)
            if key in said or event.stage == "done":
                return
            said.add(key)
            if event.stage == "download":
                say(f"downloading {event.filename} ({human_size(event.total)})")
            elif event.stage == "convert":
                say(f"converting to {event.filename}")

        yield plain
        return

    # The bar starts with the first event: a model already on this machine draws nothing (and rich
    # is not even imported).
    bar: "Progress | None" = None
    tasks: "dict[tuple[str, str], TaskID]" = {}

    def rich_cb(event: "DownloadProgress") -> None:
        nonlocal bar
        if connecting(event):
            return
        key = (event.stage, event.filename)
        if event.stage == "done":
            return
        if bar is None:
            from rich.progress import (BarColumn, DownloadColumn, SpinnerColumn, TextColumn, TimeRemainingColumn,
                                       TransferSpeedColumn)

            from ._progress import stderr_progress

            bar = stderr_progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                  TransferSpeedColumn(), TimeRemainingColumn())
            bar.start()
        if key not in tasks:
            label = event.filename if event.stage == "download" else f"converting to {event.filename}"
            tasks[key] = bar.add_task(label, total=event.total)
        bar.update(tasks[key], completed=event.done, total=event.total)

    try:
        yield rich_cb
    finally:
        if bar is not None:
            bar.stop()


@command(
    "download",
    epilog="Examples:\n\n"
    "  vdvae download cifar10\n\n"
    "  vdvae download ffhq256 --keep-original\n\n"
    "  vdvae download hf://owner/repo@v1.0\n\n"
    "  VDVAE_CACHE=/data/vdvae vdvae download imagenet64 --json",
)
def download(
    name: Annotated[str, typer.Argument(
        help="Registry name (see `vdvae models`), or a Hub model: hf://owner/repo, optionally "
        "/path/to/file.safetensors and @revision.", show_default=False)],
    force: ForceOpt = False,
    keep_original: Annotated[bool, typer.Option(
        "--keep-original", help="Keep the downloaded official .th (and log) next to the converted file.")] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Download a model once so that --model NAME works offline.

    Official checkpoints are fetched from openaipublic (resumable: run the command again after an
    interruption), converted to a self-describing safetensors file in the cache ($VDVAE_CACHE, default
    ~/.cache/vdvae-cli) and the pickle is deleted. hf:// models go to the Hugging Face cache.
    """
    from ..modelfiles.fetch import download as fetch
    from ..modelfiles.paths import human_size

    with download_progress(quiet) as progress:  # the records come after the bar, on stdout
        resolved = fetch(name, force=force, keep_original=keep_original, progress=progress)
    size = resolved.path.stat().st_size
    if json_out:
        emit_json({"name": resolved.name, "path": str(resolved.path), "source": resolved.source,
                   "detail": resolved.detail, "bytes": size})
    elif not quiet:
        say(f"{resolved.name}: {resolved.path} ({human_size(size)}, {resolved.source})")


@command(
    "models",
    epilog="Examples:\n\n"
    "  vdvae models\n\n"
    "  vdvae models --long\n\n"
    "  vdvae models --json | jq -r 'select(.cached) | .name'",
)
def models(
    long: Annotated[bool, typer.Option("--long", "-l", help="Each model's licence, source and cached file in full.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """List the models --model can name: those shipped in the package's weights/ folder, the official
    openai/vdvae and NVlabs/NVAE checkpoints, and where each is cached. The default model is marked
    with *. Official models are downloaded on their first use (or ahead of time with `vdvae download
    NAME`).
    """
    from ..modelfiles import catalog as registry
    from ..modelfiles.paths import cache_dir, human_size
    from ..modelfiles.fetch import cached_path

    default = registry.default_name()
    rows = []
    for entry in registry.all_entries():
        path = cached_path(entry)
        info = entry.to_dict()
        info.update(cached=path is not None, cached_path=str(path) if path else None, default=entry.name == default)
        rows.append(info)
    if json_out:
        for info in rows:
            emit_json(info)
        return

    def count(n: float | None, approx: bool, fmt: str) -> str:
        return "?" if n is None else ("~" if approx else "") + fmt.format(n)

    if long:
        for r in rows:
            out(f"{r['name']}{' (default)' if r['default'] else ''}: {r['title']}")
            out(f"  licence  {r['license']}")
            out(f"  source   {r['source']}")
            out(f"  cached   {r['cached_path'] or 'no (downloaded on first use)'}")
            if r["note"]:
                out(f"  note     {r['note']}")
        out(f"cache: {cache_dir()} (VDVAE_CACHE)")
    else:  # fits an 80-column terminal: the long texts are behind --long
        table = [("name", "res", "layers", "params", "size", "cached", "terms")]
        for r in rows:
            table.append((
                r["name"] + (" *" if r["default"] else ""),
                str(r["resolution"] or "?"),
                count(r["latent_layers"], False, "{}"),
                count(r["parameters"] and r["parameters"] / 1e6, r["approximate"], "{:.1f}M"),
                ("~" if r["approximate"] else "") + human_size(r["size_bytes"]),
                "yes" if r["cached"] else "no",
                _terms(r["license"]),
            ))
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for row in table:
            cells = [c.rjust(w) if 1 <= i <= 4 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
            out("  ".join(cells).rstrip())
        out(f"cache: {cache_dir()}; licences and sources: vdvae models --long")
    if default is None:
        say("no model is shipped in weights/, so --model is required")


def _terms(licence: str) -> str:
    """The one thing about a licence to see at a glance."""
    text = licence.lower()
    if "non-commercial" in text:
        return "non-commercial"
    if "research-only" in text:
        return "research only"
    return licence.split(";")[0].split(" (")[0]
