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
    "load": ("vdvae_cli.modelfiles.cache", "load"),  # downloads a named model on first use
    "fetch_model": ("vdvae_cli.modelfiles.cache", "fetch_model"),
    "resolve_model": ("vdvae_cli.modelfiles.resolve", "resolve_model"),
    "sample": ("vdvae_cli.engine.ops", "sample"),
    "reconstruct": ("vdvae_cli.engine.ops", "reconstruct"),
    "mix": ("vdvae_cli.engine.ops", "mix"),
    "encode": ("vdvae_cli.engine.ops", "encode"),
    "decode": ("vdvae_cli.engine.ops", "decode"),
    "evaluate": ("vdvae_cli.engine.ops", "elbo"),
    "interpolate": ("vdvae_cli.tools.interpolate", "interpolate"),
    "ood_scores": ("vdvae_cli.tools.ood", "llr_scores"),
    "fid_kid": ("vdvae_cli.tools.fid", "fid_kid"),
    "VDVAEConfig": ("vdvae_cli.families.vdvae.config", "VDVAEConfig"),
    "official_config": ("vdvae_cli.families.vdvae.config", "official_config"),
    "VAE": ("vdvae_cli.families.vdvae.model", "VAE"),
    "NVAEConfig": ("vdvae_cli.families.nvae.config", "NVAEConfig"),
    "NVAE": ("vdvae_cli.families.nvae.network", "NVAE"),
    "PixelCNNConfig": ("vdvae_cli.families.pixelcnn.config", "PixelCNNConfig"),
    "PixelCNNPP": ("vdvae_cli.families.pixelcnn.network", "PixelCNNPP"),
    "load_prior": ("vdvae_cli.modelfiles.priors", "read_prior"),
    "companion_path": ("vdvae_cli.engine.companion", "companion_path"),
    "family_of": ("vdvae_cli.engine.registry", "family_of"),
    "save_checkpoint": ("vdvae_cli.modelfiles.checkpoint", "save_checkpoint"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(import_module(module), attr)
    raise AttributeError(f"module 'vdvae_cli' has no attribute {name!r}")
