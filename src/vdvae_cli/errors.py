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


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a device running out of memory (``torch.OutOfMemoryError``, or the
    RuntimeError other backends raise), told apart without importing torch."""
    if not isinstance(exc, (RuntimeError, MemoryError)):
        return False
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


class TrainingError(VDVAEError):
    """Training cannot go on (diverged, every update skipped, bad data)."""


class MissingDependencyError(VDVAEError):
    """An optional package a command needs is not installed (the hint says which extra to install)."""
