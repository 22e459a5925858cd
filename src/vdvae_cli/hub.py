"""Turn a model reference into a file, and a file into a model; download the official checkpoints.

A reference is one of:

* ``None``: ``$VDVAE_MODEL`` if set, else the shipped model (``weights/*.safetensors``);
* a registry name (``vdvae models``): a shipped model, or an official one converted into our cache;
* a path to a vdvae-cli ``.safetensors`` file;
* ``hf://owner/repo[/path/in/repo.safetensors][@revision]`` (default file ``model.safetensors``),
  fetched with ``huggingface_hub.hf_hub_download`` into the standard Hugging Face cache, which honours
  ``HF_HOME`` / ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` and ``HF_ENDPOINT``.

Official checkpoints are published as torch pickles. ``download_official`` fetches one once (streamed
to a ``.part`` file, resumed with HTTP Range), converts it to a self-describing safetensors file in
our cache and deletes the pickle. The cache folder is ``$VDVAE_CACHE``, else
``$XDG_CACHE_HOME/vdvae-cli``, else ``~/.cache/vdvae-cli``: ``<cache>/<name>.safetensors``, with
downloads in progress under ``<cache>/downloads/``. Converted files from the Hub are not copied
there: the Hugging Face cache is the only cache for them.

Library code here raises :mod:`vdvae_cli.errors` and never prints; progress goes to a callback.
"""

from __future__ import annotations

import difflib
import http.client
import os
import re
import socket
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator
from urllib.parse import urlsplit

from . import __version__, registry
from .errors import CheckpointError, ModelNotFoundError, NetworkError, UsageError
from .registry import RegistryEntry

if TYPE_CHECKING:
    import torch

    from .model import VAE

DEFAULT_HF_FILENAME = "model.safetensors"
PICKLE_SUFFIXES = {".th", ".pt", ".pth", ".pkl", ".bin", ".ckpt"}
CHUNK = 1 << 20
RETRIES = 3  # attempts per file and call when a transfer breaks off
RETRY_WAIT = 0.25  # seconds, doubled after each failed attempt
TIMEOUT = 30.0  # seconds without data before a connection counts as dead


