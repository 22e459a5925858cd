"""NVAE under the same commands: ``vdvae convert`` of official checkpoint.pt files (safe loading,
key reports, self-describing output), then sample / reconstruct / eval / encode / decode / info on
the converted tiny models, checked against the official code's outputs and the engine."""

from __future__ import annotations

import argparse
import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from vdvae_cli.engine import ops
from vdvae_cli.modelfiles.header import config_of, metadata_of
from vdvae_cli.modelfiles.checkpoint import load_file_model, save_checkpoint
from vdvae_cli.cli import app
from vdvae_cli.families.vdvae.config import VDVAEConfig
from vdvae_cli.engine.distributions import PerImageNoise
from vdvae_cli.base.errors import CheckpointError
from vdvae_cli.families.nvae.config import NVAEConfig
from vdvae_cli.families.nvae.network import NVAE
from vdvae_cli.engine.runtime import image_generators

DATA = Path(__file__).parent / "data" / "golden-nvae"
LN2 = math.log(2)
runner = CliRunner()


def vdvae(*args, ok: bool = True):
    result = runner.invoke(app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, f"exit {result.exit_code}: {result.stderr}"
    return result


def png(path) -> np.ndarray:
    with Image.open(io.BytesIO(Path(path).read_bytes())) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def cases():
    return {k: load_file(str(DATA / f"{stem}-cases.safetensors")) for k, stem in
            (("cifar", "tiny-nvae"), ("mnist", "tiny-nvae-mnist"))}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nvae")
    out = {}
    for kind, stem in (("cifar", "tiny-nvae"), ("mnist", "tiny-nvae-mnist")):
        result = runner.invoke(app, ["convert", str(DATA / f"{stem}.pt"), "-o", str(folder / f"{stem}.safetensors"), "--json"])
        assert result.exit_code == 0, result.stderr
        info = json.loads(result.stdout)
        assert info["family"] == "nvae" and info["config"] == f"nvae-{'cifar10' if kind == 'cifar' else 'mnist'}"
        out[kind] = folder / f"{stem}.safetensors"
    return out


@pytest.fixture(scope="module")
def pics(tmp_path_factory, cases):
    folder = tmp_path_factory.mktemp("pics")
    paths = {"cifar": [], "mnist": []}
    for j in range(2):
        paths["cifar"].append(folder / f"c{j}.png")
        Image.fromarray(cases["cifar"]["input.x_uint8"][j].numpy()).save(paths["cifar"][-1])
        digit = (cases["mnist"]["input.x"][j, 0, 2:-2, 2:-2] * 255).to(torch.uint8).numpy()  # the binarised digit
        paths["mnist"].append(folder / f"m{j}.png")
        Image.fromarray(digit).save(paths["mnist"][-1])
    return paths


# --------------------------------------------------------------------------------------------------
# convert


def test_converted_file_describes_itself(converted):
    meta = metadata_of(converted["cifar"])
    assert meta["family"] == "nvae" and "NVIDIA Source Code License" in meta["license"]
    cfg = config_of(converted["cifar"])
    assert isinstance(cfg, NVAEConfig) and json.loads(meta["nvae_config"]) == cfg.to_dict()
    model = load_file_model(converted["cifar"])
    assert isinstance(model, NVAE) and not model.training
    official = torch.load(DATA / "tiny-nvae.pt", map_location="cpu", weights_only=False)["state_dict"]
    mine = model.state_dict()
    assert set(official) - set(mine) == {k for k in official if k.endswith(".weight_normalized")}
    for key, value in mine.items():
        assert torch.equal(value, official[key]), key  # fp32 copy, BN counters stay int64
    assert mine["enc_tower.0._ops.0.bn_act.num_batches_tracked"].dtype == torch.int64


def test_vdvae_files_without_a_family_stay_vdvae(tiny_ckpt, tmp_path):
    assert "family" not in metadata_of(tiny_ckpt)
    assert isinstance(config_of(tiny_ckpt), VDVAEConfig)
    state = load_file(str(tiny_ckpt))
    from safetensors.torch import save_file

    meta = dict(metadata_of(tiny_ckpt), family="gan")
    save_file(state, str(tmp_path / "odd.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="unknown model family 'gan'"):
        config_of(tmp_path / "odd.safetensors")


def _official(tmp_path, edit=None, name="edited.pt"):
    ckpt = torch.load(DATA / "tiny-nvae-mnist.pt", map_location="cpu", weights_only=False)
    if edit is not None:
        edit(ckpt)
    path = tmp_path / name
    torch.save(ckpt, path)
    return path


def test_check_lists_every_difference(tmp_path):
    def edit(ckpt):
        sd = ckpt["state_dict"]
        del sd["stem.bias"]
        sd["extra.weight"] = torch.zeros(3)
        sd["prior_ftr0"] = torch.zeros(1, 4, 4)

    path = _official(tmp_path, edit)
    result = vdvae("convert", path, "-o", tmp_path / "x.safetensors", "--check", ok=False)
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert "missing     stem.bias" in lines
    assert "unexpected  extra.weight  (3,)" in lines
    assert "mismatched  prior_ftr0  (1, 4, 4) != expected (32, 4, 4)" in lines
    result = vdvae("convert", path, "-o", tmp_path / "x.safetensors", ok=False)
    assert result.exit_code == 1 and result.stderr.startswith("error: ")
    assert "1 missing key(s): stem.bias" in result.stderr and not (tmp_path / "x.safetensors").exists()
    assert "Traceback" not in result.output


def test_weight_normalized_aliases_present_absent_or_wrong(tmp_path, converted):
    def drop(ckpt):
        sd = ckpt["state_dict"]
        for key in [k for k in sd if k.endswith(".weight_normalized")]:
            del sd[key]

    old = _official(tmp_path, drop, "old.pt")  # like NVAE's earliest files
    vdvae("convert", old, "-o", tmp_path / "old.safetensors")
    assert load_file(str(tmp_path / "old.safetensors")).keys() == load_file(str(converted["mnist"])).keys()

    def corrupt(ckpt):
        sd = ckpt["state_dict"]
        key = next(k for k in sd if k.endswith(".weight_normalized"))
        sd[key] = sd[key].clone() + 1

    bad = _official(tmp_path, corrupt, "bad.pt")
    result = vdvae("convert", bad, "-o", tmp_path / "bad.safetensors", ok=False)
    assert result.exit_code == 1 and "differs from the weight it should duplicate" in result.stderr


class Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize("with_args", [True, False])
def test_a_pickle_that_runs_code_is_refused(tmp_path, monkeypatch, with_args):
    monkeypatch.chdir(tmp_path)
    obj = {"state_dict": {"stem.weight": torch.zeros(1)}, "payload": Evil()}
    if with_args:
        obj["args"] = argparse.Namespace(dataset="mnist")
    torch.save(obj, tmp_path / "evil.pt")
    extra = [] if with_args else ["--config", "cifar10"]  # without args it is read as a VDVAE file
    result = vdvae("convert", tmp_path / "evil.pt", "-o", tmp_path / "out.safetensors", *extra, ok=False)
    assert result.exit_code == 1 and "does not run pickled code" in result.stderr and "weights_only=False" not in result.stderr
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "out.safetensors").exists()


def test_config_flags_are_refused_for_nvae(tmp_path):
    result = vdvae("convert", DATA / "tiny-nvae.pt", "-o", tmp_path / "x.safetensors", "--config", "cifar10", ok=False)
    assert result.exit_code == 2 and "its stored args give the layout" in result.stderr


# --------------------------------------------------------------------------------------------------
# commands on a converted file


def _clear(gap: torch.Tensor) -> np.ndarray:
    return (gap > 1e-4).numpy()


def test_sample_at_temperature_zero_is_the_official_noiseless_prior_mean(converted, cases, tmp_path):
    for seed in (1, 2):
        vdvae("sample", "-m", converted["cifar"], "-n", 2, "--temp", 0, "--output-temp", 0, "--seed", seed,
              "-o", f"{tmp_path}/s{seed}/")
    a = [png(tmp_path / "s1" / n) for n in sorted(os.listdir(tmp_path / "s1"))]
    b = [png(tmp_path / "s2" / n) for n in sorted(os.listdir(tmp_path / "s2"))]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))  # deterministic: no seed matters
    want = cases["cifar"]["prior_t0.out_sample_noiseless"].permute(0, 2, 3, 1) * 255  # [0, 1] -> pixels
    clear = _clear(cases["cifar"]["prior_t0.top2_gap"])
    for j in range(2):
        diff = np.abs(a[j].astype(float) - want[j].numpy())[clear[j]]
        assert diff.max() <= 1.0  # truncation to 8 bits may differ by one level at a boundary


