"""Make a named model available on this machine: an official checkpoint is downloaded once,
verified, converted by its family into a self-describing safetensors file in our cache, and its
pickle deleted; a model published on the Hugging Face Hub is fetched into the Hub's cache."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from . import catalog as registry
from ..base.errors import CheckpointError, ModelNotFoundError, NetworkError, UsageError
from .catalog import RegistryEntry
from . import transfer
from .transfer import ProgressCallback, _discard, _report, _sha256_matches, _url_filename, fetch_url, verify_download
from .hfhub import DEFAULT_HF_FILENAME, HubRef, fetch_hub, hub_cached_path, parse_hf_ref
from .paths import cache_dir, is_offline, official_cache_path
from .resolve import ResolvedModel, _is_file, _looks_like_path


MAX_LOG_DOWNLOAD = 1 << 30


def cached_path(entry: RegistryEntry) -> Path | None:
    """Where ``entry``'s usable file is on this machine, without any network; None if absent."""
    if entry.kind == "shipped":
        return entry.path
    local = official_cache_path(entry.name)
    if _is_file(local):
        return local
    if entry.hf_repo:
        return hub_cached_path(HubRef(entry.hf_repo, entry.hf_filename or DEFAULT_HF_FILENAME, entry.hf_revision))
    return None


def _cached_ok(path: Path) -> bool:
    """A converted file that is complete (its header and size agree)."""
    from .header import read_header

    try:
        read_header(path)
    except CheckpointError:
        return False
    return True


