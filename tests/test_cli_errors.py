"""The bad-input table: each case exits with the right code, prints one ``error:`` line (with a
hint) and nothing on stdout, and leaves every existing file exactly as it was.

Cases that would write an image aim at an existing file *with* ``--force``, so the only thing that
keeps that file intact is the command failing before it writes.
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vdvae_cli.cli import app
from vdvae_cli.base.errors import ImageError

runner = CliRunner()


@pytest.fixture(scope="module")
def scene(tmp_path_factory, tiny_ckpt, golden_cfg, golden_state):
    """Inputs good and bad, an existing output, another model and a latents file from the tiny one."""
    from vdvae_cli.modelfiles.checkpoint import save_checkpoint

    d = tmp_path_factory.mktemp("scene")
    good = d / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(good)
    data = good.read_bytes()
    (d / "trunc.png").write_bytes(data[: len(data) // 2])
    corrupt = bytearray(data)
    idat = corrupt.index(b"IDAT")
    corrupt[idat + 8: idat + 60] = bytes(52)
    (d / "corrupt.png").write_bytes(bytes(corrupt))
    (d / "text.png").write_text("this is not a PNG\n")
    (d / "noimages").mkdir()
    (d / "noimages" / "notes.txt").write_text("no pictures here")
    (d / "existing.png").write_bytes(b"precious bytes")
    (d / "existing.safetensors").write_bytes(b"precious latents")
    (d / "afile").write_text("a file, not a folder")
    torch.save(golden_state, d / "model.th")
    other = save_checkpoint(golden_state, golden_cfg.replace(name="other"), d / "other.safetensors")
    result = runner.invoke(app, ["encode", "-m", str(tiny_ckpt), str(good), "-o", str(d / "lat.safetensors")])
    assert result.exit_code == 0, result.stderr
    lat = (d / "lat.safetensors").read_bytes()
    (d / "lat-trunc.safetensors").write_bytes(lat[:-64])
    return SimpleNamespace(dir=d, ckpt=str(tiny_ckpt), other=str(other), good=str(good), out=str(d / "existing.png"))


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# (id, argv builder, stdin, exit code, text in the message)
CASES = [
    ("missing-file", lambda s: ["reconstruct", f"{s.dir}/nope.png", "-o", s.out, "--force"], None, 1,
     "no such file"),
    ("corrupt-png", lambda s: ["reconstruct", f"{s.dir}/corrupt.png", "-o", s.out, "--force"], None, 1,
     "corrupt.png is corrupt or truncated"),
    ("not-an-image", lambda s: ["eval", f"{s.dir}/text.png"], None, 1, "text.png is not an image"),
    ("truncated-png", lambda s: ["reconstruct", f"{s.dir}/trunc.png", "-o", s.out, "--force"], None, 1,
     "trunc.png is corrupt or truncated"),
    ("zero-byte-stdin", lambda s: ["reconstruct", "-", "-o", s.out, "--force"], b"", 1, "stdin"),
    ("dir-without-images", lambda s: ["reconstruct", f"{s.dir}/noimages", "-o", f"{s.dir}/", "--force"], None, 1,
     "holds no images"),
    ("unknown-model", lambda s: ["sample", "--model", "no-such-model", "-o", s.out, "--force"], None, 1,
     "no-such-model"),
    ("bad-temp", lambda s: ["sample", "--temp", "0.5,3=warm", "-o", s.out, "--force"], None, 2, "'3=warm'"),
    ("negative-temp", lambda s: ["mix", s.good, "-k", "3", "--temp", "r8=-1", "-o", s.out, "--force"], None, 2,
     "negative"),
    ("temp-layer-out-of-range", lambda s: ["decode", f"{s.dir}/lat.safetensors", "--temp", "20-=0.1",
                                          "-o", s.out, "--force"], None, 2, "layer 20 does not exist"),
    ("keep-layers-too-many", lambda s: ["reconstruct", s.good, "--keep-layers", "14", "-o", s.out, "--force"], None,
     2, "13 latent layers"),
    ("keep-layers-not-a-number", lambda s: ["reconstruct", s.good, "--keep-layers", "some", "-o", s.out, "--force"],
     None, 2, "--keep-layers 'some'"),
    ("keep-res-not-a-resolution", lambda s: ["mix", s.good, s.good, "--keep-res", "12", "-o", s.out, "--force"], None,
     2, "--keep-res 12 is not a resolution"),
    ("keep-both", lambda s: ["reconstruct", s.good, "--keep-res", "8", "--keep-layers", "3", "-o", s.out, "--force"],
     None, 2, "give one of them"),
    ("unwritable-parent-is-a-file", lambda s: ["sample", "-o", f"{s.dir}/afile/x.png"], None, 1, "not a folder"),
    ("unwritable-missing-folder", lambda s: ["sample", "-o", f"{s.dir}/missing/x.png"], None, 1, "does not exist"),
    ("unwritable-dir-output", lambda s: ["sample", "-n", "2", "-o", f"{s.dir}/afile/sub/"], None, 1, "not a folder"),
    ("existing-output", lambda s: ["reconstruct", s.good, "-o", s.out], None, 1, "already exists"),
    ("existing-latents", lambda s: ["encode", s.good, "-o", f"{s.dir}/existing.safetensors"], None, 1,
     "already exists"),
    ("model-is-a-png", lambda s: ["sample", "--model", s.good, "-o", s.out, "--force"], None, 1,
     "not a safetensors file"),
    ("model-is-a-pickle", lambda s: ["sample", "--model", f"{s.dir}/model.th", "-o", s.out, "--force"], None, 1,
     "PyTorch pickle"),
    ("latents-from-another-model", lambda s: ["decode", f"{s.dir}/lat.safetensors", "--model", s.other,
                                              "-o", s.out, "--force"], None, 1, "was made by model 'tiny'"),
    ("latents-truncated", lambda s: ["decode", f"{s.dir}/lat-trunc.safetensors", "-o", s.out, "--force"], None, 1,
     "truncated"),
    ("latents-is-a-model", lambda s: ["decode", s.ckpt, "-o", s.out, "--force"], None, 1, "not a latents file"),
    ("latents-missing", lambda s: ["decode", f"{s.dir}/nope.safetensors", "-o", s.out, "--force"], None, 1,
     "no such file"),
    ("many-images-one-file", lambda s: ["sample", "-n", "3", "-o", s.out, "--force"], None, 2, "--grid"),
    ("grid-into-folder", lambda s: ["sample", "-n", "3", "--grid", "-o", f"{s.dir}/"], None, 2, "--grid"),
    ("json-and-stdout", lambda s: ["sample", "--json", "-o", "-"], None, 2, "--json"),
    ("json-without-output", lambda s: ["reconstruct", s.good, "--json"], None, 2, "--json"),
    ("stdin-twice", lambda s: ["mix", "-", "-", "-k", "2", "-o", s.out, "--force"], b"x", 2, "more than once"),
    ("mix-needs-keep", lambda s: ["mix", s.good, s.good, "-o", s.out, "--force"], None, 2, "--keep-layers K"),
    ("variations-with-b", lambda s: ["mix", s.good, s.good, "-k", "2", "-n", "3", "-o", f"{s.dir}/"], None, 2,
     "-n draws completions"),
    ("zero-images", lambda s: ["sample", "-n", "0", "-o", s.out, "--force"], None, 2, "-n must be 1 to 1,000,000,000"),
    ("zero-batch", lambda s: ["eval", s.good, "--batch-size", "0"], None, 2, "--batch-size"),
    ("negative-output-temp", lambda s: ["sample", "--output-temp", "-1", "-o", s.out, "--force"], None, 2,
     "--output-temp"),
    ("bad-dtype", lambda s: ["sample", "--dtype", "fp8", "-o", s.out, "--force"], None, 2, "fp8"),
    ("bad-device", lambda s: ["sample", "--device", "tpu", "-o", s.out, "--force"], None, 2, "tpu"),
    ("no-resize", lambda s: ["reconstruct", f"{s.dir}/big.png", "--no-resize", "-o", s.out, "--force"], None, 1,
     "is 48x40, the model takes 32x32"),
    ("latents-named-as-image", lambda s: ["encode", s.good, "-o", f"{s.dir}/lat.png"], None, 2, ".safetensors"),
    ("unknown-image-format-out", lambda s: ["sample", "-o", f"{s.dir}/out.xyz"], None, 2, "image format"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, scene):
    name, argv, stdin, code, text = case
    if name == "no-resize" and not (scene.dir / "big.png").exists():
        Image.new("RGB", (48, 40)).save(scene.dir / "big.png")
    args = argv(scene)
    if "--model" not in args and args[0] != "info":
        args += ["--model", scene.ckpt]
    before = snapshot(scene.dir)
    result = runner.invoke(app, args, input=stdin)
    assert result.exit_code == code, f"{name}: exit {result.exit_code}, stderr: {result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"{name}: expected one line, got {result.stderr!r}"
    assert lines[0].startswith("error: ") and text in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout_bytes == b""
    assert snapshot(scene.dir) == before, f"{name} changed files"


def test_known_errors_carry_a_hint(scene):
    result = runner.invoke(app, ["reconstruct", str(scene.dir / "trunc.png"), "-m", scene.ckpt, "-o", scene.out, "--force"])
    assert result.stderr.strip().endswith("(re-export or re-download the image)")


def test_debug_env_gives_the_traceback(scene, monkeypatch):
    monkeypatch.setenv("VDVAE_DEBUG", "1")
    result = runner.invoke(app, ["reconstruct", str(scene.dir / "trunc.png"), "-m", scene.ckpt, "-o", scene.out, "--force"])
    assert isinstance(result.exception, ImageError)


def _run_with_tty_stdout(args: list[str]) -> tuple[int, str]:
    """Run ``python -m vdvae_cli ARGS`` with stdout on a pseudo-terminal; return (exit code, stderr)."""
    master, slave = pty.openpty()
    try:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-m", "vdvae_cli", *args], stdout=slave, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, env=env, timeout=120)
    finally:
        os.close(slave)
        os.close(master)
    return proc.returncode, proc.stderr.decode()


def test_never_writes_binary_to_a_terminal(scene):
    code, err = _run_with_tty_stdout(["sample", "-m", scene.ckpt, "-o", "-"])
    assert code == 1 and err.strip() == (
        "error: refusing to write PNG data to a terminal (redirect stdout (... -o - > out.png) or give -o FILE)"
    )
    code, err = _run_with_tty_stdout(["encode", scene.good, "-m", scene.ckpt])
    assert code == 2 and err.strip().startswith("error: no -o given and stdout is a terminal")


def test_binary_output_to_a_text_only_stdout_is_an_error(monkeypatch):
    """A stand-in stdout without .buffer (a notebook's, an embedding program's) got bytes written to it:
    a TypeError traceback instead of one error."""
    import io

    from vdvae_cli.cli._app import write_stdout
    from vdvae_cli.base.errors import OutputError

    text = io.StringIO()
    monkeypatch.setattr(sys, "stdout", text)
    write_stdout("a line\n")
    with pytest.raises(OutputError, match="stdout takes only text here"):
        write_stdout(b"\x89PNG")
    assert text.getvalue() == "a line\n"
