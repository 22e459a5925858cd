"""``vdvae fid`` and the checked download of its Inception weights.

The weights are served from 127.0.0.1: a randomly initialised copy of torch-fidelity's own
InceptionV3, so the numbers are not real FIDs, but they must equal what torch-fidelity computes
when called directly with the same file. Tests that need torch-fidelity skip where it is not
installed (it needs a torchvision that matches the installed torch); the download, the error when
it is missing and the argument checks run everywhere.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from httpserver import LocalServer
from PIL import Image
from typer.testing import CliRunner

from vdvae_cli.tools import fid
from vdvae_cli.modelfiles import fetch, paths
from vdvae_cli.engine import ops
from vdvae_cli.cli import app
from vdvae_cli.engine.distributions import PerImageNoise
from vdvae_cli.base.errors import NetworkError
from vdvae_cli.engine.runtime import image_generators

runner = CliRunner()
WEIGHTS = "/releases/weights-inception-test-0123abcd.pth"


def vdvae(*args, code: int = 0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, f"exit {result.exit_code}: {result.stderr}"
    return result


@pytest.fixture()
def server(tmp_path):
    with LocalServer(tmp_path / "www") as srv:
        yield srv


def images_dir(path: Path, seed: int, n: int = 5) -> Path:
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    for i in range(n):
        img = np.clip(rng.normal(100 + 30 * seed, 60, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(path / f"{i:03d}.png")
    return path


# --------------------------------------------------------------------------------------------------
# the checked download (no torch-fidelity needed)


def test_fetch_checked_downloads_once_with_progress_and_hash(server, monkeypatch):
    data = b"weights" * 100_000
    server.put(WEIGHTS, data)
    digest = hashlib.sha256(data).hexdigest()
    seen = []
    path = fetch.fetch_checked(server.url + WEIGHTS, digest[:8], progress=seen.append)
    assert path.read_bytes() == data and path.parent == paths.cache_dir() / "files"
    assert seen[-1].stage == "done" and any(p.stage == "download" and p.done == len(data) for p in seen)
    assert fetch.fetch_checked(server.url + WEIGHTS, digest) == path  # full digest, from the cache
    assert server.count(WEIGHTS, "GET") == 1
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert fetch.fetch_checked(server.url + WEIGHTS, digest) == path  # offline is fine once cached


def test_fetch_checked_refuses_a_file_with_another_hash(server):
    server.put(WEIGHTS, b"not the weights")
    with pytest.raises(NetworkError, match="expected sha256"):
        fetch.fetch_checked(server.url + WEIGHTS, "0123abcd")
    assert not (paths.cache_dir() / "files" / Path(WEIGHTS).name).exists()


def test_fetch_checked_offline_and_unreachable(server, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(NetworkError, match="HF_HUB_OFFLINE"):
        fetch.fetch_checked(server.url + WEIGHTS, "0123abcd")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    server.stop()
    with pytest.raises(NetworkError, match="cannot reach 127.0.0.1"):
        fetch.fetch_checked(server.url + WEIGHTS, "0123abcd")


def test_missing_library_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # import fails as if not installed
    a, b = images_dir(tmp_path / "a", 0), images_dir(tmp_path / "b", 1)
    result = vdvae("fid", a, b, code=1)
    assert result.stderr.startswith("error: FID and KID need the optional package torch-fidelity")
    assert "pip install 'vdvae-cli[fid]'" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["{a}"], "fid compares two folders"),
    (["{a}", "{a}", "-n", "4"], "with -n the samples come from the model"),
    (["{a}", "-n", "1"], "-n must be at least 2"),
    (["{a}", "{tmp}/none"], "no such folder"),
])
def test_fid_usage_errors(tmp_path, args, message):
    a = images_dir(tmp_path / "a", 0)
    args = [x.replace("{a}", str(a)).replace("{tmp}", str(tmp_path)) for x in args]
    result = runner.invoke(app, ["fid", *args])
    assert result.exit_code in (1, 2) and message in result.stderr, result.stderr


# --------------------------------------------------------------------------------------------------
# against torch-fidelity itself


@pytest.fixture()
def fidelity():
    return pytest.importorskip("torch_fidelity")


@pytest.fixture()
def served_weights(fidelity, server, monkeypatch, tmp_path):
    """A randomly initialised torch-fidelity InceptionV3, served as the Inception weights file."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    empty = tmp_path / "empty.pth"
    torch.save({}, empty)
    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as patch:  # build the network without loading any weights
        patch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    with torch.no_grad():  # variance-preserving init, so that 90 layers deep the features still differ
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    local = tmp_path / "random-inception.pth"
    torch.save(net.state_dict(), local)
    data = local.read_bytes()
    server.put(WEIGHTS, data)
    monkeypatch.setattr(fid, "INCEPTION_URL", server.url + WEIGHTS)
    monkeypatch.setattr(fid, "INCEPTION_SHA256", hashlib.sha256(data).hexdigest())
    return local


def direct(fidelity, a, b, weights, subset):
    return fidelity.calculate_metrics(input1=a, input2=b, fid=True, kid=True, kid_subset_size=subset, cuda=False,
                                      feature_extractor_weights_path=str(weights), cache=False, verbose=False,
                                      save_cpu_ram=True)


def test_fid_of_two_folders_is_torch_fidelity(fidelity, served_weights, server, tmp_path):
    a, b = images_dir(tmp_path / "a", 0, n=4), images_dir(tmp_path / "b", 1)
    out = json.loads(vdvae("fid", a, b, "--json", "--device", "cpu").stdout)
    ref = direct(fidelity, str(a), str(b), served_weights, 4)
    assert out["fid"] == pytest.approx(ref["frechet_inception_distance"], rel=1e-6)
    assert out["kid_mean"] == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-6)
    assert out["kid_std"] == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-6)
    assert (out["n1"], out["n2"], out["kid_subset_size"]) == (4, 5, 4) and out["fid"] > 1.0
    same = json.loads(vdvae("fid", a, a, "--json").stdout)
    assert abs(same["fid"]) < 1e-6 * out["fid"]  # ~0 up to the matrix square root's rounding
    # KID is unbiased, so ~0 up to its subset noise, which is large with 4 images (seen: -0.17x the a-b value)
    assert abs(same["kid_mean"]) < 0.5 * out["kid_mean"]
    assert server.count(WEIGHTS, "GET") == 1  # fetched once, then read from the cache


def test_fid_of_model_samples(fidelity, served_weights, tiny_ckpt, golden_model, tmp_path):
    b = images_dir(tmp_path / "b", 1, n=3)
    out = json.loads(vdvae("fid", b, "-m", tiny_ckpt, "-n", 4, "--seed", 2, "--temp", 0.5, "--json").stdout)
    samples = ops.sample(golden_model, 4, temperatures=0.5, noise=PerImageNoise(image_generators(2, range(4))))
    ref = direct(fidelity, fid._dataset(samples), str(b), served_weights, 3)
    assert out["fid"] == pytest.approx(ref["frechet_inception_distance"], rel=1e-6)
    assert (out["model"], out["seed"], out["n1"]) == ("tiny", 2, 4)
