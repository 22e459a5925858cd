"""``vdvae interpolate | ood`` and npz latents (``encode --format npz`` / ``decode``) on the tiny
checkpoint, checked against the engine and against hand-computed values."""

from __future__ import annotations

import io
import json
import math
import zipfile
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
from vdvae_cli.base.errors import LatentsError
from vdvae_cli.tools.interpolate import interpolate, interpolate_latents, lerp, path, prior_latents, slerp
from vdvae_cli.tools.latents_npz import flatten, load_npz_latents, npz_bytes, unflatten
from vdvae_cli.tools.ood import (auprc, auroc, complexity_scores, detection_metrics, fpr_at_tpr, llr_scores,
                                 png_bits_per_dim)
from vdvae_cli.engine.runtime import image_generators

runner = CliRunner()
LN2 = math.log(2)


def vdvae(*args, input: bytes | None = None, code: int = 0):
    result = runner.invoke(app, [str(a) for a in args], input=input)
    assert result.exit_code == code, f"exit {result.exit_code}: {result.stderr}"
    return result


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def noise(seed: int, indices) -> PerImageNoise:
    return PerImageNoise(image_generators(seed, list(indices)))


def folder(path: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(path.iterdir())])


@pytest.fixture()
def pics(tmp_path) -> list[Path]:
    rng = np.random.default_rng(1)
    out = []
    for name in "abc":
        img = np.clip(rng.normal(128, 50, (32, 32, 3)), 0, 255).astype(np.uint8)
        img[6:20, 8:24] = rng.integers(0, 255, 3)
        p = tmp_path / "in" / f"{name}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(img).save(p)
        out.append(p)
    return out


def pixels(paths) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths]))


# --------------------------------------------------------------------------------------------------
# interpolation maths


def test_path_frames_and_shared_ends():
    assert path(2, 3) == [(0, 1, 0.0), (0, 1, 0.5), (0, 1, 1.0)]
    assert path(3, 2) == [(0, 1, 0.0), (1, 2, 0.0), (1, 2, 1.0)]
    assert path(2, 3, loop=True) == [(0, 1, 0.0), (0, 1, 0.5), (1, 0, 0.0), (1, 0, 0.5)]
    with pytest.raises(ValueError):
        path(2, 1)


def test_slerp_keeps_the_ends_exactly_and_follows_the_circle():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 3, 2, 2, generator=g), torch.randn(4, 3, 2, 2, generator=g)
    t = torch.tensor([0.0, 1.0, 0.5, 0.25])
    out = slerp(a, b, t)
    assert torch.equal(out[0], a[0]) and torch.equal(out[1], b[1])
    # two orthogonal unit vectors: the midpoint is (a + b) / sqrt(2), still of norm 1
    e1, e2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    torch.testing.assert_close(slerp(e1, e2, torch.tensor([0.5])), torch.tensor([[2 ** -0.5, 2 ** -0.5]]))
    torch.testing.assert_close(lerp(e1, e2, torch.tensor([0.5])), torch.tensor([[0.5, 0.5]]))
    # parallel or zero latents fall back to the straight line
    torch.testing.assert_close(slerp(e1, 2 * e1, torch.tensor([0.5])), torch.tensor([[1.5, 0.0]]))
    torch.testing.assert_close(slerp(0 * e1, e2, torch.tensor([0.5])), torch.tensor([[0.0, 0.5]]))


def test_interpolated_layers_and_free_layers():
    keys = [torch.zeros(2, 1, 1, 1), None, torch.arange(2.0).reshape(2, 1, 1, 1)]
    out = interpolate_latents(keys, path(2, 5), "lerp")
    assert out[1] is None
    torch.testing.assert_close(out[2].flatten(), torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))


