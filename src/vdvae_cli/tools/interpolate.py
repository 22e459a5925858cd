"""Interpolation in a hierarchical VAE's latent space: paths through key latents, frame by frame.

Keys are per-layer latents (posterior means of images, or prior samples). Chosen layers are
interpolated between consecutive keys, spherically (``slerp``: along the great circle between the
two latents of a layer, which keeps a Gaussian latent's norm typical) or linearly (``lerp``); the
other layers are left free, so a decoder pass draws them from the prior at the caller's
temperatures. A path visits the keys in order (and back to the first with ``loop``); each segment
has ``steps`` frames including both ends, shared ends counted once.

Latents are lists with one (N, Z, r, r) tensor per layer in decoder order, as in :mod:`vdvae_cli.engine.ops`;
a None entry is a free layer. Frame 0 of a segment is exactly the first key and its last frame
exactly the second (the weights are then exactly 1 and 0).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Sequence

import torch

from ..engine import ops
from ..engine.distributions import as_noise
from ..engine.interface import LatentModel

if TYPE_CHECKING:
    from ..engine.learned_prior import TopPrior

Tensor = torch.Tensor
Method = Literal["slerp", "lerp"]
Frame = tuple[int, int, float]  # (key a, key b, t): the frame is a + t (b - a) along the chosen curve


def path(n_keys: int, steps: int, *, loop: bool = False) -> list[Frame]:
    """The frames of a path through ``n_keys`` keys with ``steps`` frames per segment (ends included)."""
    if n_keys < 1:
        raise ValueError("a path needs at least one key")
    if steps < 2:
        raise ValueError(f"steps={steps}: a segment needs at least 2 frames (its two ends)")
    pairs = [(i, i + 1) for i in range(n_keys - 1)] + ([(n_keys - 1, 0)] if loop and n_keys > 1 else [])
    if not pairs:
        return [(0, 0, 0.0)]
    frames = [(a, b, j / (steps - 1)) for a, b in pairs for j in range(steps - 1)]
    if not loop:
        frames.append((pairs[-1][0], pairs[-1][1], 1.0))
    return frames


def lerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Row-wise linear interpolation; ``t`` has one value per row."""
    w = t.to(torch.float64).reshape(-1, *([1] * (a.dim() - 1)))
    return ((1 - w) * a.double() + w * b.double()).to(a.dtype)


def slerp(a: Tensor, b: Tensor, t: Tensor, eps: float = 1e-7) -> Tensor:
    """Row-wise spherical interpolation of flattened latents (linear where the two are parallel or zero)."""
    af, bf = a.flatten(1).double(), b.flatten(1).double()
    w = t.to(torch.float64).reshape(-1, 1)
    na, nb = af.norm(dim=1, keepdim=True), bf.norm(dim=1, keepdim=True)
    cos = ((af * bf).sum(dim=1, keepdim=True) / (na * nb).clamp_min(1e-300)).clamp(-1.0, 1.0)
    omega = torch.arccos(cos)
    sin = torch.sin(omega)
    spherical = (sin > eps) & (na > 0) & (nb > 0)
    safe = torch.where(spherical, sin, torch.ones_like(sin))
    wa = torch.where(spherical, torch.sin((1 - w) * omega) / safe, 1 - w)
    wb = torch.where(spherical, torch.sin(w * omega) / safe, w)
    wa = torch.where(w == 0, torch.ones_like(wa), torch.where(w == 1, torch.zeros_like(wa), wa))
    wb = torch.where(w == 0, torch.zeros_like(wb), torch.where(w == 1, torch.ones_like(wb), wb))
    return (wa * af + wb * bf).reshape(a.shape).to(a.dtype)


def interpolate_latents(keys: Sequence[Tensor | None], frames: Sequence[Frame],
                        method: Method = "slerp") -> list[Tensor | None]:
    """Per-layer latents of every frame: ``keys[i]`` is (n_keys, Z, r, r) for an interpolated layer,
    None for a free one (it stays None)."""
    if method not in ("slerp", "lerp"):
        raise ValueError(f"unknown interpolation {method!r} (slerp or lerp)")
    mix = slerp if method == "slerp" else lerp
    a_idx = torch.tensor([f[0] for f in frames])
    b_idx = torch.tensor([f[1] for f in frames])
    t = torch.tensor([f[2] for f in frames], dtype=torch.float64)
    return [None if z is None else mix(z[a_idx], z[b_idx], t) for z in keys]


def select_layers(keys: Sequence[Tensor], layers: Sequence[int], n_layers: int) -> list[Tensor | None]:
    """A full per-layer list with ``keys`` (a prefix at least as long as the largest chosen layer)
    at the chosen ``layers`` and None elsewhere."""
    chosen = set(layers)
    if chosen and max(chosen) >= len(keys):
        raise ValueError(f"layer {max(chosen)} chosen but only {len(keys)} layers of keys given")
    return [keys[i] if i in chosen else None for i in range(n_layers)]


@torch.inference_mode()
def prior_latents(model: LatentModel, n: int, *, temperatures: ops.Temperatures = 1.0,
                  noise: ops.NoiseLike = None, n_layers: int | None = None,
                  prior: "TopPrior | None" = None) -> list[Tensor]:
    """The latents of ``n`` prior samples (as :func:`vdvae_cli.engine.ops.sample` draws them with the same
    noise, the layers a learned ``prior`` covers from it), one (n, Z, r, r) tensor per layer,
    stopping after ``n_layers``."""
    cfg = model.cfg
    n_layers = cfg.n_layers if n_layers is None else n_layers
    if n_layers == 0:
        return []
    src = as_noise(noise)
    temps = ops.layer_temperatures(cfg, temperatures)
    given: list[Tensor | None] = []
    if prior is not None:
        p = next(model.parameters())
        given = ops.with_learned_prior(prior, [], n, temps, src, p)
    out = model.decoder(n, latents=given, temperatures=temps, noise=src, want_latents=True, stop_after=n_layers)
    return [z.float() for z in out.latents]


def interpolate(
    model: LatentModel,
    keys: Sequence[Tensor],
    *,
    layers: Sequence[int] | None = None,
    steps: int = 8,
    loop: bool = False,
    method: Method = "slerp",
    temperatures: ops.Temperatures = 1.0,
    output_temperature: float = 1.0,
    noise: ops.NoiseLike = None,
) -> Tensor:
    """Frames (uint8 NHWC) along a path through key latents ``keys`` (per layer, (n_keys, Z, r, r):
    e.g. ``ops.encode(model, images, posterior="mean")``).

    ``layers`` (default: every layer given) are interpolated; the others are drawn from the prior at
    ``temperatures`` with ``noise`` (pass one generator per frame, all seeded alike, to hold them
    still along the path). ``temperatures=0, output_temperature=0`` is deterministic.
    """
    layers = list(range(len(keys))) if layers is None else list(layers)
    frames = path(int(keys[0].shape[0]), steps, loop=loop)
    chosen = select_layers(keys, layers, model.cfg.n_layers)
    latents = interpolate_latents(chosen, frames, method)
    return ops.decode(model, latents, n=len(frames), temperatures=temperatures,
                      output_temperature=output_temperature, noise=noise)
