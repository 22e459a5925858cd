"""Turn a model reference into a file, and a file into a model; download the official checkpoints.

A reference is one of:

* ``None``: ``$VDVAE_MODEL`` if set, else the shipped model (``weights/*.safetensors``);
* a registry name (``vdvae models``): a shipped model, or an official one converted into our cache;
* a path to a vdvae-cli ``.safetensors`` file;
* ``hf://owner/repo[/path/in/repo.safetensors][@revision]`` (default file ``model.safetensors``),
  fetched with ``huggingface_hub.hf_hub_download`` into the standard Hugging Face cache, which honours
  ``HF_HOME`` / ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` and ``HF_ENDPOINT``.

Official checkpoints are published as torch pickles. ``download_official`` fetches one once (streamed
to a ``.part`` file, resumed with HTTP Range), converts it to a self-describing safetensors file in
our cache and deletes the pickle. The cache folder is ``$VDVAE_CACHE``, else
``$XDG_CACHE_HOME/vdvae-cli``, else ``~/.cache/vdvae-cli``: ``<cache>/<name>.safetensors``, with
downloads in progress under ``<cache>/downloads/``. Converted files from the Hub are not copied
there: the Hugging Face cache is the only cache for them.

Library code here raises :mod:`vdvae_cli.base.errors` and never prints; progress goes to a callback.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import catalog as registry
from ..base.errors import CheckpointError, ModelNotFoundError
from ..base.filekind import require_regular_file
from .catalog import RegistryEntry
from .hfhub import DEFAULT_HF_FILENAME, HubRef, fetch_hub, parse_hf_ref
from .paths import cache_dir, human_size, is_offline, official_cache_path

if TYPE_CHECKING:
    import torch

    from ..engine.interface import LatentModel

PICKLE_SUFFIXES = {".th", ".pt", ".pth", ".pkl", ".bin", ".ckpt"}


# --------------------------------------------------------------------------------------------------
# Results and progress


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model reference led: the file, a display name and the kind of source.

    ``source`` is ``shipped``, ``official`` (converted official checkpoint in our cache), ``hub``
    or ``file``; ``detail`` says more (URL, hf:// reference, path). Usable wherever a path is.
    """

    path: Path
    name: str
    source: str
    detail: str = ""

    def __fspath__(self) -> str:
        return str(self.path)


# --------------------------------------------------------------------------------------------------
# Resolution


def _looks_like_path(ref: str) -> bool:
    return (
        "/" in ref or os.sep in ref or ref.startswith(("~", "."))
        or Path(ref).suffix.lower() in PICKLE_SUFFIXES | {".safetensors"}
    )


