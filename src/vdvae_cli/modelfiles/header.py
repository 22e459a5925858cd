"""What a model file says, read without torch: the checked safetensors header, the config it
holds (checked against the tensors it lists), and the shapes, parameter count and working memory
that config implies. ``vdvae info`` and the registry use this module alone, so describing a model
reads no weights, builds no network and imports no torch (an NVAE config's shapes are the one
exception: they come from its network on the meta device). :mod:`vdvae_cli.modelfiles.checkpoint` re-exports
all of it beside the reading and writing of tensors.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

from ..engine.interface import FamilyConfig
from ..base.errors import CheckpointError, ConfigError
from ..engine.registry import DEFAULT_FAMILY, family_named, family_of
from ..base.filekind import _label, sniff_file
from ..base.safety import MAX_TEMPERATURE
from ..base.tensorfile import check_format_version, parse_header
from ..engine.keys import KeyReport, compare_shapes


def expected_shapes(cfg: FamilyConfig) -> "OrderedDict[str, tuple[int, ...]]":
    """Every state_dict key of ``cfg``'s network with its shape, in state_dict order, computed
    without allocating: a hostile config is compared with the tensors of its file before anything
    is built for it (each family knows its own network: :meth:`vdvae_cli.engine.interface.Family.state_shapes`).
    ``tests/test_hostile.py`` checks it against the built network for every official set. Loading a
    file asks several times (header check, key comparison, memory estimate): the last few configs'
    shapes are kept, keyed by the config's full JSON."""
    import json

    family = family_of(cfg)
    key = (family.name, json.dumps(cfg.to_dict(), sort_keys=True, default=str))
    shapes = _SHAPES.get(key)
    if shapes is None:
        shapes = family.state_shapes(cfg)
        if len(_SHAPES) >= 8:
            _SHAPES.pop(next(iter(_SHAPES)))
        _SHAPES[key] = shapes
    return OrderedDict(shapes)


_SHAPES: "dict[tuple[str, str], OrderedDict[str, tuple[int, ...]]]" = {}


def activation_bytes(cfg: Any, itemsize: int = 4, *, encoder: bool = True) -> int:
    """A generous estimate of the working memory one image needs in a forward pass (bytes), from the
    config alone (each family knows its own: :meth:`vdvae_cli.engine.interface.Family.activation_bytes`).
    Used to refuse a model that cannot run here before building it."""
    return family_of(cfg).activation_bytes(cfg, itemsize, encoder=encoder)


_BN_BUFFERS = (".running_mean", ".running_var", ".num_batches_tracked")


def parameter_count(cfg: FamilyConfig) -> int:
    """Trainable parameters of ``cfg``'s network, from :func:`expected_shapes` (BatchNorm
    statistics, the only buffers either family's state holds, are not parameters)."""
    return sum(math.prod(shape) for key, shape in expected_shapes(cfg).items() if not key.endswith(_BN_BUFFERS))


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
            st = os.fstat(f.fileno())
            identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            cached = _HEADERS.get(identity)
            if cached is not None:
                return dict(cached)

            def read(offset: int, n: int) -> bytes:
                f.seek(offset)
                return f.read(n)

            header = parse_header(read, st.st_size, label)
    except OSError as exc:
        raise CheckpointError(f"cannot read {label}: {exc.strerror or exc}") from None
    if len(_HEADERS) >= 8:
        _HEADERS.pop(next(iter(_HEADERS)))
    _HEADERS[identity] = header
    return dict(header)


# Loading a model asks for its header several times (config, digest, recommended temperatures, ood
# settings): one parse per file version, keyed by what fstat says identifies it (device, inode,
# size, modification time in ns), so a file rewritten in between is parsed again.
_HEADERS: dict[tuple[int, int, int, int], dict[str, Any]] = {}


FORMAT_VERSION = "1"  # what checkpoint.save_checkpoint writes in a model file's format_version


