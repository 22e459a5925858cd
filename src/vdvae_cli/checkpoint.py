"""Self-describing safetensors checkpoints: write, read strictly, convert official pickles.

A vdvae-cli checkpoint is a safetensors file whose metadata holds ``vdvae_config`` (the full
:class:`~vdvae_cli.config.VDVAEConfig` as JSON), so the file alone rebuilds its model. Reading checks
every key and shape against that config and names each difference.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from .config import VDVAEConfig, official_config
from .errors import CheckpointError, ConfigError, OutputError, VDVAEError
from .family import family_named, family_of
from .model import VAE

FORMAT = "vdvae-cli"
FORMAT_VERSION = "1"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

Tensor = torch.Tensor

# --------------------------------------------------------------------------------------------------
# Key / shape checks


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


def expected_shapes(cfg: VDVAEConfig) -> "OrderedDict[str, tuple[int, ...]]":
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
    for i, l in enumerate(cfg.encoder_layers):
        block(f"encoder.enc_blocks.{i}", l.width, l.middle, l.width, l.kernel)
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
    for l in (*cfg.encoder_layers, *cfg.decoder_layers):
        per_res[l.res] = max(per_res.get(l.res, 0), l.width * l.res * l.res)
    states = sum(per_res.values())
    biggest = max(per_res.values())
    head = 10 * cfg.num_mixtures * cfg.image_size ** 2 * 4  # DMoL parameters, float32
    return ((2 if encoder else 1) * states + 6 * biggest) * itemsize + 3 * head


_BN_BUFFERS = (".running_mean", ".running_var", ".num_batches_tracked")


def parameter_count(cfg: VDVAEConfig) -> int:
    """Trainable parameters of ``cfg``'s network, from :func:`expected_shapes` (BatchNorm
    statistics, the only buffers either family's state holds, are not parameters)."""
    return sum(math.prod(shape) for key, shape in expected_shapes(cfg).items() if not key.endswith(_BN_BUFFERS))


def compare_keys(shapes: Mapping[str, tuple[int, ...]], cfg: VDVAEConfig) -> KeyReport:
    expected = expected_shapes(cfg)
    report = KeyReport()
    report.missing = [k for k in expected if k not in shapes]
    report.unexpected = [k for k in shapes if k not in expected]
    report.mismatched = [(k, tuple(shapes[k]), expected[k]) for k in expected if k in shapes and tuple(shapes[k]) != expected[k]]
    return report


def strip_module_prefix(state: Mapping[str, Tensor]) -> "OrderedDict[str, Tensor]":
    """Drop the ``module.`` prefix that DistributedDataParallel puts on every key."""
    return OrderedDict((k[len("module."):] if k.startswith("module.") else k, v) for k, v in state.items())


# --------------------------------------------------------------------------------------------------
# Writing


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
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise _write_error(parent, exc) from None
    _LIVE_TEMPS.add(tmp)
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


def save_checkpoint(
    state: Mapping[str, Tensor] | VAE,
    cfg: VDVAEConfig,
    path: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    metadata: Mapping[str, str] | None = None,
    force: bool = False,
) -> Path:
    """Write ``state`` (a state_dict or a model) as a self-describing safetensors file, atomically."""
    from safetensors.torch import save

    if isinstance(state, torch.nn.Module):
        state = state.state_dict()
    report = compare_keys({k: tuple(v.shape) for k, v in state.items()}, cfg)
    if not report.ok:
        raise CheckpointError(f"state does not match the config: {report.summary()}")
    target = DTYPES[dtype] if isinstance(dtype, str) else dtype
    tensors = {k: (v.detach().to("cpu", target) if target else v.detach().cpu()).contiguous() for k, v in state.items()}
    family = family_of(cfg)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, family.config_key: cfg.to_json(),
            "weights_sha256": weights_digest(tensors)}
    if family.name != "vdvae":  # files without a family are VDVAE (every file written before NVAE)
        meta["family"] = family.name
    meta.update(metadata or {})
    blob = save(tensors, metadata=meta)
    path = Path(path)
    atomic_write_bytes(path, blob, force=force)
    return path


# --------------------------------------------------------------------------------------------------
# Reading


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


# safetensors dtypes and their sizes in bytes; only floating-point ones hold weights or latents.
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


def read_header(path: str | Path) -> dict[str, Any]:
    """The parsed, checked safetensors header of ``path`` (with ``__metadata__``), with clear errors."""
    path = Path(path)
    label = _label(path)
    try:
        if not path.is_file():
            raise CheckpointError(f"{label} is not a file")
        kind = sniff(path)
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