def test_reconstruct_posterior_mean_is_the_official_postmean(converted, cases, pics, tmp_path):
    vdvae("reconstruct", "-m", converted["cifar"], *pics["cifar"], "--posterior", "mean", "--output-temp", 0,
          "--seed", 0, "-o", f"{tmp_path}/r/")
    want = cases["cifar"]["postmean.out_sample_noiseless"].permute(0, 2, 3, 1) * 255
    clear = _clear(cases["cifar"]["postmean.top2_gap"])
    for j, p in enumerate(pics["cifar"]):
        got = png(tmp_path / "r" / f"{p.stem}_recon.png").astype(float)
        assert np.abs(got - want[j].numpy())[clear[j]].max() <= 1.0


def test_mnist_outputs_are_28x28_grey(converted, pics, tmp_path):
    vdvae("reconstruct", "-m", converted["mnist"], pics["mnist"][0], "--keep-res", 4, "--output-temp", 0,
          "--seed", 0, "-o", tmp_path / "r.png")
    img = png(tmp_path / "r.png")
    assert img.shape == (28, 28, 3) and (img[..., 0] == img[..., 2]).all()
    assert len(np.unique(img)) > 2  # probabilities as grey levels
    vdvae("sample", "-m", converted["mnist"], "-n", 1, "--seed", 0, "-o", tmp_path / "s.png")
    assert set(np.unique(png(tmp_path / "s.png"))) <= {0, 255}  # output temp 1 draws binary pixels