def _is_pickle(path: Path) -> bool:
    """A torch file by suffix or magic (zip or protocol 2-5 pickle); safetensors has '{' at byte 8."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if head[8:9] == b"{":
        return False
    return head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))


def _resolve_path(ref: str) -> ResolvedModel:
    try:
        return _resolve_path_checked(ref)
    except OSError as exc:
        from ..base.safety import clean

        raise ModelNotFoundError(f"cannot read {clean(ref)}: {exc.strerror or exc}",
                                 hint="check the path and its permissions") from None


def _resolve_path_checked(ref: str) -> ResolvedModel:
    path = Path(ref).expanduser()
    if not path.exists():
        close = difflib.get_close_matches(ref, registry.names(), n=3, cutoff=0.6)
        hint = (f"did you mean the registry name {' or '.join(close)}?" if close
                else "check the path; `vdvae models` lists named models")
        raise ModelNotFoundError(f"no such model file: {path}", hint=hint)
    if path.is_dir():
        inner = path / DEFAULT_HF_FILENAME
        if inner.is_file():
            path = inner
        else:
            raise ModelNotFoundError(f"{path} is a folder, not a .safetensors file")
    require_regular_file(path, "model", CheckpointError)
    if _is_pickle(path):
        from .convert import official_family

        how = "" if official_family(path).stores_layout(path) else " --config NAME"  # e.g. NVAE's checkpoint.pt
        raise CheckpointError(
            f"{path} is a PyTorch pickle, not a vdvae-cli .safetensors file",
            hint=f"convert it once: vdvae convert {path}{how} -o {path.with_suffix('.safetensors').name}",
        )
    return ResolvedModel(path, path.stem, "file", str(path))


def _is_file(path: Path) -> bool:
    """``path.is_file()`` in our cache, where a folder we may not read is one clear error."""
    try:
        return path.is_file()
    except OSError as exc:
        from ..base.safety import clean

        raise ModelNotFoundError(f"cannot read the cache folder {clean(path.parent)}: {exc.strerror or exc}",
                                 hint="fix its permissions, or set VDVAE_CACHE to a folder you can read") from None


def _resolve_entry(entry: RegistryEntry) -> ResolvedModel:
    if entry.kind == "shipped":
        assert entry.path is not None
        return ResolvedModel(entry.path, entry.name, "shipped", str(entry.path))
    cached = official_cache_path(entry.name)
    if _is_file(cached):
        return ResolvedModel(cached, entry.name, "official", f"converted from {entry.checkpoint_url}")
    if entry.hf_repo:
        ref = HubRef(entry.hf_repo, entry.hf_filename or DEFAULT_HF_FILENAME, entry.hf_revision)
        return ResolvedModel(fetch_hub(ref), entry.name, "hub", str(ref))
    size = human_size(entry.size_bytes)
    if is_offline():
        raise ModelNotFoundError(
            f"official model {entry.name!r} is not downloaded and HF_HUB_OFFLINE is set; "
            f"run `vdvae download {entry.name}` with network access",
            hint=f"converted models are kept in {cache_dir()}",
        )
    raise ModelNotFoundError(
        f"official model {entry.name!r} is not downloaded yet; run `vdvae download {entry.name}` "
        f"(about {size}, converted once)",
        hint=f"it is kept in {cache_dir()}; set VDVAE_CACHE to change that",
    )


def resolve_model(ref: "str | os.PathLike[str] | ResolvedModel | None" = None) -> ResolvedModel:
    """Find the file a model reference names (see the module docstring). No network for local names;
    ``hf://`` references download on first use."""
    if isinstance(ref, ResolvedModel):
        return ref
    text = os.fspath(ref).strip() if ref is not None else ""
    if not text:
        text = os.environ.get("VDVAE_MODEL", "").strip()
    if not text:
        name = registry.default_name()
        if name is None:
            raise ModelNotFoundError(
                "no model given, and no default model is shipped (weights/ holds no .safetensors file)",
                hint="pass --model NAME|FILE|hf://owner/repo or set VDVAE_MODEL; `vdvae models` lists them",
            )
        text = name
    if text.startswith("hf://"):
        hub_ref = parse_hf_ref(text)
        return ResolvedModel(fetch_hub(hub_ref), hub_ref.repo_id.split("/")[-1], "hub", str(hub_ref))
    if _looks_like_path(text):
        return _resolve_path(text)
    entry = registry.find_entry(text)
    if entry is None:
        if Path(text).exists():
            return _resolve_path(text)
        entry = registry.get_entry(text)  # raises with suggestions
    return _resolve_entry(entry)


def load_model(
    ref: "str | os.PathLike[str] | ResolvedModel | None" = None,
    *,
    device: "str | torch.device" = "auto",
    dtype: "str | torch.dtype" = "fp32",
) -> "LatentModel":
    """Resolve ``ref`` and load it as an eval-mode model on ``device`` in ``dtype``."""
    import torch

    from .checkpoint import load_file_model
    from ..engine.runtime import pick_device, pick_dtype

    dev = device if isinstance(device, torch.device) else pick_device(device)
    dt = dtype if isinstance(dtype, torch.dtype) else pick_dtype(dtype)
    resolved = resolve_model(ref)
    return load_file_model(resolved.path, device=dev, dtype=dt)


