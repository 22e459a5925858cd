"""PixelCNN++ (families/pixelcnn): the properties that make it an autoregressive model, checked on
random weights: causality of the network (a gradient test), the channel chain inside a pixel, the
likelihood against a direct computation of the discretized mixture, the sampler against the
network's own teacher-forced pass, the row-cropped sampler against full passes bit for bit, and
the model file round trip."""

from __future__ import annotations

import math

import pytest
import torch

from vdvae_cli.base.errors import ConfigError, UsageError
from vdvae_cli.engine import ops
from vdvae_cli.engine.distributions import BatchNoise, dmol_sample, open_uniform
from vdvae_cli.engine.registry import family_named, family_of
from vdvae_cli.families.pixelcnn.config import PixelCNNConfig
from vdvae_cli.families.pixelcnn.network import PixelCNNPP
from vdvae_cli.families.pixelcnn.sampling import draw, network_input, rows_needed, to_pixels
from vdvae_cli.modelfiles.checkpoint import load_file_model, save_checkpoint
from vdvae_cli.modelfiles.header import config_of


def tiny(channels: int = 3, size: int = 8, mix: int = 3, *, seed: int = 0, dtype=torch.float64) -> PixelCNNPP:
    torch.manual_seed(seed)
    cfg = PixelCNNConfig(image_size=size, channels=channels, nr_resnet=1, nr_filters=8, nr_logistic_mix=mix,
                         dropout=0.0, name=f"tiny{channels}")
    net = PixelCNNPP(cfg).to(dtype).eval()
    with torch.no_grad():  # larger than the init so that every path carries signal
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return net


@pytest.mark.parametrize("channels", [1, 3])
def test_each_pixel_depends_only_on_earlier_pixels(channels):
    net = tiny(channels, size=8)
    x = torch.randn(1, channels, 8, 8, dtype=torch.float64, requires_grad=True)
    out = net(x)  # (1, 8, 8, K)
    for i in range(8):
        for j in range(8):
            (g,) = torch.autograd.grad(out[0, i, j].sum(), x, retain_graph=True)
            seen = g[0].abs().sum(0) > 0  # (8, 8): input pixels this output reads
            earlier = torch.zeros(8, 8, dtype=torch.bool)
            earlier.view(-1)[: i * 8 + j] = True
            assert not (seen & ~earlier).any(), f"pixel ({i}, {j}) reads a later pixel or itself"
            # no blind spot: the pixel to the left, the ones above (and above to the right) are read
            if j:
                assert seen[i, j - 1]
            if i:
                assert seen[i - 1, j] and seen[i - 1, min(j + 1, 7)] and seen[i - 1, max(j - 1, 0)]


def test_the_channels_of_a_pixel_are_drawn_in_order():
    """R is drawn from its own parameters only; G from R's value; B from R's and G's."""
    m = 2
    logits = torch.randn(4, 1, 1, 10 * m, dtype=torch.float32)
    u_mix = open_uniform(torch.rand(4, 1, 1, m))
    u_log = open_uniform(torch.rand(4, 1, 1, 3))
    base = dmol_sample(logits, m, u_mix=u_mix, u_logistic=u_log)
    # the per-colour block is [means | log-scales | coefficients] for R, G, B in turn after the M logits
    for colour in (1, 2):  # change G's (then B's) means: the earlier colours stay
        changed = logits.clone()
        start = m + colour * 3 * m
        changed[..., start : start + m] += 0.7
        other = dmol_sample(changed, m, u_mix=u_mix, u_logistic=u_log)
        assert torch.equal(other[..., :colour], base[..., :colour])
        assert not torch.equal(other[..., colour], base[..., colour])
    # G's coefficient on R: G moves with it, R does not
    changed = logits.clone()
    changed[..., m + 2 * m : m + 3 * m] += 1.0  # R's block coefficients: tanh(.) conditions G on R
    other = dmol_sample(changed, m, u_mix=u_mix, u_logistic=u_log)
    assert torch.equal(other[..., 0], base[..., 0]) and not torch.equal(other[..., 1], base[..., 1])


def _direct_grey_nll_bits(logits: torch.Tensor, images: torch.Tensor, m: int) -> torch.Tensor:
    """The discretized logistic mixture written out pixel by pixel (grey): -log2 p(x) per image."""
    n, h, w, _ = logits.shape
    total = torch.zeros(n, dtype=torch.float64)
    for b in range(n):
        for i in range(h):
            for j in range(w):
                v = int(images[b, i, j, 0])
                x = v / 127.5 - 1.0
                prob = 0.0
                pis = torch.softmax(logits[b, i, j, :m].double(), 0)
                for k in range(m):
                    mu = float(logits[b, i, j, m + k])
                    s = math.exp(max(float(logits[b, i, j, 2 * m + k]), -7.0))
                    hi = 1.0 if v == 255 else 1 / (1 + math.exp(-(x + 1 / 255 - mu) / s))
                    lo = 0.0 if v == 0 else 1 / (1 + math.exp(-(x - 1 / 255 - mu) / s))
                    prob += float(pis[k]) * (hi - lo)
                total[b] -= math.log2(prob)
    return total


