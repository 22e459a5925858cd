"""Images in and out, for the command line and for pipelines.

In: file paths, folders (their image files, sorted by name) and ``-`` for bytes on stdin (one
PNG/JPEG/..., or a stream of concatenated PNGs as ``vdvae sample -n 4 -o -`` writes). Any mode
(grey, palette, RGBA, 16-bit, CMYK) becomes 8-bit RGB; transparency is composited onto white. An
image of another size is resized (shorter side to the model's size) and centre-cropped, and the
caller is told so through ``notify`` (or it is refused with ``resize=False``).

Out: one file (one image, or a grid), a folder (one PNG per image, names that sort in input or
sample order), or stdout (PNG bytes, never to a terminal). Files are written atomically and an
existing file is never replaced without ``force``.

Images are uint8 (H, W, 3) numpy arrays here; nothing in this module imports torch.
"""

from __future__ import annotations

import io
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Sequence

import numpy as np

from .errors import ImageError, OutputError, UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pnm")
STDIN = "-"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Formats an output file may be written in, by suffix (folders and stdout always get PNG).
_WRITE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP",
                  ".tif": "TIFF", ".tiff": "TIFF", ".ppm": "PPM"}

Notify = Callable[[str], None]

# --------------------------------------------------------------------------------------------------
# Finding inputs


