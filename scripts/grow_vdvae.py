"""Grow a trained VDVAE: more decoder layers at chosen resolutions, starting as identities.

    python scripts/grow_vdvae.py weights/fashion.safetensors /work/runs/grown.safetensors --add 4=3,8=3

Each new latent layer goes after the last layer of its resolution and starts as an identity with
no KL, so training (``vdvae train --init``) goes on from the model as it was,
and the new layers take on what the old ones could not express:

* its resnet block's last convolution is zero: the state passes through;
* its prior's last convolution is zero but for a bias that makes the prior N(0, 1) through the
  file's log-std bound (``prior_logstd_max``), and its posterior's last convolution is zero: the
  posterior is N(0, 1) too, so its KL is 0;
* its latent projection has no bias and keeps VDVAE's initialisation (scaled by 1/sqrt(layers)):
  z = 0 (the posterior or prior mean, temperature 0) adds nothing, so reconstructions from the
  posterior mean are the same images; a draw adds a little noise until the layer learns. A zero
  projection would keep the function exactly but leave the layer at a saddle: no gradient reaches
  its posterior (tried: no bits in the new layers after 500 steps).

Why: the card's ``prior_gap`` rows put the samples' shortfall in the 4x4 and 8x8 layers, whose prior
is a product of Gaussians per position given the layers above; more layers there build more of a
shape's spatial dependence. The encoder is untouched. The script checks that the grown model gives
the same posterior-mean reconstructions as the original, and KL 0 in the new layers, before it
writes the file.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from vdvae_cli.engine import ops
from vdvae_cli.families.vdvae.config import VDVAEConfig, parse_block_string
from vdvae_cli.families.vdvae.model import VAE
from vdvae_cli.modelfiles.checkpoint import build_model, load_file_model, save_checkpoint


def grown_blocks(dec_blocks: str, add: dict[int, int]) -> tuple[str, list[int | None]]:
    """The new ``dec_blocks`` string and, for each new layer, the old layer it is (None: new).

    ``add`` maps a resolution to how many layers to append after its last one, as ``RxN``."""
    entries = [e.strip() for e in dec_blocks.split(",")]
    layers_of = [parse_block_string(e, kind="dec") for e in entries]  # each entry's (resolution, mixin) layers
    last_at = {layers[0][0]: j for j, layers in enumerate(layers_of)}
    missing = set(add) - set(last_at)
    if missing:
        raise SystemExit(f"error: the decoder has no layers at resolution {sorted(missing)}")
    out: list[str] = []
    origin: list[int | None] = []
    old = 0  # the original model's layers so far
    for j, (entry, layers) in enumerate(zip(entries, layers_of)):
        res = layers[0][0]
        out.append(entry)
        origin.extend(range(old, old + len(layers)))
        old += len(layers)
        if last_at[res] == j and add.get(res):
            out.append(f"{res}x{add[res]}")
            origin.extend([None] * add[res])
    return ",".join(out), origin


def identity_block(state: dict[str, torch.Tensor], prefix: str, zdim: int, bound: float | None, z_scale: float) -> None:
    """Make the new block at ``prefix`` an identity with q = p = N(0, 1) (in place)."""
    for name in ("resnet.c4", "enc.c4", "prior.c4"):
        state[f"{prefix}.{name}.weight"].zero_()
        state[f"{prefix}.{name}.bias"].zero_()
    state[f"{prefix}.z_proj.bias"].zero_()  # its weight: the initialisation times z_scale (see the module docstring)
    state[f"{prefix}.z_proj.weight"].mul_(z_scale)
    if bound is not None:  # raw v with bound - softplus(bound - v) = 0: v = bound - log(e - 1)
        state[f"{prefix}.prior.c4.bias"][zdim : 2 * zdim] = bound - math.log(math.e - 1)


def grow(model, add: dict[int, int], z_scale: float = 0.1):
    """``model`` (a VDVAE) with ``add[res]`` identity layers after its last layer at each resolution,
    and for each of the grown model's layers the old layer it is (None: new)."""
    cfg = model.cfg
    blocks, origin = grown_blocks(cfg.dec_blocks, add)
    new_cfg = cfg.replace(dec_blocks=blocks)
    with torch.random.fork_rng():  # the new layers' first convolutions keep a seeded initialisation
        torch.manual_seed(0)
        state = {k: v.clone() for k, v in VAE(new_cfg).state_dict().items()}
    old_state = model.state_dict()
    for k, v in old_state.items():
        if not k.startswith("decoder.dec_blocks."):
            state[k] = v.clone()
    for new_i, old_i in enumerate(origin):
        prefix = f"decoder.dec_blocks.{new_i}"
        if old_i is None:
            identity_block(state, prefix, new_cfg.decoder_layers[new_i].zdim, getattr(cfg, "prior_logstd_max", None),
                           z_scale)
            continue
        old_prefix = f"decoder.dec_blocks.{old_i}."
        for k, v in old_state.items():
            if k.startswith(old_prefix):
                state[prefix + "." + k[len(old_prefix):]] = v.clone()
    return build_model(new_cfg, state), origin


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("output", type=Path)
    ap.add_argument("--add", required=True, help="resolution=layers to append, e.g. 4=3,8=3")
    ap.add_argument("--z-scale", type=float, default=0.1,
                    help="the new latent projections' initial weights, times VDVAE's initialisation [0.1]")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    add = {int(k): int(v) for k, v in (item.split("=") for item in args.add.split(","))}
    model = load_file_model(args.model)
    if not isinstance(model.cfg, VDVAEConfig):
        raise SystemExit("error: only a VDVAE can be grown")
    grown, origin = grow(model, add, args.z_scale)
    cfg, new_cfg, blocks = model.cfg, grown.cfg, grown.cfg.dec_blocks
    # the same function: the posterior-mean reconstruction at temperature 0 is the same image, and
    # every new layer's KL is 0 (old layers' noise shifts with the layer count, so their KLs differ)
    x = torch.randint(0, 256, (8, cfg.image_size, cfg.image_size, cfg.image_channels), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(0))
    same = [ops.reconstruct(m, x, posterior="mean", temperatures=0.0, output_temperature=0.0) for m in (model, grown)]
    changed = int((same[0] != same[1]).sum())
    kl = ops.elbo(grown, x, noise=torch.Generator().manual_seed(0)).kl_per_layer
    new_kl = float(kl[:, [i for i, o in enumerate(origin) if o is None]].abs().max())
    print(f"{cfg.n_layers} -> {new_cfg.n_layers} latent layers ({blocks}); reconstruction values changed: {changed}, "
          f"largest KL of a new layer {new_kl:.1e}", file=sys.stderr)
    if changed or new_kl > 1e-6:
        raise SystemExit("error: the grown model is not the same function")
    save_checkpoint(grown, new_cfg, args.output, force=args.force)
    print(f"wrote {args.output} ({sum(p.numel() for p in grown.parameters()):,} parameters)", file=sys.stderr)


if __name__ == "__main__":
    main()
