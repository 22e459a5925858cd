"""A learned prior's companion file (``vdvae prior fit``), read for a loaded model: bounded, checked
against the model's fingerprint and layers (the format itself: :mod:`vdvae_cli.engine.learned_prior`)."""

from __future__ import annotations

from pathlib import Path

from ..engine.interface import LatentModel
from ..engine.learned_prior import TopPrior


def read_prior(path: str | Path, model: LatentModel) -> TopPrior:
    """A companion prior file for ``model``, read within bounds and checked against its fingerprint."""
    from ..base.errors import CheckpointError
    from ..base.filekind import require_regular_file
    from ..engine.keys import model_fingerprint
    from ..engine.learned_prior import check_layers, load_prior
    from ..engine.statedict import digest_of

    path = Path(path)
    require_regular_file(path, "learned prior", CheckpointError, hint="give the file `vdvae prior fit` wrote")
    size = path.stat().st_size
    if size > 1 << 30:
        raise CheckpointError(f"{path} is {size:,} bytes: more than a learned prior file holds (1 GiB at most)")
    prior, layers, _ = load_prior(path.read_bytes(), fingerprint=model_fingerprint(model.cfg, digest_of(model)),
                                  label=str(path))
    dim = check_layers(layers, model.cfg.latent_shapes)
    if dim != prior.cfg.dim:
        raise CheckpointError(f"{path} models {prior.cfg.dim} dims, but layers 0-{layers - 1} of this model have {dim}")
    p = next(model.parameters())
    prior.to(p.device).eval()
    return TopPrior(prior, layers, tuple(model.cfg.latent_shapes), str(path))
