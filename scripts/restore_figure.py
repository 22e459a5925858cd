"""The README's inpainting figure: for a few held-out Fashion-MNIST test images, the input, the mask
(a centre 12x12 hole) and three solutions of ``vdvae inpaint`` with the default model.

    python scripts/restore_figure.py --data /work/data/fashion-mnist/test.npz -o docs/restore-inpaint.png

It runs the command itself (``vdvae inpaint ... --mask hole.png -n 3 --grid --seed 0``), so the
figure is what a user gets, then enlarges the grid with nearest neighbours for the page.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="an .npz with images (N, 32, 32, 3) uint8 (the test split)")
    ap.add_argument("--indices", type=int, nargs="+", default=[0, 1, 2, 3], help="which images")
    ap.add_argument("--model", default="fashion32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=int, default=3, help="enlargement for the page")
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()

    images = np.load(args.data)["images"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for i in args.indices:
            Image.fromarray(images[i]).save(folder / f"test_{i:05d}.png")
        size = images.shape[1]
        hole = np.zeros((size, size), np.uint8)
        a = (size - 12) // 2
        hole[a:a + 12, a:a + 12] = 255
        Image.fromarray(hole).save(folder / "hole.png")
        grid = folder / "grid.png"
        cmd = [sys.executable, "-m", "vdvae_cli", "inpaint", *sorted(str(p) for p in folder.glob("test_*.png")),
               "--mask", str(folder / "hole.png"), "-n", "3", "--grid", "--seed", str(args.seed), "-m", args.model,
               "-o", str(grid)]
        subprocess.run(cmd, check=True)
        with Image.open(grid) as im:
            big = im.resize((im.width * args.scale, im.height * args.scale), Image.Resampling.NEAREST)
    big.save(args.output)
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
