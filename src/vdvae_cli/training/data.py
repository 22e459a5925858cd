"""Training data: load images, fit them to the model's size, split off a held-out set, shard for DDP.

Images live in memory as one uint8 NHWC tensor (the form every ``ops`` function takes). A data set is
either a folder of image files (searched recursively, sorted by path so the order is reproducible)
or an ``.npy`` / ``.npz`` uint8 array of shape (N, H, W), (N, H, W, 1), (N, H, W, 3) or (N, H, W, 4).
Grey images become RGB by repeating the channel; an alpha channel is composited onto white.

Every random choice (the held-out split, the per-epoch order) is drawn from a ``torch.Generator``
seeded from an explicit seed, so a run and its resumption see the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass
import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..base.errors import ImageError, UsageError
from ..base.images import IMAGE_SUFFIXES, fit_square
from ..engine.runtime import image_seed

Tensor = torch.Tensor

_NPZ_KEYS = ("images", "x", "train", "data", "arr_0")

# --------------------------------------------------------------------------------------------------
# Loading


def load_images(path: str | Path, image_size: int | None = None, *,
                skipped: Callable[[str], None] | None = None) -> Tensor:
    """All images under ``path`` as a uint8 (N, S, S, 3) tensor.

    ``image_size`` (when given) resizes each image so its shorter side is ``S`` (area-averaging when
    shrinking, bicubic when enlarging) and centre-crops it square. Without it, every image must
    already be square and of one size. In a folder, a file that cannot be read is left out and
    reported to ``skipped`` (one line each); without ``skipped`` it is an error.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"data set {path} does not exist")
    if path.is_dir():
        try:
            files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
                           and p.suffix.lower() in IMAGE_SUFFIXES)
        except OSError as exc:
            raise ImageError(f"cannot read the data folder {path}: {exc.strerror or exc}") from None
        if not files:
            raise ImageError(f"{path} holds no image files", hint=f"expected {', '.join(IMAGE_SUFFIXES)}")
        arrays = []
        for f in files:
            try:
                arrays.append(_read_file(f, image_size))
            except ImageError as exc:
                if skipped is None:
                    raise
                skipped(f"{exc} (left out of the data)")
        if not arrays:
            raise ImageError(f"none of the {len(files)} image files in {path} could be read")
        return torch.from_numpy(np.stack(arrays))
    if path.suffix.lower() in (".npy", ".npz"):
        return fit_size(torch.from_numpy(_read_array(path)), image_size)
    raise ImageError(f"{path} is neither a folder of images nor an .npy/.npz array")


def _read_file(path: Path, image_size: int | None) -> np.ndarray:
    """One training image, through the same guarded reader as every other input image (size read
    from the header and bounded before decoding, text chunks bounded, one clear error)."""
    from ..base.images import ImageSource, read_image
    from ..base.safety import clean

    img = read_image(ImageSource(str(path), path.stem, path=path), None)
    if image_size is None:
        if img.shape[0] != img.shape[1]:
            raise ImageError(f"{clean(path)} is {img.shape[1]}x{img.shape[0]}, not square",
                             hint="pass an image size to crop it")
        return img
    from PIL import Image

    return np.asarray(fit_square(Image.fromarray(img), image_size))


def _npy_header(f, label: str, available: int) -> tuple[tuple[int, ...], bool, int]:
    """Shape, dtype and data size of the .npy array at ``f``'s position, from its header alone; an
    array whose header asks for more bytes than its file holds, or than memory holds, is refused
    before numpy allocates anything."""
    from numpy.lib import format as npformat

    try:
        version = npformat.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(f, max_header_size=10_000)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = npformat.read_array_header_2_0(f, max_header_size=10_000)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
        raise ImageError(f"{label} is not a readable .npy array: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}") from None
    if dtype.hasobject:
        raise ImageError(f"{label} holds Python objects, not uint8 images")
    if dtype != np.uint8:
        raise ImageError(f"{label}: images must be uint8 (0..255), got {dtype}")
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize if shape else dtype.itemsize
    if nbytes > available:
        raise ImageError(f"{label}: its header describes {shape} ({nbytes:,} bytes), more than the "
                         f"{available:,} bytes it holds or this process can hold")
    return tuple(shape), bool(fortran), nbytes


def _read_exactly(f, shape: tuple[int, ...], fortran: bool, nbytes: int, label: str) -> np.ndarray:
    from ..base.errors import activity

    with activity(f"reading {label} ({nbytes:,} bytes)"):
        arr = np.empty(shape[::-1] if fortran else shape, dtype=np.uint8)
    view = arr.reshape(-1).data  # a writable memoryview of the new array
    got = 0
    while got < nbytes:
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    if got != nbytes or f.read(1):
        raise ImageError(f"{label} holds {'less' if got < nbytes else 'more'} array data than its header describes "
                         f"({nbytes:,} bytes)", hint="the file is truncated or damaged")
    return arr.T if fortran else arr


