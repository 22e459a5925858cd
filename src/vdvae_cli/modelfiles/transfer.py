"""HTTP downloads that can be trusted: streamed to a ``.part`` file, resumed with ``Range`` only when
the server's validator (ETag / Last-Modified) still matches, bounded in size, time to headers and
minimum rate, retried a few times, and verified (size, sha256, magic bytes, a parseable header)
before they count. Progress goes to a callback; nothing here prints."""

from __future__ import annotations

import http.client
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from .. import __version__
from ..base.atomic import atomic_write_bytes
from ..base.errors import CheckpointError, NetworkError, OutputError


CHUNK = 1 << 20


RETRIES = 3  # attempts per file and call when a transfer breaks off


RETRY_WAIT = 0.25  # seconds, doubled after each failed attempt


TIMEOUT = 30.0  # seconds without data before a connection counts as dead


HEADERS_TIMEOUT = 60.0  # seconds in all for a server to send its response headers; also the one
# deadline of a download call without progress: retries stop once this long has passed since the
# last new byte of the file arrived (or since the call began), whatever the reason each attempt broke


MIN_RATE = 1024  # bytes/s: a transfer slower than this over RATE_WINDOW seconds is stopped


RATE_WINDOW = 60.0


MAX_LOG_LINE = 1 << 20  # bytes of one line of a run's -log.jsonl
MAX_DOWNLOAD = 8 << 30  # bytes: the cap on a checkpoint whose size the registry does not know


@dataclass(frozen=True)
class DownloadProgress:
    """One progress report: ``stage`` is ``connect`` (the network is about to be asked; ``filename``
    says what from where), ``download``, ``convert`` or ``done``."""

    stage: str
    filename: str
    done: int = 0
    total: int | None = None


ProgressCallback = Callable[[DownloadProgress], None]


def _report(progress: ProgressCallback | None, *args: Any) -> None:
    if progress is not None:
        progress(DownloadProgress(*args))


class _Interrupted(Exception):
    def __init__(self, done: int, total: int | None, why: str):
        super().__init__(why)
        self.done, self.total, self.why = done, total, why


def _network_error(url: str, exc: BaseException, by_hand: str | None = None) -> NetworkError:
    from ..base.safety import clean, one_line

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
    from ..base.safety import loads

    try:
        data = loads(meta.read_text()[:10_000])
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and data.get("url") == url and isinstance(data.get("validator"), str):
        return data["validator"]
    return None


def _write_sidecar(meta: Path, url: str, validator: str | None) -> None:
    from ..base.safety import dumps

    if validator is None:
        meta.unlink(missing_ok=True)
        return
    try:
        atomic_write_bytes(meta, dumps({"url": url, "validator": validator}).encode(), force=True)
    except OutputError:  # the sidecar only enables resuming: without it the download starts over
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
    from ..base.safety import clean, human_bytes

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
    from ..base.safety import clean

    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    meta = part.with_name(part.name + ".json")
    cap = max_bytes or (size if size is not None else MAX_DOWNLOAD)
    expected: int | None = size
    attempt = 0
    last_size = part.stat().st_size if part.exists() else 0
    last_progress = time.monotonic()
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
            now_size = part.stat().st_size if part.exists() else 0
            if now_size > last_size:
                last_size, last_progress = now_size, time.monotonic()
            stalled = time.monotonic() - last_progress
            if attempt >= RETRIES or stalled >= HEADERS_TIMEOUT * 0.95:
                got = part.stat().st_size if part.exists() else 0
                raise NetworkError(
                    f"download of {clean(url)} broke off at {got} of {expected if expected is not None else '?'} "
                    f"bytes ({clean(exc.why)[:200]}"
                    + (f"; nothing new for {stalled:.0f}s" if stalled >= HEADERS_TIMEOUT * 0.95 else "") + ")",
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
    from ..base.filekind import sniff
    from ..base.safety import clean

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
        from ..base.errors import ConfigError
        from .checkpoint import read_checkpoint

        if found in described:
            raise CheckpointError(f"{label} is not a safetensors file ({described[found]}); nothing was kept",
                                  hint="check the address or revision, and the network")
        try:  # every check the loader makes (header, config, keys and shapes, finite weights), before it is kept
            read_checkpoint(path)
        except (CheckpointError, ConfigError) as exc:
            why = str(exc).replace(clean(path), "").strip(": ") or "not a safetensors file"
            raise CheckpointError(f"{label}: {why}; nothing was kept", hint=exc.hint) from None
        return
    raise ValueError(f"unknown download kind {kind!r}")


def _verify_log(path: Path, label: str) -> None:
    from ..base.safety import JSONLimitError, loads

    found = False
    try:
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                if len(raw) > MAX_LOG_LINE:
                    raise CheckpointError(f"{label}:{n} is a line of more than {MAX_LOG_LINE} bytes; nothing was kept")
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


def _sha256_matches(path: Path, expected: str) -> bool:
    expected = expected.strip().lower()
    if len(expected) < 8 or any(c not in "0123456789abcdef" for c in expected):
        raise ValueError(f"{expected!r} is not a sha256 digest or a prefix of at least 8 hex digits")
    return _sha256_of(path).startswith(expected)


def _url_filename(url: str) -> str:
    name = Path(urlsplit(url).path).name or "download"
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:150] or "download"