@dataclass(frozen=True)
class ImageSource:
    """One input image: a file, or bytes that came on stdin."""

    name: str  # what messages and JSON call it: the path as given, or "stdin" / "stdin_00002"
    stem: str  # the base of output names
    path: Path | None = None
    data: bytes | None = None

    def read_bytes(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        try:
            return self.path.read_bytes()
        except OSError as exc:
            raise ImageError(f"cannot read {self.name}: {exc.strerror}") from None


def collect_images(args: Sequence[str], *, stdin: BinaryIO | None = None, stdin_is_tty: bool = False) -> list[ImageSource]:
    """Expand command-line arguments into image sources, in order.

    A folder contributes its image files (by suffix, sorted by name, hidden files skipped, not
    recursive); ``-`` reads all of stdin once. Nothing is decoded yet.
    """
    if not args:
        raise UsageError("no input images given", hint="pass image files, a folder, or - for stdin")
    if sum(1 for a in args if a == STDIN) > 1:
        raise UsageError("'-' (stdin) is given more than once", hint="stdin can be read only once")
    sources: list[ImageSource] = []
    for arg in args:
        if arg == STDIN:
            sources.extend(_stdin_sources(stdin, stdin_is_tty))
            continue
        path = Path(arg)
        if path.is_dir():
            files = sorted(p for p in path.iterdir()
                           if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise ImageError(f"folder {arg} holds no images", hint=f"looked for {', '.join(IMAGE_SUFFIXES)}")
            sources.extend(ImageSource(str(p), p.stem, path=p) for p in files)
        elif path.is_file():
            sources.append(ImageSource(arg, path.stem, path=path))
        elif path.exists():
            raise ImageError(f"{arg} is neither a file nor a folder")
        else:
            raise ImageError(f"no such file: {arg}", hint="check the path; use - to read an image from stdin")
    return sources


def _stdin_sources(stdin: BinaryIO | None, is_tty: bool) -> list[ImageSource]:
    if stdin is None or is_tty:
        raise UsageError("'-' reads an image from stdin, but stdin is a terminal",
                         hint="pipe an image in, e.g. vdvae sample -o - | vdvae reconstruct -")
    data = stdin.read()
    if not data:
        raise ImageError("no image data on stdin (it was empty)",
                         hint="pipe PNG or JPEG bytes in, e.g. cat img.png | vdvae reconstruct -")
    pieces = split_png_stream(data)
    if len(pieces) == 1:
        return [ImageSource("stdin", "stdin", data=pieces[0])]
    width = max(5, len(str(len(pieces) - 1)))
    return [ImageSource(f"stdin_{i:0{width}d}", f"stdin_{i:0{width}d}", data=p) for i, p in enumerate(pieces)]


def split_png_stream(data: bytes) -> list[bytes]:
    """Split concatenated PNG files; anything that does not start as a PNG is one image."""
    if not data.startswith(PNG_SIGNATURE):
        return [data]
    pieces, start = [], 0
    while start < len(data):
        if not data.startswith(PNG_SIGNATURE, start):
            raise ImageError(f"stdin: {len(data) - start} unexpected bytes after PNG image {len(pieces)}",
                             hint="send PNG files back to back, or one image in any format")
        pos = start + len(PNG_SIGNATURE)
        end = len(data)  # a truncated image runs to the end; decoding it says what is wrong
        while pos + 8 <= len(data):
            (length,) = struct.unpack(">I", data[pos:pos + 4])
            kind = data[pos + 4:pos + 8]
            pos += 12 + length
            if kind == b"IEND":
                end = min(pos, len(data))
                break
        pieces.append(data[start:end])
        start = end
    return pieces


# --------------------------------------------------------------------------------------------------
# Decoding and fitting


def read_image(source: ImageSource, size: int | None, *, resize: bool = True, notify: Notify | None = None) -> np.ndarray:
    """Decode ``source`` to uint8 (size, size, 3) RGB (any size when ``size`` is None)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    data = source.read_bytes()
    if not data:
        raise ImageError(f"{source.name} is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            rgb = to_rgb(im)
    except UnidentifiedImageError:
        raise ImageError(f"{source.name} is not an image Pillow can read",
                         hint=f"give a PNG or JPEG; also read: {', '.join(s[1:] for s in IMAGE_SUFFIXES[3:])}") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{source.name} is too large to decode safely: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{source.name} is corrupt or truncated ({exc})",
                         hint="re-export or re-download the image") from None
    if size is not None and rgb.size != (size, size):
        w, h = rgb.size
        if not resize:
            raise ImageError(f"{source.name} is {w}x{h}, the model takes {size}x{size}",
                             hint="resize it first, or drop --no-resize to centre-crop and resize it")
        rgb = fit_square(rgb, size)
        if notify:
            notify(f"{source.name}: {w}x{h} centre-cropped and resized to {size}x{size}")
    return np.asarray(rgb, dtype=np.uint8)


def read_images(sources: Sequence[ImageSource], size: int, *, resize: bool = True,
                notify: Notify | None = None) -> np.ndarray:
    """All ``sources`` as one uint8 (N, size, size, 3) array."""
    return np.stack([read_image(s, size, resize=resize, notify=notify) for s in sources])


def to_rgb(im):
    """Any Pillow image as 8-bit RGB: 16-bit and float greys are scaled, alpha goes onto white."""
    from PIL import Image

    mode = im.mode
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(im).astype(np.float64)
        if mode.startswith("I;16") or (mode == "I" and arr.max(initial=0) > 255):
            arr = arr / 257.0  # 16-bit: 65535 -> 255
        elif mode == "F" and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0  # floats in [0, 1]
        grey = np.clip(np.round(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def fit_square(im, size: int):
    """Resize the shorter side to ``size`` (area-averaging when shrinking, bicubic when enlarging)
    and centre-crop to ``size`` x ``size``."""
    from PIL import Image

    w, h = im.size
    if (w, h) == (size, size):
        return im
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    method = Image.Resampling.BOX if scale < 1 else Image.Resampling.BICUBIC
    im = im.resize(new, method)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    return im.crop((left, top, left + size, top + size))


# --------------------------------------------------------------------------------------------------
# Encoding and grids


def encode_image(image: np.ndarray, fmt: str = "PNG") -> bytes:
    """uint8 (H, W, 3) -> file bytes in ``fmt`` (a Pillow format name)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def make_grid(images: Sequence[np.ndarray], columns: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile equally sized (H, W, 3) images row by row, ``pad`` black pixels between and around."""
    n = len(images)
    if n == 0:
        raise ValueError("make_grid needs at least one image")
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    h, w, c = images[0].shape
    grid = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.uint8)
    for i, img in enumerate(images):
        r, k = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + k * (w + pad)
        grid[top:top + h, left:left + w] = img
    return grid


# --------------------------------------------------------------------------------------------------
# Output names


def numbered_names(prefix: str, count: int) -> list[str]:
    """``prefix_00000.png``, ``prefix_00001.png``...: zero-padded so they sort in order."""
    width = max(5, len(str(count - 1)))
    return [f"{prefix}_{i:0{width}d}.png" for i in range(count)]


def derived_names(stems: Sequence[str], suffix: str) -> list[str]:
    """``stem_suffix.png`` per input; when those names would repeat or would not sort in input
    order, every name gets a zero-padded index in front (``00003_stem_suffix.png``)."""
    names = [f"{_safe(s)}_{suffix}.png" for s in stems]
    if len(set(names)) == len(names) and names == sorted(names):
        return names
    width = max(5, len(str(len(names) - 1)))
    return [f"{i:0{width}d}_{n}" for i, n in enumerate(names)]


def _safe(stem: str) -> str:
    return "".join(ch if ch.isprintable() and ch not in '/\\:*?"<>|' else "_" for ch in stem) or "image"


# --------------------------------------------------------------------------------------------------
# Writing


class ImageWriter:
    """Where a command's images go; made by :func:`plan_output` before any work is done.

    :meth:`write` takes images as they are produced (a folder or stdout gets them at once);
    :meth:`finish` writes the single file or the grid. Both return ``(index, where)`` for every
    image that has now landed, ``where`` being a path or ``-``.
    """

    def __init__(self, kind: str, target: Path | None, names: Sequence[str], *, grid: bool, force: bool,
                 stdout: BinaryIO | None, fmt: str = "PNG", existing: frozenset[int] = frozenset()):
        self.kind, self.target, self.names = kind, target, list(names)
        self.existing = existing  # indices whose output an earlier run wrote (kept with skip_existing)
        self.grid, self.force, self.stdout, self.fmt = grid, force, stdout, fmt
        self._held: dict[int, np.ndarray] = {}
        self._beside: Callable[[int], Sequence[np.ndarray]] | None = None
        self._lead: list[np.ndarray] = []

    def show_beside(self, beside: Callable[[int], Sequence[np.ndarray]] | None = None,
                    lead: Sequence[np.ndarray] = ()) -> None:
        """For a grid: tile ``beside(i)`` (e.g. image i's input) just before output ``i``, so each
        output sits next to what it came from, and ``lead`` images (e.g. mix's A) first."""
        self._beside, self._lead = beside, list(lead)

    @property
    def label(self) -> str:
        if self.kind == "stdout":
            return "-"
        return f"{self.target}{os.sep}" if self.kind == "dir" else str(self.target)

    def path_of(self, index: int) -> str:
        if self.kind == "dir":
            return str(self.target / self.names[index])  # type: ignore[operator]
        return self.label

    def write(self, indices: Sequence[int], images: Sequence[np.ndarray]) -> list[tuple[int, str]]:
        if self.grid or self.kind == "file":
            self._held.update((int(i), np.asarray(img)) for i, img in zip(indices, images))
            return []
        done = []
        if self.kind == "dir":
            _make_dir(self.target)  # type: ignore[arg-type]
        for i, img in zip(indices, images):
            if self.kind == "dir":
                _write_file(self.target / self.names[i], encode_image(img), force=self.force)  # type: ignore[operator]
            else:
                self._emit(encode_image(img))
            done.append((int(i), self.path_of(int(i))))
        return done

    def finish(self) -> list[tuple[int, str]]:
        if not self._held:
            return []
        order = sorted(self._held)
        images = [self._held[i] for i in order]
        if self.grid and self._beside is not None:
            groups = [[*self._beside(i), img] for i, img in zip(order, images)]
            per_row = math.ceil(math.sqrt(len(groups)))
            image = make_grid(self._lead + [t for g in groups for t in g], columns=per_row * len(groups[0]))
        else:
            image = make_grid(self._lead + images) if self.grid else images[0]
        data = encode_image(image, self.fmt)
        if self.kind == "stdout":
            self._emit(data)
        else:
            _write_file(self.target, data, force=self.force)  # type: ignore[arg-type]
        self._held.clear()
        return [(i, self.label) for i in order]

    def _emit(self, data: bytes) -> None:
        assert self.stdout is not None
        self.stdout.write(data)
        self.stdout.flush()


def plan_output(
    output: str | None,
    names: Sequence[str],
    *,
    grid: bool = False,
    force: bool = False,
    stdout: BinaryIO | None = None,
    stdout_is_tty: bool = False,
    json_out: bool = False,
    skip_existing: bool = False,
) -> ImageWriter:
    """Check where ``len(names)`` images will go, before any work is done.

    ``output``: ``-`` (stdout), a folder (trailing slash or existing folder; ``names`` inside it), a
    file (one image, or the grid), or None: stdout when it is not a terminal. Raises
    :class:`UsageError` for requests that cannot work and :class:`OutputError` when a file exists
    (without ``force``) or cannot be written. With ``skip_existing`` (folders only) files that exist
    are kept and their indices listed in the writer's ``existing``, so a stopped job can resume.
    """
    count = len(names)
    if output is None:
        if json_out:
            raise UsageError("--json prints results on stdout, so the images need -o",
                             hint="add -o out.png, or -o out/ for a folder")
        if stdout_is_tty:
            raise UsageError("no -o given and stdout is a terminal (images are not written to terminals)",
                             hint="add -o out.png or -o out/, or redirect: ... > out.png")
        output = STDIN
    if output == STDIN:
        if json_out:
            raise UsageError("-o - and --json both write to stdout", hint="write the images to -o FILE or -o DIR/")
        if stdout_is_tty:
            raise OutputError("refusing to write PNG data to a terminal",
                              hint="redirect stdout (... -o - > out.png) or give -o FILE")
        return ImageWriter("stdout", None, names, grid=grid, force=force, stdout=stdout)
    path = Path(output)
    if output.endswith(("/", os.sep)) or path.is_dir():
        if grid:
            raise UsageError(f"--grid makes one image, but -o {output} is a folder",
                             hint="give a file name, e.g. -o grid.png")
        _check_dir(path)
        existing = set()
        if path.is_dir():
            for i, name in enumerate(names):
                if skip_existing and (path / name).is_file():
                    existing.add(i)
                else:
                    check_output_file(path / name, force)
        return ImageWriter("dir", path, names, grid=False, force=force, stdout=None, existing=frozenset(existing))
    if skip_existing:
        raise UsageError("--skip-existing resumes a job that writes a folder", hint="write to -o DIR/")
    fmt = _WRITE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UsageError(f"-o {output}: cannot tell the image format from the name",
                         hint="end a file name with .png, .jpg or .webp, or a folder name with /")
    if count > 1 and not grid:
        raise UsageError(f"{count} images but -o {output} names one file",
                         hint=f"add --grid for one tiled image, or write a folder: -o {path.with_suffix('')}/")
    check_output_file(path, force)
    return ImageWriter("file", path, names, grid=grid, force=force, stdout=None, fmt=fmt)


def check_output_file(path: Path, force: bool) -> None:
    """Fail now if ``path`` exists (without ``force``) or cannot be written."""
    if path.is_dir():
        raise OutputError(f"{path} is a folder", hint="give a file name, or end the name with / to write into it")
    if path.exists() and not force:
        raise OutputError(f"{path} already exists", hint="pass --force to overwrite it")
    parent = path.parent
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise OutputError(f"cannot write {path}: {parent} {what}",
                          hint="create the folder first, or end -o with / to write into a new folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: folder {parent} is not writable")


def _check_dir(path: Path) -> None:
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot make folder {path}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write into {existing}: not writable")


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot make folder {path}: {exc.strerror}") from None


def _write_file(path: Path, data: bytes, *, force: bool) -> None:
    from .checkpoint import atomic_write_bytes

    atomic_write_bytes(path, data, force=force)
