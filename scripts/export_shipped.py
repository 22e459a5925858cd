"""Copy a finished run's EMA model into weights/ with the model card's facts in its metadata.

    python scripts/export_digits32.py RUN_DIR/model.safetensors weights/digits32.safetensors --wall-time-min 38.5

The tensors are copied unchanged (fp32); the metadata gains ``license``, ``description`` and
``data_source`` (``vdvae models`` shows the first two), keeping the trainer's facts (steps, held-out
bits/dim, seed).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vdvae_cli.checkpoint import metadata_of, read_checkpoint, save_checkpoint

LICENSE = "MIT (weights); trained on the UCI optical digits data (CC BY 4.0) as bundled with scikit-learn"
DESCRIPTION = ("32x32 handwritten digits (grey, as RGB); trained on 1617 scikit-learn digits on a 2-core CPU; "
               "see weights/README.md")
SOURCE = ("sklearn.datasets.load_digits (UCI Optical Recognition of Handwritten Digits, test part; "
          "Alpaydin & Kaynak 1998), 8x8 -> 32x32 bilinear, ink dark on white")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--wall-time-min", type=float, required=True)
    ap.add_argument("--hardware", default="2-core CPU, 1 thread")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    cfg, state = read_checkpoint(args.src)
    meta = {k: v for k, v in metadata_of(args.src).items() if k not in ("format", "format_version", "vdvae_config", "weights_sha256")}
    meta.update(license=LICENSE, description=DESCRIPTION, data_source=SOURCE,
                train_wall_time_min=f"{args.wall_time_min:.1f}", train_hardware=args.hardware)
    path = save_checkpoint(state, cfg, args.dst, metadata=meta, force=args.force)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