@pytest.mark.parametrize("kind, samples", [("cifar", 1), ("cifar", 3), ("mnist", 1)])
def test_eval_is_the_engine(converted, pics, kind, samples):
    result = vdvae("eval", "-m", converted[kind], *pics[kind], "--seed", 4, "--samples", samples, "--json")
    *rows, summary = [json.loads(line) for line in result.stdout.splitlines()]
    model = load_file_model(converted[kind])
    x = torch.from_numpy(np.stack([png(p) for p in pics[kind]]))
    ref = ops.elbo(model, x, samples=samples, noise=PerImageNoise(image_generators(4, range(2))))
    n_dims = model.cfg.n_dims
    assert n_dims == (784 if kind == "mnist" else 3072)
    for j, row in enumerate(rows):
        assert row["nats_per_dim"] == pytest.approx(float(ref.nll_bound[j]), rel=1e-5)
        assert len(row["kl_bits_per_layer"]) == model.cfg.n_layers
        assert sum(row["kl_bits_per_layer"]) / n_dims == pytest.approx(row["rate_bits_per_dim"], rel=1e-5)
    assert summary["bound"] == ("elbo" if samples == 1 else "importance-weighted")


def test_encode_decode_roundtrip_and_foreign_latents(converted, pics, tmp_path):
    z = tmp_path / "z.safetensors"
    vdvae("encode", "-m", converted["cifar"], pics["cifar"][0], "--posterior", "mean", "-o", z)
    layers = load_file(str(z))
    assert [tuple(layers[k].shape) for k in sorted(layers)] == [(1, 4, 8, 8)] * 2 + [(1, 4, 16, 16)] * 3
    vdvae("decode", "-m", converted["cifar"], z, "--output-temp", 0, "-o", tmp_path / "d.png")
    vdvae("reconstruct", "-m", converted["cifar"], pics["cifar"][0], "--posterior", "mean", "--output-temp", 0,
          "-o", tmp_path / "r.png")
    assert np.abs(png(tmp_path / "d.png").astype(int) - png(tmp_path / "r.png").astype(int)).max() <= 1
    result = vdvae("decode", "-m", converted["mnist"], z, "-o", tmp_path / "x.png", ok=False)
    assert result.exit_code != 0 and "was made by model 'nvae-cifar10'" in result.stderr
    assert "5 latent layers" in result.stderr  # read from the file's own (NVAE) config
    with safe_open(str(z), "pt") as f:  # the config under the family's key, as in model files
        meta = f.metadata()
    assert meta["family"] == "nvae" and "vdvae_config" not in meta
    assert json.loads(meta["nvae_config"]) == load_file_model(converted["cifar"]).cfg.to_dict()


