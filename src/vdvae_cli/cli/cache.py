"""``vdvae cache``: what the model cache holds (name, size, where), and removing entries."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ._app import command, emit_json, out, say
from .options import JsonOpt, QuietOpt


@command(
    "cache",
    epilog="Examples:\n\n"
    "  vdvae cache\n\n"
    "  vdvae cache --remove ffhq256\n\n"
    "  vdvae cache --remove-all\n\n"
    "  vdvae cache --json | jq -r .path",
)
def cache(
    remove: Annotated[Optional[list[str]], typer.Option(
        "--remove", "-r", metavar="NAME", help="Delete this entry (repeat for several).", show_default=False)] = None,
    remove_all: Annotated[bool, typer.Option(
        "--remove-all", help="Delete every converted model, partial download and BatchNorm statistics file in the cache.")]
    = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """List what the cache holds (downloaded models, partial downloads, BatchNorm statistics), or remove some.

    Named models (`--model ffhq256`) are downloaded on first use and converted once into the cache
    ($VDVAE_CACHE, default ~/.cache/vdvae-cli); an interrupted download stays there as a partial
    file that the next download resumes. `--readjust-bn` keeps an NVAE's re-adjusted BatchNorm
    statistics there too (kind bn, named bn/KEY; a later run recomputes a removed one). hf:// models
    live in the Hugging Face cache.
    """
    from ..modelfiles.cache import cached_models, remove as remove_entries
    from ..modelfiles.paths import cache_dir, human_size

    skipped: list[str] = []
    if remove or remove_all:
        try:
            gone = remove_entries(list(remove or []), everything=remove_all, skipped=skipped)
        finally:  # what the one listing left out, said even when a name is refused
            if not quiet:
                for note in skipped:
                    say(f"skipped {note}")
        for c in gone:
            if json_out:
                emit_json({**c.to_dict(), "removed": True})
            elif not quiet:
                say(f"removed {c.name} ({human_size(c.size)}, {c.path})")
        if not gone and not quiet and not json_out:
            say(f"the cache ({cache_dir()}) is empty")
        return
    entries = cached_models(skipped)
    if not quiet:
        for note in skipped:
            say(f"skipped {note}")
    if not entries:  # with --json too: no lines on stdout, the reason on stderr
        if not quiet:
            say(f"the cache ({cache_dir()}) is empty; `vdvae models` lists what can be downloaded")
        return
    if json_out:
        for c in entries:
            emit_json(c.to_dict())
        return
    width = max(4, *(len(c.name) for c in entries))
    out(f"{'name':<{width}}  {'kind':<7}  {'size':>8}  where")
    for c in entries:
        out(f"{c.name:<{width}}  {c.kind:<7}  {human_size(c.size):>8}  {c.path}")
    total = sum(c.size for c in entries)
    if not quiet:
        say(f"{len(entries)} entr{'ies' if len(entries) != 1 else 'y'}, {human_size(total)} in all")