def _config_from_header(header: Mapping[str, Any], path: str | Path) -> FamilyConfig:
    from ..base.safety import JSONLimitError, loads

    label = _label(path)
    meta = header.get("__metadata__") or {}
    if meta.get("format") == "vdvae-latents":  # latents.FORMAT: a `vdvae encode` output, not a model
        model_name = _label(meta.get("model_name") or "?")
        raise CheckpointError(
            f"{label} is a latents file (images encoded by model {model_name}), not a model",
            hint=f"decode it with: vdvae decode {label} --model MODEL",
        )
    check_format_version(meta.get("format_version"), FORMAT_VERSION, label, what="model file")
    family_name = meta.get("family", DEFAULT_FAMILY)
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


def config_of(path: str | Path) -> FamilyConfig:
    """The config stored in a checkpoint's metadata (not yet checked against its tensors)."""
    return _config_from_header(read_header(path), path)


def checked_config(path: str | Path, header: Mapping[str, Any] | None = None) -> FamilyConfig:
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


DEFAULT_OOD_K_KEY = "default_ood_k"
DEFAULT_OOD_PRIOR_TEMPERATURE_KEY = "default_ood_prior_temperature"
DEFAULT_OOD_SOURCE_KEY = "default_ood_source"
DEFAULT_OOD_SCORE_KEY = "default_ood_score"
OOD_SCORES = ("llr", "complexity")  # tools.ood.SCORES, named here without importing torch


def default_ood(path: str | Path) -> dict[str, str] | None:
    """The ``vdvae ood`` settings a checkpoint records (its card chose them on held-out data): the
    ``score`` (key ``default_ood_score``: llr or complexity), ``k`` (``default_ood_k``),
    ``prior_temperature`` (``default_ood_prior_temperature``) and ``source`` (``default_ood_source``:
    how they were chosen), each only where recorded, as the metadata spells them; None when the file
    records neither a score nor a k. Checked where they are used (:func:`ood_settings`,
    :func:`ood_score`)."""
    meta = metadata_of(path)
    out: dict[str, str] = {}
    for name, key in (("score", DEFAULT_OOD_SCORE_KEY), ("k", DEFAULT_OOD_K_KEY),
                      ("prior_temperature", DEFAULT_OOD_PRIOR_TEMPERATURE_KEY), ("source", DEFAULT_OOD_SOURCE_KEY)):
        value = meta.get(key, "").strip()
        if value:
            out[name] = value
    return out if ("k" in out or "score" in out) else None


def ood_score(recorded: Mapping[str, str] | None) -> str | None:
    """The score :func:`default_ood`'s mapping names (None when it names none); a file naming a
    score this version does not know is refused."""
    score = (recorded or {}).get("score")
    if score is None:
        return None
    if score not in OOD_SCORES:
        raise CheckpointError(f"the model file records ood score {score[:40]!r}: it must be one of {', '.join(OOD_SCORES)}")
    return score


def ood_settings(recorded: Mapping[str, str] | None, n_layers: int) -> tuple[int, float] | None:
    """(k, prior temperature) from :func:`default_ood`'s mapping, checked against a model of
    ``n_layers`` latent layers (temperature 1.0 when none is recorded); None when nothing is recorded.
    A file whose values are not a k from 1 to ``n_layers`` and a temperature from 0 to 10 (what
    ``--prior-temp`` accepts) is refused."""
    if not recorded or "k" not in recorded:
        return None
    import math

    try:
        k = int(recorded["k"])
        temp = float(recorded.get("prior_temperature", "1.0"))
    except ValueError:
        raise CheckpointError(f"the model file's recorded ood settings {dict(recorded)!r} are not numbers") from None
    if not 1 <= k <= n_layers or not (math.isfinite(temp) and 0 <= temp <= MAX_TEMPERATURE):
        raise CheckpointError(f"the model file records ood k={k}, prior temperature {temp}: "
                              f"k must be 1 to {n_layers} and the temperature a number from 0 to {MAX_TEMPERATURE:g}")
    return k, temp


def stored_digest(path: str | Path) -> str | None:
    """The ``weights_sha256`` a checkpoint's metadata holds (None for files written without one)."""
    meta = read_header(path).get("__metadata__") or {}
    value = meta.get("weights_sha256")
    return value if isinstance(value, str) and len(value) == 64 else None


def compare_keys(shapes: Mapping[str, tuple[int, ...]], cfg: FamilyConfig) -> KeyReport:
    """How a state's keys and shapes differ from those of ``cfg``'s network."""
    return compare_shapes(shapes, expected_shapes(cfg))