def test_likelihood_is_the_discretized_mixture_of_the_teacher_forced_pass():
    net = tiny(1, size=8, mix=3, dtype=torch.float32)
    images = torch.randint(0, 256, (2, 8, 8, 1), dtype=torch.uint8)
    images[0, 0, :3] = 0  # both edges
    images[1, 2, :3] = 255
    result = ops.elbo(net, images)
    assert result.kl_per_layer.shape == (2, 0) and torch.all(result.rate == 0)
    logits = net(network_input(net.cfg, images))
    expected = _direct_grey_nll_bits(logits.detach(), images, 3) / 64
    assert torch.allclose(result.distortion.double() / math.log(2), expected, atol=2e-4)
    assert torch.equal(result.nll_bound, result.distortion)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("t", [1.0, 0.0])
def test_the_sampler_draws_from_the_networks_own_conditionals(channels, t):
    """Every drawn pixel is what the teacher-forced pass over the finished image gives at that
    pixel with the same uniforms: the sampler conditions on exactly the pixels before it."""
    net = tiny(channels, size=8)
    images = draw(net, 3, BatchNoise(torch.Generator().manual_seed(5)), t)
    g = torch.Generator().manual_seed(5)
    u_mix = open_uniform(torch.rand((3, 8, 8, 3), generator=g))
    u_log = open_uniform(torch.rand((3, 8, 8, channels), generator=g))
    logits = net(network_input(net.cfg, images[..., :channels]).double())
    again = to_pixels(dmol_sample(logits, 3, temperature=t, u_mix=u_mix, u_logistic=u_log))
    assert torch.equal(again, images[..., :channels])
    assert images.shape == (3, 8, 8, 3) and images.dtype == torch.uint8
    assert len({images[k].float().mean().item() for k in range(3)}) == (3 if t else 1)  # t = 0 draws no noise


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels", [1, 3])
def test_cached_samplers_equal_full_passes_bit_for_bit(dtype, channels):
    """The row caches (Fast PixelCNN++) and the row-cropped passes draw the same pixels as full
    passes over the whole canvas, for a fixed seed; and the caches hold what a full pass computes."""
    from vdvae_cli.families.pixelcnn.sampling import RowCache

    net = tiny(channels, size=12, dtype=dtype)
    full = draw(net, 2, BatchNoise(torch.Generator().manual_seed(1)), 1.0, method="full")
    for method in ("rows", "crop"):
        assert torch.equal(draw(net, 2, BatchNoise(torch.Generator().manual_seed(1)), 1.0, method=method), full), method
    # every row of the final map, computed row by row, against one full pass
    canvas = network_input(net.cfg, full[..., :channels]).to(dtype)
    cache = RowCache(net, 2, dtype, canvas.device)
    for i in range(12):
        cache.run(canvas, tuple((i >> level, i >> level) for level in range(3)))
    by_rows = torch.cat([torch.cat([cache.logits(i, j) for j in range(12)], 2) for i in range(12)], 1)
    assert torch.allclose(by_rows, net(canvas), atol=1e-5 if dtype == torch.float32 else 1e-12)
    assert [rows_needed(i, 12) for i in range(12)] == [4] * 4 + [8] * 4 + [12] * 4
    # folding the weight normalisation for the draw is undone after it (training continues unfolded)
    assert all(m.folded is None for m in net.modules() if hasattr(m, "folded"))


def test_sample_through_ops_is_per_image():
    from vdvae_cli.engine.distributions import PerImageNoise

    net = tiny(1, size=8, dtype=torch.float32)
    gens = lambda idx: [torch.Generator().manual_seed(100 + i) for i in idx]  # noqa: E731
    both = ops.sample(net, 2, noise=PerImageNoise(gens([0, 1])))
    second = ops.sample(net, 1, noise=PerImageNoise(gens([1])))
    assert torch.equal(both[1:], second)
    assert torch.equal(both[..., 0], both[..., 2])  # grey written as RGB


def test_commands_on_latents_refuse_in_one_line():
    net = tiny(3, size=8, dtype=torch.float32)
    images = torch.zeros(1, 8, 8, 3, dtype=torch.uint8)
    for call in (lambda: ops.encode(net, images), lambda: ops.reconstruct(net, images),
                 lambda: ops.decode(net, [], n=1), lambda: ops.mix(net, [], images)):
        with pytest.raises(UsageError, match="needs latent layers.*has none"):
            call()
    with pytest.raises(UsageError, match="importance sampling"):
        ops.elbo(net, images, samples=2)


def test_model_file_round_trip(tmp_path):
    net = tiny(3, size=8, dtype=torch.float32)
    path = save_checkpoint(net, net.cfg, tmp_path / "p.safetensors")
    cfg = config_of(path)
    assert cfg == net.cfg and family_of(cfg).name == "pixelcnn" and cfg.n_layers == 0
    loaded = load_file_model(path)
    images = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    assert torch.equal(ops.elbo(loaded, images).distortion, ops.elbo(net, images).distortion)


def test_config_is_checked():
    with pytest.raises(ConfigError, match="multiple of 4"):
        PixelCNNConfig(image_size=10)
    with pytest.raises(ConfigError, match="channels"):
        PixelCNNConfig(channels=2)
    with pytest.raises(ConfigError, match="dropout"):
        PixelCNNConfig(dropout=1.0)
    with pytest.raises(ConfigError, match="unknown config field"):
        PixelCNNConfig.from_dict({"nr_resnet": 1, "zdim": 3})
    paper = family_named("pixelcnn").official_config("pixelcnn-cifar10")
    from vdvae_cli.modelfiles.header import parameter_count

    assert 53e6 < parameter_count(paper) < 54e6  # the paper's CIFAR-10 network: about 53M parameters
