"""Models on this machine: fetch a named model on first use, offline mode, list and remove cached files.

``fetch_model`` is :func:`vdvae_cli.modelfiles.resolve.resolve_model` plus first-use downloads, the way rembg and
huggingface_hub behave: a registry name (``ffhq256``) or an ``hf://`` reference that is not on
this machine yet is downloaded (resumable, size-checked, converted once) through
:func:`vdvae_cli.modelfiles.fetch.download`, and later calls find it in the cache without any network.

Offline mode turns every download off: ``offline=True`` (the CLI's ``--offline``), or
``VDVAE_OFFLINE=1`` / ``HF_HUB_OFFLINE=1`` in the environment. A model that is not cached is then
one error that names the command to run.

The cache itself is :func:`vdvae_cli.modelfiles.paths.cache_dir`; ``cached_models`` lists what it holds (and
the registry's Hub files in the Hugging Face cache), ``remove`` deletes entries. No torch here.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import catalog as registry, fetch, hfhub, paths, resolve, transfer
from ..base.errors import ModelNotFoundError, OutputError, UsageError

if TYPE_CHECKING:
    import torch

    from ..engine.interface import LatentModel

OFFLINE_VARS = ("VDVAE_OFFLINE", "HF_HUB_OFFLINE")


def offline_reason(flag: bool = False) -> str | None:
    """Why downloads are off (``--offline``, ``VDVAE_OFFLINE=1``, ``HF_HUB_OFFLINE=1``), or None."""
    if flag:
        return "--offline"
    for var in OFFLINE_VARS:
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var}={os.environ[var].strip()}"
    return None


def _not_cached(what: str, why: str, size: str | None = None) -> ModelNotFoundError:
    about = f" (about {size})" if size else ""
    return ModelNotFoundError(
        f"{what} is not downloaded yet and downloads are off ({why})",
        hint=f"run `vdvae download {what}` once with network access{about}; it is then used offline",
    )


def fetch_model(
    ref: "str | os.PathLike[str] | resolve.ResolvedModel | None" = None,
    *,
    offline: bool = False,
    progress: "transfer.ProgressCallback | None" = None,
) -> resolve.ResolvedModel:
    """The file ``ref`` names (see :func:`vdvae_cli.modelfiles.resolve.resolve_model`), downloaded first when it is
    a registry model or ``hf://`` file that this machine does not have yet and downloads are on."""
    if isinstance(ref, resolve.ResolvedModel):
        return ref
    text = os.fspath(ref).strip() if ref is not None else ""
    text = text or os.environ.get("VDVAE_MODEL", "").strip()
    why = offline_reason(offline)
    if text.startswith("hf://"):
        hub_ref = hfhub.parse_hf_ref(text)
        name = hub_ref.repo_id.split("/")[-1]
        if why is None:
            return resolve.ResolvedModel(hfhub.fetch_hub(hub_ref, progress=progress), name, "hub", str(hub_ref))
        cached = hfhub.hub_cached_path(hub_ref)
        if cached is None:
            raise _not_cached(text, why)
        return resolve.ResolvedModel(cached, name, "hub", str(hub_ref))
    entry = registry.find_entry(text) if text else None
    if entry is None or entry.kind == "shipped" or fetch.cached_path(entry) is not None:
        return resolve.resolve_model(text or None)
    if why is not None:
        raise _not_cached(entry.name, why, paths.human_size(entry.size_bytes))
    return fetch.download(entry.name, progress=progress)


def load(
    ref: "str | os.PathLike[str] | resolve.ResolvedModel | None" = None,
    *,
    device: "str | torch.device" = "auto",
    dtype: "str | torch.dtype" = "fp32",
    offline: bool = False,
    progress: "transfer.ProgressCallback | None" = None,
) -> "LatentModel":
    """:func:`fetch_model`, then load it as an eval-mode model (``vdvae_cli.load``)."""
    return resolve.load_model(fetch_model(ref, offline=offline, progress=progress), device=device, dtype=dtype)


# --------------------------------------------------------------------------------------------------
# What the cache holds


@dataclass(frozen=True)
class CachedFile:
    """One entry of ``vdvae cache``: ``kind`` is ``model`` (a converted model in our cache),
    ``partial`` (a download that stopped; the next download resumes it), ``bn`` (an NVAE's BatchNorm
    statistics kept by ``--readjust-bn``, named ``bn/KEY``) or ``hub`` (a registry model's file in
    the Hugging Face cache)."""

    name: str
    kind: str
    path: Path
    size: int

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind, "path": str(self.path), "bytes": self.size}


def _size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except OSError:
        return 0


