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
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence
from typing import BinaryIO, Callable, overload

import numpy as np

from .errors import ImageError, OutputError, UsageError, activity
from .safety import MAX_GRID_PIXELS, MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE, MAX_STDIN_BYTES, MAX_TEXT_CHUNK, clean, human_bytes

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
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size > MAX_STDIN_BYTES:
                    raise ImageError(f"{clean(self.name)} is {human_bytes(size)}; an input image is at most "
                                     f"{human_bytes(MAX_STDIN_BYTES)}")
                return f.read(MAX_STDIN_BYTES + 1)
        except OSError as exc:
            raise ImageError(f"cannot read {clean(self.name)}: {exc.strerror or exc}") from None


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
        label = clean(arg)
        try:
            if path.is_dir():
                files = sorted(p for p in path.iterdir()
                               if not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
                if not files:
                    raise ImageError(f"folder {label} holds no images", hint=f"looked for {', '.join(IMAGE_SUFFIXES)}")
                sources.extend(ImageSource(str(p), p.stem, path=p) for p in files)
            elif path.is_file():
                sources.append(ImageSource(arg, path.stem, path=path))
            elif path.exists():
                raise ImageError(f"{label} is neither a file nor a folder")
            else:
                raise ImageError(f"no such file: {label}", hint="check the path; use - to read an image from stdin")
        except OSError as exc:
            raise ImageError(f"cannot read {label}: {exc.strerror or exc}",
                             hint="check the permissions of the file or folder") from None
    return sources


def _stdin_sources(stdin: BinaryIO | None, is_tty: bool) -> list[ImageSource]:
    if stdin is None or is_tty:
        raise UsageError("'-' reads an image from stdin, but stdin is a terminal",
                         hint="pipe an image in, e.g. vdvae sample -o - | vdvae reconstruct -")
    data = read_stream(stdin, "stdin", check=_looks_like_image, what="image data")
    if not data:
        raise ImageError("no image data on stdin (it was empty)",
                         hint="pipe PNG or JPEG bytes in, e.g. cat img.png | vdvae reconstruct -")
    pieces = split_png_stream(data)
    if len(pieces) == 1:
        return [ImageSource("stdin", "stdin", data=pieces[0])]
    width = max(5, len(str(len(pieces) - 1)))
    return [ImageSource(f"stdin_{i:0{width}d}", f"stdin_{i:0{width}d}", data=p) for i, p in enumerate(pieces)]


_IMAGE_MAGIC = (PNG_SIGNATURE, b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*", b"RIFF",
                b"P1", b"P2", b"P3", b"P4", b"P5", b"P6", b"P7", b"Pf", b"PF", b"\x00\x00\x00\x0cjP", b"\xff\x4f\xff\x51",
                b"qoif", b"\x00\x00\x01\x00", b"8BPS", b"DDS ", b"\x0a")


def _looks_like_image(head: bytes) -> str | None:
    """None if ``head`` starts like an image format Pillow reads, else why not."""
    if head.startswith(_IMAGE_MAGIC) or head[4:12] in (b"ftypavif", b"ftypheic", b"ftypmif1"):
        return None
    return f"it does not start like an image (first bytes {head[:8].hex(' ')})"


def read_stream(stream: BinaryIO, label: str, *, check=None, what: str = "data",
                limit: int = MAX_STDIN_BYTES, error: type = ImageError) -> bytes:
    """All of ``stream`` (stdin), read in pieces up to ``limit`` bytes: more is refused rather than
    held in memory, and ``check(first_bytes)`` (a reason, or None) refuses what is plainly not
    ``what`` as soon as its first bytes arrive (``head -c 6G /dev/zero`` is refused at once)."""
    chunks: list[bytes] = []
    total = 0
    while True:
        try:
            chunk = stream.read(min(1 << 20, limit + 1 - total))
        except OSError as exc:
            raise error(f"cannot read {label}: {exc.strerror or exc}") from None
        if not chunk:
            break
        if not chunks and check is not None and len(chunk) >= 1:
            head = chunk
            while len(head) < 16:
                more = stream.read(16 - len(head))
                if not more:
                    break
                head += more
            chunk = head
            why = check(head)
            if why:
                raise error(f"{label} does not hold {what}: {why}")
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise error(f"{label} holds more than {human_bytes(limit)} of {what}",
                        hint="give such inputs as files, or in smaller pieces")
    return b"".join(chunks)


def split_png_stream(data: bytes) -> list[bytes]:
    """Split concatenated PNG files; anything that does not start as a PNG is one image."""
    if not data.startswith(PNG_SIGNATURE):
        return [data]
    pieces: list[bytes] = []
    start = 0
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
    """Decode ``source`` to uint8 (size, size, 3) RGB (any size when ``size`` is None).

    The bytes are untrusted: the image's size is read from its header and refused (before any pixel
    is decoded) when it is absurd (more than 64 megapixels, or a side over 65,500), text chunks are
    bounded, and every decoder failure is one :class:`ImageError`."""
    from PIL import Image, ImageFile, PngImagePlugin, UnidentifiedImageError

    data = source.read_bytes()
    name = clean(source.name)
    if not data:
        raise ImageError(f"{name} is empty (0 bytes)")
    PngImagePlugin.MAX_TEXT_CHUNK = MAX_TEXT_CHUNK
    PngImagePlugin.MAX_TEXT_MEMORY = 8 * MAX_TEXT_CHUNK
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS  # Pillow refuses beyond this itself, as a second line
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's warnings about a damaged file: our error says it
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w < 1 or h < 1 or w * h > MAX_IMAGE_PIXELS or max(w, h) > MAX_IMAGE_SIDE:
                    raise ImageError(f"{name} is {w}x{h} pixels, too large to decode safely "
                                     f"(at most {MAX_IMAGE_PIXELS // 1_000_000} megapixels)",
                                     hint="scale it down first")
                with activity(f"decoding {name} ({w}x{h})", hint="scale the image down first"):
                    im.load()
                    im = _exif_transpose(im)
                    rgb = to_rgb(im)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name} is not an image Pillow can read",
                         hint=f"give a PNG or JPEG; also read: {', '.join(s[1:] for s in IMAGE_SUFFIXES[3:])}") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{name} is too large to decode safely (a decompression bomb?)",
                         hint="scale it down first") from None
    except (OSError, SyntaxError, ValueError, EOFError, TypeError, IndexError, KeyError, struct.error,
            ZeroDivisionError, OverflowError, AttributeError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None and not isinstance(exc, (EOFError,)):
            raise ImageError(f"cannot read {name}: {exc.strerror or exc}") from None
        why = clean(str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__)[:200]
        raise ImageError(f"{name} is corrupt or truncated ({why})",
                         hint="re-export or re-download the image") from None
    if size is not None and rgb.size != (size, size):
        w, h = rgb.size
        if not resize:
            raise ImageError(f"{name} is {w}x{h}, the model takes {size}x{size}",
                             hint="resize it first, or drop --no-resize to centre-crop and resize it")
        rgb = fit_square(rgb, size)
        if notify:
            notify(f"{name}: {w}x{h} centre-cropped and resized to {size}x{size}")
    return np.asarray(rgb, dtype=np.uint8)


def _exif_transpose(im):
    """``ImageOps.exif_transpose``; an unreadable EXIF block leaves the image as it is."""
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(im)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, IndexError, struct.error, ZeroDivisionError):
        return im


