"""``vdvae inpaint | upscale | denoise | deblur`` and ``vdvae_cli.engine.restore`` on the golden tiny
models of both families: the commands run, seeds reproduce whatever the batch size, the operators'
data consistency holds, and bad masks, sizes, factors and sigmas are one ``error:`` line."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vdvae_cli.cli import app
from vdvae_cli.engine import restore as R
from vdvae_cli.engine.distributions import PerImageNoise
from vdvae_cli.engine.runtime import image_generators

runner = CliRunner()
NVAE_DATA = Path(__file__).parent / "data" / "golden-nvae"
FAST = ("--steps", "2", "--dtype", "fp32", "-q")


def vdvae(*args, ok: bool = True):
    result = runner.invoke(app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, f"exit {result.exit_code}: {result.stderr}"
    return result


def png(path) -> np.ndarray:
    with Image.open(io.BytesIO(Path(path).read_bytes())) as im:
        return np.asarray(im.convert("RGB"))


def one_error(result, code: int, *needles: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def nvae_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("nvae") / "tiny-nvae.safetensors"
    result = runner.invoke(app, ["convert", str(NVAE_DATA / "tiny-nvae.pt"), "-o", str(path)])
    assert result.exit_code == 0, result.stderr
    return path


@pytest.fixture(params=["vdvae", "nvae"])
def ckpt(request, tiny_ckpt, nvae_ckpt) -> Path:
    return tiny_ckpt if request.param == "vdvae" else nvae_ckpt


@pytest.fixture(scope="module")
def pics(tmp_path_factory) -> dict[str, Path]:
    """Two 32x32 test images, their 8x8 area averages, and masks (32x32 and 64x64, white = fill)."""
    folder = tmp_path_factory.mktemp("pics")
    yy, xx = np.mgrid[0:32, 0:32]
    out: dict[str, Path] = {}
    for k, name in enumerate("ab"):
        img = np.stack([(xx * 7 + 50 * k) % 256, (yy * 6) % 256, np.full_like(xx, 90 + 60 * k)], -1).astype(np.uint8)
        img[6:14, 18:28] = [240, 30, 10 + 100 * k]
        Image.fromarray(img).save(folder / f"{name}.png")
        small = img.astype(np.float64).reshape(8, 4, 8, 4, 3).mean(axis=(1, 3)).round().astype(np.uint8)
        (folder / "small").mkdir(exist_ok=True)
        Image.fromarray(small).save(folder / "small" / f"{name}.png")
        out[name], out[f"small_{name}"] = folder / f"{name}.png", folder / "small" / f"{name}.png"
    hole = np.zeros((32, 32), np.uint8)
    hole[10:22, 8:20] = 255
    Image.fromarray(hole).save(folder / "hole.png")
    Image.fromarray(np.kron(hole, np.ones((2, 2), np.uint8))).save(folder / "hole64.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(folder / "black.png")
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(folder / "white.png")
    (folder / "masks").mkdir()
    Image.fromarray(hole).save(folder / "masks" / "a.png")
    out.update(hole=folder / "hole.png", hole64=folder / "hole64.png", black=folder / "black.png",
               white=folder / "white.png", masks=folder / "masks")
    return out


# --------------------------------------------------------------------------------------------------
# The operators


def test_area_projection_is_exact_and_stays_in_range():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=gen) * 1.6 - 0.3  # partly outside [0, 1]
    y = torch.rand(2, 3, 4, 4, generator=gen)
    y[0, 0, 0, 0], y[1, 2, 3, 3] = 0.0, 1.0  # blocks that must be all black / all white
    op = R.AreaDownsample(4)
    p = op.project(x, y)
    assert p.min() >= 0 and p.max() <= 1
    assert torch.allclose(op.apply(p), y, atol=1e-5)
    assert torch.equal(p[0, 0, :4, :4], torch.zeros(4, 4)) and torch.equal(p[1, 2, 12:, 12:], torch.ones(4, 4))


def test_blur_data_step_inverts_a_noise_free_blur():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 32, 32, generator=gen).clamp(0.05, 0.95)
    op = R.GaussianBlur(1.0)
    y = op.apply(x)
    assert abs(float(op.apply(torch.ones(1, 3, 32, 32)).mean()) - 1) < 1e-5  # the kernel sums to 1
    assert (y - x).abs().mean() > 0.05  # it does blur
    back = op.data_step(torch.full_like(x, 0.5), y, gamma=1.0)  # the observation dominates
    assert (back - x).abs().mean() < 0.5 * (y - x).abs().mean()  # most of the blur undone (white noise: not all)
    assert (op.apply(back) - y).abs().max() < 0.01  # and consistent with the observation


def test_fill_holes_keeps_known_pixels_and_fills_between_them():
    x = torch.zeros(1, 3, 8, 8)
    x[..., :, :4] = 1.0
    keep = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    keep[..., 2:6, 2:6] = False
    filled = R.fill_holes(x * keep, keep)
    assert torch.equal(filled[keep.expand_as(x)], x[keep.expand_as(x)])
    assert filled[0, 0, 3, 2] > 0.6 and filled[0, 0, 3, 5] < 0.4  # each side takes after its neighbours


# --------------------------------------------------------------------------------------------------
# The commands, on both families


def test_inpaint_keeps_pixels_bit_for_bit_and_seeds_ignore_the_batch(ckpt, pics, tmp_path):
    common = ("inpaint", pics["a"], pics["b"], "--mask", pics["hole"], "-m", ckpt, "-n", "2", "--seed", "5", *FAST)
    vdvae(*common, "-b", "1", "-o", f"{tmp_path}/one/")
    vdvae(*common, "-b", "4", "-o", f"{tmp_path}/four/")
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == ["a_inpaint_0.png", "a_inpaint_1.png", "b_inpaint_0.png", "b_inpaint_1.png"]
    hole = png(pics["hole"])[..., 0] > 127
    for name in names:
        out, again = png(tmp_path / "one" / name), png(tmp_path / "four" / name)
        assert np.array_equal(out, again), name
        source = png(pics[name[0]])
        assert np.array_equal(out[~hole], source[~hole]), name  # kept pixels, bit for bit
    assert not np.array_equal(png(tmp_path / "one" / "a_inpaint_0.png"), png(tmp_path / "one" / "a_inpaint_1.png"))


def test_cli_matches_the_engine(tiny_ckpt, pics, tmp_path):
    from vdvae_cli.modelfiles.checkpoint import load_file_model

    vdvae("upscale", pics["small_a"], "--factor", "4", "-m", tiny_ckpt, "--seed", "9", "--temp", "0.7", *FAST,
          "-o", tmp_path / "up.png")
    model = load_file_model(tiny_ckpt)
    small = torch.from_numpy(png(pics["small_a"])[None].copy())
    want = R.restore(model, R.AreaDownsample(4), small, steps=2, temperatures=0.7,
                     decoder_std=R.TASK_DEFAULTS["upscale"].decoder_std,
                     noise=PerImageNoise(image_generators(9, [0])))
    assert np.array_equal(png(tmp_path / "up.png"), want[0].numpy())


def test_upscale_is_consistent_with_area_averaging(ckpt, pics, tmp_path):
    vdvae("upscale", pics["small_a"], pics["small_b"], "--factor", "4", "-m", ckpt, "--seed", "1", *FAST,
          "-o", f"{tmp_path}/up/")
    for name in "ab":
        out = png(tmp_path / "up" / f"{name}_upscale.png").astype(np.float64)
        down = out.reshape(8, 4, 8, 4, 3).mean(axis=(1, 3))
        assert np.abs(down - png(pics[f"small_{name}"])).max() <= 1.0


def test_posterior_mean_is_deterministic_and_json_reports_the_fit(ckpt, pics, tmp_path):
    outs = []
    for seed in (1, 2):
        result = vdvae("denoise", pics["a"], "--sigma", "0.1", "-m", ckpt, "--posterior", "mean", "--seed", seed,
                       *FAST, "--json", "-o", tmp_path / f"d{seed}.png")
        outs.append(png(tmp_path / f"d{seed}.png"))
        (rec,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert np.array_equal(*outs)
    assert rec["task"] == "denoise" and rec["sigma"] == 0.1 and rec["steps"] == 2 and rec["posterior"] == "mean"
    assert 0 < rec["data_rmse"] < 255 and rec["prior_nats"] > 0
    assert rec["objective"] == pytest.approx(rec["data_nats"] + rec["prior_nats"], abs=1e-5)
    # the reported error is the output's own: RMS of output - input, in grey levels
    rmse = np.sqrt(np.mean((outs[0].astype(np.float64) - png(pics["a"])) ** 2))
    assert rec["data_rmse"] == pytest.approx(rmse, abs=1e-3)


def test_deblur_and_grid(tiny_ckpt, pics, tmp_path):
    result = vdvae("deblur", pics["a"], "--blur", "gaussian:1.5", "--sigma", "0.01", "-m", tiny_ckpt, "--seed", "0",
                   *FAST, "--json", "-o", tmp_path / "d.png")
    rec = json.loads(result.stdout)
    assert rec["blur"] == "gaussian:1.5" and rec["data_rmse"] >= 0
    vdvae("inpaint", pics["a"], pics["b"], "--mask", pics["hole"], "-m", tiny_ckpt, "-n", "3", "--grid", *FAST,
          "--seed", "0", "-o", tmp_path / "grid.png")
    grid = png(tmp_path / "grid.png")
    assert grid.shape == (2 * 34 + 2, 5 * 34 + 2, 3)  # per input: input, mask, 3 solutions
    assert np.array_equal(grid[2:34, 2:34], png(pics["a"]))
    assert np.array_equal(grid[2:34, 36:68, 0] > 127, png(pics["hole"])[..., 0] > 127)


def test_masks_of_another_size_and_from_a_folder(tiny_ckpt, pics, tmp_path):
    vdvae("inpaint", pics["a"], "--mask", pics["hole64"], "-m", tiny_ckpt, *FAST, "--seed", "0", "-o", tmp_path / "x.png")
    vdvae("inpaint", pics["a"], "--mask", pics["hole"], "-m", tiny_ckpt, *FAST, "--seed", "0", "-o", tmp_path / "y.png")
    vdvae("inpaint", pics["a"], "--mask", pics["masks"], "-m", tiny_ckpt, *FAST, "--seed", "0", "-o", tmp_path / "z.png")
    assert np.array_equal(png(tmp_path / "x.png"), png(tmp_path / "y.png"))
    assert np.array_equal(png(tmp_path / "z.png"), png(tmp_path / "y.png"))


# --------------------------------------------------------------------------------------------------
# Bad requests: one line each


@pytest.mark.parametrize("args, code, needles", [
    (("inpaint", "{a}", "--mask", "{black}"), 2, ("no white pixels",)),
    (("inpaint", "{a}", "--mask", "{white}"), 2, ("white everywhere",)),
    (("inpaint", "{b}", "--mask", "{masks}"), 2, ("holds no mask for",)),
    (("inpaint", "{a}", "--mask", "{a}.missing"), 1, ("no such file",)),
    (("inpaint", "{a}", "--mask", "-"), 2, ("--mask - : a mask is read from a file",)),  # said stdin is a terminal
    (("upscale", "{a}", "--factor", "4"), 1, ("is 32x32", "takes 8x8")),
    (("upscale", "{small_a}", "--factor", "3"), 2, ("--factor must be 2, 4 or 8",)),
    (("denoise", "{a}", "--sigma", "25"), 2, ("--sigma", "0.09804")),
    (("denoise", "{a}", "--sigma", "0"), 2, ("--sigma must be",)),
    (("deblur", "{a}", "--blur", "box:2"), 2, ("not a blur",)),
    (("deblur", "{a}", "--blur", "gaussian:x"), 2, ("not a number",)),
    (("deblur", "{a}", "--blur", "gaussian:8"), 2, ("wider than",)),
    (("denoise", "{a}", "--sigma", "0.1", "--steps", "0"), 2, ("--steps",)),
    (("denoise", "{a}", "--sigma", "0.1", "--decoder-std", "0"), 2, ("--decoder-std",)),
    (("denoise", "{a}", "--sigma", "0.1", "--posterior", "mean", "-n", "3", "--grid"), 2, ("identical",)),
])
def test_bad_requests_are_one_error_line(tiny_ckpt, pics, tmp_path, args, code, needles):
    filled = [a.format(**{k: str(v) for k, v in pics.items()}) for a in args]
    result = vdvae(*filled, "-m", tiny_ckpt, "--dtype", "fp32", "-o", tmp_path / "out.png", ok=False)
    one_error(result, code, *needles)
    assert not (tmp_path / "out.png").exists()
