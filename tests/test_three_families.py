"""The same commands over the three families (VDVAE, NVAE, PixelCNN++): what every model answers
(sample, eval, info) works alike, and what needs latent layers works for the VAEs and is one
refusal line for the autoregressive model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vdvae_cli.cli import app

NVAE_DATA = Path(__file__).parent / "data" / "golden-nvae"
runner = CliRunner()


def vdvae(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_ckpt) -> dict[str, Path]:
    from vdvae_cli.families.pixelcnn.config import PixelCNNConfig
    from vdvae_cli.families.pixelcnn.network import PixelCNNPP
    from vdvae_cli.modelfiles.checkpoint import save_checkpoint

    folder = tmp_path_factory.mktemp("families")
    nvae = folder / "nvae.safetensors"
    assert vdvae("convert", NVAE_DATA / "tiny-nvae.pt", "-o", nvae).exit_code == 0
    torch.manual_seed(0)
    cfg = PixelCNNConfig(image_size=32, channels=3, nr_resnet=1, nr_filters=4, nr_logistic_mix=2, dropout=0.0, name="px")
    px = save_checkpoint(PixelCNNPP(cfg), cfg, folder / "px.safetensors")
    return {"vdvae": tiny_ckpt, "nvae": nvae, "pixelcnn": px}


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("family", ["vdvae", "nvae", "pixelcnn"])
def test_what_every_model_answers(files, image, tmp_path, family):
    model = files[family]
    info = json.loads(vdvae("info", "--model", model, "--json").stdout)
    assert info["family"] == family and info["image_size"] == 32
    result = vdvae("sample", "--model", model, "-n", 2, "--seed", 3, "--json", "-o", f"{tmp_path}/s/")
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["index"] for r in records] == [0, 1]
    for r in records:
        assert np.asarray(Image.open(r["path"])).shape == (32, 32, 3)
    summary = json.loads(vdvae("eval", image, "--model", model, "--json", "--seed", 1).stdout.splitlines()[-1])
    assert summary["type"] == "summary" and np.isfinite(summary["bits_per_dim"])
    assert summary["bound"] == ("exact" if family == "pixelcnn" else "elbo")
    assert (summary["rate_bits_per_dim"] == 0) == (family == "pixelcnn")


@pytest.mark.parametrize("family", ["vdvae", "nvae", "pixelcnn"])
@pytest.mark.parametrize("command", ["reconstruct", "encode", "mix"])
def test_commands_on_latents(files, image, tmp_path, family, command):
    out = tmp_path / ("z.npz" if command == "encode" else "o.png")
    extra = {"mix": [image, "--keep-layers", 1]}.get(command, [])
    result = vdvae(command, image, *extra, "--model", files[family], "-o", out, "--seed", 1)
    if family == "pixelcnn":
        assert result.exit_code == 2 and "needs latent layers" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()
    else:
        assert result.exit_code == 0, result.stderr
        assert out.is_file() and out.stat().st_size > 0
