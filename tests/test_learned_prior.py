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


# --------------------------------------------------------------------------------------------------
# The spatial prior (PixelCNN++ blocks over one latent map)


def _spatial(channels=3, size=4, **kw):
    from vdvae_cli.engine.spatial_prior import SpatialConfig, SpatialPrior

    torch.manual_seed(0)
    prior = SpatialPrior(SpatialConfig(channels=channels, size=size, filters=8, blocks=2, hidden=12, components=2, **kw))
    with torch.no_grad():
        for p in prior.parameters():  # random weights everywhere: no zero path hides a dependence
            p.normal_(0.0, 0.3)
    return prior


def test_spatial_prior_dimension_depends_only_on_earlier_positions_and_channels():
    """The conditional of z[c, i, j] (its mixture's logits, means and scales) has a non-zero gradient
    only towards earlier positions in raster order, or the same position and an earlier channel, and
    towards every one of those: no peeking, no blind spot."""
    prior = _spatial()
    c, r = 3, 4
    z = torch.randn(1, c * r * r, requires_grad=True)
    maps = z.view(1, c, r, r)
    logits, means, logstd = prior.head(maps.permute(0, 2, 3, 1), prior.context(maps))  # (1, r, r, c, K)
    params = (logits.sum(-1) + means.sum(-1) + logstd.sum(-1))[0]  # (r, r, c)
    for ch in range(c):
        for i in range(r):
            for j in range(r):
                (g,) = torch.autograd.grad(params[i, j, ch], z, retain_graph=True)
                g = g.view(c, r, r)
                for ch2 in range(c):
                    for i2 in range(r):
                        for j2 in range(r):
                            earlier = (i2, j2) < (i, j) or ((i2, j2) == (i, j) and ch2 < ch)
                            if not earlier:
                                assert g[ch2, i2, j2] == 0, ((ch, i, j), (ch2, i2, j2))
                if (i, j, ch) != (0, 0, 0):  # everything before it reaches it (no blind spot)
                    seen = [(ch2, i2, j2) for ch2 in range(c) for i2 in range(r) for j2 in range(r)
                            if (i2, j2) < (i, j) or ((i2, j2) == (i, j) and ch2 < ch)]
                    assert all(g[s] != 0 for s in seen), (ch, i, j)


def test_spatial_prior_draws_are_what_the_scoring_pass_predicts():
    """Each drawn value is its component's mean plus temperature x std x the noise, with the
    component picked by the same uniform, all read from one teacher-forced pass over the finished
    draw: the sampler conditions every dimension on exactly what the likelihood does."""
    prior = _spatial()
    c, r, n = 3, 4, 5
    gen = torch.Generator().manual_seed(7)
    temps = torch.linspace(0.5, 1.0, c * r * r)
    z = prior.sample(n, BatchNoise(gen), temp=temps)
    noise = BatchNoise(torch.Generator().manual_seed(7))
    u, eps = noise.uniform((n, c * r * r), device="cpu"), noise.normal((n, c * r * r), device="cpu")
    maps = z.view(n, c, r, r)
    with torch.no_grad():
        logits, means, logstd = prior.head(maps.permute(0, 2, 3, 1), prior.context(maps))  # (n, r, r, c, K)
    to_flat = lambda t: t.permute(0, 3, 1, 2, 4).reshape(n, c * r * r, -1)  # noqa: E731
    logits, means, logstd = to_flat(logits), to_flat(means), to_flat(logstd)
    pick = (u[..., None] > torch.softmax(logits, -1).cumsum(-1)).sum(-1).clamp(max=1)
    want = means.gather(2, pick[..., None])[..., 0] + temps * torch.exp(logstd.gather(2, pick[..., None])[..., 0]) * eps
    assert torch.allclose(z, want, atol=1e-5)
    assert torch.isfinite(prior.log_prob(z)).all()
    again = prior.sample(n, BatchNoise(torch.Generator().manual_seed(7)), temp=temps)
    assert torch.equal(z, again)


def test_spatial_prior_learns_a_spatial_pattern():
    """Latent maps whose every value copies its left neighbour (plus a little noise): the prior that
    sees the left neighbour scores them far better than a factorised Gaussian can."""
    from vdvae_cli.engine.spatial_prior import SpatialConfig, SpatialPrior

    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(256, 2, 4, 1, generator=gen)
    data = (rows.expand(-1, -1, -1, 4) + 0.05 * torch.randn(256, 2, 4, 4, generator=gen)).reshape(256, -1)
    torch.manual_seed(0)
    prior = SpatialPrior(SpatialConfig(channels=2, size=4, filters=8, blocks=1, hidden=16, components=2))
    prior.init_from(data)
    before = -prior.log_prob(data).mean().item() / 32
    opt = torch.optim.Adam(prior.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        (-prior.log_prob(data).mean() / 32).backward()
        opt.step()
    after = -prior.log_prob(data).mean().item() / 32
    assert before > 1.3 and after < 0.0, (before, after)  # N(0, 1) ~ 1.42 nats/dim; copies cost far less


def test_spatial_companion_round_trip_and_lies_refused():
    import json

    import pytest
    from safetensors.torch import save

    from vdvae_cli.base.errors import CheckpointError, UsageError
    from vdvae_cli.engine.learned_prior import PRIOR_FORMAT, check_layers, default_kind, load_prior, prior_bytes

    prior = _spatial()
    data = prior_bytes(prior, layers=1, fingerprint="f", model_name="tiny")
    back, layers, meta = load_prior(data, fingerprint="f")
    z = torch.randn(3, 48)
    assert meta["kind"] == "spatial" and layers == 1 and torch.equal(back.log_prob(z), prior.log_prob(z))
    tensors = {k: v.contiguous() for k, v in prior.state_dict().items()}
    base = {"format": PRIOR_FORMAT, "model_fingerprint": "f", "layers": "1", "kind": "spatial"}
    huge = {**prior.cfg.to_dict(), "filters": 512, "blocks": 16}
    for cfg, why in ((huge, "but its prior_config needs"), ({**huge, "filters": 10**6}, "unreadable prior metadata")):
        with pytest.raises(CheckpointError, match=why):
            load_prior(save(tensors, metadata={**base, "prior_config": json.dumps(cfg)}), fingerprint="f")
    with pytest.raises(CheckpointError, match="kind 'pixelsnail'"):
        load_prior(save(tensors, metadata={**base, "kind": "pixelsnail"}), fingerprint="f")
    shapes = [(4, 8, 8), (4, 16, 16)]
    assert default_kind(1, shapes) == "spatial" and default_kind(6, [(16, 1, 1)] * 6) == "made"
    assert check_layers(1, shapes, "spatial") == 256
    with pytest.raises(UsageError, match="one spatial layer"):
        check_layers(2, shapes, "spatial")
    with pytest.raises(UsageError, match="one spatial layer"):
        check_layers(1, [(16, 1, 1)], "spatial")