def test_end_frames_are_the_reconstructions(golden_model, pics):
    x = pixels(pics[:2])
    keys = ops.encode(golden_model, x, posterior="mean")
    frames = interpolate(golden_model, keys, steps=4, temperatures=0, output_temperature=0)
    recon = ops.reconstruct(golden_model, x, posterior="mean", temperatures=0, output_temperature=0)
    assert frames.shape == (4, 32, 32, 3)
    assert torch.equal(frames[0], recon[0]) and torch.equal(frames[-1], recon[1])
    assert not torch.equal(frames[1], frames[0])


def test_prior_latents_are_the_samples_latents(golden_model):
    z = prior_latents(golden_model, 2, temperatures=0.7, noise=noise(3, [0, 1]))
    direct = ops.sample(golden_model, 2, temperatures=0.7, output_temperature=0, noise=noise(3, [0, 1]))
    again = ops.decode(golden_model, z, temperatures=0.7, output_temperature=0, noise=noise(3, [0, 1]))
    assert torch.equal(direct, again)


# --------------------------------------------------------------------------------------------------
# vdvae interpolate


def test_interpolate_cli_end_frames_equal_reconstructions(tiny_ckpt, tmp_path, pics):
    vdvae("interpolate", "-m", tiny_ckpt, pics[0], pics[1], "--steps", 3, "--temp", 0, "--output-temp", 0,
          "-o", f"{tmp_path}/f/")
    vdvae("reconstruct", "-m", tiny_ckpt, pics[0], pics[1], "--temp", 0, "--output-temp", 0, "-o", f"{tmp_path}/r/")
    frames, recon = folder(tmp_path / "f"), folder(tmp_path / "r")
    assert frames.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(frames[0], recon[0])
    np.testing.assert_array_equal(frames[-1], recon[1])


def test_interpolate_cli_is_the_engine_with_held_noise(tiny_ckpt, tmp_path, golden_model, pics):
    result = vdvae("interpolate", "-m", tiny_ckpt, *pics, "--loop", "--steps", 3, "--keep-res", 4, "--temp", 0.6,
                   "--method", "lerp", "--seed", 9, "--batch-size", 2, "--json", "-o", f"{tmp_path}/f/")
    records = json_lines(result.stdout)
    assert [(r["a"], r["b"], r["t"]) for r in records][2:4] == [(str(pics[1]), str(pics[2]), 0.0),
                                                                 (str(pics[1]), str(pics[2]), 0.5)]
    assert records[0]["layers"] == [0, 1, 2, 3, 4] and len(records) == 6
    keys = ops.encode(golden_model, pixels(pics), posterior="mean", n_layers=5,
                      noise=noise(9, [-1, -2, -3]))
    latents = interpolate_latents(keys + [None] * 8, path(3, 3, loop=True), "lerp")
    expected = ops.decode(golden_model, latents, n=6, temperatures=0.6, noise=noise(9, [0] * 6))
    np.testing.assert_array_equal(folder(tmp_path / "f"), expected.numpy())


def test_interpolate_seeds_grid_and_animation(tiny_ckpt, tmp_path, golden_model):
    vdvae("interpolate", "-m", tiny_ckpt, "--seeds", 3, 7, "--temp", 0.8, "--steps", 4, "--output-temp", 0,
          "--layers", "0-3,r32", "--rest", "resample", "--seed", 1, "--grid", "-o", tmp_path / "g.png")
    grid = np.asarray(Image.open(tmp_path / "g.png").convert("RGB"))
    assert grid.shape == (2 + 34, 2 + 4 * 34, 3)  # one row of four frames
    z = [torch.cat(p) for p in zip(*(prior_latents(golden_model, 1, temperatures=0.8, noise=noise(s, [0]))
                                    for s in (3, 7)))]
    chosen = [z[i] if i in (0, 1, 2, 3, 11, 12) else None for i in range(13)]
    expected = ops.decode(golden_model, interpolate_latents(chosen, path(2, 4)), n=4, temperatures=0.8,
                          output_temperature=0, noise=noise(1, range(4)))
    np.testing.assert_array_equal(grid[2:34, 2 + 3 * 34:34 + 3 * 34], expected[3].numpy())

    vdvae("interpolate", "-m", tiny_ckpt, "--seeds", 3, 7, "--steps", 5, "--scale", 2, "-o", tmp_path / "a.gif")
    with Image.open(tmp_path / "a.gif") as im:
        assert im.format == "GIF" and im.n_frames == 5 and im.size == (64, 64) and im.info.get("loop") == 0