def _regular(path: Path) -> str | None:
    """None for a regular file (not followed through a link); else what it is instead."""
    try:
        mode = path.lstat().st_mode
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if stat.S_ISLNK(mode):
        return "a symbolic link (not followed: the cache never reaches outside its own folder)"
    if not stat.S_ISREG(mode):
        return "not a regular file"
    return None


def _subfolder(root: Path, name: str, skipped: list[str]) -> Path | None:
    """``root/name`` when it is a real folder inside ``root`` (not a link to somewhere else)."""
    folder = root / name
    try:
        mode = folder.lstat().st_mode
    except OSError:
        return None
    if stat.S_ISLNK(mode):
        skipped.append(f"{folder}: a symbolic link (not followed: the cache never reaches outside its own folder)")
        return None
    return folder if stat.S_ISDIR(mode) else None


def _entries(folder: Path, pattern: str, skipped: list[str]) -> list[Path]:
    """Regular files in ``folder`` matching ``pattern``; links and other kinds go to ``skipped``."""
    found = []
    for p in sorted(folder.glob(pattern)):
        why = _regular(p)
        if why is None:
            found.append(p)
        else:
            skipped.append(f"{p}: {why}")
    return found


def cache_root() -> Path:
    """The cache folder as the file system finds it (``$VDVAE_CACHE`` may itself be a link; what is
    inside is then judged from its real place)."""
    return paths.cache_dir().resolve()


def cached_models(skipped: list[str] | None = None) -> list[CachedFile]:
    """Everything the cache holds, converted models first, by name: only regular files in the
    cache's own folders. Symbolic links and anything else are left out (and named in ``skipped``
    when a list is given): nothing here ever leads outside the cache."""
    skipped = [] if skipped is None else skipped
    folder = cache_root()
    found: list[CachedFile] = []
    if folder.exists() and not folder.is_dir():  # VDVAE_CACHE naming a file: say so, not "empty"
        raise UsageError(f"the cache {paths.cache_dir()} is not a folder", hint="set VDVAE_CACHE to a folder")
    if folder.is_dir():
        found += [CachedFile(p.stem, "model", p, _size(p)) for p in _entries(folder, "*.safetensors", skipped)]
    downloads = _subfolder(folder, "downloads", skipped)
    if downloads is not None:
        found += [CachedFile(p.name, "partial", p, _size(p)) for p in _entries(downloads, "*", skipped)]
    batchnorm = _subfolder(folder, "bn", skipped)  # --readjust-bn's statistics (families/nvae/batchnorm.py)
    if batchnorm is not None:
        found += [CachedFile(f"bn/{p.stem}", "bn", p, _size(p)) for p in _entries(batchnorm, "*.safetensors", skipped)]
    for entry in registry.all_entries():
        if entry.kind == "official" and entry.hf_repo and not paths.official_cache_path(entry.name).is_file():
            path = fetch.cached_path(entry)
            if path is not None:
                found.append(CachedFile(entry.name, "hub", path, _size(path)))
    return found


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path`` is a regular file whose real folder is ``root`` or one of its sub-folders
    ``downloads`` and ``bn``, checked again just before it is deleted."""
    if _regular(path) is not None:
        return False
    parent = path.parent.resolve()
    return parent == root or parent in (root / "downloads", root / "bn")


def remove(names: list[str], *, everything: bool = False, skipped: list[str] | None = None) -> list[CachedFile]:
    """Delete the named entries (a model name, or a partial download's file name), or all of them.
    Every name is checked before anything is deleted. Returns what was removed; what the listing
    left out (links, odd files) goes to ``skipped``, as :func:`cached_models` says."""
    present = cached_models(skipped)
    if everything:
        chosen = [c for c in present if c.kind != "hub"]  # the Hugging Face cache is shared: never emptied here
    else:
        chosen = []
        for name in names:
            hits = [c for c in present if name in (c.name, c.path.name)]
            if not hits:
                known = ", ".join(sorted({c.name for c in present})) or "nothing"
                raise ModelNotFoundError(f"nothing named {name!r} in the cache ({paths.cache_dir()})",
                                         hint=f"it holds: {known}")
            if any(c.kind == "hub" for c in hits):
                raise UsageError(f"{name!r} lives in the Hugging Face cache, shared with other programs",
                                 hint="remove it there: hf cache delete")
            chosen += [c for c in hits if c not in chosen]
    root = cache_root()
    removed: list[CachedFile] = []
    for c in chosen:
        if not _inside(c.path, root):  # changed since it was listed: never delete outside the cache
            raise OutputError(f"not removing {c.path}: it is no longer a regular file in the cache's folder ({root})",
                              hint=f"removed before it: {len(removed)} entries")
        try:
            c.path.unlink(missing_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot remove {c.path}: {exc.strerror}") from None
        removed.append(c)
    return removed
