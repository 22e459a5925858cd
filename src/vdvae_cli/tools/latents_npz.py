"""Flat latents as a NumPy ``.npz``: one ``(N, D)`` float32 matrix for tools that want a vector per
image (regressions, PCA, nearest neighbours), as brain-diffuser and its followers use VDVAE.

``vdvae encode --format npz`` writes, and ``vdvae decode`` reads back::

    latents            float32 (N, D): the first K layers, each flattened in (Z, r, r) order and
                       concatenated in decoder order (layer 0 first); D = sum of Z * r * r
    layer_shapes       int64 (K, 3): each kept layer's (Z, r, r)
    model_fingerprint  str: the model that encoded them (see vdvae_cli.engine.statedict.model_fingerprint)
    model_name         str
    format             str "vdvae-latents-flat", format_version str "1"
    posterior          str "sample" or "mean"
    names              str (N,): the encoded images (optional on reading; rows may be edited freely)

Replace ``latents`` with any (M, D) float array (e.g. a regression's predictions), drop or replace
``names``, keep the rest, and ``vdvae decode`` fills layers K.. from the prior. Reading never
unpickles (``allow_pickle=False``), accepts only these keys, plain numeric or string dtypes, and
checks every array's header against the size the archive declares before reading it.
"""

from __future__ import annotations

import io
import zipfile
from typing import Sequence

import numpy as np
import torch

from ..engine.interface import FamilyConfig
from ..base.errors import LatentsError
from ..base.tensorfile import check_format_version
from ..engine.latents import Latents, check_latent_values, model_fingerprint

FORMAT = "vdvae-latents-flat"
FORMAT_VERSION = "1"
ZIP_MAGIC = b"PK\x03\x04"
_KEYS = {"latents", "layer_shapes", "model_fingerprint", "model_name", "format", "format_version", "posterior",
         "names"}
_REQUIRED = ("latents", "layer_shapes", "model_fingerprint", "format")
_MAX_MEMBER = 1 << 36  # 64 GiB: a bound on what one array may declare

Tensor = torch.Tensor


def is_npz(data: bytes) -> bool:
    return data[:4] == ZIP_MAGIC


def flatten(layers: Sequence[Tensor]) -> Tensor:
    """Per-layer latents (each (N, Z, r, r)) -> one (N, D) float32 matrix."""
    return torch.cat([z.detach().float().cpu().reshape(z.shape[0], -1) for z in layers], dim=1)


def unflatten(flat: Tensor, shapes: Sequence[Sequence[int]]) -> list[Tensor]:
    """(N, D) -> per-layer (N, Z, r, r) tensors, the inverse of :func:`flatten`."""
    sizes = [int(np.prod(s)) for s in shapes]
    if flat.shape[1] != sum(sizes):
        raise ValueError(f"{flat.shape[1]} columns for layers of {sum(sizes)} values")
    return [part.reshape(flat.shape[0], *s) for part, s in zip(torch.split(flat, sizes, dim=1), shapes)]


def npz_bytes(layers: Sequence[Tensor], cfg: FamilyConfig, names: Sequence[str], *, posterior: str = "sample",
              weights: str | None = None) -> bytes:
    """The ``.npz`` bytes for the leading ``layers`` of ``cfg``'s model (uncompressed, like ``np.savez``)."""
    if not layers:
        raise ValueError("an npz of latents needs at least one layer")
    shapes = [tuple(cfg.decoder_layers[i].latent_shape) for i in range(len(layers))]
    for i, (z, shape) in enumerate(zip(layers, shapes)):
        if tuple(z.shape) != (len(names), *shape):
            raise ValueError(f"layer {i} has shape {tuple(z.shape)}, expected {(len(names), *shape)}")
    arrays = {
        "latents": flatten(layers).numpy(),
        "layer_shapes": np.asarray(shapes, dtype=np.int64),
        "model_fingerprint": np.str_(model_fingerprint(cfg, weights)),
        "model_name": np.str_(cfg.name),
        "format": np.str_(FORMAT),
        "format_version": np.str_(FORMAT_VERSION),
        "posterior": np.str_(posterior),
        "names": np.asarray(list(names), dtype=str),
    }
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def load_npz_latents(data: bytes, cfg: FamilyConfig, *, label: str = "latents", weights: str | None = None) -> Latents:
    """Read and check an ``.npz`` of flat latents against the model ``cfg`` (weights digest ``weights``)."""
    arrays = _read_npz(data, label)
    missing = [k for k in _REQUIRED if k not in arrays]
    if missing:
        raise LatentsError(f"{label} is not an npz of vdvae latents (no {', '.join(missing)})",
                           hint="make one with: vdvae encode IMG --format npz -o latents.npz")
    if _text(arrays["format"], label, "format") != FORMAT:
        raise LatentsError(f"{label}: format is {_text(arrays['format'], label, 'format')!r}, not {FORMAT!r}")
    if "format_version" in arrays:
        check_format_version(_text(arrays["format_version"], label, "format_version"), FORMAT_VERSION, label,
                             what="latents file", error=LatentsError)
    theirs = _text(arrays["model_fingerprint"], label, "model_fingerprint")
    mine = model_fingerprint(cfg, weights)
    if theirs != mine:
        other = _text(arrays["model_name"], label, "model_name") if "model_name" in arrays else "?"
        raise LatentsError(f"{label} was made by model {other!r} ({theirs}), not by {cfg.name!r} ({mine})",
                           hint=f"decode it with the model that encoded it (--model {other})")
    shapes = arrays["layer_shapes"]
    if shapes.ndim != 2 or shapes.shape[1] != 3 or shapes.dtype.kind not in "iu":
        raise LatentsError(f"{label}: layer_shapes must be an integer (K, 3) array, got {shapes.dtype} {shapes.shape}")
    k = shapes.shape[0]
    if not 1 <= k <= cfg.n_layers:
        raise LatentsError(f"{label} holds {k} layers; model {cfg.name} has {cfg.n_layers}")
    for i, shape in enumerate(shapes.tolist()):
        expected = list(cfg.decoder_layers[i].latent_shape)
        if shape != expected:
            raise LatentsError(f"{label}: layer {i} has shape {tuple(shape)}, model {cfg.name} expects {tuple(expected)}")
    flat = arrays["latents"]
    width = int(sum(int(np.prod(s)) for s in shapes.tolist()))
    if flat.ndim != 2 or flat.dtype.kind != "f" or flat.shape[1] != width or flat.shape[0] < 1:
        raise LatentsError(f"{label}: latents must be a float (N, {width}) array for {k} layers, "
                           f"got {flat.dtype} {flat.shape}")
    tensor = torch.from_numpy(np.array(flat, dtype=np.float32, order="C"))  # a writable copy
    check_latent_values(tensor, f"{label}: latents")
    n = tensor.shape[0]
    names = [f"latent_{i:05d}" for i in range(n)]
    if "names" in arrays:
        given = arrays["names"]
        if given.dtype.kind != "U" or given.shape != (n,):
            raise LatentsError(f"{label}: names must be {n} strings (one per row), got {given.dtype} {given.shape}",
                               hint="drop the names array after changing the number of rows")
        names = [str(x) for x in given.tolist()]
    layers: list[Tensor | None] = [None] * cfg.n_layers
    for i, z in enumerate(unflatten(tensor, shapes.tolist())):
        layers[i] = z
    posterior = _text(arrays["posterior"], label, "posterior") if "posterior" in arrays else "sample"
    return Latents(layers, names, posterior, {"format": FORMAT, "model_fingerprint": theirs})


