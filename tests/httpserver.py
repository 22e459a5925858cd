"""A small real HTTP server on 127.0.0.1 for download tests (no mocks).

It serves a folder (HEAD and GET, with ``Range: bytes=N-`` / ``bytes=N-M``, ``If-Range`` against
the file's ``ETag``, and 416 past the end), answers Hugging Face style
``/{owner}/{repo}/resolve/{revision}/{path}`` routes with the headers ``hf_hub_download`` reads
(``X-Repo-Commit``, ``ETag``, ``Content-Length``, ``X-Error-Code`` on 404), logs every request, and
can misbehave on purpose: drop the connection part-way through a file, announce more bytes than it
sends or fewer than it sends, send no length at all, drip the body a byte at a time, add headers
(``Content-Encoding: gzip``, ``Content-Type: text/html``), send no validator, answer with an HTTP
error, or redirect in a loop.

    with LocalServer(tmp_path / "www") as server:
        server.url                       # http://127.0.0.1:PORT
        server.drop(path, after=50_000)  # next GET of path stops after 50 kB
        server.count(path, "GET")
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class _Route:
    file: Path
    headers: dict[str, str] = field(default_factory=dict)


class LocalServer:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.requests: list[Seen] = []
        self._routes: dict[str, _Route] = {}
        self._hub_repos: dict[str, str] = {}  # repo_id -> commit of "main"
        self._drops: dict[str, list[int]] = {}  # path -> byte counts after which to cut, one per GET
        self._extra: dict[str, int] = {}  # path -> bytes announced but never sent
        self._short: dict[str, int] = {}  # path -> bytes sent beyond the announced length
        self._no_length: set[str] = set()
        self._no_validator: set[str] = set()
        self._drip: dict[str, tuple[int, float]] = {}  # path -> (bytes per write, seconds between)
        self._headers: dict[str, dict[str, str]] = {}
        self._status: dict[str, int] = {}
        self._redirect: dict[str, str] = {}
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    # ----------------------------------------------------------------------------------------------
    # Set-up

    @property
    def url(self) -> str:
        assert self.port is not None, "server not started"
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "LocalServer":
        server = self

        class Handler(_Handler):
            owner = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port or 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening: later connections to the port are refused."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def put(self, rel_path: str, data: bytes | Path) -> Path:
        """Place a file under the served folder; returns its local path."""
        target = self.root / rel_path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data.read_bytes() if isinstance(data, Path) else data)
        return target

    def add_hub_file(self, repo_id: str, filename: str, source: Path | bytes, *, revision: str = "main") -> str:
        """Serve ``source`` as ``filename`` of Hub repo ``repo_id`` at ``revision`` (and at its commit).
        Returns the commit hash the server reports."""
        commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
        data = source.read_bytes() if isinstance(source, Path) else source
        local = self.root / "_hub" / repo_id / commit / filename
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)
        headers = {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
        for rev in {revision, commit}:
            self._routes[f"/{repo_id}/resolve/{rev}/{filename}"] = _Route(local, headers)
        self._hub_repos.setdefault(repo_id, commit)
        return commit

    # ----------------------------------------------------------------------------------------------
    # Misbehaviour and inspection

    def drop(self, path: str, *, after: int, times: int = 1) -> None:
        """The next ``times`` GETs of ``path`` send ``after`` bytes of the body, then close the connection."""
        with self._lock:
            self._drops.setdefault(path, []).extend([after] * times)

    def announce_extra(self, path: str, extra: int) -> None:
        """Every GET of ``path`` announces ``extra`` more bytes than the file has (a short body)."""
        self._extra[path] = extra

    def announce_less(self, path: str, missing: int) -> None:
        """Every GET of ``path`` announces ``missing`` fewer bytes than it then sends (a long body)."""
        self._short[path] = missing

    def no_length(self, path: str) -> None:
        """Send ``path`` without Content-Length (the body ends when the connection closes)."""
        self._no_length.add(path)

    def no_validator(self, path: str) -> None:
        """Send ``path`` without ETag and Last-Modified."""
        self._no_validator.add(path)

    def drip(self, path: str, *, step: int = 1, every: float = 2.0) -> None:
        """Send ``path``'s body ``step`` bytes at a time, ``every`` seconds apart."""
        self._drip[path] = (step, every)

    def add_headers(self, path: str, **headers: str) -> None:
        """Extra response headers for ``path`` (``Content_Encoding="gzip"`` -> ``Content-Encoding``)."""
        self._headers.setdefault(path, {}).update({k.replace("_", "-"): v for k, v in headers.items()})

    def fail_with(self, path: str, status: int) -> None:
        """Answer every request for ``path`` with ``status`` and an empty body."""
        self._status[path] = status

    def redirect(self, path: str, to: str) -> None:
        """Answer ``path`` with a 302 to ``to`` (point two paths at each other for a loop)."""
        self._redirect[path] = to

    def count(self, path: str | None = None, method: str | None = None) -> int:
        return len(self.seen(path, method))

    def seen(self, path: str | None = None, method: str | None = None) -> list[Seen]:
        with self._lock:
            return [r for r in self.requests
                    if (path is None or r.path == path) and (method is None or r.method == method)]


