"""Out-of-distribution detection table: LLR>k and the plain ELBO on an in- and an out-of-distribution
set, printed as Markdown next to the figures of Havtorn et al. 2021 for Fashion-MNIST -> MNIST.

The classic case, once a Fashion-MNIST model exists (the Fashion-MNIST test split from Debian's
``dataset-fashion-mnist``; MNIST from ``scripts/prepare_mnist.py``)::

    python scripts/prepare_mnist.py -o /tmp/mnist32.npz
    python scripts/ood_table.py --model weights/fashion32.safetensors --in fashion-mnist-test \\
        --out /tmp/mnist32.npz --k 1 2 3 --seed 0 --json ood-fashion32.json

Sets are ``fashion-mnist-test`` (the 10,000 test images, read from the IDX files in
``/usr/share/datasets/fashion-mnist``, padded to 32x32, grey as RGB, light on black as published),
an ``.npz`` with an ``images`` array (N, H, W[, 3]) uint8, or a folder of images. ``--in-holdout F``
keeps only the held-out split that ``vdvae train`` made (``holdout_split(n, F, seed=0)``) and
``--invert`` turns an out-of-distribution set into dark-on-light, and ``--as-digits32`` passes it
through the shipped digits32 model's preprocessing (8x8, 17 grey levels, dark ink on white,
bilinear back to 32x32), so that only the content differs from that model's data. Each k row is what
``vdvae ood --in ... --out ... --k K --seed S`` computes on the same images.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import struct
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vdvae_cli.modelfiles import resolve as hub  # noqa: E402
from vdvae_cli.engine.distributions import PerImageNoise  # noqa: E402
from vdvae_cli.tools.ood import detection_metrics, llr_scores  # noqa: E402
from vdvae_cli.engine.runtime import image_generators  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
LN2 = math.log(2)
# What Havtorn et al. 2021 (ICML) report for Fashion-MNIST (in) vs MNIST (out) with their three-layer
# HVAE, in words and as commonly cited (AUROC near 0.98 for the ratio); the table's other figures are
# not copied here because this project has no copy of the paper to check them against.
PAPER = {"likelihood": "fails (AUROC below 0.5)", "llr": "AUROC about 0.98"}


def read_idx_images(path: Path) -> np.ndarray:
    """uint8 (N, rows, cols) from an IDX3 file (gzip or plain)."""
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    magic, n, rows, cols = struct.unpack(">IIII", raw[:16])
    if magic != 0x00000803 or len(raw) != 16 + n * rows * cols:
        sys.exit(f"error: {path} is not an IDX3 file of uint8 images")
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, rows, cols)


def as_rgb32(images: np.ndarray) -> np.ndarray:
    if images.ndim == 3:
        images = images[..., None].repeat(3, axis=-1)
    pad = (32 - images.shape[1]) // 2
    if pad > 0:
        images = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    return np.ascontiguousarray(images, dtype=np.uint8)


def as_digits32(images: np.ndarray) -> np.ndarray:
    """Light-on-dark RGB images through digits32's preprocessing (see scripts/prepare_digits.py)."""
    from PIL import Image

    out = []
    for img in images[..., 0]:
        small = np.asarray(Image.fromarray(img).resize((8, 8), Image.Resampling.BOX), dtype=np.float64)
        page = np.round(255.0 - np.round(small / 255 * 16) * (255.0 / 16.0)).astype(np.uint8)
        out.append(np.asarray(Image.fromarray(page).resize((32, 32), Image.Resampling.BILINEAR)))
    return np.repeat(np.stack(out)[..., None], 3, axis=-1)


def load_set(spec: str, size: int) -> np.ndarray:
    if spec == "fashion-mnist-test":
        if not FASHION.is_file():
            sys.exit(f"error: {FASHION} is missing (Debian: apt-get install dataset-fashion-mnist)")
        return as_rgb32(read_idx_images(FASHION))
    path = Path(spec)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return as_rgb32(data["images"])
    from vdvae_cli.base.images import collect_images, read_images

    return read_images(collect_images([spec]), size)