# --------------------------------------------------------------------------------------------------
# Results and progress


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model reference led: the file, a display name and the kind of source.

    ``source`` is ``shipped``, ``official`` (converted official checkpoint in our cache), ``hub``
    or ``file``; ``detail`` says more (URL, hf:// reference, path). Usable wherever a path is.
    """

    path: Path
    name: str
    source: str
    detail: str = ""

    def __fspath__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class DownloadProgress:
    """One progress report: ``stage`` is ``download``, ``convert`` or ``done``."""

    stage: str
    filename: str
    done: int = 0
    total: int | None = None


ProgressCallback = Callable[[DownloadProgress], None]


def _report(progress: ProgressCallback | None, *args: Any) -> None:
    if progress is not None:
        progress(DownloadProgress(*args))


# --------------------------------------------------------------------------------------------------
# Environment


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def is_offline() -> bool:
    """``HF_HUB_OFFLINE`` (read now, not at import) turns every download off."""
    return _truthy(os.environ.get("HF_HUB_OFFLINE"))


def cache_dir() -> Path:
    """Our cache of converted official checkpoints (see the module docstring)."""
    env = os.environ.get("VDVAE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vdvae-cli"


def official_cache_path(name: str) -> Path:
    return cache_dir() / f"{name}.safetensors"


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, computed like huggingface_hub does but from the current environment."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def hf_endpoint() -> str | None:
    value = os.environ.get("HF_ENDPOINT")
    return value.rstrip("/") if value else None


def human_size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


# --------------------------------------------------------------------------------------------------
# hf:// references


@dataclass(frozen=True)
class HubRef:
    repo_id: str
    filename: str = DEFAULT_HF_FILENAME
    revision: str | None = None

    def __str__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"hf://{self.repo_id}/{self.filename}{rev}"


_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def parse_hf_ref(ref: str) -> HubRef:
    """``hf://owner/repo[/path/in/repo][@revision]`` -> HubRef (a revision may itself contain ``/``)."""
    if not ref.startswith("hf://"):
        raise UsageError(f"{ref!r} is not an hf:// reference")
    body = ref[len("hf://"):]
    revision = None
    if "@" in body:
        body, _, revision = body.rpartition("@")
        if not revision:
            raise UsageError(f"{ref!r}: empty revision after '@'", hint="use hf://owner/repo[/file]@REVISION")
    parts = [p for p in body.split("/") if p]
    if len(parts) < 2 or not all(_REPO_PART.match(p) for p in parts[:2]):
        raise UsageError(
            f"{ref!r} is not a valid Hub reference",
            hint="use hf://owner/repo, hf://owner/repo/file.safetensors or hf://owner/repo@revision",
        )
    filename = "/".join(parts[2:]) or DEFAULT_HF_FILENAME
    return HubRef(f"{parts[0]}/{parts[1]}", filename, revision)


class _CallbackBar:
    """A stand-in for tqdm that forwards byte counts from huggingface_hub to a progress callback."""

    def __init__(self, *args: Any, total: int | None = None, initial: int = 0, desc: str | None = None,
                 progress: ProgressCallback | None = None, label: str = "", **kwargs: Any) -> None:
        self.total, self.n, self._progress, self._label = total, initial or 0, progress, label or desc or ""
        _report(self._progress, "download", self._label, self.n, self.total)

    def update(self, n: int = 1) -> None:
        self.n += n
        _report(self._progress, "download", self._label, self.n, self.total)

    def close(self) -> None:
        pass

    def __enter__(self) -> "_CallbackBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __getattr__(self, name: str) -> Callable[..., None]:  # set_description, refresh, ...
        return lambda *a, **k: None


class _Never(Exception):
    """Stands in for an exception class an older huggingface_hub lacks."""


def fetch_hub(ref: HubRef, *, force: bool = False, progress: ProgressCallback | None = None) -> Path:
    """``hf_hub_download`` into the standard cache; every failure becomes one typed error."""
    import functools
    import inspect

    from huggingface_hub import errors as hf_errors
    from huggingface_hub import hf_hub_download

    offline = is_offline()
    kwargs: dict[str, Any] = dict(
        revision=ref.revision, cache_dir=str(hub_cache_dir()), endpoint=hf_endpoint(),
        local_files_only=offline, force_download=force and not offline,
        library_name="vdvae-cli", library_version=__version__,
    )
    if progress is not None and "tqdm_class" in inspect.signature(hf_hub_download).parameters:
        kwargs["tqdm_class"] = functools.partial(_CallbackBar, progress=progress, label=ref.filename.split("/")[-1])
    remote_missing = getattr(hf_errors, "RemoteEntryNotFoundError", None) or hf_errors.EntryNotFoundError
    invalid = getattr(hf_errors, "HFValidationError", None) or _Never
    where = hf_endpoint() or "https://huggingface.co"
    try:
        return Path(hf_hub_download(ref.repo_id, ref.filename, **kwargs))
    except invalid as exc:
        raise UsageError(f"{ref} is not a valid Hub reference: {exc}") from None
    except hf_errors.LocalEntryNotFoundError:
        if offline:
            raise ModelNotFoundError(
                f"{ref} is not in the Hugging Face cache ({hub_cache_dir()}) and HF_HUB_OFFLINE is set",
                hint=f"unset HF_HUB_OFFLINE and run `vdvae download {ref}` once",
            ) from None
        raise NetworkError(
            f"cannot reach the Hugging Face Hub at {where} and {ref} is not cached",
            hint=f"check the network (or HF_ENDPOINT), then run `vdvae download {ref}`",
        ) from None
    except hf_errors.GatedRepoError:
        raise ModelNotFoundError(f"{ref}: the repository {ref.repo_id} is gated",
                                 hint="accept its terms on the Hub and log in with `hf auth login`") from None
    except hf_errors.RepositoryNotFoundError:
        raise ModelNotFoundError(f"{ref}: no repository {ref.repo_id} on {where}",
                                 hint="check the name; private repositories need `hf auth login`") from None
    except hf_errors.RevisionNotFoundError:
        raise ModelNotFoundError(f"{ref}: repository {ref.repo_id} has no revision {ref.revision!r}") from None
    except remote_missing:
        raise ModelNotFoundError(f"{ref}: repository {ref.repo_id} has no file {ref.filename!r}",
                                 hint="name the file: hf://owner/repo/path/to/file.safetensors") from None
    except hf_errors.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", "?")
        raise NetworkError(f"the Hub at {where} answered HTTP {status} for {ref}",
                           hint="try again later, or check HF_ENDPOINT") from None
    except (OSError, ValueError) as exc:  # connection/proxy/SSL errors, bad metadata
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NetworkError(f"cannot download {ref}: {first}",
                           hint="check the network (or HF_ENDPOINT); HF_HUB_OFFLINE=1 uses the cache only") from None
    except Exception as exc:  # httpx errors are not OSErrors
        if type(exc).__module__.split(".")[0].startswith("httpx"):
            raise NetworkError(f"cannot download {ref}: {exc}", hint="check the network (or HF_ENDPOINT)") from None
        raise


def hub_cached_path(ref: HubRef) -> Path | None:
    """The cached file of ``ref`` if the Hugging Face cache holds it (no network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(ref.repo_id, ref.filename, cache_dir=str(hub_cache_dir()), revision=ref.revision)
    return Path(found) if isinstance(found, str) else None


# --------------------------------------------------------------------------------------------------
# Resolution


def _looks_like_path(ref: str) -> bool:
    return (
        "/" in ref or os.sep in ref or ref.startswith(("~", "."))
        or Path(ref).suffix.lower() in PICKLE_SUFFIXES | {".safetensors"}
    )


def _is_pickle(path: Path) -> bool:
    """A torch file by suffix or magic (zip or protocol 2-5 pickle); safetensors has '{' at byte 8."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if head[8:9] == b"{":
        return False
    return head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))


