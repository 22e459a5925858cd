"""Folder jobs that survive real folders: an unreadable file is reported on one line and left out,
the others are processed, the run exits 1 naming the failures; --skip-existing resumes a job."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open
from typer.testing import CliRunner

from vdvae_cli.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture()
def folder(tmp_path):
    """a.png, b.png (corrupt: half a PNG), c.png, d.txt (not an image type: ignored)."""
    d = tmp_path / "in"
    d.mkdir()
    rng = np.random.default_rng(1)
    for name in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{name}.png")
    data = (d / "b.png").read_bytes()
    (d / "b.png").write_bytes(data[: len(data) // 2])
    (d / "d.txt").write_text("notes")
    return d


def _check_report(stderr: str, folder) -> None:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2, stderr
    assert errors[0].startswith(f"error: {folder / 'b.png'} is corrupt or truncated")
    assert errors[1] == f"error: 1 of 3 inputs could not be read: {folder / 'b.png'}; the other 2 were processed"


def test_reconstruct_folder_with_a_corrupt_file(tmp_path, tiny_ckpt, folder):
    out = tmp_path / "out"
    result = run("reconstruct", folder, "-m", tiny_ckpt, "--seed", "0", "-o", f"{out}/", "--json")
    assert result.exit_code == 1
    assert sorted(p.name for p in out.iterdir()) == ["a_recon.png", "c_recon.png"]
    assert [json.loads(line)["input"] for line in result.stdout.splitlines()] == [str(folder / "a.png"), str(folder / "c.png")]
    _check_report(result.stderr, folder)


def test_eval_and_encode_folder_with_a_corrupt_file(tmp_path, tiny_ckpt, folder):
    result = run("eval", folder, "-m", tiny_ckpt, "--seed", "0", "--json")
    assert result.exit_code == 1
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["type"] for r in rows] == ["image", "image", "summary"] and rows[-1]["images"] == 2
    _check_report(result.stderr, folder)

    lat = tmp_path / "lat.safetensors"
    result = run("encode", folder, "-m", tiny_ckpt, "-o", lat)
    assert result.exit_code == 1
    _check_report(result.stderr, folder)
    with safe_open(str(lat), "pt") as f:
        assert json.loads(f.metadata()["image_names"]) == [str(folder / "a.png"), str(folder / "c.png")]
        assert f.get_slice("layer.00").get_shape()[0] == 2


def test_every_file_unreadable_is_still_one_line_each(tmp_path, tiny_ckpt):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "x.png").write_bytes(b"not a png")
    (d / "y.png").write_bytes(b"")
    result = run("eval", d, "-m", tiny_ckpt)
    assert result.exit_code == 1 and result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 3 and errors[-1].startswith("error: 2 of 2 inputs could not be read")
    single = run("eval", d / "x.png", "-m", tiny_ckpt)  # one named file: one error, as before
    assert single.exit_code == 1 and len(single.stderr.splitlines()) == 1


def test_skip_existing_resumes_a_folder_job(tmp_path, tiny_ckpt, folder):
    out = tmp_path / "s"
    assert run("sample", "-n", "4", "--seed", "5", "-m", tiny_ckpt, "-o", f"{out}/").exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "sample_00002.png").unlink()
    (out / "sample_00003.png").write_bytes(b"kept as it is")  # an existing output is never touched
    refused = run("sample", "-n", "4", "--seed", "5", "-m", tiny_ckpt, "-o", f"{out}/")
    assert refused.exit_code == 1 and "already exists" in refused.stderr
    resumed = run("sample", "-n", "4", "--seed", "5", "-m", tiny_ckpt, "-o", f"{out}/", "--skip-existing", "--json")
    assert resumed.exit_code == 0, resumed.stderr
    assert [json.loads(line)["index"] for line in resumed.stdout.splitlines()] == [2]
    assert (out / "sample_00002.png").read_bytes() == before["sample_00002.png"]  # the same image, by (seed, i)
    assert (out / "sample_00003.png").read_bytes() == b"kept as it is"
    assert "wrote 1 image to" in resumed.stderr and "kept 3 that existed" in resumed.stderr

    # reconstruct: inputs whose output exists are not even read (b.png is corrupt but already done)
    rec = tmp_path / "r"
    rec.mkdir()
    (rec / "b_recon.png").write_bytes(b"done earlier")
    result = run("reconstruct", folder, "-m", tiny_ckpt, "--seed", "0", "-o", f"{rec}/", "--skip-existing")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in rec.iterdir()) == ["a_recon.png", "b_recon.png", "c_recon.png"]


@pytest.mark.parametrize("extra, says", [
    (["--force"], "--skip-existing keeps existing outputs and --force replaces them"),
    (["--grid"], "--skip-existing resumes a job that writes a folder"),
])
def test_skip_existing_misuse(tmp_path, tiny_ckpt, extra, says):
    target = f"{tmp_path}/o/" if "--force" in extra else str(tmp_path / "g.png")
    result = run("sample", "-n", "2", "-m", tiny_ckpt, "-o", target, "--skip-existing", *extra)
    assert result.exit_code == 2 and result.stderr.startswith(f"error: {says}")
