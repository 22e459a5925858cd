"""Self-describing safetensors checkpoints: write, read strictly, convert official pickles.

A vdvae-cli checkpoint is a safetensors file whose metadata holds ``vdvae_config`` (the full
:class:`~vdvae_cli.config.VDVAEConfig` as JSON), so the file alone rebuilds its model. Reading checks
every key and shape against that config and names each difference.
"""

from __future__ import annotations

import hashlib
import json
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
    """Every state_dict key of ``cfg``'s network with its shape, in state_dict order (no memory)."""
    with torch.device("meta"):
        model = VAE(cfg)
    return OrderedDict((k, tuple(v.shape)) for k, v in model.state_dict().items())


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


def _atomic(path: Path, write, *, force: bool) -> None:
    path = Path(path)
    if path.exists() and not force:
        raise OutputError(f"{path} already exists", hint="pass --force to overwrite it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"cannot write {path}: folder {parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise OutputError(f"cannot write to {parent}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {path}: {exc.strerror}") from None
        raise


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

    if isinstance(state, VAE):
        state = state.state_dict()
    report = compare_keys({k: tuple(v.shape) for k, v in state.items()}, cfg)
    if not report.ok:
        raise CheckpointError(f"state does not match the config: {report.summary()}")
    target = DTYPES[dtype] if isinstance(dtype, str) else dtype
    tensors = {k: (v.detach().to("cpu", target) if target else v.detach().cpu()).contiguous() for k, v in state.items()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "vdvae_config": cfg.to_json(),
            "weights_sha256": weights_digest(tensors)}
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
    if head.startswith(b"version https://git-lfs"):
        return "lfs"
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] in range(2, 6):
        return "torch-pickle"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    return "other"


def parse_header(
    read: Callable[[int, int], bytes],
    size: int,
    label: str,
    *,
    error: type[VDVAEError] = CheckpointError,
    kind: str = "safetensors file",
    hint: str | None = None,
) -> dict[str, Any]:
    """Parse a safetensors header through ``read(offset, n)`` from a source of ``size`` bytes.

    Shared by checkpoints (read from a file) and latents (bytes from stdin): a too-short source, a
    header that is not JSON, and a payload shorter than the header promises (a truncated download)
    each raise ``error`` with one clear line.
    """
    if size < 8:
        raise error(f"{label} is not a {kind} ({size} bytes)", hint=hint)
    (n,) = struct.unpack("<Q", read(0, 8))
    if n > min(size - 8, 100_000_000) or read(8, 1) != b"{":
        raise error(f"{label} is not a {kind}", hint=hint)
    try:
        header = json.loads(read(8, n))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise error(f"{label} has a corrupt safetensors header") from None
    if not isinstance(header, dict):
        raise error(f"{label} has a corrupt safetensors header")
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise error(
            f"{label} is truncated: {size} bytes, the header describes {8 + n + end}",
            hint="the file was probably cut short (an interrupted download or copy); fetch it again",
        )
    return header


def read_header(path: str | Path) -> dict[str, Any]:
    """The parsed safetensors header of ``path`` (with ``__metadata__``), with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file")
    kind = sniff(path)
    if kind == "lfs":
        raise CheckpointError(
            f"{path} is a git-lfs pointer, not the weights",
            hint="run 'git lfs pull' in that repository, or download the file itself",
        )
    if kind in ("torch-zip", "torch-pickle"):
        raise CheckpointError(
            f"{path} is a PyTorch pickle, not safetensors",
            hint=f"convert it first: vdvae convert {path} --config NAME -o model.safetensors",
        )
    with open(path, "rb") as f:

        def read(offset: int, n: int) -> bytes:
            f.seek(offset)
            return f.read(n)

        return parse_header(read, path.stat().st_size, str(path))


def config_of(path: str | Path) -> VDVAEConfig:
    """The config stored in a checkpoint's metadata."""
    meta = read_header(path).get("__metadata__") or {}
    text = meta.get("vdvae_config")
    if text is None:
        raise CheckpointError(
            f"{path} has no vdvae_config metadata, so it does not say which model it holds",
            hint="convert raw weights with: vdvae convert FILE --config NAME -o model.safetensors",
        )
    try:
        return VDVAEConfig.from_dict(json.loads(text))
    except (json.JSONDecodeError, TypeError) as exc:
        raise CheckpointError(f"{path} has unreadable vdvae_config metadata: {exc}") from None
    except ConfigError as exc:
        raise CheckpointError(f"{path} describes an invalid model: {exc}") from None


def metadata_of(path: str | Path) -> dict[str, str]:
    return dict(read_header(path).get("__metadata__") or {})


def read_checkpoint(path: str | Path) -> tuple[VDVAEConfig, "OrderedDict[str, Tensor]"]:
    """Config and tensors of a checkpoint, after a strict key/shape check."""
    from safetensors.torch import load_file

    cfg = config_of(path)
    header = read_header(path)
    shapes = {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    report = compare_keys(shapes, cfg)
    if not report.ok:
        raise CheckpointError(f"{path} does not match its own config: {report.summary()}")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path} cannot be read: {exc}") from None
    order = expected_shapes(cfg)
    return cfg, OrderedDict((k, tensors[k]) for k in order)


def build_model(
    cfg: VDVAEConfig,
    state: Mapping[str, Tensor],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> VAE:
    """A VAE in eval mode holding ``state``, built without a throwaway random init."""
    with torch.device("meta"):
        model = VAE(cfg)
    model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()}, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def load_file_model(path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> VAE:
    cfg, state = read_checkpoint(path)
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


def load_reference_state(path: str | Path) -> "OrderedDict[str, Tensor]":
    """Load an official ``*-model.th`` / ``*-model-ema.th`` safely (``weights_only=True``).

    A training file with ``module.`` prefixes is accepted; a dict wrapping the state under
    ``state_dict``/``model`` is unwrapped. Tensors land on the CPU whatever device saved them.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file")
    kind = sniff(path)
    if kind == "lfs":
        raise CheckpointError(f"{path} is a git-lfs pointer, not the weights", hint="fetch the real file first")
    if kind == "safetensors":
        raise CheckpointError(f"{path} is already safetensors", hint="load it directly with --model")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a loadable PyTorch weights file: {first}") from None
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    return strip_module_prefix(obj)


def convert_reference(
    src: str | Path,
    dst: str | Path,
    cfg: VDVAEConfig | None,
    *,
    dtype: str | None = None,
    force: bool = False,
    metadata: Mapping[str, str] | None = None,
) -> tuple[Path, VDVAEConfig]:
    """Convert an official torch pickle to our safetensors format. ``cfg=None`` infers the layout."""
    state = load_reference_state(src)
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