def _resolve_path(ref: str) -> ResolvedModel:
    path = Path(ref).expanduser()
    if not path.exists():
        close = difflib.get_close_matches(ref, registry.names(), n=3, cutoff=0.6)
        hint = (f"did you mean the registry name {' or '.join(close)}?" if close
                else "check the path; `vdvae models` lists named models")
        raise ModelNotFoundError(f"no such model file: {path}", hint=hint)
    if path.is_dir():
        inner = path / DEFAULT_HF_FILENAME
        if inner.is_file():
            path = inner
        else:
            raise ModelNotFoundError(f"{path} is a folder, not a .safetensors file")
    if _is_pickle(path):
        from .nvae.official import looks_official

        how = "" if looks_official(path) else " --config NAME"  # an NVAE checkpoint.pt names its layout
        raise CheckpointError(
            f"{path} is a PyTorch pickle, not a vdvae-cli .safetensors file",
            hint=f"convert it once: vdvae convert {path}{how} -o {path.with_suffix('.safetensors').name}",
        )
    return ResolvedModel(path, path.stem, "file", str(path))


def _resolve_entry(entry: RegistryEntry) -> ResolvedModel:
    if entry.kind == "shipped":
        assert entry.path is not None
        return ResolvedModel(entry.path, entry.name, "shipped", str(entry.path))
    cached = official_cache_path(entry.name)
    if cached.is_file():
        return ResolvedModel(cached, entry.name, "official", f"converted from {entry.checkpoint_url}")
    if entry.hf_repo:
        ref = HubRef(entry.hf_repo, entry.hf_filename or DEFAULT_HF_FILENAME, entry.hf_revision)
        return ResolvedModel(fetch_hub(ref), entry.name, "hub", str(ref))
    size = human_size(entry.size_bytes)
    if is_offline():
        raise ModelNotFoundError(
            f"official model {entry.name!r} is not downloaded and HF_HUB_OFFLINE is set; "
            f"run `vdvae download {entry.name}` with network access",
            hint=f"converted models are kept in {cache_dir()}",
        )
    raise ModelNotFoundError(
        f"official model {entry.name!r} is not downloaded yet; run `vdvae download {entry.name}` "
        f"(about {size}, converted once)",
        hint=f"it is kept in {cache_dir()}; set VDVAE_CACHE to change that",
    )


def resolve_model(ref: "str | os.PathLike[str] | ResolvedModel | None" = None) -> ResolvedModel:
    """Find the file a model reference names (see the module docstring). No network for local names;
    ``hf://`` references download on first use."""
    if isinstance(ref, ResolvedModel):
        return ref
    text = os.fspath(ref).strip() if ref is not None else ""
    if not text:
        text = os.environ.get("VDVAE_MODEL", "").strip()
    if not text:
        name = registry.default_name()
        if name is None:
            raise ModelNotFoundError(
                "no model given, and no default model is shipped (weights/ holds no .safetensors file)",
                hint="pass --model NAME|FILE|hf://owner/repo or set VDVAE_MODEL; `vdvae models` lists them",
            )
        text = name
    if text.startswith("hf://"):
        hub_ref = parse_hf_ref(text)
        return ResolvedModel(fetch_hub(hub_ref), hub_ref.repo_id.split("/")[-1], "hub", str(hub_ref))
    if _looks_like_path(text):
        return _resolve_path(text)
    entry = registry.find_entry(text)
    if entry is None:
        if Path(text).exists():
            return _resolve_path(text)
        entry = registry.get_entry(text)  # raises with suggestions
    return _resolve_entry(entry)