def scores(model, images: np.ndarray, k: int, samples: int, seed: int, batch: int, offset: int,
           prior_temperature: float = 1.0):
    """LLR>k and the negative ELBO (bits/dim) per image, image i seeded as (seed, offset + i)."""
    x = torch.from_numpy(images)
    llr, nll = [], []
    for start in range(0, len(x), batch):
        idx = range(offset + start, offset + min(start + batch, len(x)))
        result = llr_scores(model, x[start:start + batch], k=k, samples=samples, prior_temperature=prior_temperature,
                            noise=PerImageNoise(image_generators(seed, idx)))
        llr.append(result.score / LN2)
        nll.append(result.elbo / LN2)
    return torch.cat(llr), torch.cat(nll)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model reference (default: the shipped model)")
    ap.add_argument("--in", dest="in_set", required=True, help="in-distribution set")
    ap.add_argument("--out", dest="out_set", required=True, help="out-of-distribution set")
    ap.add_argument("--in-holdout", type=float, default=None, help="keep the trainer's held-out split of --in")
    ap.add_argument("--invert", action="store_true", help="invert the out-of-distribution images (255 - x)")
    ap.add_argument("--as-digits32", action="store_true", help="out-of-distribution images as digits32's data")
    ap.add_argument("--limit", type=int, default=None, help="at most this many images per set")
    ap.add_argument("--k", type=int, nargs="+", default=[1])
    ap.add_argument("--samples", type=int, default=1, help="importance samples for both bounds")
    ap.add_argument("--prior-temp", type=float, default=1.0,
                    help="temperature of the k prior layers (1: the bound; 0: their mean, as the authors' script)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    model = hub.load_model(args.model)
    size = model.cfg.image_size
    ins, outs = load_set(args.in_set, size), load_set(args.out_set, size)
    if args.in_holdout is not None:
        from vdvae_cli.training.data import holdout_split

        ins = ins[holdout_split(len(ins), args.in_holdout, 0)[1].numpy()]
    if args.limit:
        ins, outs = ins[:args.limit], outs[:args.limit]
    if args.as_digits32:
        outs = as_digits32(outs)
    if args.invert:
        outs = 255 - outs
    t0 = time.perf_counter()
    rows, nll = [], None
    for k in args.k:
        llr_in, nll_in = scores(model, ins, k, args.samples, args.seed, args.batch_size, 0, args.prior_temp)
        llr_out, nll_out = scores(model, outs, k, args.samples, args.seed, args.batch_size, len(ins), args.prior_temp)
        rows.append((f"LLR>{k}", detection_metrics(llr_in, llr_out), "llr" if k == 1 else None))
        nll = (nll_in, nll_out)
    assert nll is not None
    rows.insert(0, ("-ELBO (likelihood)", detection_metrics(*nll), "likelihood"))
    seconds = time.perf_counter() - t0

    print(f"{model.cfg.name}: {len(ins)} in-distribution ({args.in_set}) vs {len(outs)} out-of-distribution "
          f"({args.out_set}{', as digits32' if args.as_digits32 else ''}{', inverted' if args.invert else ''}), {args.samples} importance sample(s), prior temperature {args.prior_temp:g}, "
          f"seed {args.seed}; mean -ELBO {float(nll[0].mean()):.3f} vs {float(nll[1].mean()):.3f} bits/dim\n")
    print("| score | AUROC | AUPRC | FPR80 | the paper (its HVAE) |")
    print("|---|---|---|---|---|")
    for label, m, paper in rows:
        ref = PAPER[paper] if paper else ""
        print(f"| {label} | {m.auroc:.3f} | {m.auprc:.3f} | {m.fpr80:.3f} | {ref} |")
    print(f"\n({seconds:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({
            "model": model.cfg.name, "in": args.in_set, "out": args.out_set, "n_in": len(ins), "n_out": len(outs),
            "invert": args.invert, "as_digits32": args.as_digits32, "samples": args.samples, "prior_temp": args.prior_temp, "seed": args.seed,
            "rows": [{"score": label, **m.as_dict()} for label, m, _ in rows],
            "mean_elbo_bits_per_dim": {"in": float(nll[0].mean()), "out": float(nll[1].mean())},
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
