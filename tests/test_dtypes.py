"""Reduced-precision networks stay close to fp32 on the golden cases; DMoL and loss maths stay fp32."""

from __future__ import annotations

import pytest
import torch

from vdvae_cli import ops
from vdvae_cli.checkpoint import build_model

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