def load_model(
    ref: "str | os.PathLike[str] | ResolvedModel | None" = None,
    *,
    device: "str | torch.device" = "auto",
    dtype: "str | torch.dtype" = "fp32",
) -> "VAE":
    """Resolve ``ref`` and load it as an eval-mode VAE on ``device`` in ``dtype``."""
    import torch

    from .checkpoint import load_file_model
    from .runtime import pick_device, pick_dtype

    dev = device if isinstance(device, torch.device) else pick_device(device)
    dt = dtype if isinstance(dtype, torch.dtype) else pick_dtype(dtype)
    resolved = resolve_model(ref)
    return load_file_model(resolved.path, device=dev, dtype=dt)


def cached_path(entry: RegistryEntry) -> Path | None:
    """Where ``entry``'s usable file is on this machine, without any network; None if absent."""
    if entry.kind == "shipped":
        return entry.path
    local = official_cache_path(entry.name)
    if local.is_file():
        return local
    if entry.hf_repo:
        return hub_cached_path(HubRef(entry.hf_repo, entry.hf_filename or DEFAULT_HF_FILENAME, entry.hf_revision))
    return None


# --------------------------------------------------------------------------------------------------
# Official downloads


class _Interrupted(Exception):
    def __init__(self, done: int, total: int | None, why: str):
        super().__init__(why)
        self.done, self.total, self.why = done, total, why


def _network_error(url: str, exc: BaseException, by_hand: str | None = None) -> NetworkError:
    host = urlsplit(url).netloc or url
    by_hand = by_hand or "or download the file by hand and run `vdvae convert FILE --config NAME -o FILE.safetensors`"
    if isinstance(exc, urllib.error.HTTPError):
        return NetworkError(f"{url}: HTTP {exc.code} {exc.reason}",
                            hint=f"check the address (VDVAE_OFFICIAL_BASE_URL?), {by_hand}")
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, socket.gaierror):
        why = "the host name does not resolve"
    elif isinstance(reason, ConnectionRefusedError):
        why = "connection refused"
    elif isinstance(reason, (TimeoutError, socket.timeout)):
        why = "timed out"
    else:
        why = str(reason).strip() or type(reason).__name__
    return NetworkError(f"cannot reach {host}: {why}", hint=f"check the network, {by_hand}")


