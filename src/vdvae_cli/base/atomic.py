"""Atomic file writes: every file the tool writes goes through a temporary file in the same folder
and a rename, so a reader sees the old file or the new one, never a part; a failure (disk full, a
signal) leaves no temporary file (each live one is registered in :data:`vdvae_cli.base.safety.LIVE_TEMPS`,
which the signal handlers clean up)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import OutputError


def atomic_write_bytes(path: Path, data: bytes, *, force: bool = False) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    _atomic(path, lambda f: f.write(data), force=force)


def _write_error(path: Path, exc: OSError) -> OutputError:
    import errno

    from .safety import clean

    why = exc.strerror or str(exc)
    hint = None
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        hint = "free some space (nothing was written)"
    elif exc.errno == errno.ENAMETOOLONG:
        hint = "choose a shorter name"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "choose a folder you can write to"
    return OutputError(f"cannot write {clean(path)}: {why}", hint=hint)


def _exists(path: Path) -> bool:
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        import errno

        if exc.errno in (errno.ENOTDIR, errno.ELOOP):
            return False
        raise _write_error(path, exc) from None
    return True


class _CheckedFile:
    """A file object whose write errors are remembered, so that a writer that wraps them (torch.save
    turns ENOSPC into a RuntimeError from inline_container.cc) can still be reported as the OSError."""

    def __init__(self, f):
        self._f = f
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name: str):
        return getattr(self._f, name)


def _atomic(path: Path, write, *, force: bool) -> None:
    """Write ``path`` through a temporary file in the same folder and a rename: readers see the old
    file or the new one, never a part; a failure (disk full, a signal) leaves no temporary file."""
    from .safety import LIVE_TEMPS as _LIVE_TEMPS
    from .safety import PENDING_TEMPS as _PENDING_TEMPS
    from .safety import clean

    path = Path(path)
    if _exists(path) and not force:
        raise OutputError(f"{clean(path)} already exists", hint="pass --force to overwrite it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"cannot write {clean(path)}: folder {clean(parent)} does not exist")
    if len(os.fsencode(path.name)) > 255:
        raise OutputError(f"cannot write {clean(path)}: File name too long", hint="choose a shorter name")
    stem = os.fsencode(path.name)[:200].decode("utf-8", "ignore")
    pending = (str(parent), f".{stem}.")
    _PENDING_TEMPS.add(pending)  # before the file exists: no moment when it is on disk and unknown
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=".tmp", dir=parent)
        _LIVE_TEMPS.add(tmp)
    except OSError as exc:
        raise _write_error(parent, exc) from None
    finally:
        _PENDING_TEMPS.discard(pending)
    checked = None
    try:
        with os.fdopen(fd, "wb") as f:
            checked = _CheckedFile(f)
            write(checked)
            f.flush()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from None
        if checked is not None and checked.error is not None and not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise _write_error(path, checked.error) from None
        raise
    finally:
        _LIVE_TEMPS.discard(tmp)


def atomic_write_with(path: Path, write, *, force: bool = True) -> None:
    """Write ``path`` atomically with ``write(file)`` (e.g. ``lambda f: torch.save(obj, f)``)."""
    _atomic(path, write, force=force)
