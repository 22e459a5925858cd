"""scripts/grow_vdvae.py: new decoder layers that leave a trained VDVAE's function and bound unchanged."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from grow_vdvae import grow, grown_blocks  # noqa: E402

from vdvae_cli.engine import ops  # noqa: E402
from vdvae_cli.families.vdvae.config import VDVAEConfig  # noqa: E402
from vdvae_cli.families.vdvae.model import VAE  # noqa: E402


def test_grown_blocks_appends_after_the_last_layer_of_each_resolution():
    blocks, origin = grown_blocks("1x2,4m1,4x2,8m4,8x1", {4: 3, 8: 1})
    assert blocks == "1x2,4m1,4x2,4x3,8m4,8x1,8x1"
    assert origin == [0, 1, 2, 3, 4, None, None, None, 5, 6, None]


@pytest.mark.parametrize("bound", [None, 1.0])
def test_a_grown_model_is_the_same_function_with_zero_kl_in_its_new_layers(bound):
    cfg = VDVAEConfig(image_size=8, width=8, zdim=2, enc_blocks="8x1,8d2,4x1,4d4,1x1", dec_blocks="1x1,4m1,4x1,8m4",
                      num_mixtures=3, image_channels=1, prior_logstd_max=bound)
    g = torch.Generator().manual_seed(0)
    model = VAE(cfg).eval().requires_grad_(False)
    for p in model.parameters():  # every weight non-trivial, the prior's last convs too
        p.add_(0.1 * torch.randn(p.shape, generator=g))
    grown, origin = grow(model, {4: 2, 8: 1})
    assert grown.cfg.n_layers == cfg.n_layers + 3
    new = [i for i, o in enumerate(origin) if o is None]
    assert new == [3, 4, 6]
    x = torch.randint(0, 256, (6, 8, 8, 1), dtype=torch.uint8, generator=g)
    a, b = (ops.reconstruct(m, x, posterior="mean", temperatures=0.0, output_temperature=0.0) for m in (model, grown))
    assert torch.equal(a, b)
    kl = ops.elbo(grown, x, noise=torch.Generator().manual_seed(1)).kl_per_layer
    assert kl[:, new].abs().max() < 1e-6
    assert kl[:, [i for i in range(grown.cfg.n_layers) if i not in new]].sum() > 0.1  # the old layers still carry bits
    # a draw reaches the state (a zero projection would leave the new layers at a saddle), a small one
    assert 0 < grown.decoder.dec_blocks[3].z_proj.weight.abs().max() < model.decoder.dec_blocks[1].z_proj.weight.abs().max()
    # the old layers' weights moved with them
    assert torch.equal(grown.decoder.dec_blocks[5].prior.c2.weight, model.decoder.dec_blocks[3].prior.c2.weight)
