"""Hostile files and broken networks: every case runs the real CLI in a child process under an
address-space, CPU-time and wall-clock limit (``resource.setrlimit`` in the child, see
``forkserver.py``), and must end the way a person expects: the right exit code, exactly one
``error:`` line on stderr (no traceback, no library warnings, no log lines on stdout), no temporary
file left anywhere, nothing kept in a cache that failed verification, and for the memory cases a
bounded peak.

The cases follow issue 11's ten failure classes (and keep the defences that already held: pickles
never run code, nothing is overwritten without --force, concurrent downloads are refused).
``test_readme_counts_the_cases`` keeps the README's count honest.
"""

from __future__ import annotations

import fcntl
import gzip
import json
import os
import re
import signal
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from forkserver import ForkServer, Result
from httpserver import LocalServer
from PIL import Image

from vdvae_cli.modelfiles import catalog, transfer, fetch, paths
from vdvae_cli.modelfiles.header import expected_shapes
from vdvae_cli.families.vdvae.config import VDVAEConfig, config_from_reference

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "data" / "golden"
CIFAR_TH = "/assets/vdvae-assets-2/cifar10-seed0-iter-900000-model-ema.th"
FFHQ1024_LOG = "/assets/vdvae-assets/ffhq1024-iter-1700000-log.jsonl"
GB = 1 << 30

# --------------------------------------------------------------------------------------------------
# Building hostile files


def _split(blob: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def _join(header: dict | str | bytes, data: bytes) -> bytes:
    text = header if isinstance(header, (str, bytes)) else json.dumps(header)
    raw = text.encode() if isinstance(text, str) else text
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def edit_header(src: Path, dst: Path, edit: Callable[[dict], Any]) -> Path:
    header, data = _split(src.read_bytes())
    new = edit(header)
    dst.write_bytes(_join(new if isinstance(new, (str, bytes)) else header, data))
    return dst


def edit_config(src: Path, dst: Path, **changes: Any) -> Path:
    def edit(header: dict) -> None:
        cfg = json.loads(header["__metadata__"]["vdvae_config"])
        cfg.update(changes)
        header["__metadata__"]["vdvae_config"] = json.dumps(cfg)

    return edit_header(src, dst, edit)


def model_file(cfg: VDVAEConfig, path: Path, *, fill: Callable[[str, torch.Tensor], None] | None = None,
               name: str | None = None) -> Path:
    """A checkpoint of ``cfg`` with small random weights (``fill(key, tensor)`` may change one)."""
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=g) * 0.05 for k, shape in expected_shapes(cfg).items()}
    if fill is not None:
        for k, t in state.items():
            fill(k, t)
    from safetensors.torch import save

    meta = {"format": "vdvae-cli", "format_version": "1", "vdvae_config": cfg.replace(name=name or cfg.name).to_json()}
    path.write_bytes(save({k: v.contiguous() for k, v in state.items()}, metadata=meta))
    return path


