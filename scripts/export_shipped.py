"""Copy a run's EMA model into weights/ with its model card's facts in the metadata.

    python scripts/export_shipped.py fashion32 RUN_DIR/model.safetensors weights/fashion32.safetensors \
        --wall-time-min 80 --default-temp 0.8 --default-output-temp 0.5

The tensors are copied unchanged (fp32); the metadata gains ``license``, ``description`` and
``data_source`` (``vdvae models`` shows the first two), the wall time and hardware, and with
``--default-temp`` / ``--default-output-temp`` the ``default_temperature`` and
``default_output_temperature`` that ``vdvae sample`` uses without ``--temp`` / ``--output-temp``
(``vdvae info`` shows them), and with ``--ood-k`` (``--ood-prior-temp``, ``--ood-source``) the
``default_ood_*`` settings that ``vdvae ood`` uses without ``--k`` (chosen on held-out data by
``scripts/choose_ood_k.py``, never on the pair a card reports). The trainer's facts (steps, held-out
bits/dim, seed) are kept.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from vdvae_cli.modelfiles.header import (
    DEFAULT_OOD_K_KEY, DEFAULT_OOD_PRIOR_TEMPERATURE_KEY, DEFAULT_OOD_SCORE_KEY, DEFAULT_OOD_SOURCE_KEY,
    DEFAULT_OUTPUT_TEMPERATURE_KEY, DEFAULT_TEMPERATURE_KEY, OOD_SCORES, metadata_of, ood_settings,
)
from vdvae_cli.modelfiles.checkpoint import read_checkpoint, save_checkpoint
from vdvae_cli.engine.temperature import parse_temperature_spec

CARDS = {
    "digits32": dict(
        license="MIT (weights); trained on the UCI optical digits data (CC BY 4.0) as bundled with scikit-learn",
        description=("32x32 handwritten digits (grey, as RGB); trained on 1617 scikit-learn digits on a 2-core CPU; "
                     "see weights/README.md"),
        data_source=("sklearn.datasets.load_digits (UCI Optical Recognition of Handwritten Digits, test part; "
                     "Alpaydin & Kaynak 1998), 8x8 -> 32x32 bilinear, ink dark on white"),
    ),
    "fashion32": dict(
        license="MIT (weights); trained on Fashion-MNIST, MIT, (c) Zalando SE",
        description=("32x32 clothing (Fashion-MNIST: grey, as RGB, light item on black); trained on a 2-core CPU; "
                     "see weights/README.md"),
        data_source=("Fashion-MNIST (Xiao, Rasul & Vollgraf 2017) from Debian's dataset-fashion-mnist, "
                     "training split; 28x28 padded with 2 black pixels to 32x32"),
    ),
    "fashion": dict(
        license="MIT (weights); trained on Fashion-MNIST, MIT, (c) Zalando SE",
        description=("32x32 clothing (Fashion-MNIST: one grey channel, light item on black); trained on a 2-core CPU; "
                     "see weights/README.md"),
        data_source=("Fashion-MNIST (Xiao, Rasul & Vollgraf 2017) from Debian's dataset-fashion-mnist, "
                     "training split less 2,000 held out; 28x28 padded with 2 black pixels to 32x32, grey"),
    ),
    "fashion-nvae": dict(
        license="MIT (weights); trained on Fashion-MNIST, MIT, (c) Zalando SE",
        description=("32x32 clothing (Fashion-MNIST: one grey channel), an NVAE trained under the same budget as "
                     "fashion on a 2-core CPU; see weights/README.md"),
        data_source=("Fashion-MNIST (Xiao, Rasul & Vollgraf 2017) from Debian's dataset-fashion-mnist, "
                     "training split less 2,000 held out; 28x28 padded with 2 black pixels to 32x32, grey"),
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("card", choices=sorted(CARDS), help="which shipped model's facts to write")
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--wall-time-min", type=float, required=True)
    ap.add_argument("--hardware", default="2-core CPU, 1 thread")
    ap.add_argument("--default-temp", help="recommended --temp spec for sampling (e.g. 0.8)")
    ap.add_argument("--default-output-temp", type=float, help="recommended --output-temp (pixel temperature, >= 0)")
    ap.add_argument("--ood-k", type=int, help="the k `vdvae ood` uses without --k")
    ap.add_argument("--ood-prior-temp", type=float, help="the --prior-temp that goes with --ood-k")
    ap.add_argument("--ood-score", choices=OOD_SCORES, help="the score `vdvae ood` uses without --score and --k")
    ap.add_argument("--ood-source", help="how --ood-k/--ood-score were chosen (one line; `vdvae info` and `ood` show it)")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    cfg, state = read_checkpoint(args.src)
    cfg = dataclasses.replace(cfg, name=args.card)  # the run folder's name is not the model's
    meta = dict(metadata_of(args.src))  # save_checkpoint writes the config, family, format and digest anew
    meta.update(CARDS[args.card], train_wall_time_min=f"{args.wall_time_min:.1f}", train_hardware=args.hardware)
    if args.default_temp is not None:
        parse_temperature_spec(args.default_temp, cfg)  # refuse a spec sample would refuse
        meta[DEFAULT_TEMPERATURE_KEY] = args.default_temp
    if args.default_output_temp is not None:
        if not 0 <= args.default_output_temp < float("inf"):
            ap.error("--default-output-temp must be a finite number >= 0")
        meta[DEFAULT_OUTPUT_TEMPERATURE_KEY] = repr(args.default_output_temp)
    if args.ood_k is not None:
        recorded = {"k": str(args.ood_k), "prior_temperature": repr(args.ood_prior_temp if args.ood_prior_temp is not None else 1.0)}
        ood_settings(recorded, cfg.n_layers)  # refuse what ood would refuse
        meta[DEFAULT_OOD_K_KEY] = recorded["k"]
        meta[DEFAULT_OOD_PRIOR_TEMPERATURE_KEY] = recorded["prior_temperature"]
    elif args.ood_prior_temp is not None:
        ap.error("--ood-prior-temp goes with --ood-k")
    if args.ood_score is not None:
        meta[DEFAULT_OOD_SCORE_KEY] = args.ood_score
    if args.ood_source:
        if args.ood_k is None and args.ood_score is None:
            ap.error("--ood-source goes with --ood-k or --ood-score")
        meta[DEFAULT_OOD_SOURCE_KEY] = args.ood_source
    path = save_checkpoint(state, cfg, args.dst, metadata=meta, force=args.force)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
