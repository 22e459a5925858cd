"""Every byte from outside is hostile: the limits, text escaping and strict JSON the rest relies on.

* **Limits** (module constants, so tests and callers can see them): how large a header, an image,
  a stdin stream, a JSON nesting may be before we refuse it, and how much memory is available to
  this process (the machine's available memory, less where ``RLIMIT_AS`` leaves less).
* **Text for people**: :func:`clean` escapes control characters (and bidirectional overrides) in an
  untrusted string before it reaches a terminal, so a model name cannot colour the screen or forge
  an ``error:`` line; :func:`one_line` makes any message a single line.
* **JSON**: :func:`dumps` writes strict JSON (no ``NaN``/``Infinity``: ``null`` instead; file names
  that are not UTF-8 escaped as ``\\xNN``), :func:`loads` reads JSON with bounded nesting and no
  duplicate keys.

Nothing here imports torch.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

from .errors import VDVAEError

# --------------------------------------------------------------------------------------------------
# Limits

MAX_HEADER_BYTES = 16 << 20  # a safetensors JSON header (the largest official one is ~0.3 MB)
MAX_JSON_DEPTH = 32  # nesting of any JSON we read (configs, logs, metadata)
MAX_IMAGE_PIXELS = 64_000_000  # width x height of an input image (a 48 MP photo fits)
MAX_IMAGE_SIDE = 65_500
MAX_STDIN_BYTES = 1 << 30  # images or latents piped in
MAX_LATENT = 1e4  # a latent value's magnitude: draws at temperature 10 stay far below; 1e30 decoded to garbage
MAX_TEMPERATURE = 10.0  # --temp and --output-temp: 0 (the mean) to 10
MAX_SEED = (1 << 63) - 1  # --seed: the per-image hash reads 64 bits, so a larger or negative one repeated another's draws
MAX_TEXT_CHUNK = 1 << 20  # PNG text chunks, decompressed (Pillow's own default)
MAX_GRID_PIXELS = 400_000_000  # a --grid image


_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
               "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4, "tb": 1000**4, "tib": 1024**4}


def parse_size(text: str, what: str) -> int:
    """``2GiB``, ``512MB``, ``1e9`` (bytes) -> a whole number of bytes >= 1 MiB, or a UsageError."""
    import re

    from .errors import UsageError

    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?(?:[eE][0-9]+)?)\s*([a-zA-Z]*)\s*", text[:40])
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _SIZE_UNITS:
        raise UsageError(f"{what}={text[:40]!r} is not a size", hint="e.g. 2GiB, 512MB or a number of bytes")
    value = float(m.group(1)) * _SIZE_UNITS[unit]
    if not 2**20 <= value < 2**60:
        raise UsageError(f"{what}={text[:40]!r}: give 1 MiB to 1 EiB")
    return int(value)


def memory_limit() -> int | None:
    """``VDVAE_MAX_MEMORY`` in bytes (``2GiB``, ``512MB``...), or None when it is not set."""
    text = os.environ.get("VDVAE_MAX_MEMORY", "").strip()
    return parse_size(text, "VDVAE_MAX_MEMORY") if text else None


def available_memory() -> int | None:
    """Bytes this process may still allocate: the machine's available memory, what the
    address-space limit (``RLIMIT_AS``) leaves, and ``VDVAE_MAX_MEMORY`` less what the process
    already holds, whichever is least. None when unknown. Every size check before an allocation
    (inputs, grids, animations, models, latents) asks this."""
    statm = _statm()
    free = _available_memory(statm)
    cap = memory_limit()
    if cap is not None:
        held = statm[1] if statm else 0  # resident now
        left = max(0, cap - held)
        free = left if free is None else min(free, left)
    return free


def _statm() -> tuple[int, int] | None:
    """This process's (virtual size, resident size) in bytes, from /proc (None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            fields = f.read().split()
        page = os.sysconf("SC_PAGE_SIZE")
        return int(fields[0]) * page, int(fields[1]) * page
    except (OSError, ValueError, IndexError):
        return None


def _available_memory(statm: tuple[int, int] | None = None) -> int | None:
    free = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            free = None
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            used = statm[0] if statm else 0
            left = max(0, soft - used)
            free = left if free is None else min(free, left)
    except (ImportError, OSError, ValueError, IndexError):
        pass
    return free


LIVE_TEMPS: set[str] = set()  # temporary files being written now (see checkpoint._atomic)
# (folder, name prefix) of temporary files about to be created: a signal that lands between the
# creation and the registration above (in this thread or another) must not leave the file behind
PENDING_TEMPS: set[tuple[str, str]] = set()


def cleanup_temps() -> None:
    """Remove every temporary file this process is writing (on a signal, or when a command fails)."""
    for tmp in list(LIVE_TEMPS):
        try:
            os.unlink(tmp)
        except OSError:
            pass
        LIVE_TEMPS.discard(tmp)
    for folder, prefix in list(PENDING_TEMPS):
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            if name.startswith(prefix) and name.endswith(".tmp"):
                try:
                    os.unlink(os.path.join(folder, name))
                except OSError:
                    pass


