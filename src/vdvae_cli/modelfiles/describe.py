"""What a model is, without loading it: from its file's safetensors header, or for a registry model
that is not downloaded yet, from its known config. No torch, no weights read, no network for a
named model (``vdvae info`` answers in a fraction of a second).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import catalog as registry
from ..engine.interface import FamilyConfig
from ..engine.registry import family_named
from ..engine.keys import model_fingerprint


@dataclass(frozen=True)
class ModelFacts:
    """``cfg`` is None only for a registry model whose architecture is read at download time
    (ffhq1024). ``path`` is None when the model is not on this machine."""

    name: str
    source: str  # shipped, official, hub, file, or "not downloaded"
    path: Path | None
    cfg: FamilyConfig | None
    parameters: int | None
    fingerprint: str | None
    note: str = ""


def describe_model(ref: "str | os.PathLike[str] | None", *, offline: bool = False) -> ModelFacts:
    """Facts about the model ``ref`` names (see :func:`vdvae_cli.modelfiles.resolve.resolve_model`)."""
    from . import fetch
    from .cache import fetch_model

    text = os.fspath(ref).strip() if ref is not None else ""
    entry = registry.find_entry(text) if text else None
    if entry is not None and entry.kind == "official" and fetch.cached_path(entry) is None:
        return _from_entry(entry)
    resolved = fetch_model(text or None, offline=offline)
    return _from_file(resolved.path, resolved.name, resolved.source)


def _from_entry(entry: registry.RegistryEntry) -> ModelFacts:
    from .paths import human_size

    note = "not downloaded yet: fetched and converted on first use"
    if entry.size_bytes:
        note += f" (about {human_size(entry.size_bytes)})"
    cfg = entry.config
    if cfg is None and not entry.hparams_from_log:
        cfg = family_named(entry.family).official_config(entry.config_name or entry.name)
    if cfg is None:
        note += "; its architecture is read from the run's log when it is downloaded"
    return ModelFacts(entry.name, "not downloaded", None, cfg, entry.parameters, None, note=note)


def _from_file(path: Path, name: str, source: str) -> ModelFacts:
    from .header import checked_config, parameter_count, read_header

    header = read_header(path)  # strict: a hostile header is refused here
    meta = header.get("__metadata__") or {}
    cfg = checked_config(path, header)  # the config must describe the file's tensors (nothing is built)
    params = parameter_count(cfg)  # trainable parameters (BatchNorm statistics are not parameters)
    digest = meta.get("weights_sha256")
    digest = digest if isinstance(digest, str) and len(digest) == 64 else None
    return ModelFacts(name, source, path, cfg, params, model_fingerprint(cfg, digest))
