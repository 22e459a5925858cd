"""What kind of file a path holds, from its first bytes: safetensors, a torch pickle, a git-lfs
pointer, an HTML page, an image... Used to give a clear message before a reader fails on it."""

from __future__ import annotations

from pathlib import Path

from .errors import CheckpointError, UsageError, VDVAEError


def sniff(path: Path) -> str:
    """Guess a file's kind from its first bytes: safetensors, torch-zip, torch-pickle, lfs, other."""
    with open(path, "rb") as f:
        head = f.read(64)
    return sniff_bytes(head)


def sniff_bytes(head: bytes) -> str:
    """:func:`sniff` for the first bytes of a file; also tells html and gzip (what a broken
    download often is)."""
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"version https://git-lfs"):
        return "lfs"
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] in range(2, 6):
        return "torch-pickle"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if stripped.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body", b"<")):
        return "html"
    return "other"


_SIGNATURES = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
               (b"\x1f\x8b", "a gzip archive"), (b"BZh", "a bzip2 archive"), (b"\xfd7zXZ", "an xz archive"),
               (b"\x93NUMPY", "a NumPy .npy array"), (b"<", "an HTML or XML page"), (b"{", "a JSON file"))


def file_kind(path: Path) -> str:
    """What a file that is no checkpoint seems to be, in words (for error messages)."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        return "an empty file"
    for magic, what in _SIGNATURES:
        if head.lstrip().startswith(magic):
            return what
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "binary data of an unknown kind"
    return "a text file"


def require_regular_file(path: Path | str, what: str, error: type[VDVAEError] = UsageError, *,
                         hint: str = "give a regular file (a pipe works for images on stdin: -)") -> Path:
    """``path`` when it is a regular file (after links); else ``error`` in one line. A FIFO would
    block the reader forever, a device such as /dev/zero never ends, and neither is a file a
    model, hyperparameters or latents are read from. Judged by ``stat`` alone: nothing is opened."""
    import os
    import stat as st

    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise error(f"cannot read {_label(path)}: {exc.strerror or exc}") from None
    if st.S_ISREG(mode):
        return path
    kind = ("a folder" if st.S_ISDIR(mode) else "a FIFO (named pipe)" if st.S_ISFIFO(mode)
            else "a device" if st.S_ISCHR(mode) or st.S_ISBLK(mode) else "a socket" if st.S_ISSOCK(mode)
            else "not a regular file")
    raise error(f"{_label(path)} is {kind}, not a {what} file",
                hint=hint)


def _label(path: Path | str) -> str:
    from .safety import clean

    return clean(str(path))


def sniff_file(path: Path) -> str:
    """:func:`sniff` of a file the user named: a missing or unreadable one is one CheckpointError."""
    label = _label(path)
    try:
        if not path.is_file():
            raise CheckpointError(f"{label} is not a file")
        return sniff(path)
    except OSError as exc:
        raise CheckpointError(f"cannot read {label}: {exc.strerror or exc}") from None
