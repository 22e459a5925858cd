"""Every command on a PixelCNN++ file either works (sample, eval, info, train) or refuses in one
line that says why (the commands on latents)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clirun import vdvae
from vdvae_cli.engine import ops
from vdvae_cli.families.pixelcnn.config import PixelCNNConfig
from vdvae_cli.families.pixelcnn.network import PixelCNNPP
from vdvae_cli.modelfiles.checkpoint import load_file_model, save_checkpoint


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = PixelCNNConfig(image_size=8, channels=1, nr_resnet=1, nr_filters=8, nr_logistic_mix=2, dropout=0.0,
                         name="px8")
    net = PixelCNNPP(cfg).eval()
    return save_checkpoint(net, cfg, tmp_path_factory.mktemp("px") / "px8.safetensors")


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)).save(path)
    return path


def test_sample_writes_reproducible_images(model_file, tmp_path):
    vdvae("sample", "--model", model_file, "-n", 3, "--seed", 4, "-o", f"{tmp_path / 'a'}/")
    vdvae("sample", "--model", model_file, "-n", 3, "--seed", 4, "--batch-size", 1, "-o", f"{tmp_path / 'b'}/")
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert len(names) == 3 and names == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in names:
        a, b = (np.asarray(Image.open(tmp_path / d / name)) for d in "ab")
        assert a.shape[:2] == (8, 8) and np.array_equal(a, b)
    result = vdvae("sample", "--model", model_file, "--temp", "0.5", "--seed", 1, "-o", tmp_path / "t.png")
    assert "--temp 0.5 does not apply" in result.stderr


def test_eval_reports_the_exact_likelihood(model_file, image):
    result = vdvae("eval", image, "--model", model_file, "--json")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    summary = rows[-1]
    assert summary["type"] == "summary" and summary["bound"] == "exact" and summary["kl_bits_per_layer"] == []
    px = torch.from_numpy(np.asarray(Image.open(image)).copy())[None, :, :, None]
    expected = float(ops.elbo(load_file_model(model_file), px).distortion[0]) / math.log(2)
    assert summary["bits_per_dim"] == pytest.approx(expected, rel=1e-6)
    assert summary["rate_bits_per_dim"] == 0.0
    text = vdvae("eval", image, "--model", model_file).stdout
    assert "exact negative log-likelihood" in text and "KL per latent layer" not in text
    refused = vdvae("eval", image, "--model", model_file, "--samples", 4, code=2)
    assert "importance sampling has nothing to tighten" in refused.stderr


def test_info_describes_it(model_file):
    data = json.loads(vdvae("info", "--model", model_file, "--json").stdout)
    assert data["family"] == "pixelcnn" and data["n_layers"] == 0 and data["layers"] == []
    assert data["config"]["nr_filters"] == 8
    text = vdvae("info", "--model", model_file).stdout
    assert "PIXELCNN" in text and "sampled pixel by pixel" in text


@pytest.mark.parametrize("argv", [
    ["reconstruct", "{img}", "-o", "{out}/r.png"],
    ["encode", "{img}", "-o", "{out}/z.npz"],
    ["mix", "{img}", "{img}", "--keep-layers", "1", "-o", "{out}/m.png"],
    ["interpolate", "{img}", "{img}", "--steps", "3", "--grid", "-o", "{out}/i.png"],
    ["ood", "--in", "{img}", "--out", "{img}"],
    ["inpaint", "{img}", "--mask", "{img}", "-o", "{out}/p.png"],
    ["upscale", "{img}", "-o", "{out}/u.png"],
    ["denoise", "{img}", "--sigma", "0.1", "-o", "{out}/d.png"],
    ["deblur", "{img}", "--blur", "gaussian:1", "-o", "{out}/b.png"],
])
def test_commands_on_latents_refuse_in_one_line(model_file, image, tmp_path, argv):
    args = [a.format(img=image, out=tmp_path) for a in argv]
    result = vdvae(*args, "--model", model_file, code=2)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"`vdvae {argv[0]}` needs latent layers" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_decode_refuses(model_file, tmp_path):
    latents = tmp_path / "z.npz"
    np.savez(latents, z0=np.zeros((1, 1, 1, 1), dtype=np.float32))
    result = vdvae("decode", latents, "--model", model_file, "-o", tmp_path / "o.png", code=2)
    assert "needs latent layers" in result.stderr or "latents" in result.stderr
    assert not (tmp_path / "o.png").exists()


def test_train_a_few_steps_and_sample_the_result(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8)
    data[:, :4] = 0  # something to learn: a dark top half
    np.save(tmp_path / "d.npy", data)
    (tmp_path / "px.json").write_text(json.dumps({"family": "pixelcnn", "image_size": 8, "channels": 1,
                                                   "nr_resnet": 1, "nr_filters": 8, "nr_logistic_mix": 2,
                                                   "dropout": 0.1}))
    result = vdvae("train", tmp_path / "d.npy", "-o", tmp_path / "run", "--hparams", tmp_path / "px.json",
                   "--steps", 30, "-b", 16, "--lr", 3e-3, "--json")
    evals = [json.loads(line) for line in result.stdout.splitlines() if '"eval"' in line]
    assert evals[-1]["rate_bpd"] == 0.0 and evals[-1]["layer_bits"] == []
    assert evals[-1]["train_bpd"] < 7.5  # below the 8 bits of a uniform guess
    model = tmp_path / "run" / "model.safetensors"
    assert json.loads(vdvae("info", "--model", model, "--json").stdout)["family"] == "pixelcnn"
    vdvae("sample", "--model", model, "-n", 2, "--grid", "--seed", 1, "-o", tmp_path / "s.png")
    assert Image.open(tmp_path / "s.png").size[0] >= 16
    assert list((tmp_path / "run" / "samples").glob("*.png"))