def _text(a: np.ndarray, label: str, key: str) -> str:
    if a.dtype.kind != "U" or a.size != 1:
        raise LatentsError(f"{label}: {key} must be one string, got {a.dtype} {a.shape}")
    return str(a.reshape(()))


def _check_fits(label: str, key: str, shape: tuple[int, ...], need: int) -> None:
    """An array is read, viewed and copied into a tensor: refuse one whose declared size would not
    fit three times in what this process may allocate (``VDVAE_MAX_MEMORY`` included), before
    reading a byte of it. A compressed member can declare gigabytes in a few megabytes."""
    from ..base.safety import available_memory, human_bytes

    free = available_memory()
    if free is not None and 3 * need > free:
        raise LatentsError(f"{label}: {key} declares shape {tuple(shape)} ({human_bytes(need)}), more than fits in "
                           f"memory ({human_bytes(free)} available)",
                           hint="split the latents into smaller files, or raise VDVAE_MAX_MEMORY")


def _read_npz(data: bytes, label: str) -> dict[str, np.ndarray]:
    """Every array of the archive, after checking its header against the declared member size."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise LatentsError(f"{label} is not a readable .npz ({exc})") from None
    out: dict[str, np.ndarray] = {}
    with archive:
        members = {info.filename.removesuffix(".npy") for info in archive.infolist()}
        missing = [k for k in _REQUIRED if k not in members]
        if missing:  # judged from the directory alone: no member of a foreign archive is inflated
            raise LatentsError(f"{label} is not an npz of vdvae latents (no {', '.join(missing)})",
                               hint="make one with: vdvae encode IMG --format npz -o latents.npz")
        for info in sorted(archive.infolist(), key=lambda i: i.file_size):  # the small facts first
            key = info.filename.removesuffix(".npy")
            if key not in _KEYS or not info.filename.endswith(".npy"):
                raise LatentsError(f"{label}: unexpected member {info.filename!r}",
                                   hint=f"an npz of latents holds only {', '.join(sorted(_KEYS))}")
            if key in out:
                raise LatentsError(f"{label}: {key} appears twice")
            if info.file_size > _MAX_MEMBER:
                raise LatentsError(f"{label}: {key} declares {info.file_size} bytes")
            try:
                with archive.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
                    if version not in readers:
                        raise LatentsError(f"{label}: {key} uses .npy format {version}, not 1.0 or 2.0")
                    shape, fortran, dtype = readers[version](f)  # a literal header: nothing is unpickled
                    header_end = f.tell()
                    if dtype.hasobject:
                        raise LatentsError(f"{label}: {key} holds Python objects, which are never loaded",
                                           hint="store strings as a NumPy unicode array")
                    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                    _check_fits(label, key, shape, need)
                    if header_end + need != info.file_size:
                        raise LatentsError(f"{label}: {key} declares shape {shape} ({need} bytes) but its member "
                                           f"holds {info.file_size - header_end}")
                    raw = f.read(need)
            except LatentsError:
                raise
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
                raise LatentsError(f"{label}: {key} cannot be read ({exc})") from None
            array = np.frombuffer(raw, dtype=dtype)  # read-only view; copied where a tensor is made
            out[key] = array.reshape(shape, order="F" if fortran else "C")
    return out
