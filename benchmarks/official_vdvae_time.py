"""Time openai/vdvae's own decoder on this machine, in-process, as ``bench_cli.py --official-vdvae``
runs it beside ours in every round (same moment, same machine state).

    python benchmarks/official_vdvae_time.py --official-dir ~/src/vdvae --weights random-cifar10.safetensors --batch 8

``--official-dir`` is a checkout of https://github.com/openai/vdvae (not shipped with this project;
its ``vae.py`` imports with torch alone, on CPU). The network is built from its own ``hps.py``
(argparse defaults, then the named set) and given the weights of our model file (our keys are the
official ones, so the state_dict loads as it is). Timed: the unconditional decoder pass at
temperature 1 and the output head's 1x1 conv (logits only; no pixel draw, no PNGs, which favours
it), after two warm-up batches, median of ``--repeats``. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _official import print_median_time  # benchmarks/, the script's own folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official-dir", type=Path, required=True)
    ap.add_argument("--weights", type=Path, required=True, help="our model file of the same architecture")
    ap.add_argument("--hps", default="cifar10", help="the official hyperparameter set")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=12)
    args = ap.parse_args()
    sys.path.insert(0, str(args.official_dir))
    from safetensors.torch import load_file

    from hps import HPARAMS_REGISTRY, Hyperparams, add_vae_arguments  # type: ignore[import-not-found]
    from vae import VAE  # type: ignore[import-not-found]

    H = Hyperparams()
    H.update(vars(add_vae_arguments(argparse.ArgumentParser()).parse_args([])))
    H.update(HPARAMS_REGISTRY[args.hps])
    sizes = {"cifar10": (32, 3), "imagenet32": (32, 3), "imagenet64": (64, 3), "ffhq256": (256, 3), "ffhq1024": (1024, 3)}
    H.image_size, H.image_channels = sizes[H.dataset]
    model = VAE(H).eval()
    missing, unexpected = model.load_state_dict(load_file(str(args.weights)), strict=False)
    if missing or unexpected:
        raise SystemExit(f"weights do not fit the official network: {len(missing)} missing, {len(unexpected)} unexpected")
    print_median_time(lambda: model.decoder.out_net(model.decoder.forward_uncond(args.batch, t=1.0)),
                      repeats=args.repeats, hps=args.hps, batch=args.batch)


if __name__ == "__main__":
    main()
