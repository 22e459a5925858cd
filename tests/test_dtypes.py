"""Reduced-precision networks stay close to fp32 on the golden cases; DMoL and loss maths stay fp32."""

from __future__ import annotations

import pytest
import torch

from vdvae_cli.engine import ops
from vdvae_cli.modelfiles.checkpoint import build_model

# (dtype, max relative error of px_z, max absolute error of the ELBO in nats/dim)
TOLERANCES = [(torch.bfloat16, 3e-2, 2e-2), (torch.float16, 5e-3, 2e-3)]


@pytest.mark.parametrize("dtype,px_rel,elbo_abs", TOLERANCES)
def test_low_precision_close_to_reference(golden_cfg, golden_state, golden_cases, dtype, px_rel, elbo_abs):
    model = build_model(golden_cfg, golden_state, dtype=dtype)
    assert model.decoder.gain.dtype == dtype
    z = [golden_cases[f"post.z.{i:02d}"].to(dtype) for i in range(13)]
    with torch.no_grad():
        px = model.decoder(2, latents=z).px_z
        logits = model.logits(px)
    assert logits.dtype == torch.float32  # the DMoL head runs in fp32
    ref = golden_cases["setall.px_z"]
    assert ((px.float() - ref).abs().max() / ref.abs().max()).item() < px_rel
    eps = [golden_cases[f"post.eps.{i:02d}"] for i in range(13)]
    r = ops.elbo(model, golden_cases["input.x_uint8"], eps=eps)
    assert r.elbo.dtype == torch.float32
    assert abs(r.elbo.mean().item() - golden_cases["post.elbo"].item()) < elbo_abs


def test_low_precision_sampling_runs_and_is_deterministic(golden_cfg, golden_state):
    model = build_model(golden_cfg, golden_state, dtype=torch.bfloat16)
    a = ops.sample(model, 3, temperatures=0.0, output_temperature=0.0)
    b = ops.sample(model, 3, temperatures=0.0, output_temperature=0.0)
    assert a.dtype == torch.uint8 and a.shape == (3, 32, 32, 3) and torch.equal(a, b)
    ref = ops.sample(build_model(golden_cfg, golden_state), 3, temperatures=0.0, output_temperature=0.0)
    assert (a.float() - ref.float()).abs().mean().item() < 4.0  # mean pixel error in 0..255 units


def _posterior_px(model, golden_cases):
    z = [golden_cases[f"post.z.{i:02d}"] for i in range(13)]
    with torch.no_grad():
        return model.decoder(2, latents=z).px_z


@pytest.mark.parametrize("fuse", [False, True], ids=["channels_last", "channels_last+onednn_fused"])
def test_channels_last_matches_the_reference(golden_cfg, golden_state, golden_cases, fuse):
    from vdvae_cli.families.vdvae.fused import available
    from vdvae_cli.engine.runtime import prepare_for_inference

    if fuse and not available(torch.float32):
        pytest.skip("this PyTorch build has no oneDNN fused convolutions")
    model = prepare_for_inference(build_model(golden_cfg, golden_state), channels_last=True, fuse=fuse)
    assert (model.decoder.dec_blocks[0].resnet.forward.__qualname__.startswith("_block_forward")) == fuse
    assert model.decoder.dec_blocks[0].prior.c2.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(_posterior_px(model, golden_cases), golden_cases["setall.px_z"], atol=1e-5, rtol=0)
    eps = [golden_cases[f"post.eps.{i:02d}"] for i in range(13)]
    r = ops.elbo(model, golden_cases["input.x_uint8"], eps=eps)
    assert abs(r.elbo.mean().item() - golden_cases["post.elbo"].item()) < 1e-5


@pytest.mark.slow
def test_compiled_blocks_match_the_reference(golden_cfg, golden_state, golden_cases):
    """torch.compile (inductor, here on CPU) of every block: the same numbers as eager, within 1e-5."""
    from vdvae_cli.engine.runtime import prepare_for_inference

    model = prepare_for_inference(build_model(golden_cfg, golden_state), channels_last=True, compile=True)
    torch.testing.assert_close(_posterior_px(model, golden_cases), golden_cases["setall.px_z"], atol=1e-5, rtol=0)
    g = torch.Generator().manual_seed(0)
    eager = ops.sample(build_model(golden_cfg, golden_state), 2, temperatures=0.7, noise=g)
    g = torch.Generator().manual_seed(0)
    fast = ops.sample(model, 2, temperatures=0.7, noise=g)
    assert (fast.int() - eager.int()).abs().max().item() <= 1  # uint8 pixels: at most one level apart


def test_fused_bf16_stays_within_the_bf16_tolerance(golden_cfg, golden_state, golden_cases):
    from vdvae_cli.families.vdvae.fused import available
    from vdvae_cli.engine.runtime import prepare_for_inference

    if not available(torch.bfloat16):
        pytest.skip("no oneDNN bf16 fused convolutions on this CPU")
    model = prepare_for_inference(build_model(golden_cfg, golden_state, dtype=torch.bfloat16), fuse=True)
    px = _posterior_px(model, golden_cases)
    ref = golden_cases["setall.px_z"]
    assert ((px.float() - ref).abs().max() / ref.abs().max()).item() < TOLERANCES[0][1]


def test_a_fused_kernel_that_raises_falls_back_to_the_plain_path(golden_cfg, golden_state, golden_cases, monkeypatch):
    """Seen on a Xeon with PyTorch 2.11: the self-check passed, then a fused add raised 'could not
    create a memory' mid-run. The run must go on with the plain kernels (same numbers)."""
    from vdvae_cli.families.vdvae import fused
    from vdvae_cli.modelfiles.checkpoint import build_model
    from vdvae_cli.engine.runtime import prepare_for_inference

    if not fused.available(torch.float32):
        pytest.skip("this PyTorch build has no oneDNN fused convolutions")

    def broken(*args, **kwargs):
        raise RuntimeError("could not create a memory")

    monkeypatch.setattr(fused, "_failed", False)
    monkeypatch.setattr(fused, "_pointwise_add", broken)
    model = prepare_for_inference(build_model(golden_cfg, golden_state), channels_last=True, fuse=True)
    torch.testing.assert_close(_posterior_px(model, golden_cases), golden_cases["setall.px_z"], atol=1e-5, rtol=0)
    assert fused._failed
