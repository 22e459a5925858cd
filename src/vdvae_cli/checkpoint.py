"""Self-describing safetensors checkpoints: write, read strictly, convert official pickles.

A vdvae-cli checkpoint is a safetensors file whose metadata names its family and holds that
family's full config as JSON (``vdvae_config`` or ``nvae_config``), so the file alone rebuilds its
model. Reading checks every key and shape against that config and names each difference; the
header checks themselves live in :mod:`vdvae_cli.header` (torch-free) and are re-exported here.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, cast

import torch

from .config import VDVAEConfig, official_config
from .configbase import LatentStackConfig
from .errors import CheckpointError, OutputError, VDVAEError
from .family import family_of
from .header import (  # noqa: F401  (re-exported: the checkpoint API reads headers too)
    KeyReport,
    expected_shapes,
    vdvae_state_shapes,
    activation_bytes,
    vdvae_activation_bytes,
    parameter_count,
    compare_keys,
    sniff,
    sniff_bytes,
    sniff_file,
    DTYPE_SIZES,
    FLOAT_DTYPES,
    MAX_TENSORS,
    MAX_DIMS,
    file_kind,
    parse_header,
    _label,
    read_header,
    _config_from_header,
    config_of,
    checked_config,
    metadata_of,
    DEFAULT_TEMPERATURE_KEY,
    DEFAULT_OUTPUT_TEMPERATURE_KEY,
    default_temperatures,
    stored_digest,
)
from .model import VAE

FORMAT = "vdvae-cli"
FORMAT_VERSION = "1"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

Tensor = torch.Tensor

# --------------------------------------------------------------------------------------------------
# Key / shape checks


















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
    state: Mapping[str, Tensor] | torch.nn.Module,
    cfg: LatentStackConfig,
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






# safetensors dtypes and their sizes in bytes; only floating-point ones hold weights or latents.




















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
    cfg: LatentStackConfig,
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
    # VAE is the model type of the whole API; an NVAE network offers the same surface (family.LatentModel)
    return cast(VAE, model.eval().requires_grad_(False))


def load_file_model(path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> VAE:
    cfg, state = read_checkpoint(path, itemsize=torch.empty((), dtype=dtype).element_size())
    digest = stored_digest(path) or weights_digest(state)
    model = build_model(cfg, state, device=device, dtype=dtype)
    model.weights_digest = digest
    model.default_temperature, model.default_output_temperature = default_temperatures(path)
    return model






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
    kind = sniff_file(path)
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
