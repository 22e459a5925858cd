"""The same model on a GPU: golden parity, seeded CLI runs that match the CPU's, half precision and
``--batch-size auto``. Skipped where no CUDA device is present (the suite never needs one)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vdvae_cli.families.vdvae import pixels as vdvae_pixels
from vdvae_cli.engine import ops
from vdvae_cli.modelfiles.checkpoint import build_model
from vdvae_cli.cli import app
from vdvae_cli.engine.runtime import prepare_for_inference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CUDA = torch.device("cuda")
runner = CliRunner()


def vdvae(*args) -> None:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.stderr}"


@pytest.fixture(autouse=True)
def _ieee_fp32():
    from vdvae_cli.engine.runtime import configure_backends

    configure_backends(CUDA, torch.float32)  # TF32 off: fp32 means IEEE fp32, as on the CPU


def test_posterior_pass_on_cuda_matches_the_reference(golden_cfg, golden_state, golden_cases):
    model = build_model(golden_cfg, golden_state).to(CUDA)
    n = sum(1 for k in golden_cases if k.startswith("post.eps."))
    eps = [golden_cases[f"post.eps.{i:02d}"].to(CUDA) for i in range(n)]
    x = golden_cases["input.x_uint8"]
    with torch.no_grad():
        out = model.decoder(2, model.encoder(vdvae_pixels.model_input(golden_cfg, x.to(CUDA))), eps=eps, want_kl=True)
    torch.testing.assert_close(out.px_z.cpu(), golden_cases["post.px_z"], atol=1e-4, rtol=0)
    r = ops.elbo(model, x, eps=eps)
    torch.testing.assert_close(r.elbo.mean().cpu(), golden_cases["post.elbo"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_on_cuda_stays_close(golden_cfg, golden_state, golden_cases, dtype):
    model = prepare_for_inference(build_model(golden_cfg, golden_state).to(CUDA, dtype))
    n = sum(1 for k in golden_cases if k.startswith("post.eps."))
    eps = [golden_cases[f"post.eps.{i:02d}"].to(CUDA) for i in range(n)]
    r = ops.elbo(model, golden_cases["input.x_uint8"], eps=eps)
    # The same bound as tests/test_dtypes.py allows half precision on the CPU (bits/dim).
    assert abs(r.elbo.mean().item() - golden_cases["post.elbo"].item()) < 0.05


def test_seeded_sample_on_cuda_is_the_cpu_sample(tiny_ckpt, tmp_path):
    """Seeds name the same noise on every device (CPU generators), so the images differ only where
    float rounding moves a pixel across a quantisation step."""
    vdvae("sample", "-n", 6, "--seed", 5, "--temp", "0.7", "-m", tiny_ckpt, "--device", "cpu", "-o", f"{tmp_path / 'cpu'}/", "-q")
    vdvae("sample", "-n", 6, "--seed", 5, "--temp", "0.7", "-m", tiny_ckpt, "--device", "cuda", "-o", f"{tmp_path / 'gpu'}/", "-q")
    names = sorted(p.name for p in (tmp_path / "cpu").iterdir())
    assert len(names) == 6
    for name in names:
        a = np.asarray(Image.open(tmp_path / "cpu" / name), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "gpu" / name), dtype=np.int16)
        assert np.abs(a - b).max() <= 2 and (a != b).mean() < 0.01, name


def test_batch_size_auto_on_cuda_gives_the_fixed_size_images(tiny_ckpt, tmp_path):
    vdvae("sample", "-n", 9, "--seed", 1, "-m", tiny_ckpt, "--device", "cuda", "-b", "auto", "--grid", "-o", tmp_path / "a.png", "-q")
    vdvae("sample", "-n", 9, "--seed", 1, "-m", tiny_ckpt, "--device", "cuda", "-b", "2", "--grid", "-o", tmp_path / "b.png", "-q")
    a, b = (np.asarray(Image.open(tmp_path / f), dtype=np.int16) for f in ("a.png", "b.png"))
    assert np.abs(a - b).max() <= 2


def test_the_default_model_with_its_exemplar_prior_samples_the_same_on_cuda(tmp_path):
    """The shipped exemplar prior picks its stored images with the CPU generators too, and draws their
    posterior on the model's device: the same samples as on the CPU, up to rounding."""
    for device in ("cpu", "cuda"):
        vdvae("sample", "-n", 6, "--seed", 5, "--device", device, "-o", f"{tmp_path / device}/", "-q")
    for name in sorted(p.name for p in (tmp_path / "cpu").iterdir()):
        a = np.asarray(Image.open(tmp_path / "cpu" / name), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "cuda" / name), dtype=np.int16)
        assert np.abs(a - b).max() <= 4 and (a != b).mean() < 0.02, name
