"""The models ``--model NAME`` can name: the five official openai/vdvae checkpoints and the shipped one.

An official entry says where the released EMA weights live (and the run's ``-log.jsonl`` where one is
published), what the model is (resolution, latent layers, parameters), its licence, and optionally a
Hub location of an already converted safetensors file. A *shipped* entry is any
``weights/*.safetensors`` file that comes with the package; its name is the file stem.

This module is cheap to import (no torch): ``vdvae models`` and ``--help`` use it. Where files are
cached and how they are fetched lives in :mod:`vdvae_cli.modelfiles.resolve`.

Environment:

* ``VDVAE_OFFICIAL_BASE_URL`` replaces the official base URL (a mirror, or a local test server).
* ``VDVAE_WEIGHTS_DIR`` replaces the folder searched for shipped models.
"""

from __future__ import annotations

import difflib
import os
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from ..base.errors import ModelNotFoundError
from ..engine.registry import DEFAULT_FAMILY

OFFICIAL_BASE_URL = "https://openaipublic.blob.core.windows.net/very-deep-vaes-assets"
CODE_LICENSE = "MIT (openai/vdvae)"
FFHQ_LICENSE = "FFHQ dataset: CC BY-NC-SA 4.0 (non-commercial)"

Kind = Literal["official", "shipped"]


