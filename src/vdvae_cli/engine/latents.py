"""Latents files: what ``vdvae encode`` writes and ``vdvae decode`` reads.

A latents file is a safetensors file that other tools can open and edit::

    layer.00 ... layer.NN   float32 (N, Z, r, r): the latent of each layer, decoder order
    __metadata__:
      format              "vdvae-latents"
      format_version      "1"
      model_name          the config's name (e.g. "ffhq256")
      model_ref           what --model can name to load that model again: its registry name, the
                          absolute path of its file, or its hf:// reference (when known)
      model_fingerprint   sha256 of the model's config JSON, name and weights digest (16 hex digits)
      vdvae_config        the config JSON itself (shapes can be read without the model); an NVAE
                          model's is under nvae_config, with family = "nvae" (as in model files)
      image_names         JSON list of N names, one per row
      posterior           "sample" or "mean"
      seed                the seed of the posterior draws (when sampled)

A layer may be left out (deleted by an editing tool): decoding then samples it from the prior.
Loading checks the fingerprint against the model and every shape against the config, and raises
:class:`~vdvae_cli.base.errors.LatentsError` naming what differs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

from .. import __version__
from .interface import FamilyConfig
from .keys import model_fingerprint
from ..base.errors import LatentsError, VDVAEError, activity
from .registry import DEFAULT_FAMILY, family_named, family_of
from ..base.safety import MAX_LATENT, first_line, loads
from ..base.tensorfile import check_format_version

FORMAT = "vdvae-latents"
FORMAT_VERSION = "1"
_KEY = re.compile(r"layer\.(\d+)")

Tensor = torch.Tensor


def layer_key(index: int, n_layers: int) -> str:
    return f"layer.{index:0{max(2, len(str(n_layers - 1)))}d}"


@dataclass
class Latents:
    """The content of a latents file. ``layers[i]`` is None where the file has no layer ``i``."""

    layers: list[Tensor | None]
    names: list[str]
    posterior: str = "sample"
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.names)


def latents_bytes(
    layers: Sequence[Tensor],
    cfg: FamilyConfig,
    names: Sequence[str],
    *,
    posterior: str = "sample",
    seed: int | None = None,
    metadata: Mapping[str, str] | None = None,
    weights: str | None = None,
) -> bytes:
    """Serialise per-layer latents (each (N, Z, r, r)) of ``cfg``'s model as a latents file."""
    from safetensors.torch import save

    n = len(names)
    tensors = {}
    for i, z in enumerate(layers):
        expected = (n, *cfg.decoder_layers[i].latent_shape)
        if tuple(z.shape) != expected:
            raise ValueError(f"layer {i} has shape {tuple(z.shape)}, expected {expected}")
        tensors[layer_key(i, cfg.n_layers)] = z.detach().to("cpu", torch.float32).contiguous()
    family = family_of(cfg)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_name": cfg.name,
        "model_fingerprint": model_fingerprint(cfg, weights),
        family.config_key: cfg.to_json(),
        "image_names": json.dumps(list(names)),
        "posterior": posterior,
        "created_by": f"vdvae-cli {__version__}",
    }
    if family.name != DEFAULT_FAMILY:  # as in model files: no family means VDVAE
        meta["family"] = family.name
    if seed is not None:
        meta["seed"] = str(seed)
    meta.update(metadata or {})
    return save(tensors, metadata=meta)


