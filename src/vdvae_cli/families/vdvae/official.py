"""openai/vdvae's official checkpoints: load a ``*-model-ema.th`` safely, convert it, and infer a
layout from a state_dict's shapes where the published hyperparameters do not match the weights."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import torch

from ...base.errors import CheckpointError, ConfigError
from ...base.filekind import _label
from ...engine.interface import OfficialCheckpoint
from ...engine.statedict import _check_finite, load_pickle, strip_module_prefix
from ...engine.keys import compare_shapes
from .config import MAX_NAME, VDVAEConfig, config_from_reference, official_config, read_hparams_file
from .shapes import vdvae_state_shapes

Tensor = torch.Tensor


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


def official_layout(config: Any = None, hparams: Path | None = None, *, name: str | None = None) -> VDVAEConfig | None:
    """The layout an official pickle is read with: a config, an official name (``--config``), the
    run's hyperparameters (``--hparams``: a JSON object or an official ``-log.jsonl``), or None
    (``--config infer`` or nothing: read it off the weights)."""
    if isinstance(config, VDVAEConfig):
        return config
    if config is not None and hparams is not None:
        raise ConfigError("give exactly one of --config NAME or --hparams FILE.json")
    if hparams is not None:
        hps = read_hparams_file(hparams)
        return config_from_reference(hps, name=name or hps.get("name") or Path(str(hparams)).stem[:MAX_NAME])
    if config is None or config == "infer":
        return None
    return official_config(config)


def load_official(path: str | Path, layout: VDVAEConfig | None = None, *,
                  state: Mapping[str, Tensor] | None = None) -> OfficialCheckpoint:
    """An official pickle with its key report against ``layout`` (None: inferred from the shapes)."""
    state = load_reference_state(path) if state is None else OrderedDict(state)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    cfg = infer_config(shapes) if layout is None else layout
    return OfficialCheckpoint(cfg, OrderedDict(state), compare_shapes(shapes, vdvae_state_shapes(cfg)))


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
    report = compare_shapes(shapes, vdvae_state_shapes(cfg))
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
        exp = vdvae_state_shapes(cfg)
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