def stdout_failed(exc: BaseException):
    """Stdout could not take our data (closed, /dev/full, ...): point descriptor 1 at /dev/null so
    that the flush at exit does not fail a second time, and return the one-line error to raise."""
    import errno

    from .errors import OutputError

    import sys

    try:
        if sys.stdout is not None and sys.stdout.fileno() == 1:  # not under a test runner's capture
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.close(null)
    except (OSError, ValueError, AttributeError):
        pass
    if isinstance(exc, OSError) and exc.errno != errno.EBADF:
        why = exc.strerror or str(exc)
        hint = "redirect stdout to a file with space, or write to a file with -o"
    else:
        why = "it is closed"
        hint = "redirect stdout to a file, or write to a file with -o"
    return OutputError(f"cannot write to stdout: {why}", hint=hint)


def human_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


# --------------------------------------------------------------------------------------------------
# Text shown to a person

def _escape_char(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch, f"\\x{code:02x}")
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")


def clean(text: Any) -> str:
    """``text`` with every control character, bidirectional override and undecodable byte escaped
    (``\\x1b``, ``\\n``, ``\\u202e``, ``\\xff``): safe to print to a terminal, always one line."""
    s = text if isinstance(text, str) else str(text)
    if not _UNSAFE.search(s):
        return s
    return _UNSAFE.sub(lambda m: _escape_char(m.group()), s)


def one_line(text: Any, *, limit: int = 2000) -> str:
    """A message as one clean line: the first non-empty line of ``text``, escaped, at most
    ``limit`` characters."""
    s = text if isinstance(text, str) else str(text)
    lines = [line.strip() for line in s.splitlines() if line.strip()]
    first = lines[0] if lines else ""
    out = clean(first)
    if len(out) > limit:
        out = out[: limit - 3] + "..."
    return out


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text (its type name when it has none), escaped."""
    return one_line(str(exc)) or type(exc).__name__


# --------------------------------------------------------------------------------------------------
# JSON


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, str):
        if _SURROGATE.search(obj):
            return _SURROGATE.sub(lambda m: _escape_char(m.group()), obj)
        return obj
    if isinstance(obj, dict):
        return {_json_safe(str(k)): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


_SURROGATE = re.compile("[\ud800-\udfff]")


def non_finite_keys(obj: dict[str, Any]) -> list[str]:
    """Keys of ``obj`` whose value is a non-finite float, or a list holding one."""
    bad = []
    for k, v in obj.items():
        if isinstance(v, float) and not math.isfinite(v):
            bad.append(k)
        elif isinstance(v, (list, tuple)) and any(isinstance(x, float) and not math.isfinite(x) for x in v):
            bad.append(k)
    return bad


def dumps(obj: Any) -> str:
    """Strict JSON on one line: non-finite numbers become ``null`` (a top-level object then gets a
    ``null_reason`` unless it has one), strings that hold undecodable bytes escape them as ``\\xNN``."""
    if isinstance(obj, dict):
        bad = non_finite_keys(obj)
        if bad and "null_reason" not in obj:
            obj = {**obj, "null_reason": f"not a finite number: {', '.join(bad)}"}
    return json.dumps(_json_safe(obj), ensure_ascii=False, allow_nan=False)


class JSONLimitError(ValueError):
    """JSON that is too deeply nested, holds a duplicate key or a non-finite constant."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)  # built in C; only a short object or a duplicate is looked at key by key
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise JSONLimitError(f"duplicate key {k!r}")
            seen.add(k)
    return out


def _reject_constant(name: str) -> Any:
    raise JSONLimitError(f"{name} is not a JSON number")


def json_depth(text: str) -> int:
    """How deeply ``text``'s arrays and objects nest (brackets inside strings do not count)."""
    if text.count("[") + text.count("{") <= 1:
        return text.count("[") + text.count("{")
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)
    depth = best = 0
    for ch in re.findall(r"[\[\]{}]", stripped):
        depth += 1 if ch in "[{" else -1
        if depth > best:
            best = depth
            if best > 10 * MAX_JSON_DEPTH:
                break
    return best


def loads(text: str | bytes, *, max_depth: int = MAX_JSON_DEPTH, duplicates: bool = False) -> Any:
    """``json.loads`` for untrusted text: at most ``max_depth`` levels of nesting, no duplicate keys
    (unless ``duplicates``), no NaN/Infinity. Raises ``ValueError`` (``json.JSONDecodeError``,
    ``UnicodeDecodeError`` or :class:`JSONLimitError`) for anything else."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = bytes(text).decode("utf-8")
    depth = json_depth(text)
    if depth > max_depth:
        raise JSONLimitError(f"nested {depth} levels deep (at most {max_depth})")
    try:
        return json.loads(text, object_pairs_hook=None if duplicates else _no_duplicates,
                          parse_constant=_reject_constant)
    except RecursionError:  # json_depth is exact, but stay safe
        raise JSONLimitError("nested too deeply") from None


def check_text_type(value: Any, what: str, error: type[VDVAEError], *, limit: int = 10_000) -> str:
    """``value`` if it is a string of at most ``limit`` characters, else ``error``."""
    if not isinstance(value, str):
        raise error(f"{what} must be a string, got {type(value).__name__}")
    if len(value) > limit:
        raise error(f"{what} is {len(value)} characters long (at most {limit})")
    return value