def _content_range_total(value: str | None) -> tuple[int | None, int | None]:
    """``bytes START-END/TOTAL`` or ``bytes */TOTAL`` -> (START, TOTAL)."""
    m = re.match(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", value or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _stream(url: str, part: Path, label: str, expected: int | None, progress: ProgressCallback | None,
            by_hand: str | None) -> int | None:
    """One HTTP attempt, appending to ``part`` from its current size. Returns the file's total size."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"vdvae-cli/{__version__}", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to send: complete, or longer than the remote file
            _, total = _content_range_total(exc.headers.get("Content-Range"))
            exc.close()
            if total == offset and expected in (None, total):
                return total
            part.unlink()
            if expected is not None and total is not None and total != expected:
                raise NetworkError(
                    f"size mismatch for {url}: the server announced {expected} bytes, then {total}",
                    hint="the file changed on the server or a proxy cut it short; run the command again",
                ) from None
            raise _Interrupted(0, total, "the partial file was longer than the remote one") from None
        raise _network_error(url, exc, by_hand) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _network_error(url, exc, by_hand) from None
    with response:
        if offset and response.status == 206:
            start, total = _content_range_total(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink()
                raise _Interrupted(0, total, f"the server resumed at byte {start}, not {offset}")
            mode = "ab"
        else:  # 200: the whole file (the server ignored Range, or there was nothing to resume)
            offset, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        if expected is not None and total is not None and total != expected:
            part.unlink(missing_ok=True)
            raise NetworkError(
                f"size mismatch for {url}: the server announced {expected} bytes, then {total}",
                hint="the file changed on the server or a proxy cut it short; run the command again",
            )
        done = offset
        _report(progress, "download", label, done, total)
        with open(part, mode) as f:
            try:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    done += len(chunk)
                    _report(progress, "download", label, done, total)
            except (http.client.HTTPException, OSError) as exc:
                raise _Interrupted(done, total, str(exc) or type(exc).__name__) from None
    if total is not None and done != total:
        if done > total:
            part.unlink()
            raise NetworkError(f"size mismatch for {url}: received {done} bytes, Content-Length said {total}",
                               hint="a proxy may alter the file; download it by hand and run `vdvae convert`")
        raise _Interrupted(done, total, "the connection closed early")
    return total if total is not None else done


def fetch_url(url: str, dest: Path, *, progress: ProgressCallback | None = None, by_hand: str | None = None) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a previous partial download with
    HTTP Range and retrying a broken transfer a few times; ``dest`` appears only when complete.
    ``by_hand`` ends the hint of a connection error (what to do without this tool)."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    expected: int | None = None
    attempt = 0
    while True:
        try:
            expected = _stream(url, part, dest.name, expected, progress, by_hand)
            break
        except _Interrupted as exc:
            expected = exc.total if exc.total is not None else expected
            attempt += 1
            if attempt >= RETRIES:
                got = part.stat().st_size if part.exists() else 0
                raise NetworkError(
                    f"download of {url} broke off at {got} of {expected if expected is not None else '?'} bytes "
                    f"({exc.why})",
                    hint="run the same command again: it resumes where it stopped",
                ) from None
            time.sleep(RETRY_WAIT * 2 ** (attempt - 1))
    size = part.stat().st_size if part.exists() else 0
    if expected is not None and size != expected:
        raise NetworkError(f"size mismatch for {url}: {size} bytes on disk, the server said {expected}",
                           hint="run the command again with --force")
    os.replace(part, dest)
    return dest


def _url_filename(url: str) -> str:
    return Path(urlsplit(url).path).name or "download"


def _cached_ok(path: Path) -> bool:
    """A converted file that is complete (its header and size agree)."""
    from .checkpoint import read_header

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
    if dest.is_file() and not force and _cached_ok(dest):
        _report(progress, "done", dest.name, dest.stat().st_size, dest.stat().st_size)
        return dest
    if is_offline():
        raise NetworkError(
            f"HF_HUB_OFFLINE is set, so {entry.name!r} is not downloaded",
            hint="unset HF_HUB_OFFLINE, or convert a file you have: vdvae convert FILE --config NAME -o X.safetensors",
        )
    downloads = cache_dir() / "downloads"
    try:
        downloads.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NetworkError(f"cannot create the cache folder {downloads}: {exc.strerror}",
                           hint="set VDVAE_CACHE to a writable folder") from None
    with _cache_lock(downloads):
        _download_and_convert(entry, url, dest, downloads, force=force, keep_original=keep_original, progress=progress)
    _report(progress, "done", dest.name, dest.stat().st_size, dest.stat().st_size)
    return dest


def _download_and_convert(entry: RegistryEntry, url: str, dest: Path, downloads: Path, *, force: bool,
                          keep_original: bool, progress: ProgressCallback | None) -> None:
    from .checkpoint import convert_reference
    from .config import config_from_reference, official_config, read_hparams_file
    from .errors import ConfigError

    pickle = downloads / _url_filename(url)
    log = downloads / _url_filename(entry.log_url) if entry.hparams_from_log and entry.log_url else None
    how = f"--hparams {log.name}" if log is not None else f"--config {entry.config_name or entry.name}"
    by_hand = (f"or fetch {url}{' and its log' if log is not None else ''} by hand and run "
               f"`vdvae convert {pickle.name} {how} -o {dest}`")
    if force:
        for stale in (pickle, log):
            if stale is not None:
                stale.unlink(missing_ok=True)
                stale.with_name(stale.name + ".part").unlink(missing_ok=True)

    if entry.config is not None:
        cfg = entry.config
    elif log is not None:
        assert entry.log_url is not None
        if not log.is_file():
            fetch_url(entry.log_url, log, progress=progress, by_hand=by_hand)
        try:
            cfg = config_from_reference(read_hparams_file(log), name=entry.name)
        except ConfigError as exc:
            log.unlink(missing_ok=True)
            raise CheckpointError(f"the published hyperparameters {entry.log_url} do not describe a model: {exc}",
                                  hint=exc.hint) from None
    else:
        cfg = official_config(entry.config_name or entry.name)
    if not pickle.is_file():
        fetch_url(url, pickle, progress=progress, by_hand=by_hand)

    _report(progress, "convert", dest.name)
    meta = {"source_url": url, "registry_name": entry.name, "license": entry.license_text}
    damaged = f"if the download is damaged: vdvae download {entry.name} --force"
    try:
        convert_reference(pickle, dest, cfg, force=True, metadata=meta)
    except CheckpointError as exc:
        if log is None:
            raise CheckpointError(str(exc), hint=damaged) from None
        try:  # the log may describe another run than the weights: read the layout off the weights
            convert_reference(pickle, dest, None, force=True, metadata=meta)
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