@pytest.mark.parametrize("args, message", [
    (["--seeds", "3"], "at least two keys"),
    (["--seeds", "3", "x"], "whole numbers"),
    (["--seeds", "3", "4", "--steps", "1"], "--steps must be 2 to 100,000"),
    (["--seeds", "3", "4", "--layers", "0-2", "--keep-res", "4"], "--layers and --keep-layers"),
    (["--seeds", "3", "4", "--layers", "0,,2"], "entry 2 is empty"),
    (["--seeds", "3", "4", "--layers", "40"], "layer 40 does not exist"),
    (["--seeds", "3", "4", "-o", "{tmp}/x.png"], "names one file"),
    (["--seeds", "3", "4", "-o", "{tmp}/x.tiff", "--grid", "--scale", "0"], "--scale must be 1 to 64"),
])
def test_interpolate_usage_errors(tiny_ckpt, tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    out = [] if "-o" in args else ["-o", f"{tmp_path}/frames/"]
    result = vdvae("interpolate", "-m", tiny_ckpt, *args, *out, code=2)
    assert message in result.stderr and "Traceback" not in result.stderr


# --------------------------------------------------------------------------------------------------
# detection metrics and the LLR score


def test_metrics_against_hand_computed_values():
    ins, outs = torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0.35, 0.9, 0.5])
    # out > in pairs: 0.35 beats 0.1 and ties 0.35 (1.5), 0.9 beats all 4, 0.5 beats 3: 8.5 of 12
    assert auroc(ins, outs) == pytest.approx(8.5 / 12)
    # ranked: .9 o | .8 i | .5 o | .4 i | .35 o+i | .1 i -> precision 1, 2/3, 1/2 at recall 1/3, 2/3, 1
    assert auprc(ins, outs) == pytest.approx((1 + 2 / 3 + 1 / 2) / 3)
    # 80% of the positives are flagged only at threshold .35, where 3 of 4 negatives are too
    assert fpr_at_tpr(ins, outs, 0.8) == pytest.approx(0.75)
    perfect = detection_metrics(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0, 4.0, 5.0, 6.0]))
    assert (perfect.auroc, perfect.auprc, perfect.fpr80) == (1.0, 1.0, 0.0)
    reversed_ = detection_metrics(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0]))
    assert (reversed_.auroc, reversed_.fpr80) == (0.0, 1.0)


def test_llr_is_the_gap_between_two_engine_bounds(golden_model, pics):
    x = pixels(pics)
    result = llr_scores(golden_model, x, k=2, samples=2, noise=noise(5, range(3)))
    src = noise(5, range(3))
    full = ops.elbo(golden_model, x, samples=2, noise=src)
    looser = ops.elbo(golden_model, x, samples=2, noise=src, n_posterior=11)
    torch.testing.assert_close(result.elbo, full.nll_bound)
    torch.testing.assert_close(result.looser, looser.nll_bound)
    torch.testing.assert_close(result.score, looser.nll_bound - full.nll_bound)
    # with the k layers at their prior mean the score no longer depends on the draws of those layers
    a = llr_scores(golden_model, x, k=13, prior_temperature=0.0, noise=noise(1, range(3)))
    b = llr_scores(golden_model, x, k=13, prior_temperature=0.0, noise=noise(2, range(3)))
    torch.testing.assert_close(a.looser, b.looser)


