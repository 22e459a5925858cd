"""A model file's recommended temperatures (prior and pixel): kept in its metadata, used by the commands
that draw from the prior when --temp / --output-temp are not given, shown by ``vdvae info``, written by
scripts/export_shipped.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vdvae_cli.modelfiles.header import DEFAULT_OUTPUT_TEMPERATURE_KEY, DEFAULT_TEMPERATURE_KEY, default_ood, default_temperatures
from vdvae_cli.modelfiles.checkpoint import load_file_model, save_checkpoint
from vdvae_cli.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory, golden_cfg, golden_state) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("temps")
    out = {}
    for name, temp, pixel in (("plain", None, None), ("cool", "0.3", "0.25"), ("spec", "0.9,r32=0.2", None),
                              ("broken", "warm", None), ("badpixel", None, "-1")):
        meta = {DEFAULT_TEMPERATURE_KEY: temp} if temp else {}
        if pixel:
            meta[DEFAULT_OUTPUT_TEMPERATURE_KEY] = pixel
        out[name] = save_checkpoint(golden_state, golden_cfg, folder / f"{name}.safetensors", metadata=meta)
    return out


def sample(model: Path, *extra: str) -> tuple[np.ndarray, dict]:
    out = model.with_name(f"{model.stem}-samples")
    res = runner.invoke(app, ["sample", "-m", str(model), "-n", "2", "--seed", "3", "--json", "-q", "--force",
                              "-o", f"{out}/", *extra])
    assert res.exit_code == 0, res.stderr
    records = [json.loads(line) for line in res.stdout.splitlines()]
    return np.array([r["temperatures"] for r in records]), records[0]


def test_metadata_is_read_by_the_loader(models):
    assert default_temperatures(models["plain"]) == (None, None)
    assert default_temperatures(models["cool"]) == ("0.3", "0.25")
    cool = load_file_model(models["cool"])
    assert (cool.default_temperature, cool.default_output_temperature) == ("0.3", "0.25")
    assert load_file_model(models["plain"]).default_temperature is None


def test_sample_uses_the_recommended_temperature_unless_told(models, golden_cfg):
    temps, record = sample(models["cool"])
    assert record["temp"] == "0.3" and (temps == 0.3).all() and record["output_temp"] == 0.25
    temps, record = sample(models["cool"], "--temp", "0.7", "--output-temp", "0")  # explicit options win
    assert record["temp"] == "0.7" and (temps == 0.7).all() and record["output_temp"] == 0.0
    temps, record = sample(models["plain"])  # none recommended: the model's own distributions
    assert record["temp"] == "1.0" and (temps == 1.0).all() and record["output_temp"] == 1.0
    temps, _ = sample(models["spec"])  # a full spec works too
    res32 = [l.res == 32 for l in golden_cfg.decoder_layers]
    assert temps[0].tolist() == [0.2 if r else 0.9 for r in res32]


def test_images_match_an_explicit_temp(models, tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for out, extra in ((a, []), (b, ["--temp", "0.3", "--output-temp", "0.25"])):
        res = runner.invoke(app, ["sample", "-m", str(models["cool"]), "-n", "1", "--seed", "5", "-o", str(out), "-q", *extra])
        assert res.exit_code == 0, res.stderr
    assert a.read_bytes() == b.read_bytes()


def test_a_broken_recommendation_is_one_error_line(models):
    res = runner.invoke(app, ["sample", "-m", str(models["broken"]), "-n", "1", "-o", str(models["broken"].with_suffix(".png")), "-q"])
    assert res.exit_code != 0 and "Traceback" not in res.stderr
    assert res.stderr.startswith("error: the model's recommended temperature 'warm' is unusable")
    assert "--temp" in res.stderr
    res = runner.invoke(app, ["sample", "-m", str(models["broken"]), "-n", "1", "--temp", "0.5", "-o", str(models["broken"].with_suffix(".png")), "-q", "--force"])
    assert res.exit_code == 0  # an explicit --temp does not need it
    res = runner.invoke(app, ["sample", "-m", str(models["badpixel"]), "-n", "1", "-o", str(models["broken"].with_suffix(".png")), "-q", "--force"])
    assert res.exit_code != 0 and res.stderr.startswith("error: the model's recommended output temperature '-1' is unusable")
    assert "--output-temp" in res.stderr
    res = runner.invoke(app, ["sample", "-m", str(models["broken"]), "-n", "1", "--temp", "x", "-o", "y.png", "-q"])
    assert "recommended" not in res.stderr and res.stderr.startswith("error:")  # the user's own --temp is named as such


def test_info_shows_it(models):
    res = runner.invoke(app, ["info", "-m", str(models["cool"])])
    assert any(line.split()[:4] == ["temperature", "0.3,", "output", "0.25"] for line in res.stdout.splitlines())
    res = runner.invoke(app, ["info", "-m", str(models["plain"]), "--json"])
    info = json.loads(res.stdout)
    assert info["default_temperature"] is None and info["default_output_temperature"] is None
    res = runner.invoke(app, ["info", "-m", str(models["spec"]), "--json"])
    assert json.loads(res.stdout)["default_temperature"] == "0.9,r32=0.2"


@pytest.mark.slow
def test_export_script_writes_and_checks_it(models, tmp_path):
    def export(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "scripts" / "export_shipped.py"), "fashion32", str(models["plain"]),
                               str(tmp_path / "out.safetensors"), "--wall-time-min", "1", *extra],
                              capture_output=True, text=True)

    done = export("--default-temp", "0.75", "--default-output-temp", "0.5")
    assert done.returncode == 0, done.stderr
    assert default_temperatures(tmp_path / "out.safetensors") == ("0.75", "0.5")
    refused = export("--default-temp", "0-99=0.5", "--force")  # layer 99 does not exist: refused, file kept
    assert refused.returncode != 0
    assert export("--default-output-temp", "-0.5", "--force").returncode != 0
    assert default_temperatures(tmp_path / "out.safetensors") == ("0.75", "0.5")
    scored = export("--ood-score", "complexity", "--ood-source", "validation", "--force")
    assert scored.returncode == 0, scored.stderr
    assert default_ood(tmp_path / "out.safetensors") == {"score": "complexity", "source": "validation"}
    assert export("--ood-score", "magic", "--force").returncode != 0
    assert export("--ood-source", "nothing chosen", "--force").returncode != 0


def test_interpolate_uses_it_too(models, tmp_path):
    """interpolate's --temp/--output-temp say "Default: what the model file recommends"; it used 1.0."""
    def frames(*extra: str) -> tuple[list[dict], list[bytes]]:
        out = tmp_path / f"frames{len(extra)}"
        res = runner.invoke(app, ["interpolate", "-m", str(models["cool"]), "--seeds", "3", "7", "--steps", "3", "--seed", "1",
                                  "--json", "-q", "-o", f"{out}/", *extra])
        assert res.exit_code == 0, res.stderr
        return [json.loads(line) for line in res.stdout.splitlines()], [p.read_bytes() for p in sorted(out.iterdir())]

    records, pictures = frames()
    assert {(r["temp"], r["output_temp"]) for r in records} == {("0.3", 0.25)}
    assert all(t == 0.3 for r in records for t in r["temperatures"])
    assert frames("--temp", "0.3", "--output-temp", "0.25")[1] == pictures


def test_fid_samples_use_it_too(models):
    """``vdvae fid -n`` draws the samples ``vdvae sample`` draws (torch-fidelity not needed for that part)."""
    import torch

    from vdvae_cli.cli._run import Session
    from vdvae_cli.cli.latent_tools import _draw_samples

    images, drawn = _draw_samples(Session(quiet=True), 2, None, None, 3, "auto", str(models["cool"]), "cpu", "fp32", False)
    assert drawn == {"model": "tiny", "temp": "0.3", "output_temp": 0.25, "seed": 3}
    out = models["cool"].with_name("fid-samples")
    res = runner.invoke(app, ["sample", "-m", str(models["cool"]), "-n", "2", "--seed", "3", "-q", "-o", f"{out}/"])
    assert res.exit_code == 0, res.stderr
    from vdvae_cli.base.images import read_image

    expected = torch.from_numpy(np.stack([read_image(p, 32) for p in sorted(out.iterdir())]))
    assert torch.equal(images, expected)
