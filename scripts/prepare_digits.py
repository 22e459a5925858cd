"""Build the training array of the shipped ``digits32`` model from scikit-learn's bundled digits.

The data set ships inside scikit-learn (``sklearn.datasets.load_digits``: 1,797 8x8 grey images,
17 grey levels, the UCI "Optical Recognition of Handwritten Digits" test set, CC BY 4.0), so nothing
is downloaded. Each image becomes dark ink on a white page, enlarged to 32x32 with bilinear
interpolation and repeated over R, G, B (the VDVAE output head models RGB).

    pip install -e '.[data]'
    python scripts/prepare_digits.py -o /tmp/digits32.npz

The .npz holds ``images`` (1797, 32, 32, 3) uint8 and ``labels`` (1797,) int64, in scikit-learn's order.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SIZE = 32


def digits32(size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, size, size, 3) uint8, labels (N,)) from scikit-learn's bundled digits."""
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    grey = np.round(255.0 - bunch.images * (255.0 / 16.0)).astype(np.uint8)  # ink 16 -> black
    big = np.stack([np.asarray(Image.fromarray(g).resize((size, size), Image.Resampling.BILINEAR)) for g in grey])
    rgb = np.repeat(big[..., None], 3, axis=-1)
    return np.ascontiguousarray(rgb), bunch.target.astype(np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=Path("digits32.npz"))
    parser.add_argument("--size", type=int, default=SIZE)
    args = parser.parse_args()
    images, labels = digits32(args.size)
    np.savez_compressed(args.output, images=images, labels=labels)
    print(f"wrote {args.output}: images {images.shape} {images.dtype}, labels {labels.shape}")


if __name__ == "__main__":
    main()
