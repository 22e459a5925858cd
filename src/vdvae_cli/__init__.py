"""vdvae-cli: use Very Deep VAEs (and NVAEs) from Python and from the shell.

The public API (imported lazily so that ``vdvae --help`` starts without importing torch)::

    import vdvae_cli as vd
    model = vd.load("cifar10")                 # registry name, .safetensors path or hf://owner/repo
    images = vd.sample(model, 8, temperatures=0.8, noise=torch.Generator().manual_seed(0))
    latents = vd.encode(model, images)         # list of (N, Z, r, r) tensors, one per latent layer
    recon = vd.decode(model, latents[:20])     # keep 20 layers, sample the rest
    result = vd.evaluate(model, images)        # ElboResult, nats/dim per image
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load": ("vdvae_cli.cache", "load"),  # downloads a named model on first use
    "fetch_model": ("vdvae_cli.cache", "fetch_model"),
    "resolve_model": ("vdvae_cli.hub", "resolve_model"),
    "sample": ("vdvae_cli.ops", "sample"),
    "reconstruct": ("vdvae_cli.ops", "reconstruct"),
    "mix": ("vdvae_cli.ops", "mix"),
    "encode": ("vdvae_cli.ops", "encode"),
    "decode": ("vdvae_cli.ops", "decode"),
    "evaluate": ("vdvae_cli.ops", "elbo"),
    "interpolate": ("vdvae_cli.interpolate", "interpolate"),
    "ood_scores": ("vdvae_cli.ood", "llr_scores"),
    "fid_kid": ("vdvae_cli.fid", "fid_kid"),
    "VDVAEConfig": ("vdvae_cli.config", "VDVAEConfig"),
    "official_config": ("vdvae_cli.config", "official_config"),
    "VAE": ("vdvae_cli.model", "VAE"),
    "NVAEConfig": ("vdvae_cli.nvae.config", "NVAEConfig"),
    "NVAE": ("vdvae_cli.nvae.network", "NVAE"),
    "family_of": ("vdvae_cli.family", "family_of"),
    "save_checkpoint": ("vdvae_cli.checkpoint", "save_checkpoint"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(import_module(module), attr)
    raise AttributeError(f"module 'vdvae_cli' has no attribute {name!r}")