def test_info_names_the_family_and_groups(converted):
    info = json.loads(vdvae("info", "-m", converted["cifar"], "--json").stdout)
    assert info["family"] == "nvae" and info["n_layers"] == 5 and info["resolutions"] == [8, 16]
    assert [l["res"] for l in info["layers"]] == [8, 8, 16, 16, 16]
    assert info["layers_up_to_res"] == {"8": 2, "16": 5}
    assert info["parameters"] == 301_080  # the official count (BatchNorm statistics are not parameters)


def test_saving_a_loaded_nvae_roundtrips(converted, tmp_path):
    model = load_file_model(converted["mnist"])
    path = save_checkpoint(model, model.cfg, tmp_path / "again.safetensors")
    assert metadata_of(path)["family"] == "nvae"
    again = load_file_model(path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_download_prints_the_manual_steps_and_the_converted_file_is_found(tmp_path, monkeypatch):
    monkeypatch.setenv("VDVAE_CACHE", str(tmp_path / "cache"))
    result = vdvae("download", "nvae-mnist", ok=False)
    assert result.exit_code == 1
    dest = tmp_path / "cache" / "nvae-mnist.safetensors"
    assert "drive.google.com/drive/folders/" in result.stderr and "NVIDIA Source Code License" in result.stderr
    assert f"vdvae convert checkpoint.pt -o {dest}" in result.stderr.replace("\n", "")
    (tmp_path / "cache").mkdir()
    vdvae("convert", DATA / "tiny-nvae-mnist.pt", "-o", dest)  # what the steps say, with the tiny file
    info = json.loads(vdvae("info", "-m", "nvae-mnist", "--json").stdout)
    assert info["family"] == "nvae" and info["path"] == str(dest)
    listed = {m["name"]: m for m in map(json.loads, vdvae("models", "--json").stdout.splitlines())}
    assert listed["nvae-ffhq256"]["family"] == "nvae" and "non-commercial" in listed["nvae-ffhq256"]["license"]


def test_a_shipped_nvae_file_is_described_from_its_header(converted, tmp_path, monkeypatch):
    from vdvae_cli.modelfiles.catalog import describe_file

    entry = describe_file(converted["mnist"])
    assert (entry.family, entry.resolution, entry.latent_layers, entry.title) == ("nvae", 28, 6, "nvae-mnist")


def test_readjust_bn_is_cached_by_temperature(converted, tmp_path, monkeypatch):
    monkeypatch.setenv("VDVAE_CACHE", str(tmp_path / "cache"))
    args = ("sample", "-m", converted["cifar"], "-n", 2, "--seed", 3, "--readjust-bn", "--readjust-iters", 3)
    first = vdvae(*args, "--temp", 0.7, "-o", tmp_path / "a.png", "--grid")
    assert "re-adjusted (3 prior passes of 16)" in first.stderr
    cached = list((tmp_path / "cache" / "bn").iterdir())
    assert len(cached) == 1
    second = vdvae(*args, "--temp", 0.7, "-o", tmp_path / "b.png", "--grid")
    assert "loaded from" in second.stderr
    assert np.array_equal(png(tmp_path / "a.png"), png(tmp_path / "b.png"))
    plain = vdvae("sample", "-m", converted["cifar"], "-n", 2, "--seed", 3, "--temp", 0.7, "-o", tmp_path / "c.png", "--grid")
    assert "BatchNorm" not in plain.stderr
    assert not np.array_equal(png(tmp_path / "a.png"), png(tmp_path / "c.png"))  # the statistics matter
    vdvae(*args, "--temp", 0.5, "-o", tmp_path / "d.png", "--grid")
    assert len(list((tmp_path / "cache" / "bn").iterdir())) == 2  # one file per temperature
    stats = load_file(str(cached[0]))
    assert int(stats["dec_tower.1._ops.0.conv.0.bn.num_batches_tracked"]) == 4 + 3  # calibration + 3 passes
    assert int(stats["enc_tower.0._ops.0.bn_act.num_batches_tracked"]) == 4  # the encoder is untouched


def test_readjust_bn_on_every_decoding_command(converted, pics, tmp_path, monkeypatch):
    """decode, reconstruct, mix and interpolate take --readjust-bn too, sharing sample's cache: the
    prior layers of a decode with kept latents then use the statistics a sample at that
    temperature uses."""
    monkeypatch.setenv("VDVAE_CACHE", str(tmp_path / "cache"))
    m, img = converted["cifar"], pics["cifar"][0]
    rb = ("--readjust-bn", "--readjust-iters", 3, "--temp", 0.7, "--seed", 1)
    first = vdvae("sample", "-m", m, "-n", 1, *rb, "-o", tmp_path / "s.png")
    assert "re-adjusted" in first.stderr
    z = tmp_path / "z.safetensors"
    vdvae("encode", "-m", m, img, "--keep-layers", 2, "--posterior", "mean", "-o", z)
    runs = {
        "decode": ("decode", "-m", m, z),
        "reconstruct": ("reconstruct", "-m", m, img, "--keep-layers", 2, "--posterior", "mean"),
        "mix": ("mix", "-m", m, img, "--keep-layers", 2, "--posterior", "mean"),
        "interpolate": ("interpolate", "-m", m, img, img, "--steps", 2, "--keep-layers", 2),
    }
    for name, args in runs.items():
        adjusted = vdvae(*args, *rb, "--output-temp", 0, "-o", tmp_path / f"{name}.png", "--grid")
        assert "loaded from" in adjusted.stderr, name  # the statistics sample fitted, from the cache
        vdvae(*args, "--temp", 0.7, "--seed", 1, "--output-temp", 0, "-o", tmp_path / f"{name}-plain.png", "--grid")
        assert not np.array_equal(png(tmp_path / f"{name}.png"), png(tmp_path / f"{name}-plain.png")), name


def test_readjust_bn_is_refused_for_vdvae(tiny_ckpt, tmp_path):
    result = vdvae("sample", "-m", tiny_ckpt, "--readjust-bn", "-o", tmp_path / "x.png", ok=False)
    assert result.exit_code == 2 and "a VDVAE has no BatchNorm" in result.stderr


def test_fine_tuning_a_converted_binary_nvae(converted, tmp_path):
    """vdvae train --init takes an NVAE file (here MNIST-style: Bernoulli, grey 28x28) and trains it
    with NVAE's recipe (tests/test_nvae_train.py covers the recipe)."""
    data = tmp_path / "d.npy"
    np.save(data, (np.random.default_rng(0).random((6, 28, 28, 3)) > 0.7).astype(np.uint8) * 255)
    result = vdvae("train", data, "--init", converted["mnist"], "-o", tmp_path / "run", "--steps", 2,
                   "--batch-size", 2, "--holdout", 2, "--eval-every", 2, "--json", "-q")
    (line,) = [json.loads(x) for x in result.stdout.splitlines()]
    assert line["step"] == 2 and np.isfinite(line["heldout_bpd"]) and len(line["layer_bits"]) == 6  # its groups
    out = vdvae("info", "-m", tmp_path / "run" / "model.safetensors").stdout
    assert "NVAE" in out and "28x28" in out


def test_an_official_nvae_pickle_as_model_says_how_to_convert_it():
    result = vdvae("info", "-m", DATA / "tiny-nvae.pt", ok=False)
    assert result.exit_code == 1
    assert f"vdvae convert {DATA / 'tiny-nvae.pt'} -o tiny-nvae.safetensors" in result.stderr.replace("\n", "")


def test_bf16_eval_is_close_to_fp32(converted, pics):
    rows = {}
    for dtype in ("fp32", "bf16"):
        out = vdvae("eval", "-m", converted["cifar"], *pics["cifar"], "--seed", 1, "--dtype", dtype, "--json").stdout
        rows[dtype] = json.loads(out.splitlines()[-1])
    assert rows["bf16"]["bits_per_dim"] == pytest.approx(rows["fp32"]["bits_per_dim"], rel=0.02)
    assert rows["bf16"]["bits_per_dim"] != rows["fp32"]["bits_per_dim"]  # it did run in bf16


def test_a_negative_batchnorm_variance_is_refused_in_one_line(converted, pics, tmp_path):
    from safetensors.torch import save

    state = load_file(str(converted["cifar"]))
    key = next(k for k in state if k.endswith(".running_var"))
    state[key][0] = -1.0  # sample failed as an "overflow", eval printed n/a with exit 0
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(save(state, metadata=metadata_of(converted["cifar"])))
    for argv in (["sample", "-n", 2, "--seed", 1, "-o", f"{tmp_path}/s/"], ["eval", pics["cifar"][0], "--seed", 1]):
        result = vdvae(*argv, "-m", bad, ok=False)
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1, result.stderr
        assert lines[0].startswith("error: ") and f"{key!r} holds 1 negative variance" in lines[0]
        assert "Traceback" not in result.stderr and result.stdout == ""