def read_images(sources: Sequence[ImageSource], size: int, *, resize: bool = True,
                notify: Notify | None = None) -> np.ndarray:
    """All ``sources`` as one uint8 (N, size, size, 3) array."""
    return np.stack([read_image(s, size, resize=resize, notify=notify) for s in sources])


def to_rgb(im):
    """Any Pillow image as 8-bit RGB: 16-bit and float greys are scaled, alpha goes onto white."""
    from PIL import Image

    mode = im.mode
    if mode.startswith("I") or mode == "F":
        arr = np.nan_to_num(np.asarray(im).astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
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


MAX_STEM_BYTES = 180  # a name's stem, so that index, suffix and temporary-file affixes stay under 255 bytes


class NumberedNames(Sequence[str]):
    """``prefix_00000.png``, ``prefix_00001.png``...: zero-padded so they sort in order. Computed
    when asked for, so ``sample -n 1000000000000 -o dir/`` does not build a trillion strings."""

    def __init__(self, prefix: str, count: int):
        self.prefix, self.size = _safe(prefix), count  # (not .count: that is Sequence.count(value))
        self.width = max(5, len(str(count - 1)))
        self._pattern = re.compile(re.escape(self.prefix) + r"_(\d{%d,})\.png" % self.width)

    def __len__(self) -> int:
        return self.size

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.size))]
        if not -self.size <= i < self.size:
            raise IndexError(i)
        return f"{self.prefix}_{i % self.size:0{self.width}d}.png"

    def count(self, value: object) -> int:
        """How often ``value`` is one of the names: 0 or 1, found without listing them."""
        return int(isinstance(value, str) and self.index_of(value) is not None)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, NumberedNames):
            return (self.prefix, self.size) == (other.prefix, other.size)
        if isinstance(other, (list, tuple)):
            return len(other) == self.size and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # unhashable, as a list (typeshed declares __hash__ a method)

    def index_of(self, name: str) -> int | None:
        m = self._pattern.fullmatch(name)
        if not m or (len(m.group(1)) > self.width and m.group(1).startswith("0")):
            return None
        i = int(m.group(1))
        return i if i < self.size else None


