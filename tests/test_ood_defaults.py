"""``vdvae ood`` without --k: the k and prior temperature a model file records (its card chose them
on held-out data; ``scripts/export_shipped.py --ood-k``), said on stderr; ``vdvae info`` shows them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vdvae_cli.base.errors import CheckpointError
from vdvae_cli.cli import app
from vdvae_cli.modelfiles.checkpoint import save_checkpoint
from vdvae_cli.modelfiles.header import default_ood, ood_settings

runner = CliRunner()


def run(*args, code: int = 0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, f"exit {result.exit_code}: {result.stderr}"
    return result


@pytest.fixture()
def pics(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return sorted(folder.iterdir())


def _ckpt(tmp_path, golden_cfg, golden_state, **meta):
    return save_checkpoint(golden_state, golden_cfg, tmp_path / "m.safetensors", metadata=meta)


def test_ood_settings_are_checked():
    assert ood_settings(None, 13) is None
    assert ood_settings({"k": "8", "prior_temperature": "0.0"}, 13) == (8, 0.0)
    assert ood_settings({"k": "3"}, 13) == (3, 1.0)
    for bad in ({"k": "14"}, {"k": "0"}, {"k": "x"}, {"k": "2", "prior_temperature": "-1"},
                {"k": "2", "prior_temperature": "nan"}):
        with pytest.raises(CheckpointError):
            ood_settings(bad, 13)


def test_ood_without_k_uses_the_recorded_k_and_says_so(tmp_path, golden_cfg, golden_state, pics):
    path = _ckpt(tmp_path, golden_cfg, golden_state, default_ood_k="5", default_ood_prior_temperature="0.0",
                 default_ood_source="flipped Fashion-MNIST validation")
    assert default_ood(path) == {"k": "5", "prior_temperature": "0.0", "source": "flipped Fashion-MNIST validation"}
    plain = run("ood", "-m", path, *pics, "--seed", 1, "--json")
    rows = [json.loads(line) for line in plain.stdout.splitlines()]
    assert {(r["k"], r["prior_temp"]) for r in rows} == {(5, 0.0)}
    assert "--k 5 --prior-temp 0: what the model file records (flipped Fashion-MNIST validation)" in plain.stderr
    chosen = run("ood", "-m", path, *pics, "--seed", 1, "--k", 5, "--prior-temp", 0, "--json")
    assert chosen.stdout == plain.stdout and "records" not in chosen.stderr
    mine = [json.loads(line) for line in run("ood", "-m", path, *pics, "--seed", 1, "--k", 2, "--json").stdout.splitlines()]
    assert {(r["k"], r["prior_temp"]) for r in mine} == {(2, 1.0)}  # --k given: nothing taken from the file
    info = run("info", "-m", path)
    assert "ood          --k 5 --prior-temp 0.0 (flipped Fashion-MNIST validation)" in info.stdout
    assert json.loads(run("info", "-m", path, "--json").stdout)["default_ood"]["k"] == "5"


def test_ood_without_a_record_keeps_k_1(tmp_path, golden_cfg, golden_state, pics):
    path = _ckpt(tmp_path, golden_cfg, golden_state)
    rows = [json.loads(line) for line in run("ood", "-m", path, *pics, "--json").stdout.splitlines()]
    assert {(r["k"], r["prior_temp"]) for r in rows} == {(1, 1.0)}
    assert json.loads(run("info", "-m", path, "--json").stdout)["default_ood"] is None


def test_a_recorded_k_the_model_cannot_take_is_refused(tmp_path, golden_cfg, golden_state, pics):
    path = _ckpt(tmp_path, golden_cfg, golden_state, default_ood_k="99")
    result = run("ood", "-m", path, *pics, code=1)
    assert "k must be 1 to 13" in result.stderr


def test_a_recorded_complexity_score_is_the_default_and_said(tmp_path, golden_cfg, golden_state, pics):
    path = _ckpt(tmp_path, golden_cfg, golden_state, default_ood_score="complexity",
                 default_ood_source="flipped and inverted Fashion-MNIST validation")
    assert default_ood(path) == {"score": "complexity", "source": "flipped and inverted Fashion-MNIST validation"}
    plain = run("ood", "-m", path, *pics, "--seed", 1, "--json")
    rows = [json.loads(line) for line in plain.stdout.splitlines()]
    assert {r["score_kind"] for r in rows} == {"complexity"}
    assert "--score complexity: what the model file records (flipped and inverted" in plain.stderr
    chosen = run("ood", "-m", path, *pics, "--seed", 1, "--score", "complexity", "--json")
    assert chosen.stdout == plain.stdout and "records" not in chosen.stderr
    with_k = [json.loads(line) for line in run("ood", "-m", path, *pics, "--k", 2, "--json").stdout.splitlines()]
    assert {(r["score_kind"], r["k"]) for r in with_k} == {("llr", 2)}  # --k asks for the likelihood ratio
    assert "ood          --score complexity (flipped and inverted" in run("info", "-m", path).stdout
    assert json.loads(run("info", "-m", path, "--json").stdout)["default_ood"]["score"] == "complexity"


def test_an_unknown_recorded_score_is_refused(tmp_path, golden_cfg, golden_state, pics):
    path = _ckpt(tmp_path, golden_cfg, golden_state, default_ood_score="magic")
    result = run("ood", "-m", path, *pics, code=1)
    assert result.stderr.count("error:") == 1 and "it must be one of llr, complexity" in result.stderr


def test_a_recorded_prior_temperature_out_of_range_is_the_files_fault(tmp_path, golden_cfg, golden_state, pics):
    # 1e300 got past the check (finite, >= 0) and failed as a usage error (exit 2) naming layer 0
    path = _ckpt(tmp_path, golden_cfg, golden_state, default_ood_k="5", default_ood_prior_temperature="1e300")
    result = run("ood", "-m", path, *pics, "--seed", 1, code=1)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(lines) == 1 and result.stderr.strip().endswith(lines[0]) and "Traceback" not in result.stderr
    assert "the model file records ood k=5, prior temperature 1e+300" in lines[0] and "from 0 to 10" in lines[0]
