"""Family-free facts about a state_dict: key/shape comparison with what a config expects, the
digest that identifies a set of weights, finiteness, and the safe (``weights_only``) loading of a
torch pickle that official checkpoints come as."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import torch

from ..base.errors import CheckpointError, VDVAEError
from ..base.filekind import _label, file_kind, sniff_file

Tensor = torch.Tensor


def strip_module_prefix(state: Mapping[str, Tensor]) -> "OrderedDict[str, Tensor]":
    """Drop the ``module.`` prefix that DistributedDataParallel puts on every key."""
    return OrderedDict((k[len("module."):] if k.startswith("module.") else k, v) for k, v in state.items())


def _check_finite(state: Mapping[str, Tensor], label: str, error: type[VDVAEError] = CheckpointError,
                  what: str = "tensor") -> None:
    for key, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            kinds = "NaN" if bool(torch.isnan(t).any()) else "infinite"
            raise error(f"{label}: {what} {key!r} holds {bad} {kinds} value{'s' if bad != 1 else ''}",
                        hint="the file is damaged, or came from a training run that diverged")
        if key.endswith(".running_var") and t.is_floating_point() and bool((t < 0).any()):
            bad = int((t < 0).sum())  # BatchNorm's running variance: a square root is taken of it
            raise error(f"{label}: {what} {key!r} holds {bad} negative variance{'s' if bad != 1 else ''}",
                        hint="the file is damaged: a running variance is never below 0")


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


def digest_of(model: Any) -> str | None:
    """The sha256 of the weights ``model`` was loaded from (:func:`weights_digest` of the file's
    tensors as stored), computed from the tensors themselves the first time it is asked for (by
    ``model.digest_source``, which the loader sets) and kept; a file's own ``weights_sha256`` is
    never taken on trust. None for a model with no source (built in memory)."""
    digest = getattr(model, "weights_digest", None)
    if digest is None and getattr(model, "digest_source", None) is not None:
        digest = model.digest_source()
        model.weights_digest = digest
    return digest


def load_pickle(path: str | Path, *, allowed: tuple[type, ...] = (), hint: str = "give an official *-model-ema.th file") -> Any:
    """``torch.load`` of an official checkpoint with ``weights_only=True`` (no pickled code runs;
    ``allowed`` names the only extra classes it may rebuild, e.g. ``argparse.Namespace``), after
    checking that the file is a PyTorch file at all. Every failure is one CheckpointError that says
    what the file is, and never repeats PyTorch's advice to load with ``weights_only=False``."""
    from ..base.errors import activity
    from ..base.safety import first_line

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


