"""Make every figure of the README and the model cards from the command its caption shows.

Each figure is the output of one `vdvae` command (run here exactly as the caption writes it, as a
child process of the installed package), enlarged by an integer factor with nearest-neighbour
pixels where the caption says so ("shown at 2x size"). Nothing else touches the pixels.

    python scripts/make_figures.py                     # all of them (the GIFs need the data sets)
    python scripts/make_figures.py --only fashion32-samples
    python scripts/make_figures.py --check             # compare with the committed files, write nothing

The README's top figure has its own script, named in its caption (scripts/make_hierarchy_figure.py);
tests/test_figures.py checks it too where the Fashion-MNIST arrays it reads are present.

The interpolation GIFs take their keys from the data sets: Fashion-MNIST's test split (Debian's
`dataset-fashion-mnist`, see scripts/prepare_fashion_mnist.py) and scikit-learn's digits (the
`data` extra). A figure whose data set is missing is skipped with a note. tests/test_figures.py
checks that the committed fashion32 samples are what this script makes today.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Figure:
    name: str
    target: str  # relative to the repository root
    command: tuple[str, ...]  # the caption's command, without -o (KEYS stands for the keys folder)
    scale: int = 1  # nearest-neighbour enlargement after the command (PNG figures)
    keys: Callable[[Path], bool] | None = None  # writes the keys folder; False when its data set is missing


def fashion_keys(folder: Path) -> bool:
    """Four Fashion-MNIST test images: the first ankle boot, trousers, pullover and bag of the split."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from prepare_fashion_mnist import SOURCE, _find, load_split

    if _find(SOURCE, "t10k-images-idx3-ubyte") is None:
        return False
    images, labels = load_split(SOURCE, "test")
    for rank, label in enumerate((9, 1, 2, 8)):  # ankle boot, trouser, pullover, bag
        index = int(np.flatnonzero(labels == label)[0])
        Image.fromarray(images[index]).save(folder / f"{rank}-test{index:05d}.png")
    return True


def digit_keys(folder: Path) -> bool:
    """Four held-out scikit-learn digits: the last 0, 3, 6 and 8 of the set."""
    try:
        sys.path.insert(0, str(ROOT / "scripts"))
        from prepare_digits import digits32
    except ImportError:
        return False
    try:
        images, labels = digits32()
    except ImportError:
        return False
    for rank, label in enumerate((0, 3, 6, 8)):
        index = int(np.flatnonzero(labels == label)[-1])
        Image.fromarray(images[index]).save(folder / f"{rank}-digit{index:04d}.png")
    return True


FIGURES = (
    Figure("fashion32-samples", "weights/fashion32-samples.png",
           ("sample", "--model", "fashion32", "-n", "64", "--grid", "--seed", "0"), scale=2),
    Figure("digits32-samples", "weights/samples.png",
           ("sample", "--model", "digits32", "-n", "64", "--temp", "0.8", "--seed", "0", "--grid"), scale=2),
    Figure("interpolate-fashion32", "docs/interpolate-fashion32.gif",
           ("interpolate", "KEYS", "--model", "fashion32", "--loop", "--steps", "10", "--temp", "0", "--output-temp", "0", "--scale", "3"),
           keys=fashion_keys),
    Figure("interpolate-digits32", "docs/interpolate-digits32.gif",
           ("interpolate", "KEYS", "--model", "digits32", "--loop", "--steps", "10", "--temp", "0", "--output-temp", "0",
            "--scale", "3"), keys=digit_keys),
)


def caption_command(fig: Figure) -> str:
    return " ".join(("vdvae", *("keys/" if a == "KEYS" else a for a in fig.command), "-o", fig.target))


def make(fig: Figure, dest: Path) -> bool:
    """Run the figure's command and write the figure to ``dest``; False when its data set is missing."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("VDVAE_MODEL", None)  # the caption's default model is the shipped default
    env.setdefault("VDVAE_DEVICE", "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        args = list(fig.command)
        if fig.keys is not None:
            (work / "keys").mkdir()
            if not fig.keys(work / "keys"):
                return False
            args = ["keys/" if a == "KEYS" else a for a in args]
        raw = work / ("raw" + Path(fig.target).suffix)
        subprocess.run([sys.executable, "-m", "vdvae_cli", *args, "-o", str(raw), "-q"], cwd=work, env=env, check=True)
        if fig.scale == 1:
            dest.write_bytes(raw.read_bytes())
        else:
            with Image.open(raw) as im:
                im.resize((im.width * fig.scale, im.height * fig.scale), Image.Resampling.NEAREST).save(dest)
    return True


def same_pixels(a: Path, b: Path) -> bool:
    """Equal frame by frame (PNG or GIF), whatever the encoder's bytes."""
    with Image.open(a) as x, Image.open(b) as y:
        frames = getattr(x, "n_frames", 1)
        if frames != getattr(y, "n_frames", 1) or x.size != y.size:
            return False
        for i in range(frames):
            x.seek(i)
            y.seek(i)
            if not np.array_equal(np.asarray(x.convert("RGB")), np.asarray(y.convert("RGB"))):
                return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", choices=[f.name for f in FIGURES], help="make only this one (repeatable)")
    ap.add_argument("--check", action="store_true", help="compare with the committed files instead of writing them")
    args = ap.parse_args()
    failed = False
    for fig in FIGURES:
        if args.only and fig.name not in args.only:
            continue
        target = ROOT / fig.target
        with tempfile.TemporaryDirectory() as tmp:
            made = Path(tmp) / target.name
            if not make(fig, made):
                print(f"{fig.name}: skipped (its data set is not installed)")
                continue
            if args.check:
                ok = target.is_file() and same_pixels(made, target)
                failed |= not ok
                print(f"{fig.name}: {'same' if ok else 'DIFFERS from'} {fig.target}  ({caption_command(fig)})")
            else:
                target.write_bytes(made.read_bytes())
                print(f"wrote {fig.target}  ({caption_command(fig)})")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
