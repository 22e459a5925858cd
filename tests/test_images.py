"""Reading images (paths, folders, stdin, every mode, resizing) and writing them (file, folder,
stdout, grid) atomically and without clobbering."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vdvae_cli.base.errors import ImageError, OutputError, UsageError
from vdvae_cli.base.images import ImageSource, collect_images, derived_names, encode_image, make_grid, numbered_names, plan_output, read_image, split_png_stream


def png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG") if mode else Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def rgb(seed: int, h: int = 32, w: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def source(data: bytes, name: str = "x.png") -> ImageSource:
    return ImageSource(name, Path(name).stem, data=data)


# --------------------------------------------------------------------------------------------------
# Collecting inputs


def test_collect_expands_folders_sorted_and_skips_non_images(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    for name in ["b.png", "a.JPG", "c.txt", ".hidden.png", "10.png", "2.png"]:
        (d / name).write_bytes(b"x")
    (d / "sub").mkdir()
    (d / "sub" / "deep.png").write_bytes(b"x")
    single = tmp_path / "z.png"
    single.write_bytes(b"x")
    sources = collect_images([str(single), str(d)])
    assert [s.name for s in sources] == [str(single)] + [str(d / n) for n in ["10.png", "2.png", "a.JPG", "b.png"]]
    assert [s.stem for s in sources] == ["z", "10", "2", "a", "b"]


def test_collect_errors(tmp_path):
    with pytest.raises(ImageError, match="no such file: nope.png"):
        collect_images(["nope.png"])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hi")
    with pytest.raises(ImageError, match="holds no images"):
        collect_images([str(empty)])
    with pytest.raises(UsageError, match="more than once"):
        collect_images(["-", "-"], stdin=io.BytesIO(b"x"))
    with pytest.raises(UsageError, match="terminal"):
        collect_images(["-"], stdin=io.BytesIO(b"x"), stdin_is_tty=True)
    with pytest.raises(ImageError, match="empty"):
        collect_images(["-"], stdin=io.BytesIO(b""))


def test_stdin_single_image_and_png_stream():
    one = png_bytes(rgb(1))
    sources = collect_images(["-"], stdin=io.BytesIO(one))
    assert [(s.name, s.stem) for s in sources] == [("stdin", "stdin")]
    three = [png_bytes(rgb(i)) for i in range(3)]
    sources = collect_images(["-"], stdin=io.BytesIO(b"".join(three)))
    assert [s.name for s in sources] == ["stdin_00000", "stdin_00001", "stdin_00002"]
    assert [s.data for s in sources] == three
    for i, s in enumerate(sources):
        np.testing.assert_array_equal(read_image(s, 32), rgb(i))


def test_split_png_stream_edge_cases():
    a, b = png_bytes(rgb(1)), png_bytes(rgb(2))
    assert split_png_stream(b"\xff\xd8jpeg-ish") == [b"\xff\xd8jpeg-ish"]
    truncated = split_png_stream(a + b[:40])
    assert truncated == [a, b[:40]]
    with pytest.raises(ImageError, match="unexpected bytes after PNG image 1"):
        split_png_stream(a + b"garbage")


# --------------------------------------------------------------------------------------------------
# Decoding: modes, sizes


def test_modes_become_rgb():
    grey = np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)
    out = read_image(source(png_bytes(grey)), 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=2))

    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:16, :, 3] = 255  # top half opaque red-ish, bottom half transparent
    out = read_image(source(png_bytes(rgba)), 32)
    assert (out[:16] == [200, 0, 0]).all()
    assert (out[16:] == [255, 255, 255]).all()  # transparency composited onto white

    pal = Image.fromarray(rgb(3)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    buf = io.BytesIO()
    pal.save(buf, format="PNG")
    np.testing.assert_array_equal(read_image(source(buf.getvalue()), 32), np.asarray(pal.convert("RGB")))

    cmyk = Image.fromarray(rgb(4)).convert("CMYK")
    buf = io.BytesIO()
    cmyk.save(buf, format="JPEG")
    assert read_image(source(buf.getvalue(), "c.jpg"), 32).shape == (32, 32, 3)


def test_sixteen_bit_grey_is_scaled_not_clipped():
    values = np.full((32, 32), 0, dtype=np.uint16)
    values[:, 16:] = 65535
    values[0, 0] = 32896  # 128 * 257
    out = read_image(source(png_bytes(values)), 32)
    assert out[0, 0, 0] == 128
    assert (out[:, 16:] == 255).all() and out[1, 0, 0] == 0


def test_resize_centre_crops_and_says_so():
    wide = np.zeros((40, 80, 3), dtype=np.uint8)
    wide[:, 20:60] = 255  # the centre square is white, the sides black
    notes = []
    out = read_image(source(png_bytes(wide), "wide.png"), 32, notify=notes.append)
    assert out.shape == (32, 32, 3)
    assert (out == 255).all()
    assert notes == ["wide.png: 80x40 centre-cropped and resized to 32x32"]
    notes.clear()
    read_image(source(png_bytes(rgb(0)), "fits.png"), 32, notify=notes.append)
    assert notes == []


def test_no_resize_refuses_other_sizes():
    with pytest.raises(ImageError, match="is 64x48, the model takes 32x32"):
        read_image(source(png_bytes(rgb(0, 48, 64)), "big.png"), 32, resize=False)


def test_exif_orientation_is_applied():
    arr = np.zeros((32, 64, 3), dtype=np.uint8)  # stored landscape
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    buf = io.BytesIO()
    im.save(buf, format="JPEG", exif=exif)
    assert read_image(source(buf.getvalue(), "r.jpg"), None).shape == (64, 32, 3)


@pytest.mark.parametrize(
    "data, match",
    [
        (b"not an image at all", "not an image"),
        (b"", "empty"),
    ],
)
def test_undecodable(data, match):
    with pytest.raises(ImageError, match=match):
        read_image(source(data, "bad.png"), 32)


def test_truncated_and_corrupt_png():
    good = png_bytes(rgb(5))
    with pytest.raises(ImageError, match="bad.png is corrupt or truncated"):
        read_image(source(good[: len(good) // 2], "bad.png"), 32)
    broken = bytearray(good)
    idat = broken.index(b"IDAT")
    broken[idat + 8: idat + 40] = bytes(32)
    with pytest.raises(ImageError, match="corrupt or truncated"):
        read_image(source(bytes(broken), "bad.png"), 32)


# --------------------------------------------------------------------------------------------------
# Names and grids


def test_numbered_names_sort_in_order():
    names = numbered_names("sample", 12)
    assert names[0] == "sample_00000.png" and names[11] == "sample_00011.png"
    assert names == sorted(names)
    assert numbered_names("s", 123456)[-1] == "s_123455.png"


def test_numbered_names_are_a_sequence_of_str():
    """Its length once lived in ``.count``, hiding ``Sequence.count(value)`` (calling it raised TypeError)."""
    names = numbered_names("sample", 10**12)
    assert names.count("sample_000000000007.png") == 1 and names.count("sample_7.png") == 0
    assert names.count(7) == 0 and len(names) == 10**12
    assert names[2:5] == ["sample_000000000002.png", "sample_000000000003.png", "sample_000000000004.png"]


def test_derived_names_keep_stems_when_they_sort():
    assert derived_names(["a", "b", "c"], "recon") == ["a_recon.png", "b_recon.png", "c_recon.png"]
    out = derived_names(["c", "a"], "recon")
    assert out == ["00000_c_recon.png", "00001_a_recon.png"]
    dup = derived_names(["x", "x"], "recon")
    assert len(set(dup)) == 2 and dup == sorted(dup)
    # "a" < "a_b" but "a_b_recon.png" < "a_recon.png": names are checked, not stems
    assert derived_names(["a", "a_b"], "recon")[0].startswith("00000_")
    assert derived_names(["we/ird:"], "recon") == ["we_ird__recon.png"]


def test_make_grid_layout():
    imgs = [np.full((4, 6, 3), i * 40, dtype=np.uint8) for i in range(5)]
    grid = make_grid(imgs, pad=1)
    assert grid.shape == (3 * 1 + 2 * 4, 4 * 1 + 3 * 6, 3)  # 3 columns, 2 rows
    assert (grid[1:5, 1:7] == 0).all() and (grid[1:5, 8:14] == 40).all()
    assert (grid[6:10, 8:14] == 160).all()  # image 4: row 1, column 1
    assert (grid[6:10, 15:21] == 0).all() and (grid[0] == 0).all()


# --------------------------------------------------------------------------------------------------
# Output plans and writing


def test_plan_single_file(tmp_path):
    target = tmp_path / "one.png"
    writer = plan_output(str(target), ["a.png"])
    assert writer.write([0], [rgb(1)]) == []  # held until finish
    assert not target.exists()
    assert writer.finish() == [(0, str(target))]
    np.testing.assert_array_equal(decode(target.read_bytes()), rgb(1))
    assert os.listdir(tmp_path) == ["one.png"]  # no temporary file left behind


def test_plan_file_refusals(tmp_path):
    existing = tmp_path / "x.png"
    existing.write_bytes(b"keep me")
    with pytest.raises(OutputError, match="already exists"):
        plan_output(str(existing), ["a"])
    plan_output(str(existing), ["a"], force=True)  # allowed with force
    with pytest.raises(UsageError, match="3 images but -o"):
        plan_output(str(tmp_path / "y.png"), ["a", "b", "c"])
    with pytest.raises(OutputError, match="does not exist"):
        plan_output(str(tmp_path / "missing" / "y.png"), ["a"])
    with pytest.raises(OutputError, match="not a folder"):
        plan_output(str(existing / "y.png"), ["a"])
    with pytest.raises(UsageError, match="format"):
        plan_output(str(tmp_path / "y.xyz"), ["a"])
    with pytest.raises(UsageError, match="--grid makes one image"):
        plan_output(str(tmp_path) + "/", ["a", "b"], grid=True)
    assert existing.read_bytes() == b"keep me"


def test_plan_grid_and_jpeg(tmp_path):
    writer = plan_output(str(tmp_path / "g.jpg"), ["a", "b", "c", "d"], grid=True)
    writer.write([0, 1], [rgb(0), rgb(1)])
    writer.write([2, 3], [rgb(2), rgb(3)])
    assert [i for i, _ in writer.finish()] == [0, 1, 2, 3]
    with Image.open(tmp_path / "g.jpg") as im:
        assert im.format == "JPEG" and im.size == (2 * 32 + 3 * 2, 2 * 32 + 3 * 2)


def test_plan_dir_writes_as_it_goes(tmp_path):
    out = tmp_path / "new" / "deeper"
    names = numbered_names("sample", 3)
    writer = plan_output(str(out) + "/", names)
    assert not out.exists()  # created on first write
    assert writer.write([0, 1], [rgb(0), rgb(1)]) == [(0, str(out / names[0])), (1, str(out / names[1]))]
    assert writer.write([2], [rgb(2)]) == [(2, str(out / names[2]))]
    assert writer.finish() == []
    assert sorted(os.listdir(out)) == names
    np.testing.assert_array_equal(decode((out / names[2]).read_bytes()), rgb(2))
    # an existing folder is a folder even without the trailing slash; its clashing files are refused
    with pytest.raises(OutputError, match="sample_00000.png already exists"):
        plan_output(str(out), names)
    plan_output(str(out), numbered_names("other", 3))


def test_plan_stdout(tmp_path):
    sink = io.BytesIO()
    writer = plan_output("-", ["a", "b"], stdout=sink)
    writer.write([0, 1], [rgb(0), rgb(1)])
    assert writer.finish() == []
    pieces = split_png_stream(sink.getvalue())
    assert len(pieces) == 2
    np.testing.assert_array_equal(decode(pieces[1]), rgb(1))
    sink = io.BytesIO()
    writer = plan_output(None, ["a", "b"], grid=True, stdout=sink)  # no -o, stdout not a terminal
    writer.write([0, 1], [rgb(0), rgb(1)])
    writer.finish()
    assert decode(sink.getvalue()).shape == (36, 70, 3)


def test_never_binary_to_a_terminal():
    sink = io.BytesIO()
    with pytest.raises(OutputError, match="terminal"):
        plan_output("-", ["a"], stdout=sink, stdout_is_tty=True)
    with pytest.raises(UsageError, match="stdout is a terminal"):
        plan_output(None, ["a"], stdout=sink, stdout_is_tty=True)
    with pytest.raises(UsageError, match="--json"):
        plan_output("-", ["a"], stdout=sink, json_out=True)
    with pytest.raises(UsageError, match="--json"):
        plan_output(None, ["a"], stdout=sink, json_out=True)
    assert sink.getvalue() == b""


def test_encode_image_roundtrip():
    assert decode(encode_image(rgb(9))).tolist() == rgb(9).tolist()
