"""Build the training and test arrays of the shipped ``fashion32`` model from Debian's Fashion-MNIST.

Fashion-MNIST (Xiao, Rasul & Vollgraf 2017; MIT licence, (c) Zalando SE) is 70,000 28x28 grey
images of ten kinds of clothing. Debian ships it as the package ``dataset-fashion-mnist`` (gzipped
IDX files under /usr/share/datasets/fashion-mnist); this script installs the package with apt-get
when the files are missing, reads the IDX files with a small reader that checks every header
against the file's size, pads each image with 2 background (black) pixels to 32x32, keeps the
data's own polarity (a light item on black) and stores one grey channel (``--channels 3`` repeats
it over R, G, B, as the files of the RGB-modelled ``fashion32`` were made).

    python scripts/prepare_fashion_mnist.py -o /work/data/fashion-mnist

writes ``train.npz`` (60,000 images) and ``test.npz`` (10,000), each with ``images`` (N, 32, 32, 1)
uint8 and ``labels`` (N,) int64: the form ``vdvae train`` reads (it takes the ``images`` array).
Keep the output outside git: the data is never committed.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np

SOURCE = Path("/usr/share/datasets/fashion-mnist")
PACKAGE = "dataset-fashion-mnist"
SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60_000),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10_000)}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
PAD = 2
_UBYTE = 0x08  # the IDX type code of unsigned bytes, the only one Fashion-MNIST uses


class IdxError(ValueError):
    """An IDX file whose header does not describe its contents."""


def parse_idx(raw: bytes, *, ndim: int) -> np.ndarray:
    """The uint8 array held by the IDX bytes ``raw``, which must have ``ndim`` dimensions.

    The header is two zero bytes, a type code (0x08: unsigned byte), the number of dimensions, then
    one big-endian uint32 per dimension; the data must fill the rest of the file exactly.
    """
    if len(raw) < 4:
        raise IdxError(f"{len(raw)} bytes is too short for an IDX header")
    zero, dtype, dims = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != _UBYTE:
        raise IdxError(f"not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    if dims != ndim:
        raise IdxError(f"expected {ndim} dimensions, the header says {dims}")
    header = 4 + 4 * dims
    if len(raw) < header:
        raise IdxError("the header is truncated")
    shape = struct.unpack(f">{dims}I", raw[4:header])
    size = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != size:
        raise IdxError(f"the header promises {shape} = {size} bytes of data, the file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def read_idx(path: Path, *, ndim: int) -> np.ndarray:
    """``parse_idx`` of a file, gunzipped when its name ends in .gz."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return parse_idx(f.read(), ndim=ndim)


def to_model_input(grey: np.ndarray, pad: int = PAD, channels: int = 3) -> np.ndarray:
    """(N, 28, 28) grey -> (N, 28 + 2 pad, ..., channels) uint8: black border; with 3 channels the
    grey repeated over R, G, B, with 1 the grey alone."""
    padded = np.pad(grey, ((0, 0), (pad, pad), (pad, pad)), constant_values=0)
    return np.ascontiguousarray(np.repeat(padded[..., None], channels, axis=-1))


def _find(source: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (source / name).is_file():
            return source / name
    return None


def ensure_installed(source: Path) -> None:
    """Install the Debian package when ``source`` lacks the IDX files (apt-get update once, then install)."""
    if all(_find(source, s) for files in SPLITS.values() for s in files[:2]):
        return
    if source != SOURCE:
        raise SystemExit(f"error: {source} lacks the Fashion-MNIST IDX files")
    if shutil.which("apt-get") is None:
        raise SystemExit(f"error: {source} is missing and apt-get is not available; install {PACKAGE} or pass --source")
    print(f"installing {PACKAGE} with apt-get", flush=True)
    subprocess.run(["apt-get", "update"], check=True)
    subprocess.run(["apt-get", "install", "-y", PACKAGE], check=True)


def load_split(source: Path, split: str, channels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 32, 32, channels) uint8, labels (N,) int64) of ``split`` ("train" or "test")."""
    images_stem, labels_stem, count = SPLITS[split]
    grey = read_idx(_find(source, images_stem), ndim=3)  # type: ignore[arg-type]
    labels = read_idx(_find(source, labels_stem), ndim=1)  # type: ignore[arg-type]
    if grey.shape != (count, 28, 28) or labels.shape != (count,):
        raise IdxError(f"{split}: expected {count} 28x28 images and labels, got {grey.shape} and {labels.shape}")
    if labels.max() >= len(CLASSES):
        raise IdxError(f"{split}: label {labels.max()} is not one of the {len(CLASSES)} classes")
    return to_model_input(grey, channels=channels), labels.astype(np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=Path("fashion-mnist"), help="folder to write train.npz and test.npz to")
    parser.add_argument("--source", type=Path, default=SOURCE, help="folder with the IDX files")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=1,
                        help="1: grey as stored (the default; what the grey `fashion` model reads); 3: repeated over R, G, B")
    parser.add_argument("--force", action="store_true", help="overwrite existing arrays")
    args = parser.parse_args()
    ensure_installed(args.source)
    args.output.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        dst = args.output / f"{split}.npz"
        if dst.exists() and not args.force:
            raise SystemExit(f"error: {dst} exists (pass --force to overwrite)")
        images, labels = load_split(args.source, split, args.channels)
        tmp = dst.with_name(f".{split}.tmp.npz")
        np.savez(tmp, images=images, labels=labels)
        tmp.replace(dst)
        print(f"wrote {dst}: images {images.shape} {images.dtype}, labels {labels.shape} "
              f"({np.bincount(labels, minlength=len(CLASSES)).min()}+ per class)")


if __name__ == "__main__":
    main()