def test_ood_cli_plain_bound_is_the_eval_elbo(tiny_ckpt, pics):
    ood = json_lines(vdvae("ood", "-m", tiny_ckpt, *pics, "--seed", 4, "--samples", 3, "--json").stdout)
    ev = json_lines(vdvae("eval", "-m", tiny_ckpt, *pics, "--seed", 4, "--samples", 3, "--json").stdout)[:-1]
    assert [r["input"] for r in ood] == [r["input"] for r in ev]
    for o, e in zip(ood, ev):
        assert o["elbo_bits_per_dim"] == pytest.approx(e["bits_per_dim"], abs=1e-9)
        assert o["score"] == pytest.approx(o["looser_bits_per_dim"] - o["elbo_bits_per_dim"], abs=1e-9)
        assert (o["k"], o["samples"], o["samples_k"]) == (1, 3, 3)


def test_ood_cli_detection_metrics(tiny_ckpt, tmp_path, pics):
    far = tmp_path / "far"
    far.mkdir()
    for i in range(2):
        Image.fromarray(np.full((32, 32, 3), 40 + 200 * i, np.uint8)).save(far / f"flat{i}.png")
    result = vdvae("ood", "-m", tiny_ckpt, "--in", pics[0].parent, "--out", far, "--k", 3, "--seed", 0, "--json")
    *rows, summary = json_lines(result.stdout)
    assert [r["set"] for r in rows] == ["in"] * 3 + ["out"] * 2
    ins = torch.tensor([r["score"] for r in rows[:3]])
    outs = torch.tensor([r["score"] for r in rows[3:]])
    assert summary["llr"] == pytest.approx(detection_metrics(ins, outs).as_dict())
    nll_in = torch.tensor([r["elbo_bits_per_dim"] for r in rows[:3]])
    nll_out = torch.tensor([r["elbo_bits_per_dim"] for r in rows[3:]])
    assert summary["elbo"] == pytest.approx(detection_metrics(nll_in, nll_out).as_dict())
    assert (summary["n_in"], summary["n_out"], summary["k"]) == (3, 2, 3)
    table = vdvae("ood", "-m", tiny_ckpt, "--in", pics[0].parent, "--out", far, "--k", 3, "--seed", 0).stdout
    assert "LLR>3" in table and f"{summary['llr']['auroc']:.3f}" in table


@pytest.mark.parametrize("args, message", [
    ([], "no images given"),
    (["--in", "x"], "--in and --out go together"),
    (["{pic}", "--k", "14"], "--k 14 but model tiny has 13"),
    (["{pic}", "--samples", "0"], "--samples must be 1 to 5,000"),
])
def test_ood_usage_errors(tiny_ckpt, pics, args, message):
    args = [str(pics[0]) if a == "{pic}" else a for a in args]
    result = vdvae("ood", "-m", tiny_ckpt, *args, code=2)
    assert message in result.stderr


# --------------------------------------------------------------------------------------------------
# npz latents


def test_flatten_round_trip():
    layers = [torch.randn(2, 4, 1, 1), torch.randn(2, 4, 4, 4)]
    flat = flatten(layers)
    assert flat.shape == (2, 4 + 64) and flat.dtype == torch.float32
    torch.testing.assert_close(flat[1, 4:8], layers[1][1, 0, 0])
    for a, b in zip(unflatten(flat, [(4, 1, 1), (4, 4, 4)]), layers):
        assert torch.equal(a, b)


