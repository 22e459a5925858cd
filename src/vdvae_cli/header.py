"""What a model file says, read without torch: the checked safetensors header, the config it
holds (checked against the tensors it lists), and the shapes, parameter count and working memory
that config implies. ``vdvae info`` and the registry use this module alone, so describing a model
reads no weights, builds no network and imports no torch (an NVAE config's shapes are the one
exception: they come from its network on the meta device). :mod:`vdvae_cli.checkpoint` re-exports
all of it beside the reading and writing of tensors.
"""

from __future__ import annotations

import math
import os
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .config import DecoderLayer, EncoderLayer, VDVAEConfig
from .configbase import LatentStackConfig
from .errors import CheckpointError, ConfigError, VDVAEError
from .family import family_named, family_of


@dataclass
class KeyReport:
    """Differences between a state_dict and the keys/shapes a config expects."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 6) -> str:
        parts = []
        for label, items in (("missing", self.missing), ("unexpected", self.unexpected)):
            if items:
                shown = ", ".join(items[:limit]) + (f" (+{len(items) - limit} more)" if len(items) > limit else "")
                parts.append(f"{len(items)} {label} key(s)" + (f": {shown}" if limit else ""))
        if self.mismatched:
            shown = ", ".join(f"{k} {tuple(got)} != expected {tuple(exp)}" for k, got, exp in self.mismatched[:limit])
            more = f" (+{len(self.mismatched) - limit} more)" if len(self.mismatched) > limit else ""
            parts.append(f"{len(self.mismatched)} shape mismatch(es)" + (f": {shown}{more}" if limit else ""))
        return "; ".join(parts)


def expected_shapes(cfg: LatentStackConfig) -> "OrderedDict[str, tuple[int, ...]]":
    """Every state_dict key of ``cfg``'s network with its shape, in state_dict order, computed
    without allocating: a hostile config is compared with the tensors of its file before anything
    is built for it (each family knows its own network: :meth:`vdvae_cli.family.Family.state_shapes`).
    ``tests/test_hostile.py`` checks it against the built network for every official set."""
    return family_of(cfg).state_shapes(cfg)


def vdvae_state_shapes(cfg: VDVAEConfig) -> "OrderedDict[str, tuple[int, ...]]":
    """:func:`expected_shapes` of a VDVAE, from the config alone (no module is built, not even on
    the meta device)."""
    out: "OrderedDict[str, tuple[int, ...]]" = OrderedDict()

    def block(prefix: str, cin: int, mid: int, cout: int, k: int) -> None:
        for name, shape in (("c1", (mid, cin, 1, 1)), ("c2", (mid, mid, k, k)), ("c3", (mid, mid, k, k)),
                            ("c4", (cout, mid, 1, 1))):
            out[f"{prefix}.{name}.weight"] = shape
            out[f"{prefix}.{name}.bias"] = (shape[0],)

    out["encoder.in_conv.weight"] = (cfg.width, cfg.image_channels, 3, 3)
    out["encoder.in_conv.bias"] = (cfg.width,)
    for i, e in enumerate(cfg.encoder_layers):
        block(f"encoder.enc_blocks.{i}", e.width, e.middle, e.width, e.kernel)
    out["decoder.gain"] = (1, cfg.width, 1, 1)
    out["decoder.bias"] = (1, cfg.width, 1, 1)
    for i, l in enumerate(cfg.decoder_layers):
        p = f"decoder.dec_blocks.{i}"
        block(f"{p}.enc", 2 * l.width, l.middle, 2 * l.zdim, l.kernel)
        block(f"{p}.prior", l.width, l.middle, 2 * l.zdim + l.width, l.kernel)
        out[f"{p}.z_proj.weight"] = (l.width, l.zdim, 1, 1)
        out[f"{p}.z_proj.bias"] = (l.width,)
        block(f"{p}.resnet", l.width, l.middle, l.width, l.kernel)
    for j, r in enumerate(cfg.bias_resolutions):
        out[f"decoder.bias_xs.{j}"] = (1, cfg.width_at(r), r, r)
    out["decoder.out_net.out_conv.weight"] = (10 * cfg.num_mixtures, cfg.width, 1, 1)
    out["decoder.out_net.out_conv.bias"] = (10 * cfg.num_mixtures,)
    return out


def activation_bytes(cfg: Any, itemsize: int = 4, *, encoder: bool = True) -> int:
    """A generous estimate of the working memory one image needs in a forward pass (bytes), from the
    config alone (each family knows its own: :meth:`vdvae_cli.family.Family.activation_bytes`).
    Used to refuse a model that cannot run here before building it."""
    return family_of(cfg).activation_bytes(cfg, itemsize, encoder=encoder)


def vdvae_activation_bytes(cfg: VDVAEConfig, itemsize: int = 4, *, encoder: bool = True) -> int:
    """A generous estimate of the working memory one image needs in a forward pass (bytes), from the
    config alone: the encoder's kept activations, the decoder's states, a block's temporaries and
    the output head. Used to refuse a model that cannot run here before building it."""
    per_res: dict[int, int] = {}
    layers: tuple[EncoderLayer | DecoderLayer, ...] = (*cfg.encoder_layers, *cfg.decoder_layers)
    for l in layers:
        per_res[l.res] = max(per_res.get(l.res, 0), l.width * l.res * l.res)
    states = sum(per_res.values())
    biggest = max(per_res.values())
    head = 10 * cfg.num_mixtures * cfg.image_size ** 2 * 4  # DMoL parameters, float32
    return ((2 if encoder else 1) * states + 6 * biggest) * itemsize + 3 * head


_BN_BUFFERS = (".running_mean", ".running_var", ".num_batches_tracked")


def parameter_count(cfg: LatentStackConfig) -> int:
    """Trainable parameters of ``cfg``'s network, from :func:`expected_shapes` (BatchNorm
    statistics, the only buffers either family's state holds, are not parameters)."""
    return sum(math.prod(shape) for key, shape in expected_shapes(cfg).items() if not key.endswith(_BN_BUFFERS))


