"""Where model files live on this machine and whether the network may be used: our cache folder
(``$VDVAE_CACHE``, else ``$XDG_CACHE_HOME/vdvae-cli``, else ``~/.cache/vdvae-cli``) and offline mode."""

from __future__ import annotations

import os
from pathlib import Path


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def is_offline() -> bool:
    """``HF_HUB_OFFLINE`` (read now, not at import) turns every download off."""
    return _truthy(os.environ.get("HF_HUB_OFFLINE"))


def cache_dir() -> Path:
    """Our cache of converted official checkpoints (see the module docstring)."""
    env = os.environ.get("VDVAE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vdvae-cli"


def official_cache_path(name: str) -> Path:
    return cache_dir() / f"{name}.safetensors"


def human_size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
