"""A third model family that no package file names (``tests/toyfamily``), installed as a plugin
package installs one, through the real command line: the seam between the engine and the families
is real when a newcomer can add a family without editing ``src/``.

The plugin is declared the way an installed distribution declares it: a ``*.dist-info`` folder whose
``entry_points.txt`` puts ``toy = toyfamily.family:FAMILY`` in the ``vdvae_cli.families`` group, on
``PYTHONPATH`` beside the ``toyfamily`` package. Every command runs in a fresh interpreter, so the
registry finds the family through ``importlib.metadata`` exactly as for a pip-installed plugin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory) -> dict[str, str]:
    site = tmp_path_factory.mktemp("site")
    info = site / "vdvae_toy_family-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vdvae-toy-family\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[vdvae_cli.families]\ntoy = toyfamily.family:FAMILY\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(TESTS), str(SRC), env.get("PYTHONPATH", "")])
    env["VDVAE_DEVICE"] = "cpu"
    return env


def vdvae(env: dict[str, str], *args, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "vdvae_cli", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    if ok:
        assert proc.returncode == 0, f"vdvae {' '.join(map(str, args))} failed:\n{proc.stderr}"
        assert "Traceback" not in proc.stderr
    return proc


@pytest.fixture(scope="module")
def toy_run(plugin_env, tmp_path_factory):
    """Train the toy family for two steps from the command line; its model file is the plugin's."""
    work = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(0)
    images = (rng.random((24, 8, 8, 3)) * 255).astype(np.uint8)
    images[:, :4] //= 3  # some structure: a darker top half
    np.save(work / "train.npy", images)
    for j in range(4):
        Image.fromarray(images[j]).save(work / f"img{j}.png")
    (work / "in").mkdir()
    (work / "out").mkdir()
    for j in range(4):
        Image.fromarray(images[j]).save(work / "in" / f"{j}.png")
        Image.fromarray(255 - images[j]).save(work / "out" / f"{j}.png")
    vdvae(plugin_env, "train", "train.npy", "--config", "toy8", "--steps", "2", "-o", "run", "-q", cwd=work)
    return work, work / "run" / "model.safetensors"


def test_nothing_under_src_names_the_toy_family():
    for path in SRC.rglob("*"):
        if path.is_file() and path.suffix in (".py", ".toml", ".txt", ".md"):
            assert "toyfamily" not in path.read_text(errors="replace"), path


def test_train_writes_a_self_describing_toy_file(toy_run, plugin_env):
    work, model = toy_run
    assert model.is_file()
    info = json.loads(vdvae(plugin_env, "info", "--model", model, "--json", cwd=work).stdout)
    assert info["family"] == "toy"
    assert [layer["res"] for layer in info["layers"]] == [1, 4]


def test_progressive_on_a_family_without_stages_is_one_line(toy_run, plugin_env):
    """The toy decoder has no stage= option: --progressive is refused before any step, in one line."""
    work, _ = toy_run
    proc = vdvae(plugin_env, "train", "train.npy", "--config", "toy8", "--steps", "8", "--progressive", "2", "-o", "prog",
                 "-q", cwd=work, ok=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "no progressive stages" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 2


@pytest.mark.slow
def test_sample_reconstruct_mix(toy_run, plugin_env):
    work, model = toy_run
    vdvae(plugin_env, "sample", "--model", model, "-n", 3, "--seed", 0, "-o", "s/", cwd=work)
    shots = sorted((work / "s").iterdir())
    assert len(shots) == 3 and all(np.asarray(Image.open(p)).shape == (8, 8, 3) for p in shots)
    again = work / "again"
    vdvae(plugin_env, "sample", "--model", model, "-n", 3, "--seed", 0, "-o", f"{again}/", cwd=work)
    for a, b in zip(shots, sorted(again.iterdir())):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))  # --seed reproduces
    vdvae(plugin_env, "reconstruct", "--model", model, "img0.png", "--keep-layers", 1, "--seed", 1,
          "-o", "r.png", cwd=work)
    assert np.asarray(Image.open(work / "r.png")).shape == (8, 8, 3)
    vdvae(plugin_env, "mix", "--model", model, "img0.png", "img1.png", "img2.png", "--keep-layers", 1,
          "--seed", 2, "-o", "m/", cwd=work)
    assert len(list((work / "m").iterdir())) == 2


@pytest.mark.slow
def test_encode_decode_roundtrip(toy_run, plugin_env):
    work, model = toy_run
    vdvae(plugin_env, "encode", "--model", model, "img0.png", "img1.png", "--posterior", "mean",
          "-o", "z.safetensors", cwd=work)
    vdvae(plugin_env, "decode", "--model", model, "z.safetensors", "--output-temp", 0, "-o", "d/", cwd=work)
    vdvae(plugin_env, "reconstruct", "--model", model, "img0.png", "img1.png", "--posterior", "mean",
          "--output-temp", 0, "-o", "rr/", cwd=work)
    decoded = [np.asarray(Image.open(p)) for p in sorted((work / "d").iterdir())]
    direct = [np.asarray(Image.open(p)) for p in sorted((work / "rr").iterdir())]
    assert len(decoded) == 2 and all(np.array_equal(a, b) for a, b in zip(decoded, direct))


@pytest.mark.slow
def test_eval_ood_interpolate(toy_run, plugin_env):
    work, model = toy_run
    rows = [json.loads(line) for line in
            vdvae(plugin_env, "eval", "--model", model, "in/", "--seed", 0, "--json", cwd=work).stdout.splitlines()]
    per_image = [r for r in rows if r.get("type") == "image"]
    assert len(per_image) == 4 and all(0 < r["bits_per_dim"] < 20 for r in per_image)
    assert all(len(r["kl_bits_per_layer"]) == 2 for r in per_image)
    ood = vdvae(plugin_env, "ood", "--model", model, "--in", "in/", "--out", "out/", "--k", 1, "--seed", 0,
                "--json", cwd=work)
    assert ood.stdout.strip()
    vdvae(plugin_env, "interpolate", "--model", model, "img0.png", "img1.png", "--steps", 3, "-o", "i/", cwd=work)
    assert len(list((work / "i").iterdir())) >= 3


def test_refusals_are_one_line(toy_run, plugin_env):
    work, model = toy_run
    proc = vdvae(plugin_env, "sample", "--model", model, "--readjust-bn", "-o", "x.png", cwd=work, ok=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        "error: the toy family has no BatchNorm"]


def test_without_the_plugin_the_file_is_refused_by_name(toy_run):
    work, model = toy_run
    env = dict(os.environ, PYTHONPATH=str(SRC), VDVAE_DEVICE="cpu")
    proc = vdvae(env, "info", "--model", model, cwd=work, ok=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "unknown model family 'toy'" in proc.stderr
