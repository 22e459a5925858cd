"""A learned prior's companion file (``vdvae prior fit``), read for a loaded model: bounded, checked
against the model's fingerprint and layers (the format itself: :mod:`vdvae_cli.engine.learned_prior`)."""

from __future__ import annotations

from pathlib import Path

from ..engine.interface import LatentModel
from ..engine.learned_prior import TopPrior


def read_prior(path: str | Path, model: LatentModel) -> TopPrior:
    """A companion prior file for ``model``, read within bounds and checked against its fingerprint."""
    from ..base.errors import CheckpointError, UsageError
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
    shapes = model.cfg.latent_shapes
    try:
        dim = check_layers(layers, shapes, prior.kind)
    except UsageError as exc:  # the file's claim, not the user's choice
        raise CheckpointError(f"{path}: {exc}") from None
    if dim != prior.cfg.dim:
        raise CheckpointError(f"{path} models {prior.cfg.dim} dims, but layers 0-{layers - 1} of this model have {dim}")
    if prior.kind == "spatial" and (prior.cfg.channels, prior.cfg.size, prior.cfg.size) != tuple(shapes[0]):
        raise CheckpointError(f"{path} models {prior.cfg.channels}x{prior.cfg.size}x{prior.cfg.size} latents, "
                              f"but this model's top layer is {'x'.join(map(str, shapes[0]))}")
    if prior.kind == "exemplar":
        _attach_model(prior, model, layers, path)
    p = next(model.parameters())
    prior.to(p.device).eval()
    return TopPrior(prior, layers, tuple(model.cfg.latent_shapes), str(path))


def _attach_model(prior, model: LatentModel, layers: int, path: Path) -> None:
    """An exemplar prior draws through its model: its images must be the model's size and channels."""
    from ..base.errors import CheckpointError
    from ..engine import ops

    cfg = model.cfg
    want = (cfg.image_size, cfg.image_channels)
    if (prior.cfg.size, prior.cfg.channels) != want:
        raise CheckpointError(f"{path} stores {prior.cfg.size}x{prior.cfg.size}x{prior.cfg.channels} images, but this model "
                              f"reads {want[0]}x{want[0]}x{want[1]}")

    def draw(images, noise):
        return ops.encode(model, images, noise=noise, n_layers=layers)

    prior.attach(draw, cfg.latent_shapes[:layers])
