"""The safetensors container, read safely: its header parsed and checked (size, JSON depth, tensor
count, dtypes, shapes, byte ranges that tile the data exactly) before a single tensor is read. Model
files and latents files are both safetensors."""

from __future__ import annotations

import math
import struct
from typing import Any, Callable

from .errors import CheckpointError, VDVAEError


# Whole-byte dtypes that torch reads. The format also names sub-byte ones (F4, F6_*: a tensor's
# bytes need not end on a byte boundary) and F8_E8M0, which torch's safetensors reader does not map:
# a header with those is refused here as an unknown dtype rather than failing in the library later.
DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "C64": 8, "I64": 8, "U64": 8, "F64": 8}


FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")


MAX_TENSORS = 200_000


MAX_DIMS = 8


def _step_counter(key: str, dtype: str, shape: list[int]) -> bool:
    """BatchNorm's ``num_batches_tracked``: the one integer tensor a network's state holds (NVAE's,
    a scalar I64), allowed beside the floating-point weights."""
    return key.endswith(".num_batches_tracked") and dtype == "I64" and shape == []


def parse_header(
    read: Callable[[int, int], bytes],
    size: int,
    label: str,
    *,
    error: type[VDVAEError] = CheckpointError,
    kind: str = "safetensors file",
    hint: str | None = None,
    dtypes: tuple[str, ...] | None = FLOAT_DTYPES,
) -> dict[str, Any]:
    """Parse and check a safetensors header through ``read(offset, n)`` from a source of ``size`` bytes.

    Shared by checkpoints (read from a file) and latents (bytes from stdin). The header is untrusted,
    so everything the safetensors format promises is checked here, before any tensor is read: a
    bounded JSON object without duplicate names; ``__metadata__`` a map of strings; every tensor a
    known ``dtype`` (one of ``dtypes`` unless None), a ``shape`` of at most 8 whole numbers and
    ``data_offsets`` that hold exactly that many bytes, one after the other, covering the payload.
    Anything else raises ``error`` with one clear line naming the tensor.
    """
    from ..base.safety import MAX_HEADER_BYTES, JSONLimitError, loads

    def bad(why: str, *, corrupt: bool = True) -> VDVAEError:
        return error(f"{label} has a corrupt safetensors header: {why}" if corrupt else why, hint=hint)

    if size < 8:
        raise error(f"{label} is not a {kind} ({size} bytes)", hint=hint)
    (n,) = struct.unpack("<Q", read(0, 8))
    if n > MAX_HEADER_BYTES and n <= size - 8 and read(8, 1) == b"{":
        raise error(f"{label} has a safetensors header of {n} bytes (at most {MAX_HEADER_BYTES} are read)", hint=hint)
    if n < 2 or n > min(size - 8, MAX_HEADER_BYTES) or read(8, 1) != b"{":
        raise error(f"{label} is not a {kind}", hint=hint)
    try:
        header = loads(read(8, n))
    except JSONLimitError as exc:
        raise bad(str(exc)) from None
    except ValueError:  # not JSON, not UTF-8
        raise error(f"{label} has a corrupt safetensors header", hint=hint) from None
    if not isinstance(header, dict):
        raise error(f"{label} has a corrupt safetensors header", hint=hint)
    meta = header.get("__metadata__")
    if meta is not None and (not isinstance(meta, dict)
                             or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())):
        raise bad("__metadata__ must map names to strings")
    if len(header) > MAX_TENSORS:
        raise bad(f"{len(header)} tensors (at most {MAX_TENSORS})")
    spans = []
    for key, info in header.items():
        if key == "__metadata__":
            continue
        name = repr(key) if len(key) <= 100 else repr(key[:97] + "...")
        if not isinstance(info, dict):
            raise bad(f"tensor {name} is not described by an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
            raise bad(f"tensor {name} has an unknown dtype {dtype!r}"[:300])
        if (not isinstance(shape, list) or len(shape) > MAX_DIMS
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise bad(f"tensor {name}: shape must be a list of at most {MAX_DIMS} whole numbers")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
                or offsets[0] > offsets[1]):
            raise bad(f"tensor {name}: data_offsets must be two whole numbers [begin, end]")
        nbytes = math.prod(shape) * DTYPE_SIZES[dtype]
        if offsets[1] - offsets[0] != nbytes:
            raise bad(f"tensor {name}: data_offsets hold {offsets[1] - offsets[0]} bytes, "
                      f"its {dtype} shape {tuple(shape)} needs {nbytes}")
        if dtypes is not None and dtype not in dtypes and not _step_counter(key, dtype, shape):
            raise error(f"{label}: tensor {name} is {dtype}, but a {kind} holds floating-point tensors "
                        f"({', '.join(dtypes)})", hint=hint)
        spans.append((offsets[0], offsets[1], name))
    spans.sort()
    end = 0
    for begin, stop, name in spans:
        if begin != end:
            raise bad(f"tensor {name} starts at byte {begin}, the previous one ends at {end}")
        end = stop
    if 8 + n + end > size:
        raise error(
            f"{label} is truncated: {size} bytes, the header describes {8 + n + end}",
            hint="the file was probably cut short (an interrupted download or copy); fetch it again",
        )
    if 8 + n + end < size:
        raise bad(f"{size - 8 - n - end} bytes after the last tensor")
    return header


def check_format_version(
    version: str | None,
    current: str,
    label: str,
    *,
    what: str,
    error: type[VDVAEError] = CheckpointError,
) -> None:
    """Refuse a file whose ``format_version`` metadata is not one this code reads: a version newer
    than ``current`` (the one its writer puts there), or text that is no version number. Absent (files
    written without one) and every version up to ``current`` are read as before."""
    if version is None:
        return
    parts = version.strip().split(".")
    if len(version) > 20 or not all(p.isascii() and p.isdigit() for p in parts):
        raise error(f"{label} has format_version {version[:20]!r}, which is not a version number "
                    f"(this vdvae-cli writes {what} of version {current})")
    theirs, ours = [int(p) for p in parts], [int(p) for p in current.split(".")]
    width = max(len(theirs), len(ours))  # 1.0 is 1
    if theirs + [0] * (width - len(theirs)) > ours + [0] * (width - len(ours)):
        raise error(f"{label} is a {what} of format version {version.strip()}; this vdvae-cli reads versions up to "
                    f"{current}", hint="upgrade vdvae-cli to read it: pip install -U vdvae-cli")
