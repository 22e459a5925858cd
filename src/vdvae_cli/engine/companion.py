"""Where a model's learned prior lives and how its file says what it is (torch-free: ``vdvae info``
reads it without importing torch)."""

from __future__ import annotations

from pathlib import Path

PRIOR_FORMAT = "vdvae-cli-learned-prior"


def companion_path(model_path: str | Path) -> Path:
    """Where a model's learned prior lives by default: ``NAME.prior.safetensors`` beside ``NAME.safetensors``."""
    p = Path(model_path)
    stem = p.name[: -len(".safetensors")] if p.name.endswith(".safetensors") else p.name
    return p.with_name(f"{stem}.prior.safetensors")