def test_npz_round_trip_equals_safetensors_round_trip(tiny_ckpt, tmp_path, pics):
    vdvae("encode", "-m", tiny_ckpt, *pics, "--keep-layers", 6, "--posterior", "sample", "--seed", 2,
          "-o", tmp_path / "z.npz")
    vdvae("encode", "-m", tiny_ckpt, *pics, "--keep-layers", 6, "--posterior", "sample", "--seed", 2,
          "-o", tmp_path / "z.safetensors")
    with np.load(tmp_path / "z.npz", allow_pickle=False) as d:
        flat, shapes, names = d["latents"], d["layer_shapes"], d["names"]
        assert flat.dtype == np.float32 and flat.shape == (3, 4 * (1 + 1 + 16 + 16 + 16 + 64))
        assert shapes.tolist() == [[4, 1, 1]] * 2 + [[4, 4, 4]] * 3 + [[4, 8, 8]]
        assert names.tolist() == [str(p) for p in pics]
    tensors = load_file(str(tmp_path / "z.safetensors"))
    assert sorted(tensors) == [f"layer.{i:02d}" for i in range(6)]
    np.testing.assert_array_equal(flat, flatten([tensors[f"layer.{i:02d}"] for i in range(6)]).numpy())
    for source in ("z.npz", "z.safetensors"):
        vdvae("decode", "-m", tiny_ckpt, tmp_path / source, "--temp", 0.5, "--seed", 3, "-o", f"{tmp_path}/d-{source}/")
    np.testing.assert_array_equal(folder(tmp_path / "d-z.npz"), folder(tmp_path / "d-z.safetensors"))


def test_edited_npz_with_other_rows_decodes(tiny_ckpt, tmp_path, golden_model, pics):
    vdvae("encode", "-m", tiny_ckpt, *pics, "--keep-res", 1, "-o", tmp_path / "z.npz", "--json")
    d = dict(np.load(tmp_path / "z.npz", allow_pickle=False))
    d.pop("names")
    d["latents"] = (d["latents"][:2] * 0.5).astype(np.float64)  # e.g. a regression's predictions
    np.savez(tmp_path / "pred.npz", **d)
    vdvae("decode", "-m", tiny_ckpt, tmp_path / "pred.npz", "--temp", 0, "--output-temp", 0, "-o", f"{tmp_path}/d/")
    z = [torch.from_numpy(d["latents"][:, :4].astype(np.float32)).reshape(2, 4, 1, 1),
         torch.from_numpy(d["latents"][:, 4:].astype(np.float32)).reshape(2, 4, 1, 1)]
    expected = ops.decode(golden_model, z, temperatures=0, output_temperature=0)
    np.testing.assert_array_equal(folder(tmp_path / "d"), expected.numpy())
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["latent_00000_decoded.png", "latent_00001_decoded.png"]


def test_npz_from_another_model_is_refused(tiny_ckpt, tmp_path, pics):
    vdvae("encode", "-m", tiny_ckpt, pics[0], "-o", tmp_path / "z.npz")
    result = vdvae("decode", tmp_path / "z.npz", "-o", f"{tmp_path}/d/", code=1)  # the shipped model
    assert "was made by model 'tiny'" in result.stderr and "--model tiny" in result.stderr


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_npz_reader_refuses_hostile_files(golden_cfg, golden_model):
    z = ops.encode(golden_model, torch.zeros(1, 32, 32, 3, dtype=torch.uint8), n_layers=2)
    good = dict(np.load(io.BytesIO(npz_bytes(z, golden_cfg, ["x"])), allow_pickle=False))
    assert load_npz_latents(npz_bytes(z, golden_cfg, ["x"]), golden_cfg).layers[1].shape == (1, 4, 1, 1)
    cases = {
        "pickled": _npz(**{**good, "names": np.array([{"evil": 1}], dtype=object)}),
        "extra member": _npz(**good, payload=np.zeros(3)),
        "wrong width": _npz(**{**good, "latents": np.zeros((1, 9), np.float32)}),
        "wrong shapes": _npz(**{**good, "layer_shapes": np.array([[4, 2, 2], [4, 1, 1]])}),
        "not float": _npz(**{**good, "latents": np.zeros((1, 8), np.int32)}),
        "nan": _npz(**{**good, "latents": np.full((1, 8), np.nan, np.float32)}),
        "no fingerprint": _npz(**{k: v for k, v in good.items() if k != "model_fingerprint"}),
        "not a zip": b"PK\x03\x04 but nothing else",
    }
    for what, data in cases.items():
        with pytest.raises(LatentsError):
            load_npz_latents(data, golden_cfg, label=what)
    # an array header that claims more data than its member holds
    raw = npz_bytes(z, golden_cfg, ["x"])
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as src, zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "latents.npy":
                data = data.replace(b"(1, 8)", b"(9, 8)")
            dst.writestr(info.filename, data)
    with pytest.raises(LatentsError, match="declares shape"):
        load_npz_latents(buf.getvalue(), golden_cfg)