def retype_tensor(src: Path, dst: Path, key: str, dtype: str) -> Path:
    """Relabel tensor ``key`` as ``dtype`` (same byte size, so the offsets stay consistent)."""
    def edit(header: dict) -> None:
        header[key]["dtype"] = dtype
        if dtype in ("BOOL", "U8", "I8", "F8_E4M3", "F8_E5M2"):  # 1-byte types: four times the elements
            header[key]["shape"] = [*header[key]["shape"][:-1], header[key]["shape"][-1] * 4]
        if dtype in ("I64", "C64", "F64"):  # 8-byte types: half the elements
            shape = header[key]["shape"]
            assert shape[0] % 2 == 0
            header[key]["shape"] = [shape[0] // 2, *shape[1:]]

    return edit_header(src, dst, edit)


def png_bomb(path: Path, side: int) -> Path:
    """A grey PNG of side x side zeros, compressed to almost nothing (built row by row)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = bytes(side + 1)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def png_with_text(path: Path, text_bytes: int) -> Path:
    """A valid 32x32 PNG with a zTXt chunk that inflates to ``text_bytes``."""
    from PIL import PngImagePlugin

    im = Image.new("RGB", (32, 32))
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "A" * text_bytes, zip=True)
    PngImagePlugin.MAX_TEXT_CHUNK = 1 << 62
    try:
        im.save(path, pnginfo=info)
    finally:
        PngImagePlugin.MAX_TEXT_CHUNK = 1 << 20
    return path


def tiff_header_lie(path: Path, side: int) -> Path:
    """A small float TIFF whose header says side x side (patched ImageWidth/ImageLength)."""
    Image.fromarray(np.zeros((8, 8), np.float32), mode="F").save(path, compression="tiff_deflate")
    data = bytearray(path.read_bytes())
    endian = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(endian + "I", data[4:8])
    (count,) = struct.unpack(endian + "H", data[ifd:ifd + 2])
    for i in range(count):
        at = ifd + 2 + 12 * i
        tag, kind = struct.unpack(endian + "HH", data[at:at + 4])
        if tag in (256, 257):
            if kind == 3:
                data[at + 8:at + 10] = struct.pack(endian + "H", side)
            else:
                data[at + 8:at + 12] = struct.pack(endian + "I", side)
    path.write_bytes(bytes(data))
    return path


def npy_lie(path: Path, shape: tuple[int, ...]) -> Path:
    """A 1 kB .npy whose header claims ``shape`` uint8."""
    header = "{'descr': '|u1', 'fortran_order': False, 'shape': %r, }" % (shape,)
    header += " " * (-(len(header) + 11) % 64) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + bytes(1000))
    return path


class _Evil:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


# --------------------------------------------------------------------------------------------------
# The scene: every hostile input, made once


TINY8 = {
    "name": "tiny8", "dataset": "synthetic", "image_size": 8, "width": 16, "zdim": 4, "num_mixtures": 2,
    "enc_blocks": "8x1,8d2,4x1,4d4,1x1", "dec_blocks": "1x1,4m1,4x1,8m4,8x1",
    "preprocessing": {"shift": -127.5, "scale": 1 / 64.0},
}


@pytest.fixture(scope="module")
def s(tmp_path_factory, tiny_ckpt, golden_cfg, golden_state):
    d = tmp_path_factory.mktemp("hostile")
    x = type("Scene", (), {})()
    x.dir = d
    x.ckpt = tiny_ckpt
    x.good = d / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(x.good)

    # 1. configs that ask for too much, or do not match their tensors
    edit_config(tiny_ckpt, d / "blocks-100k.safetensors", dec_blocks="1x100000")
    edit_config(tiny_ckpt, d / "blocks-1e12.safetensors", dec_blocks="1x1000000000000")
    edit_config(tiny_ckpt, d / "size-16384.safetensors", image_size=16384)
    edit_config(tiny_ckpt, d / "size-4096-mismatch.safetensors", image_size=4096,
                enc_blocks="4096x1,4096d128,32x2,32d2,16,16x1,16d2,8x2,8d2,4x2,4d4,1x2",
                dec_blocks="1x2,4m1,4x2,8m4,8x2,16m8,16x2,32m16,32x1,4096m32")
    edit_config(tiny_ckpt, d / "dec-mismatch.safetensors", dec_blocks="1x2,4m1,4x2,8m4,8x2,16m8,16x2,32m16,32x40")
    big = VDVAEConfig(image_size=4096, width=16, zdim=4, num_mixtures=2, enc_blocks="4096x1,4096d64,64x1,64d64,1x1",
                      dec_blocks="1x1,64m1,64x1,4096m64", no_bias_above=64, name="huge-activations")
    model_file(big, d / "huge-activations.safetensors")
    # 2, 9. a name that colours the terminal and forges an error line
    edit_config(tiny_ckpt, d / "escape.safetensors", name="tiny\x1b[31mRED\x1b[0m\nerror: fake")
    # 5. non-finite weights, and weights whose activations overflow
    def nan(k, t):
        if k == "decoder.out_net.out_conv.bias":
            t[3] = float("nan")

    def inf(k, t):
        if k == "encoder.in_conv.weight":
            t[0, 0, 0, 0] = float("inf")

    def overflow(k, t):
        if k == "decoder.gain":
            t.fill_(3e38)

    model_file(golden_cfg, d / "nan.safetensors", fill=nan)
    model_file(golden_cfg, d / "inf.safetensors", fill=inf)
    model_file(golden_cfg, d / "overflow.safetensors", fill=overflow)
    # 6. headers and configs of the wrong shape or type
    edit_header(tiny_ckpt, d / "no-offsets.safetensors", lambda h: h["encoder.in_conv.bias"].pop("data_offsets"))
    edit_header(tiny_ckpt, d / "float-offsets.safetensors",
                lambda h: h["encoder.in_conv.bias"].__setitem__("data_offsets", [0.5, 64]))
    edit_header(tiny_ckpt, d / "meta-list.safetensors", lambda h: h.__setitem__("__metadata__", ["a", "b"]))
    edit_header(tiny_ckpt, d / "meta-nested.safetensors",
                lambda h: h["__metadata__"].__setitem__("vdvae_config", "[" * 5000 + "]" * 5000))
    edit_config(tiny_ckpt, d / "width-int.safetensors", custom_width_str=16)
    edit_config(tiny_ckpt, d / "pixel-str.safetensors", pixel_scale="1.0")
    edit_config(tiny_ckpt, d / "name-list.safetensors", name=["tiny"])
    # 10. tensors that are not floating point, and duplicate names
    retype_tensor(tiny_ckpt, d / "bool.safetensors", "decoder.gain", "BOOL")
    retype_tensor(tiny_ckpt, d / "int64.safetensors", "encoder.in_conv.weight", "I64")
    retype_tensor(tiny_ckpt, d / "float8.safetensors", "decoder.bias", "F8_E4M3")
    retype_tensor(tiny_ckpt, d / "complex.safetensors", "encoder.in_conv.weight", "C64")

    def duplicate(header: dict) -> str:
        text = json.dumps(header)
        entry = json.dumps(header["decoder.gain"])
        return text[:-1] + f', "decoder.gain": {entry}}}'

    edit_header(tiny_ckpt, d / "duplicate.safetensors", duplicate)
    # latents: good, NaN, int64, long names
    from vdvae_cli.engine.statedict import weights_digest
    from vdvae_cli.engine.latents import latents_bytes

    digest = weights_digest(golden_state)
    g = torch.Generator().manual_seed(1)
    layers = [torch.randn(1, *shape, generator=g) for shape in golden_cfg.latent_shapes]
    cfg_t = golden_cfg.replace(name="tiny")
    (d / "lat.safetensors").write_bytes(latents_bytes(layers, cfg_t, ["a.png"], weights=digest))
    bad = [z.clone() for z in layers]
    bad[3][0, 0, 0, 0] = float("nan")
    (d / "lat-nan.safetensors").write_bytes(latents_bytes(bad, cfg_t, ["a.png"], weights=digest))
    (d / "lat-longnames.safetensors").write_bytes(latents_bytes(layers, cfg_t, ["x" * 400 + ".png"], weights=digest))
    blob = (d / "lat.safetensors").read_bytes()
    header, data = _split(blob)
    header["layer.00"]["dtype"] = "I64"
    header["layer.00"]["shape"] = [1, 2, 1, 1]
    (d / "lat-int64.safetensors").write_bytes(_join(header, data))
    header, data = _split(blob)
    header["__metadata__"]["image_names"] = "[" * 3000 + "]" * 3000
    (d / "lat-nested-names.safetensors").write_bytes(_join(header, data))
    # 3. images and arrays that are small on disk and huge in memory
    png_bomb(d / "bomb.png", 12000)
    tiff_header_lie(d / "lie.tif", 13000)
    png_with_text(d / "text-bomb.png", 4 << 20)
    nanf = np.full((32, 32), np.nan, np.float32)
    nanf[::2] = np.inf
    Image.fromarray(nanf, mode="F").save(d / "nan-float.tif")
    npy_lie(d / "lie.npy", (100000, 256, 256, 3))
    import zipfile

    with zipfile.ZipFile(d / "lie.npz", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("images.npy", (d / "lie.npy").read_bytes())
    (d / "tiny8.json").write_text(json.dumps(TINY8))
    (d / "bombs").mkdir()
    png_bomb(d / "bombs" / "a.png", 12000)
    png_with_text(d / "bombs" / "b.png", 4 << 20)
    sparse = d / "zeros.bin"
    with open(sparse, "wb") as f:
        f.truncate(6 * GB)  # `head -c 6G /dev/zero`, without writing 6 GB
    with open(d / "png-then-zeros.bin", "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.truncate(2 * GB)
    (d / "many").mkdir()
    (d / "many" / "sample_000000005.png").write_bytes(b"precious")
    # 6. a hostile training state
    run = d / "run-list"
    run.mkdir()
    cfg8 = config_from_reference(TINY8, name="tiny8")
    from vdvae_cli.engine.recipe import TrainConfig

    (run / "run.json").write_text(json.dumps({"model_config": cfg8.to_dict(), "data": {"path": str(d / "a.npy")},
                                              "train_config": TrainConfig(steps=2, batch_size=8, holdout=4).to_dict()}))
    torch.save([1, 2, 3], run / "state.pt")
    run2 = d / "run-garbage"
    run2.mkdir()
    (run2 / "run.json").write_bytes((run / "run.json").read_bytes())
    (run2 / "state.pt").write_bytes(os.urandom(5000))
    imgs = np.random.default_rng(0).integers(0, 256, (24, 8, 8, 3), dtype=np.uint8)
    np.save(d / "a.npy", imgs)
    # the pickle that would run code
    x.pwned = d / "pwned"
    torch.save({"weight": _Evil(x.pwned)}, d / "evil.th")
    # unreadable things (permissions apply once the child drops CAP_DAC_OVERRIDE)
    (d / "locked.safetensors").write_bytes(tiny_ckpt.read_bytes())
    os.chmod(d / "locked.safetensors", 0)
    (d / "noexec").mkdir()
    Image.open(x.good).save(d / "noexec" / "a.png")
    os.chmod(d / "noexec", 0o600)
    (d / "readonly").mkdir()
    os.chmod(d / "readonly", 0o555)
    # non-UTF-8 and long file names
    (d / "names").mkdir()
    bad_name = os.fsdecode(b"bad\xff\x1b[31mname.png")
    Image.open(x.good).save(d / "names" / bad_name)
    x.existing = d / "existing.png"
    x.existing.write_bytes(b"precious bytes")
    yield x
    for p in (d / "noexec", d / "readonly", d / "locked.safetensors"):
        os.chmod(p, 0o755)


@pytest.fixture(scope="module")
def fs():
    with ForkServer() as server:
        yield server


# --------------------------------------------------------------------------------------------------
# The table


@dataclass
class Case:
    name: str
    argv: Callable[[Any, Path], list[str]]
    code: int
    text: str = ""  # in the error line (code != 0), or a check of its own
    stdin: Callable[[Any], Path | bytes] | None = None
    max_mb: float = 900.0  # peak resident memory of the child
    wall: float = 60.0
    no_dac: bool = False
    fsize: int | None = None
    stdout: str | None = None  # "closed", "full"
    stderr: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    check: Callable[[Result, Any, Path], None] | None = None
    server: Callable[[LocalServer, Any], None] | None = None  # a download case: set the server up
    address_space: int = 3 * GB


def M(name: str) -> Callable[[Any, Path], str]:
    return lambda s, w: str(s.dir / name)


def model(name: str, *rest: str) -> Callable[[Any, Path], list[str]]:
    return lambda s, w: [*rest, "--model", str(s.dir / name), *(["-o", str(w / "out.png")] if rest[0] != "info" else [])]


def _stdout_empty(r: Result, s: Any, w: Path) -> None:
    assert r.stdout == b"", r.stdout[:200]


def _is_png(r: Result, s: Any, w: Path) -> None:
    assert r.stdout.startswith(b"\x89PNG\r\n\x1a\n"), r.stdout[:40]
    assert b"model tiny" not in r.stdout and b"seed" not in r.stdout


def _strict_json_lines(r: Result, s: Any, w: Path) -> None:
    text = r.stdout.decode("utf-8")  # strict: raises on invalid UTF-8
    lines = text.splitlines()
    assert lines, "no JSON on stdout"
    for line in lines:
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def _eval_nulls(r: Result, s: Any, w: Path) -> None:
    _strict_json_lines(r, s, w)
    rows = [json.loads(line) for line in r.out.splitlines()]
    assert rows[0]["bits_per_dim"] is None and "not finite" in rows[0]["null_reason"]
    assert rows[-1]["type"] == "summary" and rows[-1]["null_reason"]


def _no_escapes(r: Result, s: Any, w: Path) -> None:
    for stream in (r.stdout, r.stderr):
        assert b"\x1b" not in stream
    assert not any(line.startswith(b"error: fake") for line in r.stdout.splitlines() + r.stderr.splitlines())
    assert "tiny\\x1b[31mRED" in r.out


def _json_names_escaped(r: Result, s: Any, w: Path) -> None:
    _strict_json_lines(r, s, w)
    row = json.loads(r.out.splitlines()[0])
    assert "\\xff" in row["input"] and b"\x1b" not in r.stdout  # JSON escapes the control character


def _not_pwned(r: Result, s: Any, w: Path) -> None:
    assert not s.pwned.exists(), "the pickle ran code"


def _untouched(r: Result, s: Any, w: Path) -> None:
    assert s.existing.read_bytes() == b"precious bytes"


def _many_untouched(r: Result, s: Any, w: Path) -> None:
    assert (s.dir / "many" / "sample_000000005.png").read_bytes() == b"precious"
    assert len(list((s.dir / "many").iterdir())) == 1


def _decoded_short_names(r: Result, s: Any, w: Path) -> None:
    names = [p.name for p in (w / "dec").iterdir()]
    assert len(names) == 1 and len(names[0].encode()) <= 255


def _cache_clean(r: Result, s: Any, w: Path) -> None:
    """Nothing that failed verification is kept: no converted file, no complete download."""
    cache = w / "cache"
    kept = [p for p in cache.rglob("*") if p.is_file() and not p.name.endswith((".part", ".part.json"))]
    assert kept == [], f"kept after a failed download: {kept}"


def _hub_clean(r: Result, s: Any, w: Path) -> None:
    blobs = [p for p in (w / "hf").rglob("*") if p.is_file() and "blobs" in p.parts]
    assert blobs == [], f"kept in the Hugging Face cache: {blobs}"


def _log_hostile(server: LocalServer, s: Any) -> None:
    server.put(FFHQ1024_LOG, ("[" * 100000 + "]" * 100000 + "\n").encode())


CASES: list[tuple[str, Case]] = [
    # 1. a small model file must not exhaust the machine
    ("1", Case("dec-blocks-100k-info", model("blocks-100k.safetensors", "info"), 1, "more than 2048 blocks", max_mb=600)),
    ("1", Case("dec-blocks-100k-sample", model("blocks-100k.safetensors", "sample"), 1, "more than 2048 blocks", max_mb=600)),
    ("1", Case("dec-blocks-1e12", model("blocks-1e12.safetensors", "info"), 1, "is not RxN", max_mb=600)),
    ("1", Case("image-size-16384", model("size-16384.safetensors", "sample"), 1, "image_size is 16384", max_mb=600)),
    ("1", Case("image-size-4096-mismatch", model("size-4096-mismatch.safetensors", "sample"), 1,
               "does not match its own config", max_mb=600)),
    ("1", Case("config-mismatch-info", model("dec-mismatch.safetensors", "info"), 1, "does not match its own config",
               max_mb=600)),
    ("1", Case("huge-activations-sample", model("huge-activations.safetensors", "sample"), 1,
               "of working memory per 4096x4096 image", max_mb=700)),
    ("1", Case("huge-activations-info", lambda s, w: ["info", "--model", str(s.dir / "huge-activations.safetensors")],
               0, max_mb=700)),
    ("1", Case("hostile-log-download", lambda s, w: ["download", "ffhq1024"], 1, "nested", server=_log_hostile,
               check=_cache_clean, max_mb=700)),
    # 2. messages never reach stdout, whatever the state of stderr
    ("2", Case("stderr-closed-png", lambda s, w: ["sample", "--seed", "1", "-o", "-"], 0, stderr="closed", check=_is_png)),
    ("2", Case("stderr-closed-json", lambda s, w: ["sample", "-n", "2", "--seed", "1", "--json", "-o", str(w / "o") + "/"],
               0, stderr="closed", check=_strict_json_lines)),
    ("2", Case("stderr-closed-error", lambda s, w: ["sample", "--temp", "x", "-o", "-"], 2, stderr="closed",
               check=_stdout_empty)),
    # 3. small inputs, huge memory
    ("3", Case("png-12000-bomb", lambda s, w: ["reconstruct", M("bomb.png")(s, w), "-o", str(w / "r.png")], 1,
               "too large to decode safely", max_mb=600)),
    ("3", Case("tiff-13000-float", lambda s, w: ["reconstruct", M("lie.tif")(s, w), "-o", str(w / "r.png")], 1,
               "too large to decode safely", max_mb=600)),
    ("3", Case("png-text-bomb", lambda s, w: ["eval", M("text-bomb.png")(s, w)], 1, "corrupt or truncated", max_mb=600)),
    ("3", Case("stdin-6g-zeros", lambda s, w: ["reconstruct", "-", "-o", str(w / "r.png")], 1, "does not start like an image",
               stdin=lambda s: s.dir / "zeros.bin", max_mb=600, wall=30)),
    ("3", Case("stdin-2g-png-stream", lambda s, w: ["reconstruct", "-", "-o", str(w / "r/")], 1, "more than 1.1 GB",
               stdin=lambda s: s.dir / "png-then-zeros.bin", max_mb=1600, address_space=5 * GB, wall=60)),
    ("3", Case("stdin-6g-latents", lambda s, w: ["decode", "-", "-o", str(w / "d/")], 1, "does not start like a safetensors",
               stdin=lambda s: s.dir / "zeros.bin", max_mb=600, wall=30)),
    ("3", Case("sample-1e9-grid", lambda s, w: ["sample", "-n", str(10**9), "--grid", "-o", str(w / "g.png")], 2,
               "would have", max_mb=600, wall=30)),
    ("3", Case("sample-1e9-dir-exists", lambda s, w: ["sample", "-n", str(10**9), "-o", str(s.dir / "many") + "/"], 1,
               "sample_000000005.png already exists", max_mb=600, wall=30, check=_many_untouched)),
    ("3", Case("npy-lying-header", lambda s, w: ["train", M("lie.npy")(s, w), "--hparams", M("tiny8.json")(s, w),
                                                 "-o", str(w / "run")], 1, "header describes", max_mb=600)),
    ("3", Case("npz-lying-header", lambda s, w: ["train", M("lie.npz")(s, w), "--hparams", M("tiny8.json")(s, w),
                                                 "-o", str(w / "run")], 1, "header describes", max_mb=600)),
    # 5. NaN and infinity never pass silently
    ("5", Case("nan-weights", model("nan.safetensors", "sample"), 1, "'decoder.out_net.out_conv.bias' holds 1 NaN")),
    ("5", Case("inf-weights", model("inf.safetensors", "sample"), 1, "'encoder.in_conv.weight' holds 1 infinite")),
    ("5", Case("overflowing-weights-sample", model("overflow.safetensors", "sample"), 1, "is not finite")),
    ("5", Case("overflowing-weights-eval-json", lambda s, w: ["eval", str(s.good), "--json", "--seed", "0", "--model",
                                                               str(s.dir / "overflow.safetensors")], 0, check=_eval_nulls)),
    ("5", Case("overflowing-weights-eval-text", lambda s, w: ["eval", str(s.good), "--seed", "0", "-q", "--model",
                                                               str(s.dir / "overflow.safetensors")], 0,
               check=lambda r, s, w: "n/a" in r.out)),
    ("5", Case("nan-latents", lambda s, w: ["decode", M("lat-nan.safetensors")(s, w), "-o", str(w / "d/")], 1,
               "layer.03 holds values that are not finite")),
    ("5", Case("temp-1e30", lambda s, w: ["sample", "--temp", "1e30", "-o", str(w / "x.png")], 2, "is above 10")),
    ("5", Case("temp-inf", lambda s, w: ["sample", "--temp", "inf", "-o", str(w / "x.png")], 2, "must be finite")),
    ("5", Case("output-temp-1e30", lambda s, w: ["sample", "--output-temp", "1e30", "-o", str(w / "x.png")], 2,
               "--output-temp")),
    # 6. a clear message where "internal error" was
    ("6", Case("unreadable-model", model("locked.safetensors", "sample"), 1, "Permission denied", no_dac=True)),
    ("6", Case("unreadable-cache", lambda s, w: ["sample", "--model", "cifar10", "-o", str(w / "x.png")], 1,
               "cannot read the cache folder", no_dac=True, env={"VDVAE_CACHE": "{locked_cache}/sub"})),
    ("6", Case("input-folder-no-exec", lambda s, w: ["reconstruct", M("noexec")(s, w), "-o", str(w / "r/")], 1,
               "Permission denied", no_dac=True)),
    ("6", Case("read-only-target", lambda s, w: ["sample", "-o", M("readonly/x.png")(s, w)], 1, "not writable",
               no_dac=True)),
    ("6", Case("output-name-too-long", lambda s, w: ["sample", "-o", str(w / ("n" * 300 + ".png"))], 1,
               "File name too long")),
    ("6", Case("latents-long-names", lambda s, w: ["decode", M("lat-longnames.safetensors")(s, w), "-o", str(w / "dec") + "/"],
               0, check=_decoded_short_names)),
    ("6", Case("stdout-dev-full", lambda s, w: ["sample", "-o", "-"], 1, "cannot write to stdout: No space left",
               stdout="full")),
    ("6", Case("stdout-closed", lambda s, w: ["sample", "-o", "-"], 1, "cannot write to stdout: it is closed",
               stdout="closed")),
    ("6", Case("stdout-closed-json", lambda s, w: ["info", "--json"], 1, "cannot write to stdout", stdout="closed")),
    ("6", Case("header-no-offsets", model("no-offsets.safetensors", "sample"), 1, "data_offsets must be two")),
    ("6", Case("header-float-offsets", model("float-offsets.safetensors", "info"), 1, "data_offsets must be two")),
    ("6", Case("header-metadata-list", model("meta-list.safetensors", "info"), 1, "__metadata__ must map")),
    ("6", Case("config-deeply-nested", model("meta-nested.safetensors", "info"), 1, "nested")),
    ("6", Case("config-width-int", model("width-int.safetensors", "info"), 1, "custom_width_str must be a string")),
    ("6", Case("config-pixel-scale-str", model("pixel-str.safetensors", "info"), 1, "pixel_scale must be a finite number")),
    ("6", Case("config-name-not-str", model("name-list.safetensors", "info"), 1, "name must be a string")),
    ("6", Case("training-data-bombs", lambda s, w: ["train", M("bombs")(s, w), "--hparams", M("tiny8.json")(s, w),
                                                    "-o", str(w / "run"), "-q"], 1, "", max_mb=700)),
    ("6", Case("state-pt-list", lambda s, w: ["train", "--resume", M("run-list")(s, w), "--steps", "3"], 1,
               "not a training state")),
    ("6", Case("world-size-without-rank", lambda s, w: ["sample", "-o", str(w / "x.png")], 2,
               "WORLD_SIZE=2 is set but RANK", env={"WORLD_SIZE": "2"})),
    ("6", Case("world-size-garbage", lambda s, w: ["sample", "-o", str(w / "x.png")], 2, "WORLD_SIZE='two'",
               env={"WORLD_SIZE": "two"})),
    # 7. no temporary file left by a full disk
    ("7", Case("disk-full-encode", lambda s, w: ["encode", str(s.good), "-o", str(w / "z.safetensors")], 1,
               "File too large", fsize=20_000)),
    ("7", Case("disk-full-sample", lambda s, w: ["sample", "-n", "2", "-q", "-o", str(w / "o") + "/"], 1, "File too large",
               fsize=400)),
    ("7", Case("disk-full-training", lambda s, w: ["train", M("a.npy")(s, w), "--hparams", M("tiny8.json")(s, w),
                                                   "-o", str(w / "run"), "--steps", "2", "--holdout", "8",
                                                   "--batch-size", "8", "-q"], 1, "File too large", fsize=60_000,
               max_mb=900)),
    # 8. exactly one line on stderr
    ("8", Case("float-tiff-with-nan", lambda s, w: ["reconstruct", M("nan-float.tif")(s, w), "-q", "-o", str(w / "r.png")],
               0, check=lambda r, s, w: r.stderr == b"" or pytest.fail(r.err))),
    ("8", Case("hostile-state-pt", lambda s, w: ["train", "--resume", M("run-garbage")(s, w), "--steps", "3"], 1,
               "cannot be read")),
    ("8", Case("redirect-loop", lambda s, w: ["download", "cifar10"], 1, "redirects in a loop",
               server=lambda srv, s: (srv.redirect(CIFAR_TH, CIFAR_TH + "2"), srv.redirect(CIFAR_TH + "2", CIFAR_TH)),
               check=_cache_clean)),
    ("8", Case("hub-unreachable", lambda s, w: ["download", "hf://acme/tiny"], 1, "cannot",
               env={"HF_ENDPOINT": "http://127.0.0.1:9"}, wall=30)),
    ("8", Case("hub-http-500", lambda s, w: ["download", "hf://acme/tiny"], 1, "cannot reach the Hugging Face Hub",
               server=lambda srv, s: srv.fail_with("/acme/tiny/resolve/main/model.safetensors", 500), wall=30)),
    # 9. no terminal escapes from a file, valid UTF-8 JSON for any file name
    ("9", Case("escape-in-name-info", lambda s, w: ["info", "--model", M("escape.safetensors")(s, w)], 0,
               check=_no_escapes)),
    ("9", Case("escape-in-name-sample", model("escape.safetensors", "sample"), 0,
               check=lambda r, s, w: b"\x1b" not in r.stderr and r.stderr.count(b"\n") == 2)),
    ("9", Case("non-utf8-file-name-json", lambda s, w: ["eval", M("names")(s, w), "--json", "--seed", "0"], 0,
               check=_json_names_escaped)),
    ("9", Case("non-utf8-file-name-text", lambda s, w: ["eval", M("names")(s, w), "--seed", "0"], 0,
               check=lambda r, s, w: (r.stdout.decode("utf-8"), b"\x1b" not in r.stdout))),
    # 10. no silently accepted tensors
    ("10", Case("bool-weights", model("bool.safetensors", "sample"), 1, "is BOOL")),
    ("10", Case("int64-weights", model("int64.safetensors", "sample"), 1, "is I64")),
    ("10", Case("float8-weights", model("float8.safetensors", "info"), 1, "is F8_E4M3")),
    ("10", Case("complex-weights", model("complex.safetensors", "sample"), 1, "is C64")),
    ("10", Case("duplicate-tensor-names", model("duplicate.safetensors", "info"), 1, "duplicate key 'decoder.gain'")),
    ("10", Case("int64-latents", lambda s, w: ["decode", M("lat-int64.safetensors")(s, w), "-o", str(w / "d/")], 1,
               "is I64")),
    ("10", Case("latents-nested-names", lambda s, w: ["decode", M("lat-nested-names.safetensors")(s, w),
                                                      "-o", str(w / "d/")], 1, "image_names")),
    # downloads: what is not the file is never kept (4)
    ("4", Case("download-html", lambda s, w: ["download", "cifar10"], 1, "HTML page",
               server=lambda srv, s: srv.put(CIFAR_TH, b"<!DOCTYPE html><html><body>login</body></html>\n" * 50),
               check=_cache_clean)),
    ("4", Case("download-html-content-type", lambda s, w: ["download", "cifar10"], 1, "HTML page",
               server=lambda srv, s: (srv.put(CIFAR_TH, GOLDEN / "tiny-ref.th"),
                                      srv.add_headers(CIFAR_TH, Content_Type="text/html")), check=_cache_clean)),
    ("4", Case("download-gzip-body", lambda s, w: ["download", "cifar10"], 1, "gzip",
               server=lambda srv, s: srv.put(CIFAR_TH, gzip.compress((GOLDEN / "tiny-ref.th").read_bytes())),
               check=_cache_clean)),
    ("4", Case("download-gzip-encoding", lambda s, w: ["download", "cifar10"], 1, "gzip-encoded",
               server=lambda srv, s: (srv.put(CIFAR_TH, gzip.compress((GOLDEN / "tiny-ref.th").read_bytes())),
                                      srv.add_headers(CIFAR_TH, Content_Encoding="gzip")), check=_cache_clean)),
    ("4", Case("download-random-bytes", lambda s, w: ["download", "cifar10"], 1, "not a PyTorch checkpoint",
               server=lambda srv, s: srv.put(CIFAR_TH, np.random.default_rng(0).bytes(300_000)), check=_cache_clean)),
    ("4", Case("download-longer-than-length", lambda s, w: ["download", "cifar10"], 1, "not a complete PyTorch checkpoint",
               server=lambda srv, s: (srv.put(CIFAR_TH, GOLDEN / "tiny-ref.th"), srv.announce_less(CIFAR_TH, 5000)),
               check=_cache_clean)),
    ("4", Case("download-wrong-weights", lambda s, w: ["download", "cifar10"], 1, "does not match config",
               server=lambda srv, s: srv.put(CIFAR_TH, GOLDEN / "tiny-ref.th"))),
    ("4", Case("download-404", lambda s, w: ["download", "cifar10"], 1, "HTTP 404", check=_cache_clean,
               server=lambda srv, s: None)),
    ("4", Case("hub-html-payload", lambda s, w: ["download", "hf://acme/tiny"], 1, "HTML page",
               server=lambda srv, s: srv.add_hub_file("acme/tiny", "model.safetensors", b"<html>nope</html>" * 100),
               check=_hub_clean)),
    ("4", Case("hub-random-payload", lambda s, w: ["download", "hf://acme/tiny"], 1, "not a safetensors file",
               server=lambda srv, s: srv.add_hub_file("acme/tiny", "model.safetensors", os.urandom(50_000)),
               check=_hub_clean)),
    ("4", Case("hub-model-as-sample", lambda s, w: ["sample", "--model", "hf://acme/tiny", "-o", str(w / "x.png")], 1,
               "HTML page",
               server=lambda srv, s: srv.add_hub_file("acme/tiny", "model.safetensors", b"<!doctype html>" * 100),
               check=_hub_clean)),
    # kept defences: pickles never run code, nothing overwritten without --force
    ("kept", Case("pickle-runs-no-code", lambda s, w: ["convert", M("evil.th")(s, w), "--config", "cifar10",
                                                       "-o", str(w / "x.safetensors")], 1, "does not run pickled code",
                  check=_not_pwned)),
    ("kept", Case("no-overwrite", lambda s, w: ["sample", "-o", str(s.existing)], 1, "already exists",
                  check=_untouched)),
    ("kept", Case("model-is-html", lambda s, w: ["sample", "--model", str(s.dir / "page.safetensors"), "-o",
                                                 str(w / "x.png")], 1, "is not a safetensors file")),
]


def _env(s: Any, w: Path, case: Case, server: LocalServer | None) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(w), "OMP_NUM_THREADS": "1",
        "VDVAE_CACHE": str(w / "cache"), "HF_HOME": str(w / "hf"), "HF_HUB_CACHE": str(w / "hf" / "hub"),
        "HF_HUB_DISABLE_TELEMETRY": "1", "VDVAE_MODEL": str(s.ckpt), "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        "LANG": "C.UTF-8", "VDVAE_DEVICE": "cpu",  # the address-space limit leaves no room for a CUDA context
    }
    if server is not None:
        env["VDVAE_OFFICIAL_BASE_URL"] = server.url + "/assets"
        env["HF_ENDPOINT"] = server.url
    for k, v in case.env.items():
        env[k] = v.format(locked_cache=str(s.dir / "locked-cache"))
    return env


# What may precede the error line on stderr: our own progress and log lines, nothing else (no
# warnings, no tracebacks, no library logs).
OUR_LINES = ("model ", "seed ", "fetching ", "downloading ", "converting to ", "wrote ")


def _error_lines(r: Result) -> list[str]:
    lines = r.err.splitlines()
    for line in lines[:-1]:
        assert line.startswith(OUR_LINES), f"a stderr line that is not ours: {line!r}\n{r}"
    return [line for line in lines if line.startswith("error:")]


def _temp_files(*roots: Path) -> list[Path]:
    found = []
    for root in roots:
        if root.exists():
            found += [p for p in root.rglob("*") if p.name.endswith(".tmp")]
    return found


@pytest.mark.parametrize("klass, case", CASES, ids=[c.name for _, c in CASES])
def test_hostile(klass, case, s, fs, tmp_path):
    if case.name == "model-is-html":
        (s.dir / "page.safetensors").write_bytes(b"<html><body>404</body></html>\n")
    if case.name == "unreadable-cache":
        locked = s.dir / "locked-cache"
        locked.mkdir(exist_ok=True)
        os.chmod(locked, 0)
    w = tmp_path
    server = LocalServer(tmp_path / "www").start() if case.server or "hf://" in " ".join(case.argv(s, w)) else None
    try:
        if case.server is not None:
            case.server(server, s)
        env = _env(s, w, case, server)
        stdin = case.stdin(s) if case.stdin else None
        r = fs.run(case.argv(s, w), cwd=w, env=env, stdin=stdin, stdout=case.stdout, stderr=case.stderr,
                   address_space=case.address_space, wall=case.wall, fsize=case.fsize, no_dac=case.no_dac)
    finally:
        if server is not None:
            server.stop()
        if case.name == "unreadable-cache":
            os.chmod(s.dir / "locked-cache", 0o755)
    assert not r.timed_out, f"timed out: {r}"
    assert r.code == case.code, str(r)
    assert b"Traceback" not in r.stderr, str(r)
    if case.code != 0:
        lines = r.err.splitlines()
        if case.stderr != "closed":
            assert len(_error_lines(r)) == 1 and lines[-1].startswith("error: "), f"expected one error line, last: {r}"
            assert case.text in lines[-1], str(r)
        if case.stdout is None:
            assert r.stdout == b"", str(r)
    assert r.peak_mb <= case.max_mb, f"peak {r.peak_mb:.0f} MB > {case.max_mb} MB: {r}"
    assert _temp_files(w, s.dir) == [], f"temporary files left: {_temp_files(w, s.dir)}"
    if case.check is not None:
        case.check(r, s, w)


# --------------------------------------------------------------------------------------------------
# Cases that need more than one step


def test_sigterm_during_encode_leaves_no_temp_file(s, fs, tmp_path):
    """SIGTERM while the latents file is being written (held at that moment by a test hook): the
    temporary file is removed and the exit status says so."""
    pidfile = tmp_path / "pid"
    out = tmp_path / "out"
    out.mkdir()
    env = _env(s, tmp_path, Case("x", lambda s, w: [], 0), None)
    box: dict[str, Result] = {}

    def go() -> None:
        box["r"] = fs.run(["encode", str(s.good), "-o", str(out / "z.safetensors")], cwd=tmp_path, env=env,
                          hook="slow_replace", pidfile=pidfile, wall=60)

    thread = threading.Thread(target=go)
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not _temp_files(out):
        time.sleep(0.05)
    assert _temp_files(out), "the temporary file never appeared"
    os.kill(int(pidfile.read_text()), signal.SIGTERM)
    thread.join(60)
    r = box["r"]
    assert r.code == 128 + signal.SIGTERM, str(r)
    assert r.err.splitlines()[-1] == "error: terminated" and len(_error_lines(r)) == 1, str(r)
    assert list(out.iterdir()) == []


def test_concurrent_download_is_refused(s, fs, tmp_path):
    downloads = tmp_path / "cache" / "downloads"
    downloads.mkdir(parents=True)
    fd = os.open(downloads, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with LocalServer(tmp_path / "www") as server:
            r = fs.run(["download", "cifar10"], cwd=tmp_path, env=_env(s, tmp_path, Case("x", lambda s, w: [], 0), server))
    finally:
        os.close(fd)
    assert r.code == 1 and r.err.splitlines() == [
        f"error: another `vdvae download` is writing to {downloads} (wait for it to finish, then run the command again)"]


def test_hostile_log_is_not_cached(s, fs, tmp_path):
    """A deeply nested -log.jsonl is refused every time (it is never kept to crash later runs), and once
    the server is fixed the next run fetches the log again."""
    with LocalServer(tmp_path / "www") as server:
        _log_hostile(server, s)
        env = _env(s, tmp_path, Case("x", lambda s, w: [], 0), server)
        for _ in range(2):
            r = fs.run(["download", "ffhq1024", "--quiet"], cwd=tmp_path, env=env)
            assert r.code == 1 and len(r.err.splitlines()) == 1 and "nested" in r.err, str(r)
        assert server.count(FFHQ1024_LOG, "GET") == 2
    _cache_clean(r, s, tmp_path)


# --------------------------------------------------------------------------------------------------
# Network behaviours timed by module constants (in-process, shortened)


@pytest.fixture()
def quick_hub(monkeypatch, tmp_path):
    monkeypatch.setattr(transfer, "RETRY_WAIT", 0.0)
    monkeypatch.setattr(transfer, "RATE_WINDOW", 1.0)
    monkeypatch.setattr(transfer, "MIN_RATE", 1000)
    monkeypatch.setattr(transfer, "HEADERS_TIMEOUT", 2.0)
    with LocalServer(tmp_path / "www") as server:
        monkeypatch.setenv("VDVAE_OFFICIAL_BASE_URL", server.url + "/assets")
        yield transfer, server


def test_drip_is_stopped(quick_hub):
    from vdvae_cli.base.errors import NetworkError

    hub, server = quick_hub
    server.put(CIFAR_TH, GOLDEN / "tiny-ref.th")
    server.drip(CIFAR_TH, step=1, every=0.3)
    t0 = time.monotonic()
    with pytest.raises(NetworkError, match="too slow") as info:
        fetch.download_official("cifar10")
    assert time.monotonic() - t0 < 10 and "resumes" in info.value.hint
    assert not paths.official_cache_path("cifar10").exists()


def test_no_content_length_is_capped(quick_hub, monkeypatch):
    from vdvae_cli.base.errors import NetworkError

    hub, server = quick_hub
    monkeypatch.setattr(transfer, "MAX_DOWNLOAD", 100_000)
    server.put(CIFAR_TH, GOLDEN / "tiny-ref.th")
    server.no_length(CIFAR_TH)
    with pytest.raises(NetworkError, match="sent more than") as info:
        fetch.download_official("cifar10")
    assert "nothing was kept" in str(info.value)
    assert [p for p in (paths.cache_dir() / "downloads").iterdir()] == []


def test_announced_size_over_the_cap_is_refused_before_reading(quick_hub, monkeypatch):
    from vdvae_cli.base.errors import NetworkError

    hub, server = quick_hub
    monkeypatch.setattr(transfer, "MAX_DOWNLOAD", 100_000)
    server.put(CIFAR_TH, GOLDEN / "tiny-ref.th")
    with pytest.raises(NetworkError, match="more than the"):
        fetch.download_official("cifar10")


def test_file_changed_on_the_server_is_not_spliced(quick_hub, tmp_path, golden_state):
    """A partial download of version 1, then version 2 on the server: If-Range makes the server send
    all of version 2, never version 1's first half with version 2's second."""
    from vdvae_cli.base.errors import NetworkError

    hub, server = quick_hub
    entry = catalog.RegistryEntry(name="tiny-v", title="t", checkpoint="v/tiny.th",
                                       config=config_from_reference(json.loads((GOLDEN / "tiny-hparams.json").read_text())))
    catalog.register_entry(entry)
    try:
        server.put("/assets/v/tiny.th", GOLDEN / "tiny-ref.th")
        server.drop("/assets/v/tiny.th", after=100_000, times=transfer.RETRIES)
        with pytest.raises(NetworkError, match="broke off"):
            fetch.download_official("tiny-v")
        v2 = {k: v + 1 for k, v in golden_state.items()}
        torch.save(v2, tmp_path / "v2.th")
        server.put("/assets/v/tiny.th", tmp_path / "v2.th")
        dest = fetch.download_official("tiny-v")
        last = server.seen("/assets/v/tiny.th", "GET")[-1]
        assert "If-Range" in last.headers  # it asked to resume, and the server (rightly) sent everything
        from vdvae_cli.modelfiles.checkpoint import read_checkpoint

        _, state = read_checkpoint(dest)
        assert all(torch.equal(state[k], v2[k]) for k in v2)
    finally:
        catalog.unregister_entry("tiny-v")


def test_declared_size_and_digest_are_checked(quick_hub):
    from vdvae_cli.base.errors import NetworkError

    hub, server = quick_hub
    data = (GOLDEN / "tiny-ref.th").read_bytes()
    server.put("/assets/x/tiny.th", data)
    cfg = config_from_reference(json.loads((GOLDEN / "tiny-hparams.json").read_text()))
    for name, kw, why in (("tiny-size", {"checkpoint_size": len(data) + 1}, "expected"),
                          ("tiny-sha", {"checkpoint_sha256": "0" * 64}, "sha256")):
        catalog.register_entry(catalog.RegistryEntry(name=name, title="t", checkpoint="x/tiny.th", config=cfg, **kw))
        try:
            with pytest.raises(NetworkError, match=why):
                fetch.download_official(name)
            assert [p for p in (paths.cache_dir() / "downloads").iterdir() if not p.name.endswith(".json")] == []
        finally:
            catalog.unregister_entry(name)
    import hashlib

    catalog.register_entry(catalog.RegistryEntry(
        name="tiny-ok", title="t", checkpoint="x/tiny.th", config=cfg, checkpoint_size=len(data),
        checkpoint_sha256=hashlib.sha256(data).hexdigest()))
    try:
        assert fetch.download_official("tiny-ok").is_file()
    finally:
        catalog.unregister_entry("tiny-ok")


def test_headers_sent_a_byte_at_a_time_time_out(quick_hub):
    """A server that accepts the connection and never finishes its headers is cut off."""
    import socket as socketlib

    from vdvae_cli.base.errors import NetworkError

    hub, server = quick_hub
    listener = socketlib.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def drip() -> None:
        conn, _ = listener.accept()
        conn.recv(4096)
        try:
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            while not stop.is_set():
                conn.sendall(b"X")
                time.sleep(0.2)
        except OSError:
            pass
        conn.close()

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    t0 = time.monotonic()
    paths.cache_dir().mkdir(parents=True, exist_ok=True)
    try:
        with pytest.raises(NetworkError):
            transfer.fetch_url(f"http://127.0.0.1:{port}/x.th", paths.cache_dir() / "x.th", kind="pickle")
    finally:
        stop.set()
        listener.close()
    # one deadline (HEADERS_TIMEOUT, 2 s here) for the whole call, not one per retry (3 x 60 s = 189 s before)
    assert time.monotonic() - t0 < 3.5


def test_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    """A disk that fills up during an atomic write (a monkeypatched write raising ENOSPC)."""
    import errno

    from vdvae_cli.base.atomic import atomic_write_bytes
    from vdvae_cli.base.errors import OutputError

    import vdvae_cli.base.atomic as ck

    def write(self, data):
        self.error = OSError(errno.ENOSPC, "No space left on device")
        raise self.error

    monkeypatch.setattr(ck._CheckedFile, "write", write)
    with pytest.raises(OutputError, match="No space left on device") as info:
        atomic_write_bytes(tmp_path / "x.bin", b"data")
    assert "free some space" in info.value.hint
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------


def hostile_case_count() -> int:
    """The number of hostile cases: the table, plus every other test in this file."""
    others = [name for name, obj in globals().items() if name.startswith("test_") and callable(obj)
              and name not in ("test_hostile", "test_readme_counts_the_cases", "test_every_failure_class_has_cases")]
    return len(CASES) + len(others)


def test_readme_counts_the_cases():
    text = (REPO / "README.md").read_text()
    m = re.search(r"(\d+) hostile cases", text)
    assert m, "the README's Reliability section must give the count of hostile cases"
    assert int(m.group(1)) == hostile_case_count()


def test_every_failure_class_has_cases():
    assert {k for k, _ in CASES} >= {str(i) for i in range(1, 11)} - {"7"} | {"kept"}
    assert sum(1 for k, _ in CASES if k == "7") >= 3
