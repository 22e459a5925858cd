"""MADE prior: autoregressive masks (gradient test), fitting lowers NLL, seeded sampling."""

from __future__ import annotations

import torch

from vdvae_cli.engine.distributions import BatchNoise
from vdvae_cli.engine.learned_prior import MadeConfig, MadePrior


def test_made_output_d_depends_only_on_earlier_dims():
    torch.manual_seed(0)
    cfg = MadeConfig(dim=6, hidden=(16, 16), components=3)
    prior = MadePrior(cfg)
    for p in prior.parameters():  # random weights everywhere, biases included
        torch.nn.init.normal_(p)
    z = torch.randn(1, cfg.dim, requires_grad=True)
    for group in range(3):
        for d in range(cfg.dim):
            prior.zero_grad()
            z.grad = None
            out = prior.params(z)[group][0, d].sum()
            out.backward()
            g = z.grad[0]
            assert torch.all(g[d:] == 0), (group, d, g)
            if d > 0:
                assert g[:d].abs().sum() > 0, (group, d, g)


def test_fit_lowers_nll_on_correlated_latents():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(512, 1, generator=gen)
    data = torch.cat([a, 0.9 * a + 0.1 * torch.randn(512, 1, generator=gen),
                      -a + 0.1 * torch.randn(512, 1, generator=gen)], 1)
    torch.manual_seed(1)
    prior = MadePrior(MadeConfig(dim=3, hidden=(32,), components=2))
    before = -prior.log_prob(data).mean().item()
    opt = torch.optim.Adam(prior.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        loss = -prior.log_prob(data).mean()
        loss.backward()
        opt.step()
    after = -prior.log_prob(data).mean().item()
    # Independent N(0,1) dims would cost ~3 * 1.42 nats; the correlations allow far less.
    assert after < before - 2.0
    assert after < 2.5
    draws = prior.sample(2000, BatchNoise(torch.Generator().manual_seed(2)))
    assert torch.corrcoef(draws.T)[0, 2] < -0.8


def test_sample_is_reproducible_with_a_seeded_generator():
    torch.manual_seed(0)
    prior = MadePrior(MadeConfig(dim=4, hidden=(8,), components=2))
    a = prior.sample(5, BatchNoise(torch.Generator().manual_seed(3)))
    b = prior.sample(5, BatchNoise(torch.Generator().manual_seed(3)))
    c = prior.sample(5, BatchNoise(torch.Generator().manual_seed(4)))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.isfinite(prior.log_prob(a)).all()


def test_companion_round_trip_and_fingerprint_mismatch_refused():
    import pytest

    from vdvae_cli.base.errors import CheckpointError
    from vdvae_cli.engine.learned_prior import load_prior, prior_bytes

    torch.manual_seed(0)
    prior = MadePrior(MadeConfig(dim=5, hidden=(8,), components=2))
    data = prior_bytes(prior, layers=2, fingerprint="abc123", model_name="tiny")
    back, layers, meta = load_prior(data, fingerprint="abc123")
    z = torch.randn(4, 5)
    assert layers == 2 and meta["model_name"] == "tiny"
    assert torch.equal(back.log_prob(z), prior.log_prob(z))
    with pytest.raises(CheckpointError, match="fitted to model 'tiny'"):
        load_prior(data, fingerprint="other")


def test_layers_beyond_the_reach_are_refused_naming_the_largest():
    import pytest

    from vdvae_cli.base.errors import UsageError
    from vdvae_cli.engine.learned_prior import check_layers, default_layers, max_flat_layers

    shapes = [(16, 1, 1)] * 6 + [(16, 4, 4)] * 3 + [(32, 8, 8)]
    assert max_flat_layers(shapes) == 6 and default_layers(shapes) == 6
    assert check_layers(6, shapes) == 96 and check_layers(9, shapes) == 96 + 3 * 256
    with pytest.raises(UsageError, match="covers 1 to 9"):  # the 8x8 layer would pass 2048 dims
        check_layers(10, shapes)
    assert default_layers([(8, 8, 8), (8, 16, 16)]) == 1  # NVAE: the top group alone
    with pytest.raises(UsageError, match="more than a learned prior covers"):
        check_layers(1, [(64, 32, 32)])


def test_a_hostile_companion_file_is_one_clear_error_before_any_allocation():
    import json

    import pytest
    from safetensors.torch import save

    from vdvae_cli.base.errors import CheckpointError
    from vdvae_cli.engine.learned_prior import PRIOR_FORMAT, load_prior, prior_bytes

    prior = MadePrior(MadeConfig(dim=5, hidden=(8,), components=2))
    good = prior_bytes(prior, layers=2, fingerprint="f", model_name="tiny")
    tensors = {k: v.contiguous() for k, v in prior.state_dict().items()}
    base = {"format": PRIOR_FORMAT, "model_fingerprint": "f", "layers": "2",
            "prior_config": json.dumps(prior.cfg.to_dict())}
    lying = {**base, "prior_config": json.dumps({"dim": 5, "hidden": [10**9], "components": 2})}
    cases = {
        b"\x00" * 4: "not a learned-prior file",
        good[:40]: "corrupt safetensors header|not a learned-prior",
        save(tensors, metadata={**base, "layers": "two"}): "unreadable prior metadata",
        save(tensors, metadata={**base, "prior_config": "[1]"}): "unreadable prior metadata",
        save(tensors, metadata=lying): "holds 318 numbers but its prior_config needs 36000000030",
    }
    for data, why in cases.items():
        with pytest.raises(CheckpointError, match=why):
            load_prior(data, fingerprint="f")
