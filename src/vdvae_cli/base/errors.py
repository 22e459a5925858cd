"""The exceptions the library raises. The CLI maps each class to an exit code and one line of text."""

from __future__ import annotations


class VDVAEError(Exception):
    """Base class. ``hint`` is an optional second sentence telling the user what to do."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class UsageError(VDVAEError):
    """The request itself is wrong (bad option value, conflicting options)."""

    exit_code = 2


class ConfigError(UsageError):
    """A hyperparameter set is malformed or inconsistent (bad block string, width order...)."""


class TemperatureSpecError(UsageError):
    """A ``--temp`` specification cannot be parsed or does not fit the model."""


class ModelNotFoundError(VDVAEError):
    """A model reference names nothing we can find (unknown registry name, missing file, offline)."""


class CheckpointError(VDVAEError):
    """A checkpoint file exists but cannot be used (wrong format, truncated, keys/shapes differ)."""


class NetworkError(VDVAEError):
    """A download failed or the network is not reachable."""


class ImageError(VDVAEError):
    """An input image cannot be read or decoded."""


class OutputError(VDVAEError):
    """An output cannot be written (exists without --force, unwritable, binary to a terminal)."""


class LatentsError(VDVAEError):
    """A latents file is malformed or belongs to another model."""


class DeviceError(VDVAEError):
    """The requested device is unavailable or ran out of memory."""


class NumericalError(VDVAEError):
    """A model or input produced values that are not finite numbers (NaN or infinity)."""


_OOM_TEXTS = ("out of memory", "can't allocate memory", "cannot allocate memory", "unable to allocate",
              "failed to allocate", "std::bad_alloc", "memory allocation failed")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is running out of memory: ``MemoryError`` (numpy's included), ``torch.OutOfMemoryError``,
    or the RuntimeError an allocator raises (CPU: "can't allocate memory"), told apart without importing torch."""
    if isinstance(exc, MemoryError):
        return True
    if not isinstance(exc, (RuntimeError, OSError, ValueError)):
        return False
    text = str(exc).lower()
    return type(exc).__name__ == "OutOfMemoryError" or any(t in text for t in _OOM_TEXTS) or (
        isinstance(exc, OSError) and exc.errno == 12)  # ENOMEM


class activity:
    """``with activity("decoding big.png (13000x13000)"):`` turns running out of memory inside the
    block into one :class:`DeviceError` that says what was too big. The innermost activity wins."""

    def __init__(self, what: str, hint: str | None = None):
        self.what, self.hint = what, hint

    def __enter__(self) -> "activity":
        return self

    def __exit__(self, kind, exc, tb) -> None:  # other exceptions pass through
        if exc is not None and not isinstance(exc, VDVAEError) and is_out_of_memory(exc):
            raise DeviceError(f"out of memory {self.what}",
                              hint=self.hint or "use a smaller --batch-size, --dtype bf16, or smaller inputs") from None


class TrainingError(VDVAEError):
    """Training cannot go on (diverged, every update skipped, bad data)."""


class MissingDependencyError(VDVAEError):
    """An optional package a command needs is not installed (the hint says which extra to install)."""