def test_png_bits_per_dim_is_the_png_size(tmp_path):
    flat = torch.zeros(1, 32, 32, 1, dtype=torch.uint8)
    noisy = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 32, 32, 1), dtype=np.uint8))
    bits = png_bits_per_dim(torch.cat([flat, noisy]))
    for image, value in zip((flat, noisy), bits.tolist()):
        path = tmp_path / "x.png"
        Image.fromarray(image[0, ..., 0].numpy()).save(path, format="PNG", optimize=True)
        assert value == pytest.approx(8 * path.stat().st_size / 1024)
    assert bits[0] < 0.7 < 7.5 < bits[1]  # a flat image costs little more than the PNG headers; noise is incompressible
    # grey stored as RGB is measured as the one channel a grey model reads
    rgb = noisy.repeat(1, 1, 1, 3)
    assert png_bits_per_dim(rgb, 1).tolist() == pytest.approx(bits[1:].tolist())


def test_complexity_score_is_the_elbo_minus_the_png_size(golden_model, pics):
    x = pixels(pics)
    result = complexity_scores(golden_model, x, samples=2, noise=noise(5, range(3)))
    full = ops.elbo(golden_model, x, samples=2, noise=noise(5, range(3)))
    torch.testing.assert_close(result.elbo, full.nll_bound)
    png = png_bits_per_dim(x, golden_model.cfg.image_channels).double() * math.log(2)
    torch.testing.assert_close(result.score, full.nll_bound.double() - png)


def test_ood_cli_complexity_score(tiny_ckpt, tmp_path, pics):
    far = tmp_path / "far"
    far.mkdir()
    for i in range(2):
        Image.fromarray(np.full((32, 32, 3), 40 + 200 * i, np.uint8)).save(far / f"flat{i}.png")
    args = ("ood", "-m", tiny_ckpt, "--in", pics[0].parent, "--out", far, "--seed", 0, "--json")
    *rows, summary = json_lines(vdvae(*args, "--score", "complexity").stdout)
    *llr_rows, llr_summary = json_lines(vdvae(*args).stdout)
    for r, o in zip(rows, llr_rows):
        assert r["score_kind"] == "complexity" and "k" not in r
        assert r["score"] == pytest.approx(r["elbo_bits_per_dim"] - r["png_bits_per_dim"], abs=1e-9)
        # the same ELBO (the same noise, drawn first) and the same complexity column as an llr run
        assert (r["elbo_bits_per_dim"], r["complexity"]) == pytest.approx((o["elbo_bits_per_dim"], o["complexity"]))
    ins = torch.tensor([r["score"] for r in rows[:3]])
    outs = torch.tensor([r["score"] for r in rows[3:]])
    assert summary["metrics"] == summary["complexity"] == pytest.approx(detection_metrics(ins, outs).as_dict())
    assert "llr" not in summary and llr_summary["complexity"] == pytest.approx(summary["complexity"])
    assert llr_summary["metrics"] == llr_summary["llr"]
    bad = vdvae("ood", "-m", tiny_ckpt, *pics, "--score", "complexity", "--k", 2, code=2)
    assert bad.stderr.count("error:") == 1 and "--k belong to --score llr" in bad.stderr