def numbered_names(prefix: str, count: int) -> NumberedNames:
    """``prefix_00000.png``, ``prefix_00001.png``... (see :class:`NumberedNames`)."""
    return NumberedNames(prefix, count)


def derived_names(stems: Sequence[str], suffix: str) -> list[str]:
    """``stem_suffix.png`` per input; when those names would repeat or would not sort in input
    order, every name gets a zero-padded index in front (``00003_stem_suffix.png``). Stems are made
    safe for a file name (no separators or control characters) and short enough for any file system."""
    names = [f"{_safe(s)}_{suffix}.png" for s in stems]
    if len(set(names)) == len(names) and names == sorted(names):
        return names
    width = max(5, len(str(len(names) - 1)))
    return [f"{i:0{width}d}_{n}" for i, n in enumerate(names)]


def _safe(stem: str) -> str:
    text = "".join(ch if ch.isprintable() and ch not in '/\\:*?"<>|' else "_" for ch in stem) or "image"
    data = text.encode("utf-8", "replace")
    if len(data) > MAX_STEM_BYTES:
        text = data[:MAX_STEM_BYTES].decode("utf-8", "ignore")
    return text


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
        self.kind, self.target = kind, target
        self.names = names if isinstance(names, NumberedNames) else list(names)
        self.existing = existing  # indices whose output an earlier run wrote (kept with skip_existing)
        self.grid, self.force, self.stdout, self.fmt = grid, force, stdout, fmt
        self._held: dict[int, np.ndarray] = {}
        self._beside: Callable[[int], Sequence[np.ndarray]] | None = None
        self._lead: list[np.ndarray] = []
        self._group = 1
        self._per_output = 1  # tiles per output image in a grid (itself and what ``beside`` gives)
        self._caption = "{n} image{s}"

    def show_beside(self, beside: Callable[[int], Sequence[np.ndarray]] | None = None,
                    lead: Sequence[np.ndarray] = (), group: int = 1, *, per_output: int = 1,
                    caption: str = "{n} image{s}") -> None:
        """For a grid: tile ``beside(i)`` (e.g. image i's input) just before output ``i``, so each
        output sits next to what it came from, and ``lead`` images (e.g. mix's A) first. With
        ``group`` > 1, outputs ``g * group`` to ``g * group + group - 1`` share one ``beside`` and
        make one row of the grid (e.g. several solutions for one input). ``per_output`` is the tiles
        one output and its ``beside`` take, and ``caption`` says what the grid holds for
        :meth:`describe` (``{n}``: the outputs, ``{s}``: a plural s)."""
        self._beside, self._lead, self._group = beside, list(lead), max(1, group)
        self._per_output, self._caption = per_output, caption

    def describe(self, made: int) -> str:
        """What a run that made ``made`` images wrote, for its closing message: ``3 images to out/``,
        ``a grid of 3 input/reconstruction pairs (6 tiles) to g.png``, ``1 image to stdout``."""
        where = "stdout" if self.kind == "stdout" else self.label
        if not self.grid:
            return f"{made} image{'s' if made != 1 else ''} to {where}"
        groups = math.ceil(made / self._group)
        tiles = len(self._lead) + made + groups * (self._per_output - 1)
        what = self._caption.format(n=made, s="s" if made != 1 else "")
        return f"a grid of {what}{f' ({tiles} tiles)' if tiles != made else ''} to {where}"

    def check_size(self, image_size: int) -> None:
        """Refuse, before any work, a grid or single image too large to hold and encode."""
        if self.grid:
            n = len(self.names)
            cols = math.ceil(math.sqrt(n))
            pixels = (cols * (image_size + 2) + 2) * (math.ceil(n / cols) * (image_size + 2) + 2)
            if pixels > MAX_GRID_PIXELS:
                raise UsageError(f"a grid of {n} images of {image_size}x{image_size} would have {pixels:,} pixels "
                                 f"(at most {MAX_GRID_PIXELS:,})",
                                 hint="write a folder instead (-o DIR/), or fewer images")

    @property
    def label(self) -> str:
        if self.kind == "stdout":
            return "-"
        return f"{self.target}{os.sep}" if self.kind == "dir" else str(self.target)

    def _path(self) -> Path:
        """The folder (kind "dir") or file (kind "file") written to; stdout has none."""
        assert self.target is not None, f"an ImageWriter of kind {self.kind!r} has no path"
        return self.target

    def path_of(self, index: int) -> str:
        if self.kind == "dir":
            return str(self._path() / self.names[index])
        return self.label

    def write(self, indices: Sequence[int], images: Sequence[np.ndarray]) -> list[tuple[int, str]]:
        if self.grid or self.kind == "file":
            self._held.update((int(i), np.asarray(img)) for i, img in zip(indices, images))
            return []
        done = []
        if self.kind == "dir":
            _make_dir(self._path())
        for i, img in zip(indices, images):
            if self.kind == "dir":
                _write_file(self._path() / self.names[i], encode_image(img), force=self.force)
            else:
                self._emit(encode_image(img))
            done.append((int(i), self.path_of(int(i))))
        return done

    def finish(self) -> list[tuple[int, str]]:
        if not self._held:
            return []
        order = sorted(self._held)
        data = self._encode_held(order, [self._held[i] for i in order])
        if self.kind == "stdout":
            self._emit(data)
        else:
            _write_file(self._path(), data, force=self.force)
        self._held.clear()
        return [(i, self.label) for i in order]

    def _encode_held(self, order: list[int], images: list["np.ndarray"]) -> bytes:
        """The one file the held images make: the grid (inputs beside outputs where shown), or the
        single image."""
        if self.grid and self._beside is not None and self._group > 1:
            rows: dict[int, list[np.ndarray]] = {}
            for i, img in zip(order, images):
                rows.setdefault(i // self._group, [*self._beside(i)]).append(img)
            width = max(len(r) for r in rows.values())
            blank = np.zeros_like(images[0])
            tiles = [t for r in rows.values() for t in r + [blank] * (width - len(r))]
            image = make_grid(self._lead + tiles, columns=width)
        elif self.grid and self._beside is not None:
            groups = [[*self._beside(i), img] for i, img in zip(order, images)]
            per_row = math.ceil(math.sqrt(len(groups)))
            image = make_grid(self._lead + [t for g in groups for t in g], columns=per_row * len(groups[0]))
        else:
            image = make_grid(self._lead + images) if self.grid else images[0]
        return encode_image(image, self.fmt)

    def _emit(self, data: bytes) -> None:
        if self.stdout is None:
            raise OutputError("cannot write to stdout: it is closed")
        try:
            self.stdout.write(data)
            self.stdout.flush()
        except BrokenPipeError:
            raise
        except (OSError, ValueError) as exc:
            from .safety import stdout_failed

            raise stdout_failed(exc) from None


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
        if stdout is None or getattr(stdout, "closed_stream", False):
            raise OutputError("cannot write to stdout: it is closed",
                              hint="redirect stdout to a file, or write to a file with -o")
        return ImageWriter("stdout", None, names, grid=grid, force=force, stdout=stdout)
    path = Path(output)
    if output.endswith(("/", os.sep)) or path.is_dir():
        if grid:
            raise UsageError(f"--grid makes one image, but -o {output} is a folder",
                             hint="give a file name, e.g. -o grid.png")
        _check_dir(path)
        existing: frozenset[int] = frozenset()
        if path.is_dir():
            if skip_existing:
                existing = _existing_indices(path, names)
            elif not force:
                _check_existing(path, names)
        return ImageWriter("dir", path, names, grid=False, force=force, stdout=None, existing=existing)
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


def _present(folder: Path, names: Sequence[str]) -> dict[str, int]:
    """Which of ``names`` are files in ``folder`` already (name -> index): one listing of the folder,
    so a lazy list of a trillion names costs no more than the folder's own size."""
    try:
        with os.scandir(folder) as entries:
            present = sorted(e.name for e in entries if e.is_file())
    except OSError as exc:
        raise OutputError(f"cannot read folder {clean(folder)}: {exc.strerror or exc}") from None
    if isinstance(names, NumberedNames):
        found = ((n, names.index_of(n)) for n in present)
    else:
        index = {n: i for i, n in enumerate(names)}
        found = ((n, index.get(n)) for n in present)
    return {n: i for n, i in found if i is not None}


def _check_existing(folder: Path, names: Sequence[str]) -> None:
    """Fail now if one of ``names`` already exists in ``folder``."""
    clash = next(iter(_present(folder, names)), None)
    if clash is not None:
        raise OutputError(f"{clean(folder / clash)} already exists", hint="pass --force to overwrite it")


def _existing_indices(folder: Path, names: Sequence[str]) -> frozenset[int]:
    """``--skip-existing``: the indices whose file an earlier run already wrote."""
    return frozenset(_present(folder, names).values())


def check_output_file(path: Path, force: bool) -> None:
    """Fail now if ``path`` exists (without ``force``) or cannot be written."""
    label = clean(path)
    if len(os.fsencode(path.name)) > 255:
        raise OutputError(f"cannot write {label}: File name too long", hint="choose a shorter name")
    try:
        if path.is_dir():
            raise OutputError(f"{label} is a folder", hint="give a file name, or end the name with / to write into it")
        if path.exists() and not force:
            raise OutputError(f"{label} already exists", hint="pass --force to overwrite it")
        parent = path.parent
        if not parent.is_dir():
            what = "is not a folder" if parent.exists() else "does not exist"
            raise OutputError(f"cannot write {label}: {clean(parent)} {what}",
                              hint="create the folder first, or end -o with / to write into a new folder")
    except OSError as exc:
        raise OutputError(f"cannot write {label}: {exc.strerror or exc}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {label}: folder {clean(parent)} is not writable")


def _check_dir(path: Path) -> None:
    existing = path
    try:
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
    except OSError as exc:
        raise OutputError(f"cannot make folder {clean(path)}: {exc.strerror or exc}") from None
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
    from .atomic import atomic_write_bytes

    atomic_write_bytes(path, data, force=force)
