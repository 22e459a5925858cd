"""Reading NVIDIA's NVAE ``checkpoint.pt`` files safely.

An official file is a ``torch.save`` of a dict with ``state_dict``, ``args`` (an
``argparse.Namespace``), ``epoch``, ``optimizer`` and more. It is loaded with ``weights_only=True``
allowing exactly one non-tensor global, ``argparse.Namespace``; a pickle that asks for anything
else (code to run) is refused. The config comes from ``args`` (with evaluate.py's patches for old
files); the state is checked key by key against the network that config builds. NVAE's
``<conv>.weight_normalized`` duplicates are accepted whether present or absent (when present they
must equal their ``<conv>.weight``), and dropped.
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import CheckpointError, ConfigError
from .config import NVAEConfig, config_from_args

Tensor = torch.Tensor
ALIAS_SUFFIX = ".weight_normalized"


def load_pickle(path: str | Path) -> Any:
    """``torch.load`` with ``weights_only=True`` and ``argparse.Namespace`` as the only extra global."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a loadable PyTorch checkpoint under weights_only=True: {first}",
            hint="only tensors, plain Python values and argparse.Namespace are accepted; nothing in the file is run",
        ) from None


def is_official(obj: Any) -> bool:
    """Whether a loaded pickle looks like an NVAE training checkpoint (a dict with args and state)."""
    return isinstance(obj, Mapping) and "args" in obj and isinstance(obj.get("state_dict"), Mapping)


def split_state(state: Mapping[str, Any], label: str) -> "OrderedDict[str, Tensor]":
    """The state without NVAE's ``weight_normalized`` aliases (each checked against its weight),
    every tensor cloned to its own storage (official files share storages between parameters)."""
    out: "OrderedDict[str, Tensor]" = OrderedDict()
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise CheckpointError(f"{label}: state_dict entry {key!r} is not a named tensor")
        key = key[len("module."):] if key.startswith("module.") else key
        if key.endswith(ALIAS_SUFFIX):
            sibling = state.get(key[: -len(ALIAS_SUFFIX)] + ".weight")
            if sibling is None:
                sibling = state.get("module." + key[: -len(ALIAS_SUFFIX)] + ".weight")
            if isinstance(sibling, Tensor) and (sibling.shape != value.shape or not torch.equal(sibling, value)):
                raise CheckpointError(f"{label}: {key} differs from the weight it should duplicate")
            if sibling is not None:
                continue
        out[key] = value.detach().clone()
    return out


def read_official(path: str | Path, *, name: str | None = None) -> tuple[NVAEConfig, "OrderedDict[str, Tensor]", dict[str, Any]]:
    """Config, state (aliases dropped, unchecked keys) and provenance of an official NVAE file."""
    obj = load_pickle(path)
    if not is_official(obj):
        raise CheckpointError(f"{path} is not an NVAE checkpoint (no dict with 'args' and 'state_dict')")
    try:
        cfg = config_from_args(obj["args"], name=name)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: its args do not describe a model we can build: {exc}", hint=exc.hint) from None
    state = split_state(obj["state_dict"], str(path))
    info: dict[str, Any] = {}
    for key in ("epoch", "global_step"):
        if isinstance(obj.get(key), int):
            info[key] = obj[key]
    return cfg, state, info