class _Handler(BaseHTTPRequestHandler):
    owner: LocalServer
    protocol_version = "HTTP/1.0"  # one request per connection: simple and enough for tests

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, *, head: bool) -> None:
        owner = self.owner
        path = unquote(urlsplit(self.path).path)
        with owner._lock:
            owner.requests.append(Seen(self.command, path, {k: v for k, v in self.headers.items()}))
        if path in owner._status:
            return self._empty(owner._status[path], {})
        if path in owner._redirect:
            return self._empty(302, {"Location": owner._redirect[path]})
        route = owner._routes.get(path)
        if route is not None:
            file, extra_headers = route.file, route.headers
        else:
            hub = re.match(r"^/([^/]+/[^/]+)/resolve/[^/]+/.+$", path)
            if hub:
                code = "EntryNotFound" if hub.group(1) in owner._hub_repos else "RepoNotFound"
                headers = {"X-Error-Code": code}
                if code == "EntryNotFound":
                    headers["X-Repo-Commit"] = owner._hub_repos[hub.group(1)]
                return self._empty(404, headers)
            file = (owner.root / path.lstrip("/")).resolve()
            extra_headers = {}
            if owner.root.resolve() not in file.parents or not file.is_file():
                return self._empty(404, {})
        data = file.read_bytes()
        size = len(data)
        start, end, status = 0, size - 1, 200
        etag = f'"{hashlib.sha256(data).hexdigest()[:32]}"'
        validators = path not in owner._no_validator
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if if_range is not None and (not validators or if_range.strip() != etag):
            rng = None  # the client's copy is of another version: send the whole file (RFC 9110 13.1.5)
        if rng and not head:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if m:
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                if start >= size:
                    return self._empty(416, {"Content-Range": f"bytes */{size}"})
                status = 206
        body = data[start : end + 1]
        announced = len(body) + owner._extra.get(path, 0) - owner._short.get(path, 0)
        self.send_response(status)
        headers = {"Content-Type": "application/octet-stream", **extra_headers, **owner._headers.get(path, {})}
        if validators and "ETag" not in headers:
            headers["ETag"] = etag
            headers["Last-Modified"] = "Mon, 01 Jan 2024 00:00:00 GMT"
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Accept-Ranges", "bytes")
        if path not in owner._no_length:
            self.send_header("Content-Length", str(announced))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if head:
            return
        cut = None
        with owner._lock:
            queue = owner._drops.get(path)
            if queue:
                cut = queue.pop(0)
        try:
            payload = body if cut is None else body[:cut]
            drip = owner._drip.get(path)
            if drip is None:
                self.wfile.write(payload)
                self.wfile.flush()
            else:
                step, every = drip
                for i in range(0, len(payload), step):
                    self.wfile.write(payload[i:i + step])
                    self.wfile.flush()
                    time.sleep(every)
            if cut is not None or announced != len(body):
                self.connection.shutdown(socket.SHUT_WR)  # FIN after the bytes: the client sees a short body
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def _empty(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()
        self.close_connection = True