def check_fits(cfg: VDVAEConfig, label: str, *, itemsize: int = 4, stored_bytes: int | None = None) -> None:
    """Refuse a model whose weights (and one image's working memory) cannot fit in the memory
    this process has, before anything is allocated for it."""
    from .errors import DeviceError
    from .safety import available_memory, human_bytes

    free = available_memory()
    if free is None:
        return
    weights = parameter_count(cfg) * itemsize + (stored_bytes or 0)
    work = activation_bytes(cfg, itemsize)
    if weights + work > free:
        raise DeviceError(
            f"model {cfg.name!r} from {label} needs about {human_bytes(weights)} of weights and "
            f"{human_bytes(work)} of working memory per {cfg.image_size}x{cfg.image_size} image; "
            f"{human_bytes(free)} is available",
            hint="use a machine with more memory, or --dtype bf16",
        )


def _check_finite(state: Mapping[str, Tensor], label: str, error: type[VDVAEError] = CheckpointError,
                  what: str = "tensor") -> None:
    for key, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            kinds = "NaN" if bool(torch.isnan(t).any()) else "infinite"
            raise error(f"{label}: {what} {key!r} holds {bad} {kinds} value{'s' if bad != 1 else ''}",
                        hint="the file is damaged, or came from a training run that diverged")


def read_checkpoint(path: str | Path, *, itemsize: int = 4) -> tuple[VDVAEConfig, "OrderedDict[str, Tensor]"]:
    """Config and tensors of a checkpoint, after a strict header, key/shape, memory and finiteness check."""
    from safetensors.torch import load_file

    from .errors import activity

    label = _label(path)
    header = read_header(path)
    cfg = checked_config(path, header)
    stored = sum(int(v["data_offsets"][1]) - int(v["data_offsets"][0]) for k, v in header.items() if k != "__metadata__")
    check_fits(cfg, label, itemsize=itemsize, stored_bytes=stored)
    try:
        with activity(f"loading {label} ({parameter_count(cfg):,} parameters)"):
            tensors = load_file(str(path))
    except VDVAEError:
        raise
    except Exception as exc:  # safetensors raises its own error types
        from .safety import first_line

        raise CheckpointError(f"{label} cannot be read: {first_line(exc)}") from None
    _check_finite(tensors, label)
    order = expected_shapes(cfg)
    return cfg, OrderedDict((k, tensors[k]) for k in order)


