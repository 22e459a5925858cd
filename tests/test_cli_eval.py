"""``vdvae eval`` and ``vdvae info`` on the tiny checkpoint, checked against ``ops.elbo`` and the config."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vdvae_cli.engine import ops
from vdvae_cli.cli import app
from vdvae_cli.engine.distributions import PerImageNoise
from vdvae_cli.engine.runtime import image_generators

runner = CliRunner()
LN2 = math.log(2)


def vdvae(*args, input: bytes | None = None):
    result = runner.invoke(app, [str(a) for a in args], input=input)
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.stderr}"
    return result


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def line_starting(lines: list[str], prefix: str) -> str:
    return next(line for line in lines if line.startswith(prefix))


@pytest.fixture()
def pics(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    paths = []
    for i in range(3):
        img = np.clip(rng.normal(128, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
        path = folder / f"img{i}.png"
        Image.fromarray(img).save(path)
        paths.append(path)
    return paths


def engine(model, paths, seed, samples=1):
    x = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths]))
    return ops.elbo(model, x, samples=samples, noise=PerImageNoise(image_generators(seed, range(len(paths)))))


def test_eval_json_matches_the_engine(tiny_ckpt, golden_model, golden_cfg, pics):
    result = vdvae("eval", "-m", tiny_ckpt, pics[0].parent, "--seed", 3, "--json")
    *rows, summary = json_lines(result.stdout)
    ref = engine(golden_model, pics, 3)
    assert [r["input"] for r in rows] == [str(p) for p in pics]
    for j, row in enumerate(rows):
        assert row["type"] == "image" and row["index"] == j and row["seed"] == 3 and row["bound"] == "elbo"
        assert row["nats_per_dim"] == pytest.approx(float(ref.nll_bound[j]), rel=1e-6)
        assert row["bits_per_dim"] == pytest.approx(float(ref.nll_bound[j]) / LN2, rel=1e-6)
        assert row["distortion_bits_per_dim"] == pytest.approx(float(ref.distortion[j]) / LN2, rel=1e-6)
        assert row["rate_bits_per_dim"] == pytest.approx(float(ref.rate[j]) / LN2, rel=1e-6)
        assert row["bits_per_dim"] == pytest.approx(row["distortion_bits_per_dim"] + row["rate_bits_per_dim"])
        assert row["elbo_bits_per_dim"] == pytest.approx(row["bits_per_dim"])
        kl = row["kl_bits_per_layer"]
        assert len(kl) == 13 and min(kl) >= 0
        # The CLI runs channels-last (other conv kernels than the NCHW engine call): KL to 1e-5.
        assert kl == pytest.approx((ref.kl_per_layer[j].double() * golden_cfg.n_dims / LN2).tolist(), rel=1e-5)
        assert sum(kl) / golden_cfg.n_dims == pytest.approx(row["rate_bits_per_dim"], rel=1e-6)
    assert summary["type"] == "summary" and summary["images"] == 3
    for key in ("bits_per_dim", "nats_per_dim", "distortion_bits_per_dim", "rate_bits_per_dim"):
        assert summary[key] == pytest.approx(np.mean([r[key] for r in rows]))
    assert summary["kl_bits_per_layer"] == pytest.approx(np.mean([r["kl_bits_per_layer"] for r in rows], axis=0))
    assert "seed 3" not in result.stderr  # a given seed is not announced


def test_eval_does_not_depend_on_batch_size(tiny_ckpt, pics):
    one = json_lines(vdvae("eval", "-m", tiny_ckpt, *pics, "--seed", 1, "--json", "-b", 1).stdout)
    three = json_lines(vdvae("eval", "-m", tiny_ckpt, *pics, "--seed", 1, "--json", "-b", 3).stdout)
    for a, b in zip(one, three):
        assert a["bits_per_dim"] == pytest.approx(b["bits_per_dim"], rel=1e-6)
        assert a["kl_bits_per_layer"] == pytest.approx(b["kl_bits_per_layer"], rel=1e-5)


def test_importance_weighted_bound(tiny_ckpt, golden_model, pics):
    result = vdvae("eval", "-m", tiny_ckpt, *pics[:2], "--samples", 4, "--seed", 2, "--json")
    *rows, summary = json_lines(result.stdout)
    ref = engine(golden_model, pics[:2], 2, samples=4)
    for j, row in enumerate(rows):
        assert row["bound"] == "importance-weighted" and row["samples"] == 4
        assert row["nats_per_dim"] == pytest.approx(float(ref.nll_bound[j]), rel=1e-6)
        assert row["elbo_bits_per_dim"] == pytest.approx(float(ref.elbo[j]) / LN2, rel=1e-6)
        assert row["bits_per_dim"] != pytest.approx(row["elbo_bits_per_dim"])
    assert summary["samples"] == 4 and summary["bound"] == "importance-weighted"


def test_eval_table(tiny_ckpt, pics):
    result = vdvae("eval", "-m", tiny_ckpt, *pics, "--seed", 0)
    lines = result.stdout.splitlines()
    assert lines[0] == "tiny: 3 images, negative ELBO"
    assert lines[1].split() == ["image", "bits/dim", "nats/dim", "distortion", "rate"]
    assert [line.split()[0] for line in lines[2:6]] == [*(str(p) for p in pics), "mean"]
    start = lines.index("KL per latent layer (mean over the images)")
    table = lines[start + 2: start + 15]
    assert [int(line.split()[0]) for line in table] == list(range(13))
    assert [int(line.split()[1]) for line in table] == [1, 1, 4, 4, 4, 8, 8, 8, 16, 16, 16, 32, 32]
    shares = [float(line.split()[3].rstrip("%")) for line in table]
    assert sum(shares) == pytest.approx(100, abs=0.5)
    assert lines[start + 15].startswith("by resolution: 1: ")
    # the table's numbers are the JSON's numbers
    summary = json_lines(vdvae("eval", "-m", tiny_ckpt, *pics, "--seed", 0, "--json").stdout)[-1]
    assert float(lines[5].split()[1]) == pytest.approx(summary["bits_per_dim"], abs=1e-4)
    assert float(table[12].split()[2]) == pytest.approx(summary["kl_bits_per_layer"][12], abs=0.01)


def test_eval_reads_stdin(tiny_ckpt, pics):
    rows = json_lines(vdvae("eval", "-m", tiny_ckpt, "-", "--seed", 0, "--json", input=pics[1].read_bytes()).stdout)
    direct = json_lines(vdvae("eval", "-m", tiny_ckpt, pics[1], "--seed", 0, "--json").stdout)
    assert rows[0]["input"] == "stdin"
    assert rows[0]["bits_per_dim"] == pytest.approx(direct[0]["bits_per_dim"], rel=1e-9)


def test_info_table(tiny_ckpt, golden_cfg, golden_hparams):
    lines = vdvae("info", "-m", tiny_ckpt).stdout.splitlines()
    assert lines[0].split() == ["model", "tiny"]
    assert "13 layers" in line_starting(lines, "latents")
    assert f"{golden_hparams['derived']['n_params']:,}" in line_starting(lines, "parameters")
    assert line_starting(lines, "--keep-res").endswith(
        "1 -> 2 layers, 4 -> 5 layers, 8 -> 8 layers, 16 -> 11 layers, 32 -> 13 layers")
    header = lines.index(line_starting(lines, "layer "))
    rows = [line.split() for line in lines[header + 1:]]
    assert len(rows) == 13
    for row, layer in zip(rows, golden_hparams["derived"]["dec_layers"]):
        assert [int(v) for v in row[:4]] == [layer["index"], layer["res"], layer["width"], 4]
        assert row[4] == (str(layer["mixin"]) if layer["mixin"] else "-")


def test_info_json(tiny_ckpt, golden_cfg, golden_hparams, golden_state):
    from vdvae_cli.engine.statedict import weights_digest
    from vdvae_cli.engine.latents import model_fingerprint

    out = json_lines(vdvae("info", "-m", tiny_ckpt, "--json").stdout)
    assert len(out) == 1
    info = out[0]
    assert info["model"] == "tiny" and info["n_layers"] == 13 and info["image_size"] == 32
    assert info["path"] == str(tiny_ckpt) and info["source"] == "file"
    assert info["parameters"] == golden_hparams["derived"]["n_params"]
    assert info["fingerprint"] == model_fingerprint(golden_cfg, weights_digest(golden_state))
    assert info["resolutions"] == [1, 4, 8, 16, 32]
    assert info["layers_up_to_res"] == {"1": 2, "4": 5, "8": 8, "16": 11, "32": 13}
    assert [(l["index"], l["res"], l["width"], l["zdim"]) for l in info["layers"]] == [
        (l.index, l.res, l.width, l.zdim) for l in golden_cfg.decoder_layers
    ]
    assert info["config"] == golden_cfg.to_dict()


def test_info_uses_vdvae_model(tiny_ckpt, monkeypatch):
    monkeypatch.setenv("VDVAE_MODEL", str(tiny_ckpt))
    assert json.loads(vdvae("info", "--json").stdout)["path"] == str(tiny_ckpt)
