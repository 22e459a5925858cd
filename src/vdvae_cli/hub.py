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
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
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
HEADERS_TIMEOUT = 60.0  # seconds in all for a server to send its response headers
MIN_RATE = 1024  # bytes/s: a transfer slower than this over RATE_WINDOW seconds is stopped
RATE_WINDOW = 60.0
MAX_DOWNLOAD = 8 << 30  # bytes: the cap on a checkpoint whose size the registry does not know
MAX_LOG_DOWNLOAD = 1 << 30
HUB_RETRIES = 1  # huggingface_hub's own retries of a failed Hub request (its default is 5)


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


@contextmanager
def _quiet_hub() -> Iterator[None]:
    """For our calls into huggingface_hub: its logger is silenced (it logs every retry, "Retrying in
    1s [Retry 1/5]", on stderr), so a failure is our one error line; and it retries a broken Hub
    HUB_RETRIES times instead of five (half a minute of waiting), where its version lets us say so."""
    import logging

    # Everything we call is imported first: huggingface_hub configures its logger as its modules load.
    import huggingface_hub  # noqa: F401
    import huggingface_hub.errors  # noqa: F401
    import huggingface_hub.file_download  # noqa: F401

    hub_http: ModuleType | None = None
    try:
        from huggingface_hub.utils import _http

        hub_http = _http
    except ImportError:
        pass
    base = getattr(hub_http, "_http_backoff_base", None)
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    if hub_http is not None and base is not None:
        def fewer_retries(*args: Any, **kwargs: Any) -> Any:
            kwargs["max_retries"] = min(int(kwargs.get("max_retries", 5)), HUB_RETRIES)
            return base(*args, **kwargs)

        # (monkeypatching huggingface_hub's private function, on purpose and undone below)
        hub_http._http_backoff_base = fewer_retries  # type: ignore[attr-defined]
    try:
        yield
    finally:
        logger.setLevel(level)
        if hub_http is not None and base is not None:
            hub_http._http_backoff_base = base  # type: ignore[attr-defined]  # restored


def _forget_hub_file(path: Path) -> None:
    """Remove a file that failed verification from the Hugging Face cache (its snapshot link and the
    blob it points to), so that the next run downloads it again instead of trusting it."""
    try:
        blob = path.resolve()
    except OSError:
        blob = path
    _discard(path, blob)


def fetch_hub(ref: HubRef, *, force: bool = False, progress: ProgressCallback | None = None) -> Path:
    """``hf_hub_download`` into the standard cache, then verified (a safetensors header that passes
    every check; a file that does not is removed from the cache). Every failure is one typed error."""
    from .safety import clean

    with _quiet_hub():
        path = _hf_download(ref, force=force, progress=progress)
    try:
        verify_download(path, "safetensors", label=clean(str(ref)))
    except CheckpointError:
        _forget_hub_file(path)
        raise
    return path


def _hf_download(ref: HubRef, *, force: bool, progress: ProgressCallback | None) -> Path:
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
    if "tqdm_class" in inspect.signature(hf_hub_download).parameters:  # no progress bars of its own, ever
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
    try:
        return _resolve_path_checked(ref)
    except OSError as exc:
        from .safety import clean

        raise ModelNotFoundError(f"cannot read {clean(ref)}: {exc.strerror or exc}",
                                 hint="check the path and its permissions") from None


def _resolve_path_checked(ref: str) -> ResolvedModel:
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


def _is_file(path: Path) -> bool:
    """``path.is_file()`` in our cache, where a folder we may not read is one clear error."""
    try:
        return path.is_file()
    except OSError as exc:
        from .safety import clean

        raise ModelNotFoundError(f"cannot read the cache folder {clean(path.parent)}: {exc.strerror or exc}",
                                 hint="fix its permissions, or set VDVAE_CACHE to a folder you can read") from None