def _read_array(path: Path) -> np.ndarray:
    """An .npy / .npz uint8 array, its header checked against its file size (and memory) first."""
    import zipfile
    import zlib

    from ..base.safety import available_memory, clean

    label = clean(path)
    free = available_memory() or (1 << 62)
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
            f.seek(0)
            if magic.startswith(b"PK"):
                try:
                    with zipfile.ZipFile(f) as z:
                        infos = {i.filename.removesuffix(".npy"): i for i in z.infolist() if i.filename.endswith(".npy")}
                        names = list(infos)
                        key = next((k for k in _NPZ_KEYS if k in names), names[0] if len(names) == 1 else None)
                        if key is None:
                            raise ImageError(
                                f"{label} holds arrays {[clean(n) for n in names][:10]}; cannot tell which are the images",
                                hint=f"name the image array one of {', '.join(_NPZ_KEYS)}",
                            )
                        info = infos[key]
                        with z.open(info) as member:
                            shape, fortran, nbytes = _npy_header(member, f"{label}[{clean(key)}]",
                                                                 min(info.file_size, free // 2))
                            arr = _read_exactly(member, shape, fortran, nbytes, label)
                except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError, zlib.error) as exc:
                    raise ImageError(f"{label} is not a readable .npz archive: {clean(str(exc))[:200]}") from None
            else:
                size = os.fstat(f.fileno()).st_size
                shape, fortran, nbytes = _npy_header(f, label, min(size, free // 2))
                arr = _read_exactly(f, shape, fortran, nbytes, label)
    except OSError as exc:
        raise ImageError(f"cannot read {label}: {exc.strerror or exc}") from None
    if arr.dtype != np.uint8:
        raise ImageError(f"{path}: images must be uint8 (0..255), got {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        raise ImageError(f"{path}: expected an (N, H, W[, 1|3|4]) array, got shape {arr.shape}",
                         hint="store images channels-last (NHWC)")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.shape[-1] == 4:
        alpha = arr[..., 3:].astype(np.float32) / 255.0
        arr = np.round(arr[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    if arr.shape[0] == 0:
        raise ImageError(f"{path} holds no images")
    return np.ascontiguousarray(arr)


def fit_size(images: Tensor, image_size: int | None) -> Tensor:
    """Resize/crop a uint8 NHWC batch to ``image_size`` square (no-op when it already fits)."""
    n, h, w, _ = images.shape
    if image_size is None:
        if h != w:
            raise ImageError(f"images are {w}x{h}, not square", hint="pass an image size to crop them")
        return images
    if (h, w) == (image_size, image_size):
        return images
    from PIL import Image

    out = [np.asarray(fit_square(Image.fromarray(img), image_size)) for img in images.numpy()]
    return torch.from_numpy(np.stack(out))


# --------------------------------------------------------------------------------------------------
# Splitting and statistics


def holdout_split(n: int, holdout: float | int, seed: int) -> tuple[Tensor, Tensor]:
    """(train indices, held-out indices) from a seeded permutation of ``range(n)``.

    ``holdout`` < 1 is a fraction of ``n``; >= 1 a count. Both index tensors are sorted.
    """
    count = round(n * holdout) if 0 < holdout < 1 else int(holdout)
    if count < 0 or (holdout >= 1 and holdout != int(holdout)):
        raise UsageError(f"held-out size {holdout!r} must be a fraction in (0, 1) or a whole count")
    if count >= n:
        raise UsageError(f"held-out set of {count} leaves no training images out of {n}")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    return perm[count:].sort().values, perm[:count].sort().values


# --------------------------------------------------------------------------------------------------
# Batches for one or many processes


@dataclass(frozen=True)
class ShardedBatches:
    """Which training images each step of each rank sees.

    Every epoch is a fresh permutation drawn from ``(seed, epoch)``; rank ``r`` of ``world`` takes
    every ``world``-th index of it, and the tail that does not fill a whole batch on every rank is
    dropped, so all ranks run the same number of steps. Step ``s`` lands in epoch
    ``s // steps_per_epoch``: the batches are a pure function of the step, so resuming needs no
    sampler state.
    """

    n: int
    batch_size: int
    seed: int
    rank: int = 0
    world: int = 1

    def __post_init__(self) -> None:
        if self.steps_per_epoch < 1:
            raise UsageError(
                f"{self.n} training images cannot fill one batch of {self.batch_size} on each of {self.world} process(es)",
                hint="lower --batch-size or add images",
            )

    @property
    def steps_per_epoch(self) -> int:
        return self.n // (self.batch_size * self.world)

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def shard(self, epoch: int) -> Tensor:
        """This rank's indices for ``epoch`` (length ``steps_per_epoch * batch_size``)."""
        g = torch.Generator().manual_seed(image_seed(self.seed, epoch))
        perm = torch.randperm(self.n, generator=g)
        return perm[self.rank :: self.world][: self.steps_per_epoch * self.batch_size]

    def indices(self, step: int) -> Tensor:
        """This rank's batch at global step ``step``."""
        b = step % self.steps_per_epoch
        return self.shard(self.epoch_of(step))[b * self.batch_size : (b + 1) * self.batch_size]

    def __iter__(self) -> Iterator[Tensor]:  # one epoch, from epoch 0 (handy for inspection)
        for step in range(self.steps_per_epoch):
            yield self.indices(step)


def shard_range(n: int, rank: int, world: int) -> slice:
    """A contiguous slice of ``range(n)`` for ``rank`` (evaluation: each rank scores its part)."""
    per = -(-n // world)
    return slice(min(n, rank * per), min(n, (rank + 1) * per))