def load_latents(data: bytes, cfg: FamilyConfig, *, label: str = "latents", weights: str | None = None) -> Latents:
    """Parse and check a latents file (its bytes) against the model ``cfg`` (with weights digest
    ``weights``, the loaded model's ``weights_digest``)."""
    header = _header(data, label)
    meta = header.pop("__metadata__", None) or {}
    if meta.get("format") != FORMAT:
        is_model = any(str(key).endswith("_config") for key in meta)  # a model file holds its family's config
        what = "a model checkpoint, not a latents file" if is_model else "not a latents file"
        raise LatentsError(f"{label} is {what} (no format={FORMAT!r} metadata)",
                           hint="make latents with: vdvae encode IMG -o latents.safetensors")
    check_format_version(meta.get("format_version"), FORMAT_VERSION, label, what="latents file", error=LatentsError)
    fingerprint = meta.get("model_fingerprint")
    mine = model_fingerprint(cfg, weights)
    if fingerprint is None:
        raise LatentsError(f"{label} does not say which model made it (no model_fingerprint metadata)",
                           hint="keep the original metadata when editing the file")
    if fingerprint != mine:
        other = meta.get("model_name", "?")
        their_layers, their_text = "", None
        try:
            their_family = family_named(str(meta.get("family", DEFAULT_FAMILY)))
            their_text = meta[their_family.config_key]
            other_cfg = their_family.config_from_dict(loads(their_text))
            their_layers = f", {other_cfg.n_layers} latent layers"
        except (ValueError, VDVAEError, KeyError):  # the stored config is informative only
            pass
        ref = meta.get("model_ref")
        hint = (f"decode it with --model {ref}, the model that encoded it" if ref
                else "decode it with the model file that encoded it")
        if other == cfg.name and their_text == cfg.to_json():  # same architecture
            raise LatentsError(
                f"{label} was made by model {other!r} with other weights ({fingerprint}), not by these "
                f"({mine})", hint=hint)
        raise LatentsError(
            f"{label} was made by model {other!r} ({fingerprint}{their_layers}), not by {cfg.name!r} "
            f"({mine}, {cfg.n_layers} latent layers)", hint=hint)
    n_rows = None
    found: dict[int, str] = {}
    for key, info in header.items():
        m = _KEY.fullmatch(key)
        if m is None:
            raise LatentsError(f"{label}: unexpected tensor {key!r}", hint="tensors are named layer.00, layer.01, ...")
        index = int(m.group(1))
        if index >= cfg.n_layers:
            raise LatentsError(f"{label}: {key} but the model has {cfg.n_layers} latent layers (0-{cfg.n_layers - 1})")
        if index in found:
            raise LatentsError(f"{label}: layer {index} appears twice ({found[index]}, {key})")
        found[index] = key
        shape = tuple(info["shape"])
        expected = cfg.decoder_layers[index].latent_shape
        if len(shape) != 4 or shape[1:] != expected:
            raise LatentsError(f"{label}: {key} has shape {shape}, expected (N, {', '.join(map(str, expected))})")
        if n_rows is None:
            n_rows = shape[0]
        elif shape[0] != n_rows:
            raise LatentsError(f"{label}: {key} holds {shape[0]} images but other layers hold {n_rows}")
    if n_rows is None:
        raise LatentsError(f"{label} holds no latent layers")
    try:
        names = loads(meta["image_names"]) if "image_names" in meta else None
    except ValueError:
        raise LatentsError(f"{label}: image_names metadata is not a JSON list") from None
    if names is None:
        names = [f"latent_{i:05d}" for i in range(n_rows)]
    if not isinstance(names, list) or len(names) != n_rows:
        raise LatentsError(f"{label}: image_names lists {len(names) if isinstance(names, list) else '?'} names "
                           f"for {n_rows} images")
    if not all(isinstance(x, str) for x in names):
        raise LatentsError(f"{label}: image_names must be a list of strings")
    posterior = meta.get("posterior", "sample")
    if posterior not in ("sample", "mean"):
        raise LatentsError(f"{label}: posterior metadata must be 'sample' or 'mean', got {posterior[:40]!r}")
    try:
        from safetensors.torch import load

        with activity(f"reading {label} ({n_rows} images)"):
            tensors = load(bytes(data))
    except VDVAEError:
        raise
    except Exception as exc:  # safetensors has its own error types
        raise LatentsError(f"{label} cannot be read: {first_line(exc)}") from None
    layers: list[Tensor | None] = [None] * cfg.n_layers
    for index, key in found.items():
        z = tensors[key].float()
        check_latent_values(z, f"{label}: {key}")
        layers[index] = z
    return Latents(layers, names, posterior, dict(meta))


def check_latent_values(z: Tensor, what: str) -> None:
    """Latents must be finite and at most ``MAX_LATENT`` in magnitude: a file holding 1e30 would
    otherwise decode, with exit 0, to an image that says nothing about it."""
    if not bool(torch.isfinite(z).all()):
        raise LatentsError(f"{what} holds values that are not finite (NaN or infinity)",
                           hint="latents must be finite numbers; re-encode the images")
    largest = float(z.abs().max()) if z.numel() else 0.0
    if largest > MAX_LATENT:
        raise LatentsError(f"{what} holds values as large as {largest:.3g}, above {MAX_LATENT:g}",
                           hint="no prior or posterior draw comes near that; re-encode the images")


def _header(data: bytes, label: str) -> dict:
    from ..base.tensorfile import parse_header

    return parse_header(lambda offset, n: data[offset:offset + n], len(data), label, error=LatentsError,
                        kind="safetensors latents file", hint="make latents with: vdvae encode IMG -o latents.safetensors")
