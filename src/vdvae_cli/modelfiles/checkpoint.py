"""Self-describing safetensors checkpoints: write, read strictly, convert official pickles.

A vdvae-cli checkpoint is a safetensors file whose metadata names its family and holds that
family's full config as JSON (``vdvae_config`` or ``nvae_config``), so the file alone rebuilds its
model. Reading checks every key and shape against that config and names each difference; the
header checks themselves live in :mod:`vdvae_cli.modelfiles.header` (torch-free) and are re-exported here.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Mapping, cast

import torch

from ..engine.interface import FamilyConfig
from ..base.errors import CheckpointError, VDVAEError
from ..engine.registry import DEFAULT_FAMILY, families, family_of
from .header import FORMAT_VERSION, expected_shapes, activation_bytes, parameter_count, compare_keys, read_header, checked_config, default_ood, default_temperatures
from ..base.filekind import _label
from ..engine.interface import LatentModel
from ..base.atomic import atomic_write_bytes
from ..engine.statedict import _check_finite, weights_digest

FORMAT = "vdvae-cli"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

Tensor = torch.Tensor

# --------------------------------------------------------------------------------------------------
# Key / shape checks


# --------------------------------------------------------------------------------------------------
# Writing


def save_checkpoint(
    state: Mapping[str, Tensor] | torch.nn.Module,
    cfg: FamilyConfig,
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
    # what is written passes the checks of what is loaded: floating-point weights (BatchNorm's step
    # counter aside), every value finite, also after a cast to a narrower dtype
    for key, v in state.items():
        if not v.is_floating_point() and not key.endswith(".num_batches_tracked"):
            raise CheckpointError(f"refusing to write {_label(path)}: tensor {key!r} is {v.dtype}, "
                                  "but weights are floating-point numbers",
                                  hint="the source is not a checkpoint of this architecture")
    target = DTYPES[dtype] if isinstance(dtype, str) else dtype
    tensors = {k: (v.detach().to("cpu", target) if target and v.is_floating_point() else v.detach().cpu()).contiguous()
               for k, v in state.items()}
    _check_finite(tensors, f"refusing to write {_label(path)}")
    family = family_of(cfg)
    own = {"format": FORMAT, "format_version": FORMAT_VERSION, family.config_key: cfg.to_json(),
           "weights_sha256": weights_digest(tensors)}
    if family.name != DEFAULT_FAMILY:  # files without a family are VDVAE (every file written before NVAE)
        own["family"] = family.name
    # what describes the file comes from cfg and the tensors, never from the caller's metadata (which
    # may be another file's, copied: its config, family or digest would make this file lie)
    described = {"format", "format_version", "family", "weights_sha256", *(f.config_key for f in families())}
    meta = {k: v for k, v in (metadata or {}).items() if k not in described}
    meta.update(own)
    blob = save(tensors, metadata=meta)
    path = Path(path)
    atomic_write_bytes(path, blob, force=force)
    return path


# --------------------------------------------------------------------------------------------------
# Reading


# safetensors dtypes and their sizes in bytes; only floating-point ones hold weights or latents.


def check_fits(cfg: FamilyConfig, label: str, *, itemsize: int = 4, stored_bytes: int | None = None) -> None:
    """Refuse a model whose weights (and one image's working memory) cannot fit in the memory
    this process has, before anything is allocated for it."""
    from ..base.errors import DeviceError
    from ..base.safety import available_memory, human_bytes

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


def read_checkpoint(path: str | Path, *, itemsize: int = 4) -> tuple[FamilyConfig, "OrderedDict[str, Tensor]"]:
    """Config and tensors of a checkpoint, after a strict header, key/shape, memory and finiteness check."""
    from safetensors.torch import load_file

    from ..base.errors import activity

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
        from ..base.safety import first_line

        raise CheckpointError(f"{label} cannot be read: {first_line(exc)}") from None
    _check_finite(tensors, label)
    order = expected_shapes(cfg)
    return cfg, OrderedDict((k, tensors[k]) for k in order)


def build_model(
    cfg: FamilyConfig,
    state: Mapping[str, Tensor],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> LatentModel:
    """A model of ``cfg``'s family in eval mode holding ``state``, built without a throwaway random
    init (integer buffers, e.g. BatchNorm counters, keep their dtype). Tensors already on ``device``
    in ``dtype`` are used as they are, not copied: the model shares them with ``state``."""
    with torch.device("meta"):
        model = family_of(cfg).network(cfg)
    state = {k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return cast(LatentModel, model.eval().requires_grad_(False))


def _file_digest(path: str | Path) -> str:
    """:func:`weights_digest` of a checkpoint's tensors as stored (re-read: the model holds a cast copy)."""
    from safetensors.torch import load_file

    return weights_digest(load_file(str(path)))


def load_file_model(path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> LatentModel:
    cfg, state = read_checkpoint(path, itemsize=torch.empty((), dtype=dtype).element_size())
    model = build_model(cfg, state, device=device, dtype=dtype)
    # which weights these are: hashed from the tensors when first needed (latents, BatchNorm cache
    # keys), never read from the header (a copied header would claim another model's identity)
    model.weights_digest = None
    if dtype == torch.float32 and all(v.device.type == "cpu" for v in state.values()):
        model.digest_source = lambda: weights_digest(state)  # the model's own tensors: nothing kept twice
    else:
        model.digest_source = lambda: _file_digest(path)
    model.default_temperature, model.default_output_temperature = default_temperatures(path)
    model.default_ood = default_ood(path)
    return model


# --------------------------------------------------------------------------------------------------
# Converting official pickles


# --------------------------------------------------------------------------------------------------
# Inferring the layout from a state_dict