def _resolve_entry(entry: RegistryEntry) -> ResolvedModel:
    if entry.kind == "shipped":
        assert entry.path is not None
        return ResolvedModel(entry.path, entry.name, "shipped", str(entry.path))
    cached = official_cache_path(entry.name)
    if _is_file(cached):
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
    if _is_file(local):
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
    from .safety import clean, one_line

    host = clean(urlsplit(url).netloc or url)
    url = clean(url)
    by_hand = by_hand or "or download the file by hand and run `vdvae convert FILE --config NAME -o FILE.safetensors`"
    if isinstance(exc, urllib.error.HTTPError):
        if exc.code in (301, 302, 303, 307, 308):
            return NetworkError(f"{url}: the server redirects in a loop (HTTP {exc.code})",
                                hint=f"check the address (VDVAE_OFFICIAL_BASE_URL?), {by_hand}")
        return NetworkError(f"{url}: HTTP {exc.code} {one_line(exc.reason)[:100]}",
                            hint=f"check the address (VDVAE_OFFICIAL_BASE_URL?), {by_hand}")
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, socket.gaierror):
        why = "the host name does not resolve"
    elif isinstance(reason, ConnectionRefusedError):
        why = "connection refused"
    elif isinstance(reason, (TimeoutError, socket.timeout)):
        why = "timed out"
    else:
        why = one_line(str(reason))[:200] or type(reason).__name__
    return NetworkError(f"cannot reach {host}: {why}", hint=f"check the network, {by_hand}")