def build_model(
    cfg: VDVAEConfig,
    state: Mapping[str, Tensor],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> VAE:
    """A model of ``cfg``'s family in eval mode holding ``state``, built without a throwaway random
    init (integer buffers, e.g. BatchNorm counters, keep their dtype). Tensors already on ``device``
    in ``dtype`` are used as they are, not copied: the model shares them with ``state``."""
    with torch.device("meta"):
        model = family_of(cfg).network(cfg)
    state = {k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def load_file_model(path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> VAE:
    cfg, state = read_checkpoint(path, itemsize=torch.empty((), dtype=dtype).element_size())
    digest = stored_digest(path) or weights_digest(state)
    model = build_model(cfg, state, device=device, dtype=dtype)
    model.weights_digest = digest
    model.default_temperature, model.default_output_temperature = default_temperatures(path)
    return model


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


def weights_digest(state: Mapping[str, Tensor]) -> str:
    """sha256 of a state's tensors as stored (names, dtypes, shapes, bytes; in name order): the
    identity of a set of weights, kept in every checkpoint's metadata as ``weights_sha256``."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().to("cpu").contiguous()
        h.update(f"{key}|{str(t.dtype).removeprefix('torch.')}|{tuple(t.shape)}\n".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def stored_digest(path: str | Path) -> str | None:
    """The ``weights_sha256`` a checkpoint's metadata holds (None for files written without one)."""
    meta = read_header(path).get("__metadata__") or {}
    value = meta.get("weights_sha256")
    return value if isinstance(value, str) and len(value) == 64 else None


# --------------------------------------------------------------------------------------------------
# Converting official pickles


def load_pickle(path: str | Path, *, allowed: tuple[type, ...] = (), hint: str = "give an official *-model-ema.th file") -> Any:
    """``torch.load`` of an official checkpoint with ``weights_only=True`` (no pickled code runs;
    ``allowed`` names the only extra classes it may rebuild, e.g. ``argparse.Namespace``), after
    checking that the file is a PyTorch file at all. Every failure is one CheckpointError that says
    what the file is, and never repeats PyTorch's advice to load with ``weights_only=False``."""
    from .errors import activity
    from .safety import first_line

    path = Path(path)
    label = _label(path)
    try:
        if not path.is_file():
            raise CheckpointError(f"{label} is not a file")
        kind = sniff(path)
    except OSError as exc:
        raise CheckpointError(f"cannot read {label}: {exc.strerror or exc}") from None
    if kind == "lfs":
        raise CheckpointError(f"{label} is a git-lfs pointer, not the weights", hint="fetch the real file first")
    if kind == "safetensors":
        raise CheckpointError(f"{label} is already safetensors", hint="load it directly with --model")
    if kind in ("html", "gzip", "other"):
        raise CheckpointError(f"{label} is not a PyTorch checkpoint: it looks like {file_kind(path)}", hint=hint)
    try:
        with activity(f"loading {label}"), torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except VDVAEError:
        raise
    except Exception as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc):  # never repeat torch's advice
            raise CheckpointError(
                f"{label} holds pickled Python objects, not only tensors; vdvae-cli does not run pickled code",
                hint="save the weights alone (torch.save(model.state_dict(), 'model.th')) and convert that",
            ) from None
        raise CheckpointError(f"{label} is not a loadable PyTorch weights file: {first_line(exc)}") from None


def load_reference_state(path: str | Path) -> "OrderedDict[str, Tensor]":
    """Load an official ``*-model.th`` / ``*-model-ema.th`` safely (``weights_only=True``).

    A training file with ``module.`` prefixes is accepted; a dict wrapping the state under
    ``state_dict``/``model`` is unwrapped. Tensors land on the CPU whatever device saved them.
    """
    label = _label(path)
    obj = load_pickle(path)
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
    if (not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj)
            or not all(isinstance(v, Tensor) for v in obj.values())):
        raise CheckpointError(f"{label} does not hold a state_dict (a mapping of names to tensors)")
    for key, value in obj.items():
        if not value.is_floating_point():
            raise CheckpointError(f"{label}: tensor {key!r} is {str(value.dtype).removeprefix('torch.')}, "
                                  "weights are floating point")
    _check_finite(obj, label)
    return strip_module_prefix(obj)


def convert_reference(
    src: str | Path,
    dst: str | Path,
    cfg: VDVAEConfig | None,
    *,
    dtype: str | None = None,
    force: bool = False,
    metadata: Mapping[str, str] | None = None,
    state: Mapping[str, Tensor] | None = None,
) -> tuple[Path, VDVAEConfig]:
    """Convert an official torch pickle to our safetensors format. ``cfg=None`` infers the layout.
    ``state`` is ``src`` already loaded with :func:`load_reference_state`."""
    state = load_reference_state(src) if state is None else state
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    if cfg is None:
        cfg = infer_config(shapes)
    report = compare_keys(shapes, cfg)
    if not report.ok:
        raise CheckpointError(
            f"{src} does not match config {cfg.name!r}: {report.summary()}",
            hint="see every difference with --check; pick the right --config, pass the run's --hparams log.jsonl, or try --config infer",
        )
    meta = {"source_file": Path(src).name}
    meta.update(metadata or {})
    return save_checkpoint(state, cfg, dst, dtype=dtype, metadata=meta, force=force), cfg


# --------------------------------------------------------------------------------------------------
# Inferring the layout from a state_dict


def _runs(items: list[tuple[int, int]]) -> list[tuple[tuple[int, int], int]]:
    """Run-length encode a list."""
    runs: list[tuple[tuple[int, int], int]] = []
    for item in items:
        if runs and runs[-1][0] == item:
            runs[-1] = (item, runs[-1][1] + 1)
        else:
            runs.append((item, 1))
    return runs


def infer_config(shapes: Mapping[str, tuple[int, ...]], base: VDVAEConfig | None = None) -> VDVAEConfig:
    """Reconstruct widths and block counts from a state_dict's shapes, where that is unambiguous.

    Shapes show each block's width and kernel but not its resolution, so a block count can only be
    read off a run of blocks whose width (and kernel) is unique to one resolution. We start from
    ``base`` (default: the official config with the same input/output head) and move its block counts
    to match the checkpoint; a difference inside a run that spans several resolutions of equal width
    cannot be placed and is reported instead of guessed.
    """
    if base is None:
        base = _guess_base(shapes)
    enc_found = _block_signature(shapes, "encoder.enc_blocks", inner="")
    dec_found = _block_signature(shapes, "decoder.dec_blocks", inner=".resnet")
    enc_base = [(l.width, l.kernel) for l in base.encoder_layers]
    dec_base = [(l.width, l.kernel) for l in base.decoder_layers]
    enc_str = _refit(base.enc_blocks, [l.res for l in base.encoder_layers], enc_base, enc_found, "encoder", kind="enc")
    dec_str = _refit(base.dec_blocks, [l.res for l in base.decoder_layers], dec_base, dec_found, "decoder", kind="dec")
    cfg = base.replace(enc_blocks=enc_str, dec_blocks=dec_str, name=f"{base.name}-inferred")
    report = compare_keys(shapes, cfg)
    if not report.ok:
        raise CheckpointError(f"could not infer a layout that matches the checkpoint: {report.summary()}")
    return cfg


def _guess_base(shapes: Mapping[str, tuple[int, ...]]) -> VDVAEConfig:
    in_w = shapes.get("encoder.in_conv.weight")
    out_w = shapes.get("decoder.out_net.out_conv.weight")
    if in_w is None or out_w is None:
        raise CheckpointError("not a VDVAE state_dict: no encoder.in_conv / decoder.out_net.out_conv weights")
    matches = []
    for name in ("cifar10", "imagenet32", "imagenet64", "ffhq256", "ffhq1024"):
        cfg = official_config(name)
        exp = expected_shapes(cfg)
        if exp["encoder.in_conv.weight"] == tuple(in_w) and exp["decoder.out_net.out_conv.weight"] == tuple(out_w):
            matches.append(cfg)
    if not matches:
        raise CheckpointError(
            f"no official model has this input conv {tuple(in_w)} and output head {tuple(out_w)}",
            hint="pass --hparams with the run's hyperparameters",
        )
    # Among candidates prefer the one whose total block counts are closest.
    n_enc = _count(shapes, "encoder.enc_blocks")
    n_dec = _count(shapes, "decoder.dec_blocks")
    return min(matches, key=lambda c: abs(len(c.encoder_layers) - n_enc) + abs(len(c.decoder_layers) - n_dec))


def _count(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> int:
    idx = {int(k[len(prefix) + 1 :].split(".")[0]) for k in shapes if k.startswith(prefix + ".")}
    return max(idx) + 1 if idx else 0


def _block_signature(shapes: Mapping[str, tuple[int, ...]], prefix: str, inner: str) -> list[tuple[int, int]]:
    sig = []
    for i in range(_count(shapes, prefix)):
        c1 = shapes.get(f"{prefix}.{i}{inner}.c1.weight")
        c2 = shapes.get(f"{prefix}.{i}{inner}.c2.weight")
        if c1 is None or c2 is None:
            raise CheckpointError(f"{prefix}.{i} lacks its conv weights")
        sig.append((int(c1[1]), int(c2[-1])))  # (width, kernel)
    return sig


def _refit(text: str, res: list[int], base: list[tuple[int, int]], found: list[tuple[int, int]], what: str,
           *, kind: str) -> str:
    """Change ``text``'s block counts so that its (width, kernel) runs equal ``found``'s runs."""
    base_runs, found_runs = _runs(base), _runs(found)
    if [s for s, _ in base_runs] != [s for s, _ in found_runs]:
        raise CheckpointError(
            f"the checkpoint's {what} widths {[s[0] for s, _ in found_runs]} do not follow the base layout "
            f"{[s[0] for s, _ in base_runs]}",
            hint="pass --hparams with the run's hyperparameters",
        )
    from .config import parse_block_string

    parsed = parse_block_string(text, kind=kind)
    start = 0
    counts: dict[int, int] = {}  # resolution -> change in plain blocks
    for (sig, n_base), (_, n_found) in zip(base_runs, found_runs):
        run_res = sorted(set(res[start : start + n_base]))
        start += n_base
        if n_base == n_found:
            continue
        if len(run_res) != 1:
            raise CheckpointError(
                f"the checkpoint's {what} has {n_found} blocks of width {sig[0]} where the base layout has "
                f"{n_base}, spread over resolutions {run_res}: which resolution differs cannot be read from shapes",
                hint="pass --hparams with the run's -log.jsonl to give the true block strings",
            )
        counts[run_res[0]] = counts.get(run_res[0], 0) + n_found - n_base
    if not counts:
        return text
    # Rebuild the string: add/remove plain blocks at each changed resolution.
    out: list[tuple[int, int | None]] = []
    for r in sorted(set(res), reverse=(kind == "enc")):
        group = [p for p in parsed if p[0] == r]
        plain = [p for p in group if p[1] is None]
        special = [p for p in group if p[1] is not None]
        n_plain = len(plain) + counts.get(r, 0)
        if n_plain < 0:
            raise CheckpointError(f"cannot fit the checkpoint's {what} at resolution {r}")
        if kind == "enc":
            out += [(r, None)] * n_plain + special
        else:
            out += special + [(r, None)] * n_plain
    return _format_blocks(out, "d" if kind == "enc" else "m")


def _format_blocks(blocks: list[tuple[int, int | None]], letter: str) -> str:
    tokens: list[str] = []
    i = 0
    while i < len(blocks):
        r, extra = blocks[i]
        if extra is not None:
            tokens.append(f"{r}{letter}{extra}")
            i += 1
            continue
        j = i
        while j < len(blocks) and blocks[j] == (r, None):
            j += 1
        tokens.append(f"{r}x{j - i}")
        i = j
    return ",".join(tokens)