@dataclass(frozen=True)
class RegistryEntry:
    """One model that can be named by ``--model NAME``.

    ``checkpoint`` and ``log`` are URLs, or paths relative to the official base URL (so a mirror can be
    set with ``VDVAE_OFFICIAL_BASE_URL``). The network's hyperparameters come from, in order: ``config``
    (an explicit :class:`VDVAEConfig`), the published ``log`` when ``hparams_from_log`` is set, else
    ``official_config(config_name or name)``. ``latent_layers``/``parameters`` are for display; None
    means "not known until the file is read"; ``approximate`` marks figures taken from the README.
    """

    name: str
    title: str
    kind: Kind = "official"
    resolution: int | None = None
    latent_layers: int | None = None
    parameters: int | None = None
    approximate: bool = False
    license: str = CODE_LICENSE
    data_license: str | None = None
    note: str = ""
    checkpoint: str | None = None
    log: str | None = None
    hparams_from_log: bool = False
    config_name: str | None = None
    config: Any = None  # a family config (FamilyConfig)
    hf_repo: str | None = None
    hf_filename: str | None = None
    hf_revision: str | None = None
    path: Path | None = None  # shipped models: the file itself
    # What a download must be to count (hub.verify_download): exact size in bytes and sha256 of the
    # published file. None where not recorded yet: then the download is checked by its magic bytes
    # and a parseable header (and a size cap) only. Fill them in from a trusted copy.
    checkpoint_size: int | None = None
    checkpoint_sha256: str | None = None
    log_size: int | None = None
    log_sha256: str | None = None
    family: str = DEFAULT_FAMILY
    manual: str | None = None  # published where we cannot download from (a folder link): steps are printed

    @property
    def checkpoint_url(self) -> str | None:
        return official_url(self.checkpoint) if self.checkpoint else None

    @property
    def log_url(self) -> str | None:
        return official_url(self.log) if self.log else None

    @property
    def size_bytes(self) -> int | None:
        """Expected float32 payload (parameters x 4 bytes); an estimate for display only."""
        return self.parameters * 4 if self.parameters else None

    @property
    def license_text(self) -> str:
        return f"{self.license}; {self.data_license}" if self.data_license else self.license

    @property
    def source(self) -> str:
        """Where the weights come from, in words."""
        if self.kind == "shipped":
            return "shipped"
        if self.hf_repo:
            rev = f"@{self.hf_revision}" if self.hf_revision else ""
            return f"hf://{self.hf_repo}/{self.hf_filename or 'model.safetensors'}{rev}"
        return self.checkpoint_url or (f"by hand: {self.manual}" if self.manual else "?")

    def manual_steps(self, dest: Path) -> str:
        """What to do by hand for an entry published only as a folder link."""
        return (f"download its checkpoint.pt by hand from {self.manual} (a browser, or gdown --folder), "
                f"then convert it once: vdvae convert checkpoint.pt -o {dest}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (URLs resolved against the current base URL)."""
        return {
            "name": self.name,
            "title": self.title,
            "kind": self.kind,
            "resolution": self.resolution,
            "latent_layers": self.latent_layers,
            "parameters": self.parameters,
            "approximate": self.approximate,
            "size_bytes": self.size_bytes,
            "license": self.license_text,
            "note": self.note,
            "checkpoint_url": self.checkpoint_url,
            "log_url": self.log_url,
            "hf_repo": self.hf_repo,
            "hf_filename": self.hf_filename,
            "hf_revision": self.hf_revision,
            "path": str(self.path) if self.path else None,
            "source": self.source,
            "checkpoint_size": self.checkpoint_size,
            "checkpoint_sha256": self.checkpoint_sha256,
            "log_size": self.log_size,
            "log_sha256": self.log_sha256,
            "family": self.family,
            "manual_url": self.manual,
        }


def official_url(path_or_url: str) -> str:
    """``path_or_url`` if it is a URL, else joined to ``$VDVAE_OFFICIAL_BASE_URL`` or the official base."""
    if "://" in path_or_url:
        return path_or_url
    base = (os.environ.get("VDVAE_OFFICIAL_BASE_URL") or OFFICIAL_BASE_URL).rstrip("/")
    return f"{base}/{path_or_url.lstrip('/')}"


# --------------------------------------------------------------------------------------------------
# The official checkpoints (openai/vdvae README; spec §12). Parameter counts are computed from hps.py.

OFFICIAL: dict[str, RegistryEntry] = {
    e.name: e
    for e in (
        RegistryEntry(
            name="cifar10", title="CIFAR-10 32x32 (seed 0)", resolution=32, latent_layers=43,
            parameters=39_145_700, data_license="CIFAR-10 dataset: no licence stated",
            note="2.879 bits/dim on the test set; only EMA weights published (seeds 1-3 also exist)",
            checkpoint="vdvae-assets-2/cifar10-seed0-iter-900000-model-ema.th",
            checkpoint_size=None, checkpoint_sha256=None,  # not recorded yet
        ),
        RegistryEntry(
            name="imagenet32", title="ImageNet 32x32", resolution=32, latent_layers=78,
            parameters=119_280_868, data_license="ImageNet: research-only terms of access",
            note="3.80 bits/dim on the test set",
            checkpoint="vdvae-assets/imagenet32-iter-1700000-model-ema.th",
            log="vdvae-assets/imagenet32-iter-1700000-log.jsonl",
            checkpoint_size=None, checkpoint_sha256=None, log_size=None, log_sha256=None,  # not recorded yet
        ),
        RegistryEntry(
            name="imagenet64", title="ImageNet 64x64", resolution=64, latent_layers=75,
            parameters=125_005_860, data_license="ImageNet: research-only terms of access",
            note="3.52 bits/dim on the test set",
            checkpoint="vdvae-assets-2/imagenet64-iter-1600000-model-ema.th",
            log="vdvae-assets-2/imagenet64-iter-1600000-log.jsonl",
            checkpoint_size=None, checkpoint_sha256=None, log_size=None, log_sha256=None,  # not recorded yet
        ),
        RegistryEntry(
            name="ffhq256", title="FFHQ 256x256 (5-bit)", resolution=256, latent_layers=66,
            parameters=114_874_852, data_license=FFHQ_LICENSE,
            note="0.61 bits/dim (5-bit) on the test set",
            checkpoint="vdvae-assets/ffhq256-iter-1700000-model-ema.th",
            log="vdvae-assets/ffhq256-iter-1700000-log.jsonl",
            checkpoint_size=None, checkpoint_sha256=None, log_size=None, log_sha256=None,  # not recorded yet
        ),
        RegistryEntry(
            # hps.py does not describe the published file (openai/vdvae issue #3): the hyperparameters
            # are read from the run's own log; layer count and size are the README's, not verified.
            name="ffhq1024", title="FFHQ 1024x1024", resolution=1024, latent_layers=None,
            parameters=115_000_000, approximate=True, data_license=FFHQ_LICENSE,
            note="2.42 bits/dim on the test set; architecture taken from the run's log.jsonl",
            checkpoint="vdvae-assets/ffhq1024-iter-1700000-model-ema.th",
            log="vdvae-assets/ffhq1024-iter-1700000-log.jsonl", hparams_from_log=True,
            checkpoint_size=None, checkpoint_sha256=None, log_size=None, log_sha256=None,  # not recorded yet
        ),
    )
}

# NVlabs/NVAE's released checkpoints (README of NVlabs/NVAE): one Google Drive folder, which has no
# stable per-file URLs, so `vdvae download` prints the manual steps. Figures are those of the README's
# training commands (spec §2.3); each file's own args are authoritative (the folder also holds a
# second, multiscale CIFAR-10 model whose command is not published).
NVAE_FOLDER = "https://drive.google.com/drive/folders/1KVpw12AzdVjvbfEYM_6_3sxTy93wWkbe"
NVAE_LICENSE = "NVIDIA Source Code License for NVAE (non-commercial: research or evaluation only)"
NVAE_OFFICIAL: dict[str, RegistryEntry] = {
    e.name: e
    for e in (
        RegistryEntry(name="nvae-mnist", title="NVAE MNIST 28x28 (binarised)", resolution=28, latent_layers=15,
                      parameters=33_363_134, approximate=True, data_license="MNIST: no licence stated"),
        RegistryEntry(name="nvae-cifar10", title="NVAE CIFAR-10 32x32", resolution=32, latent_layers=30,
                      parameters=130_852_480, approximate=True, data_license="CIFAR-10 dataset: no licence stated",
                      note="the folder also holds a multiscale CIFAR-10 model; convert either file"),
        RegistryEntry(name="nvae-celeba64", title="NVAE CelebA 64x64", resolution=64, latent_layers=35,
                      parameters=153_281_364, approximate=True,
                      data_license="CelebA: non-commercial research purposes only"),
        RegistryEntry(name="nvae-celebahq256", title="NVAE CelebA-HQ 256x256 (5-bit)", resolution=256,
                      latent_layers=36, parameters=330_798_664, approximate=True,
                      data_license="CelebA-HQ (from CelebA): non-commercial research purposes only"),
        RegistryEntry(name="nvae-ffhq256", title="NVAE FFHQ 256x256 (5-bit)", resolution=256, latent_layers=36,
                      parameters=330_798_664, approximate=True, data_license=FFHQ_LICENSE),
    )
    for e in [replace(e, family="nvae", manual=NVAE_FOLDER, license=NVAE_LICENSE)]
}

_EXTRA: dict[str, RegistryEntry] = {}


def register_entry(entry: RegistryEntry, *, replace_existing: bool = False) -> RegistryEntry:
    """Add a model to the registry for this process (a mirror, a private model, a test stand-in)."""
    if not replace_existing and (entry.name in _EXTRA or entry.name in OFFICIAL or entry.name in NVAE_OFFICIAL):
        raise ValueError(f"registry entry {entry.name!r} already exists")
    _EXTRA[entry.name] = entry
    return entry


def unregister_entry(name: str) -> None:
    _EXTRA.pop(name, None)


# --------------------------------------------------------------------------------------------------
# Shipped models: weights/*.safetensors


def weights_dir() -> Path | None:
    """The folder of shipped models: ``$VDVAE_WEIGHTS_DIR``, the package's ``weights/`` (wheel install),
    else the repository's ``weights/`` (editable install). None if there is none."""
    env = os.environ.get("VDVAE_WEIGHTS_DIR")
    if env:
        return Path(env).expanduser()
    package = Path(__file__).resolve().parents[1]  # vdvae_cli/ (this file is vdvae_cli/modelfiles/catalog.py)
    candidates = [package / "weights"]
    repo = package.parent.parent
    if (repo / "pyproject.toml").is_file():
        candidates.append(repo / "weights")
    return next((c for c in candidates if c.is_dir()), None)


def header_or_none(path: Path) -> dict[str, Any] | None:
    """A safetensors header, read without torch (bounded: the file may be hostile); None when unreadable."""
    from ..base.safety import MAX_HEADER_BYTES, loads

    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > MAX_HEADER_BYTES:
                return None
            header = loads(f.read(n))
    except (OSError, struct.error, ValueError):
        return None
    return header if isinstance(header, dict) else None


def describe_file(path: Path, *, name: str | None = None, kind: Kind = "shipped") -> RegistryEntry:
    """A registry entry for a vdvae-cli safetensors file, filled in from its header."""
    path = Path(path)
    entry = RegistryEntry(name=name or path.stem, title=path.stem, kind=kind, path=path,
                          license="see the model card in weights/")
    header = header_or_none(path)
    if header is None:
        return replace(entry, note="unreadable safetensors header")
    meta = header.get("__metadata__")
    if not isinstance(meta, dict):
        meta = {}
    params = sum(_numel(v.get("shape")) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict))
    changes: dict[str, Any] = {"parameters": params or None}
    try:
        from .header import _config_from_header

        parsed = _config_from_header(header, path)  # the family's config, read as loading reads it
        changes["family"] = getattr(parsed, "family", None) or DEFAULT_FAMILY
        changes.update(resolution=parsed.image_size, latent_layers=parsed.n_layers, title=parsed.name or path.stem)
    except Exception:  # no or bad metadata: still listed; loading reports the exact problem
        changes["note"] = "no model config metadata"
    for key, field_name in (("license", "license"), ("description", "note")):
        value = meta.get(key)
        if isinstance(value, str) and value:
            changes[field_name] = value[:500]
    return replace(entry, **changes)


