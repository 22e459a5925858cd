"""``vdvae sample | reconstruct | mix | encode | decode`` through CliRunner on the tiny checkpoint,
checked against the engine (``vdvae_cli.engine.ops``) called with the same per-image generators."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from vdvae_cli.engine import ops
from vdvae_cli.cli import app
from vdvae_cli.engine.distributions import PerImageNoise
from vdvae_cli.engine.runtime import image_generators

runner = CliRunner()


def vdvae(*args, input: bytes | None = None, ok: bool = True):
    result = runner.invoke(app, [str(a) for a in args], input=input)
    if ok:
        assert result.exit_code == 0, f"exit {result.exit_code}: {result.stderr}"
    return result


def png(path_or_bytes) -> np.ndarray:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def folder(path: Path) -> np.ndarray:
    return np.stack([png(p) for p in sorted(path.iterdir())])


def noise(seed: int, indices) -> PerImageNoise:
    return PerImageNoise(image_generators(seed, list(indices)))


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture()
def model(golden_model):
    return golden_model  # the same weights as tiny_ckpt


@pytest.fixture()
def pics(tmp_path) -> list[Path]:
    """Three smooth 32x32 test images (gradients + a square), written as PNGs named a, b, c."""
    yy, xx = np.mgrid[0:32, 0:32]
    out = []
    for i, name in enumerate("abc"):
        img = np.stack([(xx * 8 + 40 * i) % 256, (yy * 8) % 256, np.full_like(xx, 60 * i)], axis=-1).astype(np.uint8)
        img[8 + i: 20 + i, 10:22] = [250, 20 * i, 5]
        path = tmp_path / "in" / f"{name}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(img).save(path)
        out.append(path)
    return out


def pixels(paths) -> torch.Tensor:
    return torch.from_numpy(np.stack([png(p) for p in paths]))


# --------------------------------------------------------------------------------------------------
# sample


def test_sample_to_folder_with_json(tiny_ckpt, tmp_path):
    out = tmp_path / "samples"
    result = vdvae("sample", "-m", tiny_ckpt, "-n", 3, "--seed", 11, "-o", f"{out}/", "--json", "--temp", "0.7")
    names = sorted(os.listdir(out))
    assert names == ["sample_00000.png", "sample_00001.png", "sample_00002.png"]
    imgs = folder(out)
    assert imgs.shape == (3, 32, 32, 3) and imgs.dtype == np.uint8
    assert len({img.tobytes() for img in imgs}) == 3
    records = json_lines(result.stdout)
    assert [r["index"] for r in records] == [0, 1, 2]
    assert [r["path"] for r in records] == [str(out / n) for n in names]
    assert all(r["seed"] == 11 and r["model"] == "tiny" and r["temperatures"] == [0.7] * 13 for r in records)
    assert all(r["batch_seconds"] >= 0 and r["output_temp"] == 1.0 for r in records)
    assert "wrote 3 images" in result.stderr


def test_sample_is_the_engine_with_per_image_generators(tiny_ckpt, tmp_path, model):
    spec = "0.5,r32=0.1,0-1=1.0:0.8"
    vdvae("sample", "-m", tiny_ckpt, "-n", 2, "--seed", 5, "--temp", spec, "--output-temp", 0.7, "-o", f"{tmp_path}/s/")
    temps = [1.0, 0.8] + [0.5] * 9 + [0.1, 0.1]
    expected = ops.sample(model, 2, temperatures=temps, output_temperature=0.7, noise=noise(5, [0, 1]))
    np.testing.assert_array_equal(folder(tmp_path / "s"), expected.numpy())


def test_seeded_samples_do_not_depend_on_batch_size(tiny_ckpt, tmp_path):
    vdvae("sample", "-m", tiny_ckpt, "-n", 5, "--seed", 7, "--batch-size", 2, "-o", f"{tmp_path}/b2/")
    vdvae("sample", "-m", tiny_ckpt, "-n", 5, "--seed", 7, "--batch-size", 5, "-o", f"{tmp_path}/b5/")
    vdvae("sample", "-m", tiny_ckpt, "-n", 3, "--seed", 7, "--batch-size", 1, "-o", f"{tmp_path}/n3/")
    vdvae("sample", "-m", tiny_ckpt, "-n", 5, "--seed", 8, "-o", f"{tmp_path}/other/")
    b2, b5, n3, other = (folder(tmp_path / d) for d in ("b2", "b5", "n3", "other"))
    np.testing.assert_array_equal(b2, b5)
    np.testing.assert_array_equal(n3, b5[:3])  # image i depends only on (seed, i)
    assert not np.array_equal(other, b5)


def test_zero_temperatures_are_deterministic_and_seed_independent(tiny_ckpt, tmp_path, model):
    for seed in (1, 2):
        vdvae("sample", "-m", tiny_ckpt, "-n", 2, "--temp", 0, "--output-temp", 0, "--seed", seed,
              "-o", f"{tmp_path}/s{seed}/")
    s1, s2 = folder(tmp_path / "s1"), folder(tmp_path / "s2")
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(s1[0], s1[1])
    np.testing.assert_array_equal(s1, ops.sample(model, 2, temperatures=0.0, output_temperature=0.0).numpy())


def test_unseeded_run_reports_its_seed_and_can_be_repeated(tiny_ckpt, tmp_path):
    first = vdvae("sample", "-m", tiny_ckpt, "-o", tmp_path / "a.png", "--json")
    seed = json_lines(first.stdout)[0]["seed"]
    assert f"seed {seed} (repeat this run with --seed {seed})" in first.stderr
    vdvae("sample", "-m", tiny_ckpt, "-o", tmp_path / "b.png", "--seed", seed)
    np.testing.assert_array_equal(png(tmp_path / "a.png"), png(tmp_path / "b.png"))


def test_sample_grid_to_stdout_and_quiet(tiny_ckpt, tmp_path):
    result = vdvae("sample", "-m", tiny_ckpt, "-n", 5, "--seed", 3, "--grid", "--quiet")
    grid = png(result.stdout_bytes)
    assert grid.shape == (2 * 32 + 3 * 2, 3 * 32 + 4 * 2, 3)  # 3 columns, 2 rows, 2px borders
    assert result.stderr == ""
    vdvae("sample", "-m", tiny_ckpt, "-n", 5, "--seed", 3, "-o", f"{tmp_path}/s/")
    singles = folder(tmp_path / "s")
    np.testing.assert_array_equal(grid[2:34, 36:68], singles[1])
    np.testing.assert_array_equal(grid[36:68, 36:68], singles[4])


def test_several_images_to_stdout_are_a_png_stream(tiny_ckpt):
    from vdvae_cli.base.images import split_png_stream

    result = vdvae("sample", "-m", tiny_ckpt, "-n", 3, "--seed", 4, "-o", "-")
    assert len(split_png_stream(result.stdout_bytes)) == 3


def test_force_overwrites(tiny_ckpt, tmp_path):
    target = tmp_path / "x.png"
    target.write_bytes(b"old")
    vdvae("sample", "-m", tiny_ckpt, "--seed", 1, "-o", target, "--force")
    assert png(target).shape == (32, 32, 3)
    assert os.listdir(tmp_path) == ["x.png"]


# --------------------------------------------------------------------------------------------------
# reconstruct


def test_full_mean_reconstruction_equals_the_engine(tiny_ckpt, tmp_path, model, pics):
    result = vdvae("reconstruct", "-m", tiny_ckpt, *pics, "--keep-layers", "all", "--posterior", "mean",
                   "--output-temp", 0, "-o", f"{tmp_path}/r/", "--json")
    assert sorted(os.listdir(tmp_path / "r")) == ["a_recon.png", "b_recon.png", "c_recon.png"]
    expected = ops.reconstruct(model, pixels(pics), posterior="mean", output_temperature=0.0)
    np.testing.assert_array_equal(folder(tmp_path / "r"), expected.numpy())
    records = json_lines(result.stdout)
    assert [r["input"] for r in records] == [str(p) for p in pics]
    assert all(r["keep_layers"] == 13 and r["posterior"] == "mean" for r in records)


def test_partial_reconstruction_with_seed_and_keep_res(tiny_ckpt, tmp_path, model, pics):
    vdvae("reconstruct", "-m", tiny_ckpt, *pics, "--keep-layers", 5, "--temp", "0.6", "--seed", 9,
          "--batch-size", 2, "-o", f"{tmp_path}/k5/")
    expected = ops.reconstruct(model, pixels(pics), keep_layers=5, posterior="mean", temperatures=0.6,
                               noise=noise(9, range(3)))
    np.testing.assert_array_equal(folder(tmp_path / "k5"), expected.numpy())
    vdvae("reconstruct", "-m", tiny_ckpt, *pics, "--keep-res", 8, "--seed", 9, "-o", f"{tmp_path}/r8/")
    vdvae("reconstruct", "-m", tiny_ckpt, *pics, "--keep-layers", 8, "--seed", 9, "-o", f"{tmp_path}/k8/")
    np.testing.assert_array_equal(folder(tmp_path / "r8"), folder(tmp_path / "k8"))
    vdvae("reconstruct", "-m", tiny_ckpt, *pics, "--keep-layers", 8, "--seed", 9, "--posterior", "sample",
          "-o", f"{tmp_path}/ps/")
    expected = ops.reconstruct(model, pixels(pics), keep_layers=8, posterior="sample", noise=noise(9, range(3)))
    np.testing.assert_array_equal(folder(tmp_path / "ps"), expected.numpy())


def test_reconstruct_folder_and_stdin_with_resize_notice(tiny_ckpt, tmp_path, model, pics):
    vdvae("reconstruct", "-m", tiny_ckpt, pics[0].parent, "--output-temp", 0, "-o", f"{tmp_path}/r/")
    assert sorted(os.listdir(tmp_path / "r")) == ["a_recon.png", "b_recon.png", "c_recon.png"]
    big = np.asarray(Image.open(pics[1]).resize((64, 48)))
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, format="PNG")
    result = vdvae("reconstruct", "-m", tiny_ckpt, "-", "--output-temp", 0, input=buf.getvalue())
    assert "stdin: 64x48 centre-cropped and resized to 32x32" in result.stderr
    assert png(result.stdout_bytes).shape == (32, 32, 3)


def test_reconstruct_names_follow_input_order(tiny_ckpt, tmp_path, pics):
    vdvae("reconstruct", "-m", tiny_ckpt, pics[2], pics[0], "-o", f"{tmp_path}/r/", "--seed", 1)
    assert sorted(os.listdir(tmp_path / "r")) == ["00000_c_recon.png", "00001_a_recon.png"]


# --------------------------------------------------------------------------------------------------
# mix


def test_mix_extremes_are_the_reconstructions(tiny_ckpt, tmp_path, model, pics):
    a, b, c = pics
    common = ["-m", tiny_ckpt, "--posterior", "mean", "--output-temp", 0, "--seed", 1]
    vdvae("mix", a, b, c, "--keep-layers", "all", *common, "-o", f"{tmp_path}/all/")
    vdvae("mix", a, b, c, "--keep-layers", 0, *common, "-o", f"{tmp_path}/none/")
    vdvae("reconstruct", a, b, c, *common, "-o", f"{tmp_path}/rec/")
    rec = folder(tmp_path / "rec")
    assert sorted(os.listdir(tmp_path / "all")) == ["a_b_mix.png", "a_c_mix.png"]
    np.testing.assert_array_equal(folder(tmp_path / "all"), np.stack([rec[0], rec[0]]))
    np.testing.assert_array_equal(folder(tmp_path / "none"), rec[1:])


def test_mix_is_the_engine(tiny_ckpt, tmp_path, model, pics):
    a, b, c = pics
    vdvae("mix", "-m", tiny_ckpt, a, b, c, "--keep-res", 4, "--seed", 2, "-o", f"{tmp_path}/m/", "--batch-size", 1)
    x = pixels(pics)
    prefix = ops.encode(model, x[:1], posterior="mean", n_layers=5)
    expected = ops.mix(model, prefix, x[1:], posterior="mean", noise=noise(2, [0, 1]))
    np.testing.assert_array_equal(folder(tmp_path / "m"), expected.numpy())


def test_mix_variations_share_one_prefix(tiny_ckpt, tmp_path, model, pics):
    result = vdvae("mix", "-m", tiny_ckpt, pics[0], "--keep-layers", 8, "--n-variations", 4, "--temp", 0.8,
                   "--seed", 6, "-o", f"{tmp_path}/v/", "--json")
    assert sorted(os.listdir(tmp_path / "v")) == [f"a_mix_{i:05d}.png" for i in range(4)]
    got = folder(tmp_path / "v")
    assert len({img.tobytes() for img in got}) == 4
    x = pixels(pics[:1])
    prefix = ops.encode(model, x, posterior="mean", n_layers=8)
    expected = ops.mix(model, prefix, None, n=4, posterior="mean", temperatures=0.8, noise=noise(6, range(4)))
    np.testing.assert_array_equal(got, expected.numpy())
    # one prefix: with the rest at temperature 0 every completion is the same image
    vdvae("mix", "-m", tiny_ckpt, pics[0], "--keep-layers", 8, "-n", 3, "--temp", 0, "--output-temp", 0,
          "--seed", 6, "-o", f"{tmp_path}/t0/")
    t0 = folder(tmp_path / "t0")
    assert (t0 == t0[0]).all()
    assert [r["input_b"] for r in json_lines(result.stdout)] == [None] * 4


# --------------------------------------------------------------------------------------------------
# encode / decode


def test_encode_writes_the_engine_latents(tiny_ckpt, tmp_path, model, pics):
    lat = tmp_path / "lat.safetensors"
    result = vdvae("encode", "-m", tiny_ckpt, *pics, "-o", lat, "--json")
    record = json_lines(result.stdout)[0]
    assert record["path"] == str(lat) and record["inputs"] == [str(p) for p in pics] and record["layers"] == 13
    tensors = load_file(str(lat))
    expected = ops.encode(model, pixels(pics), posterior="mean")
    assert sorted(tensors) == [f"layer.{i:02d}" for i in range(13)]
    for i, z in enumerate(expected):
        torch.testing.assert_close(tensors[f"layer.{i:02d}"], z)


def test_encode_sample_posterior_is_seeded(tiny_ckpt, tmp_path, model, pics):
    vdvae("encode", "-m", tiny_ckpt, *pics, "--posterior", "sample", "--seed", 4, "--batch-size", 2,
          "-o", tmp_path / "lat.safetensors")
    expected = ops.encode(model, pixels(pics), posterior="sample", noise=noise(4, range(3)))
    tensors = load_file(str(tmp_path / "lat.safetensors"))
    torch.testing.assert_close(tensors["layer.12"], expected[12])


def test_decode_of_encode_is_the_reconstruction(tiny_ckpt, tmp_path, pics):
    lat = tmp_path / "lat.safetensors"
    vdvae("encode", "-m", tiny_ckpt, *pics, "-o", lat)
    vdvae("decode", "-m", tiny_ckpt, lat, "--output-temp", 0, "-o", f"{tmp_path}/d/")
    vdvae("reconstruct", "-m", tiny_ckpt, *pics, "--output-temp", 0, "-o", f"{tmp_path}/r/")
    assert sorted(os.listdir(tmp_path / "d")) == ["a_decoded.png", "b_decoded.png", "c_decoded.png"]
    np.testing.assert_array_equal(folder(tmp_path / "d"), folder(tmp_path / "r"))


def test_decode_keep_layers_is_the_engine(tiny_ckpt, tmp_path, model, pics):
    lat = tmp_path / "lat.safetensors"
    vdvae("encode", "-m", tiny_ckpt, *pics, "-o", lat)
    vdvae("decode", "-m", tiny_ckpt, lat, "--keep-layers", 3, "--temp", "0.5", "--seed", 2, "--grid",
          "-o", tmp_path / "g.png")
    z = ops.encode(model, pixels(pics), posterior="mean")
    expected = ops.decode(model, z[:3], temperatures=0.5, noise=noise(2, range(3))).numpy()
    grid = png(tmp_path / "g.png")
    np.testing.assert_array_equal(grid[2:34, 36:68], expected[1])


def test_encode_decode_through_stdout_and_stdin(tiny_ckpt, pics):
    encoded = vdvae("encode", "-m", tiny_ckpt, pics[0], "-o", "-")
    assert encoded.stdout_bytes[8:9] == b"{"
    decoded = vdvae("decode", "-m", tiny_ckpt, "-", "--output-temp", 0, input=encoded.stdout_bytes)
    recon = vdvae("reconstruct", "-m", tiny_ckpt, pics[0], "--output-temp", 0)
    np.testing.assert_array_equal(png(decoded.stdout_bytes), png(recon.stdout_bytes))


def test_decode_samples_a_deleted_layer(tiny_ckpt, tmp_path, model, pics):
    from safetensors.torch import save_file
    from safetensors import safe_open

    lat = tmp_path / "lat.safetensors"
    vdvae("encode", "-m", tiny_ckpt, *pics, "-o", lat)
    with safe_open(str(lat), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys() if k != "layer.06"}
    save_file(tensors, str(tmp_path / "edited.safetensors"), metadata=meta)
    result = vdvae("decode", "-m", tiny_ckpt, tmp_path / "edited.safetensors", "--temp", 0, "--output-temp", 0,
                   "-o", f"{tmp_path}/d/", "--json")
    z = [tensors.get(f"layer.{i:02d}") for i in range(13)]
    expected = ops.decode(model, z, temperatures=0.0, output_temperature=0.0)
    np.testing.assert_array_equal(folder(tmp_path / "d"), expected.numpy())
    # the record says which layers came from the file: not "the first 13" (layer 6 came from the prior)
    for r in json_lines(result.stdout):
        assert r["keep_layers"] is None and r["layers_from_latents"] == [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12]
    records = json_lines(vdvae("decode", "-m", tiny_ckpt, tmp_path / "edited.safetensors", "--keep-layers", 5,
                               "-o", f"{tmp_path}/k5/", "--json").stdout)
    assert all(r["keep_layers"] == 5 and r["layers_from_latents"] == [0, 1, 2, 3, 4] for r in records)
    npz = tmp_path / "lat.npz"
    vdvae("encode", "-m", tiny_ckpt, *pics, "--keep-layers", 4, "--format", "npz", "-o", npz)
    records = json_lines(vdvae("decode", "-m", tiny_ckpt, npz, "-o", f"{tmp_path}/n/", "--json").stdout)
    assert all(r["keep_layers"] == 4 and r["layers_from_latents"] == [0, 1, 2, 3] for r in records)


# --------------------------------------------------------------------------------------------------
# help


COMMANDS = ["sample", "reconstruct", "mix", "encode", "decode", "eval", "info"]


@pytest.mark.parametrize("name", COMMANDS)
def test_help_lists_examples(name):
    result = vdvae(name, "--help")
    assert "Examples:" in result.stdout and f"vdvae {name if name != 'eval' else 'eval'}" in result.stdout


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from vdvae_cli.cli import app\n"
        f"for name in {COMMANDS!r}:\n"
        "    try:\n"
        "        app([name, '--help'])\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, (name, exc.code)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok")