@contextmanager
def _cache_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` so two downloads never write the same ``.part`` file.
    The lock dies with the process (flock), so a crash leaves nothing to clean up."""
    try:
        import fcntl
    except ImportError:  # Windows: no locking
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise NetworkError(f"another `vdvae download` is writing to {folder}",
                               hint="wait for it to finish, then run the command again") from None
        yield
    finally:
        os.close(fd)


def download_official(
    name: str | RegistryEntry,
    *,
    force: bool = False,
    keep_original: bool = False,
    progress: ProgressCallback | None = None,
) -> Path:
    """Fetch an official EMA checkpoint, convert it once into the cache and return the cached file.

    ``name`` is a registry name or a :class:`RegistryEntry` (e.g. a mirror or a test stand-in). The
    hyperparameters come from the entry (the run's log.jsonl for ffhq1024). An already converted,
    complete file is returned at once unless ``force``. The downloaded pickle (and log) is deleted
    after conversion unless ``keep_original``.
    """
    entry = name if isinstance(name, RegistryEntry) else registry.official_entry(name)
    url = entry.checkpoint_url
    if entry.manual and not url:
        raise ModelNotFoundError(f"{entry.name!r} is published in a folder vdvae-cli cannot download from; "
                                 f"licence: {entry.license_text}",
                                 hint=entry.manual_steps(official_cache_path(entry.name)))
    if entry.kind != "official" or not url:
        raise ModelNotFoundError(f"{entry.name!r} has no official download")
    dest = official_cache_path(entry.name)
    if _is_file(dest) and not force and _cached_ok(dest):
        _report(progress, "done", dest.name, dest.stat().st_size, dest.stat().st_size)
        return dest
    if is_offline():
        raise NetworkError(
            f"HF_HUB_OFFLINE is set, so {entry.name!r} is not downloaded",
            hint="unset HF_HUB_OFFLINE, or convert a file you have: vdvae convert FILE --config NAME -o X.safetensors",
        )
    from urllib.parse import urlsplit

    downloads = cache_dir() / "downloads"
    try:
        downloads.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NetworkError(f"cannot create the cache folder {downloads}: {exc.strerror}",
                           hint="set VDVAE_CACHE to a writable folder") from None
    with _cache_lock(downloads):
        # said before the first byte is asked for: connecting can take a while, and failing longer
        _report(progress, "connect", f"{entry.name} from {urlsplit(url).netloc or url}")
        _download_and_convert(entry, url, dest, downloads, force=force, keep_original=keep_original, progress=progress)
    _report(progress, "done", dest.name, dest.stat().st_size, dest.stat().st_size)
    return dest


def _fetch_verified(url: str, path: Path, kind: str, *, size: int | None, sha256: str | None,
                    max_bytes: int, progress: ProgressCallback | None, by_hand: str) -> None:
    """``path`` from ``url`` unless a verified copy is already there; a copy kept from an earlier
    run that no longer passes verification (an older version of this tool kept anything) is
    deleted and fetched again."""
    if path.is_file():
        try:
            verify_download(path, kind, size=size, sha256=sha256)
            return
        except (NetworkError, CheckpointError):
            _discard(path)
    fetch_url(url, path, progress=progress, by_hand=by_hand, kind=kind, size=size, sha256=sha256,
              max_bytes=max_bytes)


def _download_and_convert(entry: RegistryEntry, url: str, dest: Path, downloads: Path, *, force: bool,
                          keep_original: bool, progress: ProgressCallback | None) -> None:
    from ..engine.registry import family_named
    from .convert import convert_official
    from ..base.errors import ConfigError
    from ..base.safety import clean

    pickle = downloads / _url_filename(url)
    log = downloads / _url_filename(entry.log_url) if entry.hparams_from_log and entry.log_url else None
    how = f"--hparams {log.name}" if log is not None else f"--config {entry.config_name or entry.name}"
    by_hand = (f"or fetch {url}{' and its log' if log is not None else ''} by hand and run "
               f"`vdvae convert {pickle.name} {how} -o {dest}`")
    if force:
        for stale in (pickle, log):
            if stale is not None:
                for p in (stale, stale.with_name(stale.name + ".part"), stale.with_name(stale.name + ".part.json")):
                    p.unlink(missing_ok=True)

    family = family_named(entry.family)
    if log is not None and entry.config is None:
        assert entry.log_url is not None
        _fetch_verified(entry.log_url, log, "log", size=entry.log_size, sha256=entry.log_sha256,
                        max_bytes=MAX_LOG_DOWNLOAD, progress=progress, by_hand=by_hand)
        try:
            layout = family.official_layout(None, log, name=entry.name)
        except ConfigError as exc:
            log.unlink(missing_ok=True)
            raise CheckpointError(f"the published hyperparameters {clean(entry.log_url)} do not describe a model: "
                                  f"{exc}; the log was not kept", hint=exc.hint) from None
    else:
        layout = family.official_layout(entry.config or entry.config_name or entry.name)
    _fetch_verified(url, pickle, "pickle", size=entry.checkpoint_size, sha256=entry.checkpoint_sha256,
                    max_bytes=transfer.MAX_DOWNLOAD, progress=progress, by_hand=by_hand)

    _report(progress, "convert", dest.name)
    try:
        ck = family.load_official(pickle, layout)
    except CheckpointError as exc:  # it passed the magic and directory checks but does not load
        pickle.unlink(missing_ok=True)
        raise CheckpointError(f"{exc}; the download was not kept", hint="run the command again") from None
    meta = {"source_url": url, "registry_name": entry.name, "license": entry.license_text}
    damaged = f"if the download is damaged: vdvae download {entry.name} --force"
    try:
        convert_official(pickle, dest, force=True, metadata=meta, checkpoint=ck)
    except CheckpointError as exc:
        if log is None:
            raise CheckpointError(str(exc), hint=damaged) from None
        try:  # the log may describe another run than the weights: read the layout off the weights
            convert_official(pickle, dest, force=True, metadata=meta,
                             checkpoint=family.load_official(pickle, None, state=ck.state))
        except CheckpointError:
            raise CheckpointError(str(exc), hint=damaged) from None
    if not keep_original:
        pickle.unlink(missing_ok=True)
        if log is not None:
            log.unlink(missing_ok=True)


def download(
    ref: str,
    *,
    force: bool = False,
    keep_original: bool = False,
    progress: ProgressCallback | None = None,
) -> ResolvedModel:
    """``vdvae download``: make ``ref`` (registry name or hf:// reference) available offline."""
    ref = ref.strip()
    if ref.startswith("hf://"):
        hub_ref = parse_hf_ref(ref)
        if is_offline():
            raise NetworkError(f"HF_HUB_OFFLINE is set, so {ref} is not downloaded", hint="unset HF_HUB_OFFLINE")
        path = fetch_hub(hub_ref, force=force, progress=progress)
        _report(progress, "done", path.name, path.stat().st_size, path.stat().st_size)
        return ResolvedModel(path, hub_ref.repo_id.split("/")[-1], "hub", str(hub_ref))
    if _looks_like_path(ref) and registry.find_entry(ref) is None:
        raise UsageError(f"{ref!r} is a file path; there is nothing to download",
                         hint="to convert an official .th file use `vdvae convert`")
    entry = registry.get_entry(ref)
    if entry.kind == "shipped":
        assert entry.path is not None
        return ResolvedModel(entry.path, entry.name, "shipped", str(entry.path))
    local = official_cache_path(entry.name)
    if entry.hf_repo and not (local.is_file() and not force):
        hub_ref = HubRef(entry.hf_repo, entry.hf_filename or DEFAULT_HF_FILENAME, entry.hf_revision)
        if is_offline():
            raise NetworkError(f"HF_HUB_OFFLINE is set, so {entry.name!r} is not downloaded",
                               hint="unset HF_HUB_OFFLINE")
        path = fetch_hub(hub_ref, force=force, progress=progress)
        return ResolvedModel(path, entry.name, "hub", str(hub_ref))
    path = download_official(entry, force=force, keep_original=keep_original, progress=progress)
    return ResolvedModel(path, entry.name, "official", f"converted from {entry.checkpoint_url}")


def fetch_checked(url: str, sha256: str, *, progress: ProgressCallback | None = None,
                  by_hand: str | None = None) -> Path:
    """A file that a command needs besides models (e.g. a metric's network weights), fetched once
    into ``<cache>/files/`` with :func:`fetch_url` and checked against ``sha256``: the full hex
    digest, or the prefix of at least 8 hex digits a publisher puts in the file name."""
    dest = cache_dir() / "files" / _url_filename(url)
    if dest.is_file() and _sha256_matches(dest, sha256):
        _report(progress, "done", dest.name, dest.stat().st_size, dest.stat().st_size)
        return dest
    if is_offline():
        raise NetworkError(f"HF_HUB_OFFLINE is set, so {url} is not downloaded",
                           hint=f"unset HF_HUB_OFFLINE, or put the file at {dest}")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NetworkError(f"cannot create the cache folder {dest.parent}: {exc.strerror}",
                           hint="set VDVAE_CACHE to a writable folder") from None
    with _cache_lock(dest.parent):
        fetch_url(url, dest, progress=progress, by_hand=by_hand or f"or download it by hand to {dest}")
    if not _sha256_matches(dest, sha256):
        dest.unlink(missing_ok=True)
        raise NetworkError(f"{url} does not have the expected sha256 ({sha256}...)",
                           hint="the file was damaged or replaced on the way; run the command again")
    _report(progress, "done", dest.name, dest.stat().st_size, dest.stat().st_size)
    return dest