def compare_keys(shapes: Mapping[str, tuple[int, ...]], cfg: LatentStackConfig) -> KeyReport:
    expected = expected_shapes(cfg)
    report = KeyReport()
    report.missing = [k for k in expected if k not in shapes]
    report.unexpected = [k for k in shapes if k not in expected]
    report.mismatched = [(k, tuple(shapes[k]), expected[k]) for k in expected if k in shapes and tuple(shapes[k]) != expected[k]]
    return report


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


DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "F4": 1, "F6_E2M3": 1,
               "F6_E3M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "C64": 8,
               "I64": 8, "U64": 8, "F64": 8}


FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")


MAX_TENSORS = 200_000


MAX_DIMS = 8


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
    from .safety import MAX_HEADER_BYTES, JSONLimitError, loads

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


def read_header(path: str | Path) -> dict[str, Any]:
    """The parsed, checked safetensors header of ``path`` (with ``__metadata__``), with clear errors."""
    path = Path(path)
    label = _label(path)
    kind = sniff_file(path)
    if kind == "lfs":
        raise CheckpointError(
            f"{label} is a git-lfs pointer, not the weights",
            hint="run 'git lfs pull' in that repository, or download the file itself",
        )
    if kind in ("torch-zip", "torch-pickle"):
        raise CheckpointError(
            f"{label} is a PyTorch pickle, not safetensors",
            hint=f"convert it first: vdvae convert {label} --config NAME -o model.safetensors",
        )
    try:
        with open(path, "rb") as f:

            def read(offset: int, n: int) -> bytes:
                f.seek(offset)
                return f.read(n)

            return parse_header(read, os.fstat(f.fileno()).st_size, label)
    except OSError as exc:
        raise CheckpointError(f"cannot read {label}: {exc.strerror or exc}") from None


def _config_from_header(header: Mapping[str, Any], path: str | Path) -> VDVAEConfig:
    from .safety import JSONLimitError, loads

    label = _label(path)
    meta = header.get("__metadata__") or {}
    if meta.get("format") == "vdvae-latents":  # latents.FORMAT: a `vdvae encode` output, not a model
        model_name = _label(meta.get("model_name") or "?")
        raise CheckpointError(
            f"{label} is a latents file (images encoded by model {model_name}), not a model",
            hint=f"decode it with: vdvae decode {label} --model MODEL",
        )
    family_name = meta.get("family", "vdvae")
    if not isinstance(family_name, str):
        raise CheckpointError(f"{label} has a family field that is not a name")
    family = family_named(family_name)
    text = meta.get(family.config_key)
    if text is None:
        raise CheckpointError(
            f"{label} has no {family.config_key} metadata, so it does not say which model it holds",
            hint="convert raw weights with: vdvae convert FILE --config NAME -o model.safetensors",
        )
    try:
        return family.config_from_dict(loads(text))
    except (JSONLimitError, ValueError) as exc:
        raise CheckpointError(f"{label} has unreadable {family.config_key} metadata: {exc}") from None
    except ConfigError as exc:
        raise CheckpointError(f"{label} describes an invalid model: {exc}") from None


def config_of(path: str | Path) -> VDVAEConfig:
    """The config stored in a checkpoint's metadata (not yet checked against its tensors)."""
    return _config_from_header(read_header(path), path)


def checked_config(path: str | Path, header: Mapping[str, Any] | None = None) -> VDVAEConfig:
    """The config of a checkpoint, after checking it against the tensors its header lists: the
    weights fix the architecture, so a config that does not describe them is refused here, before
    any module is built or any tensor read."""
    header = read_header(path) if header is None else header
    cfg = _config_from_header(header, path)
    shapes = {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    report = compare_keys(shapes, cfg)
    if not report.ok:
        raise CheckpointError(f"{_label(path)} does not match its own config: {report.summary()}")
    return cfg


def metadata_of(path: str | Path) -> dict[str, str]:
    return dict(read_header(path).get("__metadata__") or {})


DEFAULT_TEMPERATURE_KEY = "default_temperature"


DEFAULT_OUTPUT_TEMPERATURE_KEY = "default_output_temperature"


def default_temperatures(path: str | Path) -> tuple[str | None, str | None]:
    """The temperatures a checkpoint recommends for sampling, as its metadata spells them: the prior's
    (a ``--temp`` spec, key ``default_temperature``) and the pixels' (``--output-temp``, key
    ``default_output_temperature``); None for each it does not name. Checked where they are used."""
    meta = metadata_of(path)
    found = (meta.get(key, "").strip() for key in (DEFAULT_TEMPERATURE_KEY, DEFAULT_OUTPUT_TEMPERATURE_KEY))
    prior, output = (value or None for value in found)
    return prior, output


def stored_digest(path: str | Path) -> str | None:
    """The ``weights_sha256`` a checkpoint's metadata holds (None for files written without one)."""
    meta = read_header(path).get("__metadata__") or {}
    value = meta.get("weights_sha256")
    return value if isinstance(value, str) and len(value) == 64 else None
