"""``vdvae`` inside real shell pipelines (``bash -c`` running ``python -m vdvae_cli``), checked
against the same steps run one at a time with files."""

from __future__ import annotations

import io
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vdvae_cli.cli import app

runner = CliRunner()


def bash(script: str, cwd, model) -> subprocess.CompletedProcess:
    """Run ``script`` in bash with ``vdvae`` = ``python -m vdvae_cli`` and the tiny model as default."""
    prelude = f"set -euo pipefail\nvdvae() {{ {shlex.quote(sys.executable)} -m vdvae_cli \"$@\"; }}\n"
    env = {**os.environ, "VDVAE_MODEL": str(model), "OMP_NUM_THREADS": "1"}
    env.pop("VDVAE_DEBUG", None)
    return subprocess.run(["bash", "-c", prelude + script], cwd=cwd, env=env, capture_output=True, timeout=300)


def png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def vdvae(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.stderr
    return result


@pytest.mark.slow
def test_sample_into_reconstruct(tiny_ckpt, tmp_path):
    proc = bash("vdvae sample -n 1 -o - | vdvae reconstruct - --keep-layers 5 -o - > out.png", tmp_path, tiny_ckpt)
    assert proc.returncode == 0, proc.stderr.decode()
    out = png((tmp_path / "out.png").read_bytes())
    assert out.shape == (32, 32, 3)
    assert os.listdir(tmp_path) == ["out.png"]
    # both runs announced their seeds on stderr (not stdout): repeating the steps with them gives the same image
    stderr = proc.stderr.decode()
    assert "error" not in stderr and "Traceback" not in stderr
    seeds = [int(s) for s in re.findall(r"^seed (\d+) \(repeat", stderr, flags=re.M)]
    assert len(seeds) == 2
    # the two processes print in either order, so try both ways of pairing seeds with steps
    matches = []
    for sample_seed, recon_seed in (seeds, seeds[::-1]):
        vdvae("sample", "-m", tiny_ckpt, "--seed", sample_seed, "-o", tmp_path / "s.png", "--force")
        vdvae("reconstruct", "-m", tiny_ckpt, tmp_path / "s.png", "--keep-layers", 5, "--seed", recon_seed,
              "-o", tmp_path / "r.png", "--force")
        matches.append(np.array_equal(png((tmp_path / "r.png").read_bytes()), out))
    assert any(matches)


@pytest.mark.slow
def test_image_stream_through_encode_and_decode(tiny_ckpt, tmp_path):
    script = ("vdvae sample -n 3 --seed 1 -o - | vdvae encode - -o - "
              "| vdvae decode - --output-temp 0 --seed 2 -o decoded/")
    proc = bash(script, tmp_path, tiny_ckpt)
    assert proc.returncode == 0, proc.stderr.decode()
    names = sorted(os.listdir(tmp_path / "decoded"))
    assert names == [f"stdin_{i:05d}_decoded.png" for i in range(3)]
    vdvae("sample", "-m", tiny_ckpt, "-n", 3, "--seed", 1, "-o", f"{tmp_path}/s/")
    vdvae("reconstruct", "-m", tiny_ckpt, tmp_path / "s", "--output-temp", 0, "-o", f"{tmp_path}/r/")
    for name, recon in zip(names, sorted(os.listdir(tmp_path / "r"))):
        np.testing.assert_array_equal(png((tmp_path / "decoded" / name).read_bytes()),
                                      png((tmp_path / "r" / recon).read_bytes()))


def test_a_failing_stage_fails_the_pipeline_with_one_line(tiny_ckpt, tmp_path):
    proc = bash("printf '' | vdvae reconstruct - -o - > out.png", tmp_path, tiny_ckpt)
    assert proc.returncode == 1
    assert proc.stderr.decode().strip().splitlines() == [
        "error: no image data on stdin (it was empty) (pipe PNG or JPEG bytes in, e.g. cat img.png | vdvae reconstruct -)"
    ]
    assert (tmp_path / "out.png").read_bytes() == b""  # the shell made it; vdvae wrote nothing to it
