"""The VDVAE network itself (model.py), beyond the golden comparisons of test_golden.py."""

from __future__ import annotations

import torch

from vdvae_cli.engine import ops
from vdvae_cli.families.vdvae.config import VDVAEConfig
from vdvae_cli.families.vdvae.model import VAE


def test_a_resolution_without_start_tensor_or_mixin_starts_from_zeros():
    """dec_blocks may enter a resolution above no_bias_above without a mixin ('4x1,8x1'): its state
    starts from zeros. That path called torch.zeros(memory_format=...), which torch rejects."""
    cfg = VDVAEConfig(image_size=8, width=8, zdim=2, enc_blocks="8x1,8d2,4x1", dec_blocks="4x1,8x1", no_bias_above=4)
    torch.manual_seed(0)  # the network's own init
    model = VAE(cfg).eval()
    block = model.decoder.dec_blocks[1]
    like = model.decoder.bias_xs[0]
    start = block.input_state({}, 3, like)
    assert start.shape == (3, 8, 8, 8) and start.dtype == like.dtype and not start.any()
    cl = block.input_state({}, 3, like.contiguous(memory_format=torch.channels_last))
    assert cl.is_contiguous(memory_format=torch.channels_last) and not cl.any()
    with torch.no_grad():
        out = model.decoder(3, want_latents=True)
    assert out.px_z.shape == (3, 8, 8, 8) and torch.isfinite(out.px_z).all()
    assert [tuple(z.shape) for z in out.latents] == [(3, 2, 4, 4), (3, 2, 8, 8)]
    images = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    result = ops.elbo(model, images)  # the posterior pass takes the same path
    assert result.kl_per_layer.shape == (2, 2) and torch.isfinite(result.nll_bound).all()