def _numel(shape: Any) -> int:
    if not isinstance(shape, list) or len(shape) > 8:
        return 0
    n = 1
    for s in shape:
        if not isinstance(s, int) or s < 0:
            return 0
        n *= s
    return n


def shipped_entries() -> list[RegistryEntry]:
    """Every ``weights/*.safetensors`` file, sorted by name."""
    folder = weights_dir()
    if folder is None or not folder.is_dir():
        return []
    # NAME.prior.safetensors is NAME's learned prior (engine.learned_prior.companion_path), not a model
    return [describe_file(p) for p in sorted(folder.glob("*.safetensors"))
            if p.is_file() and not p.name.endswith(".prior.safetensors")]


def default_name() -> str | None:
    """The default model: the shipped one (``weights/DEFAULT`` picks among several), else None."""
    shipped = [e.name for e in shipped_entries()]
    if not shipped:
        return None
    folder = weights_dir()
    marker = folder / "DEFAULT" if folder else None
    if marker is not None and marker.is_file():
        wanted = marker.read_text().strip()
        wanted = wanted[: -len(".safetensors")] if wanted.endswith(".safetensors") else wanted
        if wanted in shipped:
            return wanted
    return shipped[0]


# --------------------------------------------------------------------------------------------------
# Lookup


def all_entries() -> list[RegistryEntry]:
    """Shipped models first, then official and registered ones (a shipped name hides an official one)."""
    entries = shipped_entries()
    seen = {e.name for e in entries}
    for e in (*OFFICIAL.values(), *NVAE_OFFICIAL.values(), *_EXTRA.values()):
        if e.name not in seen:
            entries.append(_EXTRA.get(e.name, e))
            seen.add(e.name)
    return entries


def names() -> list[str]:
    return [e.name for e in all_entries()]


def find_entry(name: str) -> RegistryEntry | None:
    for e in shipped_entries():
        if e.name == name:
            return e
    return _EXTRA.get(name) or OFFICIAL.get(name) or NVAE_OFFICIAL.get(name)


def get_entry(name: str) -> RegistryEntry:
    """The entry called ``name``; an unknown name raises ModelNotFoundError with close matches."""
    entry = find_entry(name)
    if entry is None:
        known = names()
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(close)}?" if close else f"known models: {', '.join(known)}."
        raise ModelNotFoundError(f"unknown model {name!r}", hint=f"{hint} `vdvae models` lists them all")
    return entry


def official_entry(name: str) -> RegistryEntry:
    """An entry that can be downloaded from an official URL (official or registered)."""
    entry = get_entry(name)
    if entry.kind != "official":
        raise ModelNotFoundError(f"{name!r} is shipped with vdvae-cli, there is nothing to download")
    return entry
