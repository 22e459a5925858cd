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
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import torch

from ...base.errors import CheckpointError, ConfigError, UsageError
from ...engine.interface import OfficialCheckpoint
from ...engine.keys import compare_shapes
from ...engine.statedict import load_pickle as checkpoint_load_pickle
from .config import NVAEConfig, config_from_args
from .network import network_shapes

Tensor = torch.Tensor
ALIAS_SUFFIX = ".weight_normalized"
LICENSE = "NVIDIA Source Code License for NVAE (non-commercial: research or evaluation only)"


def load_pickle(path: str | Path) -> Any:
    """An official NVAE ``checkpoint.pt``: ``weights_only=True`` with ``argparse.Namespace`` (its
    ``args``) as the only extra class it may rebuild; nothing in the file is run."""
    return checkpoint_load_pickle(path, allowed=(argparse.Namespace,), hint="give an official NVAE checkpoint.pt")


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


def looks_official(path: str | Path) -> bool:
    """A cheap first look, reading no tensors and running nothing: whether the pickle of a torch file
    names ``argparse.Namespace`` (what NVAE's checkpoints hold and VDVAE's do not)."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("data.pkl")]
                data = archive.read(names[0]) if names else b""
        else:
            with open(path, "rb") as f:
                data = f.read(1 << 20)  # a legacy file pickles the object before its storages
    except (OSError, zipfile.BadZipFile):
        return False
    return b"argparse" in data and b"Namespace" in data


def load_official(path: str | Path, layout: Any = None, *, state: Any = None) -> OfficialCheckpoint:
    """An official NVAE ``checkpoint.pt``: the config its own args describe, the state (aliases
    dropped) and how it differs from that config's network; the layout cannot be overridden."""
    if layout is not None:
        raise UsageError(f"{path} is an NVAE checkpoint: its stored args give the layout",
                         hint="drop --config/--hparams")
    cfg, state, info = read_official(path)
    report = compare_shapes({k: tuple(v.shape) for k, v in state.items()}, network_shapes(cfg))
    meta = {"source_format": "NVlabs/NVAE checkpoint.pt", "license": LICENSE}
    meta.update({k: str(v) for k, v in info.items()})
    return OfficialCheckpoint(cfg, state, report, meta)