def _content_range_total(value: str | None) -> tuple[int | None, int | None]:
    """``bytes START-END/TOTAL`` or ``bytes */TOTAL`` -> (START, TOTAL)."""
    m = re.match(r"bytes\s+(?:(\d{1,18})-\d{1,18}|\*)/(\d{1,18}|\*)", value or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


class _Sockets:
    """The sockets of one transfer, so that a watchdog can cut a server that sends its headers a
    byte at a time (a socket timeout alone never fires while bytes trickle in)."""

    def __init__(self) -> None:
        self.socks: list[socket.socket] = []
        self.lock = threading.Lock()
        self.cut = False

    def add(self, sock: socket.socket) -> None:
        with self.lock:
            self.socks.append(sock)

    def shutdown(self) -> None:
        with self.lock:
            self.cut = True
            for sock in self.socks:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def _opener(watch: _Sockets) -> urllib.request.OpenerDirector:
    class Conn(http.client.HTTPConnection):
        def connect(self) -> None:
            super().connect()
            watch.add(self.sock)

    class TLSConn(http.client.HTTPSConnection):
        def connect(self) -> None:
            super().connect()
            watch.add(self.sock)

    class Plain(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(Conn, req)

    class TLS(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            # _context: the SSL context HTTPSHandler keeps (private, so not in typeshed)
            return self.do_open(TLSConn, req, context=self._context)  # type: ignore[attr-defined]

    class Redirects(urllib.request.HTTPRedirectHandler):
        max_redirections = 8

    return urllib.request.build_opener(Plain, TLS, Redirects)


def _open(url: str, headers: dict[str, str], watch: _Sockets):
    """``urlopen`` whose wait for the response headers is bounded by HEADERS_TIMEOUT in all."""
    done = threading.Event()

    def watchdog() -> None:
        if not done.wait(HEADERS_TIMEOUT):
            watch.shutdown()

    thread = threading.Thread(target=watchdog, daemon=True)
    thread.start()
    try:
        return _opener(watch).open(urllib.request.Request(url, headers=headers), timeout=TIMEOUT)
    finally:
        done.set()


def _validator(headers) -> str | None:
    """A strong validator for If-Range: a strong ETag, else Last-Modified (weak ETags cannot be used)."""
    etag = (headers.get("ETag") or "").strip()
    if etag and not etag.startswith("W/") and len(etag) < 1000:
        return etag
    modified = (headers.get("Last-Modified") or "").strip()
    return modified if modified and len(modified) < 100 else None


def _read_sidecar(meta: Path, url: str) -> str | None:
    from .safety import loads

    try:
        data = loads(meta.read_text()[:10_000])
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and data.get("url") == url and isinstance(data.get("validator"), str):
        return data["validator"]
    return None


def _write_sidecar(meta: Path, url: str, validator: str | None) -> None:
    from .safety import dumps

    if validator is None:
        meta.unlink(missing_ok=True)
        return
    try:
        meta.write_text(dumps({"url": url, "validator": validator}))
    except OSError:
        meta.unlink(missing_ok=True)


def _discard(*paths: Path) -> None:
    for p in paths:
        try:
            p.unlink(missing_ok=True)
        except OSError:
            pass


def _stream(url: str, part: Path, label: str, expected: int | None, progress: ProgressCallback | None,
            by_hand: str | None, max_bytes: int) -> int | None:
    """One HTTP attempt, appending to ``part`` from its current size when the server's validator
    (ETag / Last-Modified, sent as If-Range) shows the file is the one the part came from.
    Returns the file's total size."""
    from .safety import clean, human_bytes

    meta = part.with_name(part.name + ".json")
    offset = part.stat().st_size if part.exists() else 0
    validator = _read_sidecar(meta, url) if offset else None
    if offset and validator is None:  # a part we cannot tie to this file's version: start over
        _discard(part, meta)
        offset = 0
    headers = {"User-Agent": f"vdvae-cli/{__version__}", "Accept-Encoding": "identity"}
    if offset and validator is not None:  # (always together: a part without a validator was discarded)
        headers["Range"] = f"bytes={offset}-"
        headers["If-Range"] = validator
    watch = _Sockets()
    try:
        response = _open(url, headers, watch)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to send: complete, or longer than the remote file
            _, total = _content_range_total(exc.headers.get("Content-Range"))
            exc.close()
            if total == offset and expected in (None, total):
                return total
            _discard(part, meta)
            if expected is not None and total is not None and total != expected:
                raise NetworkError(
                    f"size mismatch for {clean(url)}: the server announced {expected} bytes, then {total}",
                    hint="the file changed on the server or a proxy cut it short; run the command again",
                ) from None
            raise _Interrupted(0, total, "the partial file was longer than the remote one") from None
        raise _network_error(url, exc, by_hand) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        if watch.cut:
            raise _Interrupted(offset, expected, f"no response within {HEADERS_TIMEOUT:g}s") from None
        raise _network_error(url, exc, by_hand) from None
    if watch.cut:  # the headers took too long (whatever arrived of them is not to be trusted)
        response.close()
        raise _Interrupted(offset, expected, f"no response within {HEADERS_TIMEOUT:g}s")
    with response:
        encoding = (response.headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding not in ("identity", ""):
            _discard(part, meta)
            raise NetworkError(f"{clean(url)}: the server sent {clean(encoding)[:40]}-encoded data, not the file",
                               hint="a proxy may alter downloads; download the file by hand and run `vdvae convert`")
        ctype = (response.headers.get("Content-Type") or "").lower()
        if "text/html" in ctype:
            _discard(part, meta)
            raise NetworkError(f"{clean(url)}: the server sent an HTML page, not the file",
                               hint="a login page or a captive portal? check the address and the network")
        if offset and response.status == 206:
            start, total = _content_range_total(response.headers.get("Content-Range"))
            current = _validator(response.headers)
            if start != offset or (current is not None and current != validator):
                _discard(part, meta)
                raise _Interrupted(0, total, f"the server resumed at byte {start}, not {offset}" if start != offset
                                   else "the file changed on the server since the partial download")
            mode = "ab"
        else:  # 200: the whole file (the server ignored Range, the validator differs, or nothing to resume)
            offset, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() and len(length) < 19 else None
            _write_sidecar(meta, url, _validator(response.headers))
        if expected is not None and total is not None and total != expected:
            _discard(part, meta)
            raise NetworkError(
                f"size mismatch for {clean(url)}: expected {expected} bytes, the server announced {total}",
                hint="the file changed on the server or a proxy altered it; run the command again",
            )
        if total is not None and total > max_bytes:
            _discard(part, meta)
            raise NetworkError(f"{clean(url)} is {human_bytes(total)}, more than the {human_bytes(max_bytes)} "
                               "such a file can be", hint="check the address (VDVAE_OFFICIAL_BASE_URL?)")
        done = offset
        _report(progress, "download", label, done, total)
        window_start, window_done = time.monotonic(), done
        with open(part, mode) as f:
            try:
                while chunk := response.read1(CHUNK):
                    f.write(chunk)
                    done += len(chunk)
                    if done > max_bytes:
                        f.close()
                        _discard(part, meta)
                        raise NetworkError(f"{clean(url)} sent more than {human_bytes(max_bytes)}, more than "
                                           "such a file can be; nothing was kept",
                                           hint="check the address (VDVAE_OFFICIAL_BASE_URL?)")
                    _report(progress, "download", label, done, total)
                    now = time.monotonic()
                    if now - window_start >= RATE_WINDOW:
                        rate = (done - window_done) / (now - window_start)
                        if rate < MIN_RATE:
                            raise _Slow(done, total, rate)
                        window_start, window_done = now, done
            except (http.client.HTTPException, OSError) as exc:
                raise _Interrupted(done, total, str(exc) or type(exc).__name__) from None
    if total is not None and done != total:
        raise _Interrupted(done, total, "the connection closed early")
    return total if total is not None else done


class _Slow(Exception):
    def __init__(self, done: int, total: int | None, rate: float):
        super().__init__(f"{rate:.0f} B/s")
        self.done, self.total, self.rate = done, total, rate


def fetch_url(url: str, dest: Path, *, progress: ProgressCallback | None = None, by_hand: str | None = None,
              kind: str = "file", size: int | None = None, sha256: str | None = None,
              max_bytes: int | None = None) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a previous partial download with
    HTTP Range only while the server's validator (If-Range) shows the same file, and retrying a
    broken transfer a few times. ``dest`` appears only once complete **and verified**: the expected
    ``size`` and ``sha256`` where known, and for every file its magic bytes and a parseable header
    for ``kind`` (``pickle``, ``log`` or ``safetensors``). What fails verification is deleted."""
    from .safety import clean

    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    meta = part.with_name(part.name + ".json")
    cap = max_bytes or (size if size is not None else MAX_DOWNLOAD)
    expected: int | None = size
    attempt = 0
    while True:
        try:
            expected = _stream(url, part, dest.name, expected, progress, by_hand, cap)
            break
        except _Slow as exc:
            raise NetworkError(
                f"download of {clean(url)} is too slow ({exc.rate:.0f} bytes/s, at least {MIN_RATE} expected); "
                f"stopped at {exc.done} of {exc.total if exc.total is not None else '?'} bytes",
                hint="run the same command again later: it resumes where it stopped",
            ) from None
        except _Interrupted as exc:
            expected = exc.total if exc.total is not None and size is None else expected
            attempt += 1
            if attempt >= RETRIES:
                got = part.stat().st_size if part.exists() else 0
                raise NetworkError(
                    f"download of {clean(url)} broke off at {got} of {expected if expected is not None else '?'} "
                    f"bytes ({clean(exc.why)[:200]})",
                    hint="run the same command again: it resumes where it stopped",
                ) from None
            time.sleep(RETRY_WAIT * 2 ** (attempt - 1))
    have = part.stat().st_size if part.exists() else 0
    if expected is not None and have != expected:
        _discard(part, meta)
        raise NetworkError(f"size mismatch for {clean(url)}: {have} bytes arrived, {expected} were expected; "
                           "nothing was kept", hint="run the command again")
    try:
        verify_download(part, kind, size=size, sha256=sha256, label=clean(url))
    except (NetworkError, CheckpointError):
        _discard(part, meta)
        raise
    os.replace(part, dest)
    _discard(meta)
    return dest


def _sha256_of(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def verify_download(path: Path, kind: str, *, size: int | None = None, sha256: str | None = None,
                    label: str | None = None) -> None:
    """Raise (NetworkError for a wrong size or digest, CheckpointError for wrong content) unless
    ``path`` is a plausible file of ``kind``: ``pickle`` (a PyTorch zip whose directory reads, or a
    pickle), ``log`` (JSON lines, bounded, with hyperparameters), ``safetensors`` (a header that
    passes every check), or ``file`` (size and digest only)."""
    from .checkpoint import sniff
    from .safety import clean

    label = label or clean(path)
    have = path.stat().st_size
    if size is not None and have != size:
        raise NetworkError(f"{label}: {have} bytes arrived, the registry says {size}; nothing was kept",
                           hint="run the command again; if it repeats, the file on the server changed")
    if sha256 is not None and _sha256_of(path) != sha256.lower():
        raise NetworkError(f"{label}: the sha256 of the download differs from the registry's; nothing was kept",
                           hint="run the command again; if it repeats, the file on the server changed")
    if kind == "file":
        return
    found = sniff(path)
    described = {"html": "an HTML page", "gzip": "gzip-compressed data", "lfs": "a git-lfs pointer"}
    if kind == "pickle":
        if found == "torch-zip":
            import zipfile

            try:
                with zipfile.ZipFile(path) as z:
                    if not any(n.endswith("data.pkl") for n in z.namelist()):
                        raise zipfile.BadZipFile("no data.pkl")
            except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
                raise CheckpointError(f"{label} is not a complete PyTorch checkpoint ({clean(str(exc))[:100]}); "
                                      "nothing was kept", hint="run the command again") from None
            return
        if found == "torch-pickle":
            return
        raise CheckpointError(f"{label} is not a PyTorch checkpoint ({described.get(found, 'unrecognised bytes')}); "
                              "nothing was kept", hint="check the address (VDVAE_OFFICIAL_BASE_URL?) and the network")
    if kind == "log":
        if found in described:
            raise CheckpointError(f"{label} is not a JSON-lines log ({described[found]}); nothing was kept",
                                  hint="check the address (VDVAE_OFFICIAL_BASE_URL?) and the network")
        _verify_log(path, label)
        return
    if kind == "safetensors":
        from .checkpoint import read_header

        if found in described:
            raise CheckpointError(f"{label} is not a safetensors file ({described[found]}); nothing was kept",
                                  hint="check the address or revision, and the network")
        try:
            read_header(path)
        except CheckpointError as exc:
            why = str(exc).replace(clean(path), "").strip(": ") or "not a safetensors file"
            raise CheckpointError(f"{label}: {why}; nothing was kept", hint=exc.hint) from None
        return
    raise ValueError(f"unknown download kind {kind!r}")


def _verify_log(path: Path, label: str) -> None:
    from .config import MAX_LINE
    from .safety import JSONLimitError, loads

    found = False
    try:
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                if len(raw) > MAX_LINE:
                    raise CheckpointError(f"{label}:{n} is a line of more than {MAX_LINE} bytes; nothing was kept")
                try:
                    record = loads(raw)
                except JSONLimitError as exc:
                    raise CheckpointError(f"{label}:{n}: {exc}; nothing was kept",
                                          hint="this is not an official run's log") from None
                except ValueError:
                    raise CheckpointError(f"{label}:{n} is not JSON; nothing was kept",
                                          hint="the download is damaged or not a log; run the command again") from None
                found = found or (isinstance(record, dict) and record.get("type") == "hparam")
    except OSError as exc:
        raise CheckpointError(f"cannot read {label}: {exc.strerror or exc}") from None
    if not found:
        raise CheckpointError(f"{label} holds no hyperparameters (no 'hparam' lines); nothing was kept")
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


def _sha256_matches(path: Path, expected: str) -> bool:
    expected = expected.strip().lower()
    if len(expected) < 8 or any(c not in "0123456789abcdef" for c in expected):
        raise ValueError(f"{expected!r} is not a sha256 digest or a prefix of at least 8 hex digits")
    return _sha256_of(path).startswith(expected)


def _url_filename(url: str) -> str:
    name = Path(urlsplit(url).path).name or "download"
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:150] or "download"


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
    if _is_file(dest) and not force and _cached_ok(dest):
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
    from .checkpoint import convert_reference, load_reference_state
    from .config import config_from_reference, official_config, read_hparams_file
    from .errors import ConfigError
    from .safety import clean

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

    if entry.config is not None:
        cfg = entry.config
    elif log is not None:
        assert entry.log_url is not None
        _fetch_verified(entry.log_url, log, "log", size=entry.log_size, sha256=entry.log_sha256,
                        max_bytes=MAX_LOG_DOWNLOAD, progress=progress, by_hand=by_hand)
        try:
            cfg = config_from_reference(read_hparams_file(log), name=entry.name)
        except ConfigError as exc:
            log.unlink(missing_ok=True)
            raise CheckpointError(f"the published hyperparameters {clean(entry.log_url)} do not describe a model: "
                                  f"{exc}; the log was not kept", hint=exc.hint) from None
    else:
        cfg = official_config(entry.config_name or entry.name)
    _fetch_verified(url, pickle, "pickle", size=entry.checkpoint_size, sha256=entry.checkpoint_sha256,
                    max_bytes=MAX_DOWNLOAD, progress=progress, by_hand=by_hand)

    _report(progress, "convert", dest.name)
    try:
        state = load_reference_state(pickle)
    except CheckpointError as exc:  # it passed the magic and directory checks but does not load
        pickle.unlink(missing_ok=True)
        raise CheckpointError(f"{exc}; the download was not kept", hint="run the command again") from None
    meta = {"source_url": url, "registry_name": entry.name, "license": entry.license_text}
    damaged = f"if the download is damaged: vdvae download {entry.name} --force"
    try:
        convert_reference(pickle, dest, cfg, force=True, metadata=meta, state=state)
    except CheckpointError as exc:
        if log is None:
            raise CheckpointError(str(exc), hint=damaged) from None
        try:  # the log may describe another run than the weights: read the layout off the weights
            convert_reference(pickle, dest, None, force=True, metadata=meta, state=state)
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
