"""Grey (one-channel) VDVAE models and the bounded prior scale (config ``prior_logstd_max``)."""

from __future__ import annotations

import math

import pytest
import torch

from vdvae_cli.base.errors import ConfigError
from vdvae_cli.engine import ops
from vdvae_cli.engine.distributions import dmol_log_prob, dmol_param_count, dmol_sample
from vdvae_cli.families.vdvae.config import VDVAEConfig
from vdvae_cli.families.vdvae.model import VAE, bound_logstd
from vdvae_cli.families.vdvae.shapes import vdvae_state_shapes
from vdvae_cli.modelfiles.checkpoint import load_file_model, save_checkpoint


def _cfg(**over) -> VDVAEConfig:
    kw = dict(image_size=8, width=8, zdim=2, enc_blocks="8x1,8d2,4x1", dec_blocks="4x1,8m4", num_mixtures=3,
              image_channels=1)
    kw.update(over)
    return VDVAEConfig(**kw)


def _model(cfg: VDVAEConfig, seed: int = 0) -> VAE:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VAE(cfg).eval()


def test_config_takes_one_or_three_channels_only():
    assert _cfg().n_dims == 64
    assert _cfg(image_channels=3).n_dims == 192
    with pytest.raises(ConfigError, match="grey"):
        _cfg(image_channels=2)


def test_prior_bound_is_left_out_of_files_without_it():
    """A config without the bound serialises (and so fingerprints) exactly as before the option."""
    plain = _cfg()
    assert "prior_logstd_max" not in plain.to_dict()
    bounded = _cfg(prior_logstd_max=1.0)
    assert bounded.to_dict()["prior_logstd_max"] == 1.0
    assert VDVAEConfig.from_dict(bounded.to_dict()) == bounded
    for bad in (float("nan"), 99.0, True, "1"):
        with pytest.raises(ConfigError, match="prior_logstd_max"):
            _cfg(prior_logstd_max=bad)


def test_grey_dmol_sums_to_one_over_the_256_levels():
    m = 3
    logits = torch.randn(1, 2, 2, dmol_param_count(1, m), generator=torch.Generator().manual_seed(0))
    levels = torch.arange(256, dtype=torch.float32) / 127.5 - 1.0  # (256,)
    target = levels.view(256, 1, 1, 1).expand(256, 2, 2, 1)
    lp = dmol_log_prob(logits.expand(256, -1, -1, -1), target, m)  # (256, 2, 2)
    total = torch.logsumexp(lp, dim=0)
    assert torch.allclose(total, torch.zeros_like(total), atol=2e-3)


def test_grey_dmol_sample_is_one_channel_and_noise_free_at_temperature_zero():
    m = 2
    logits = torch.zeros(1, 1, 1, dmol_param_count(1, m))
    logits[..., 0] = 5.0  # component 0 dominates
    logits[..., m] = 0.25  # its mean
    logits[..., 2 * m :] = -3.0  # log-scales: narrow, so clamping to [-1, 1] does not move the mean
    x = dmol_sample(logits, m, temperature=0.0)
    assert x.shape == (1, 1, 1, 1) and float(x) == pytest.approx(0.25)
    g = torch.Generator().manual_seed(0)
    many = dmol_sample(logits.expand(4000, -1, -1, -1), m, noise=ops.as_noise(g))
    assert many.shape == (4000, 1, 1, 1)
    assert float(many.mean()) == pytest.approx(0.25, abs=0.05)


def test_a_grey_model_reads_luma_and_writes_grey_as_rgb(tmp_path):
    cfg = _cfg()
    model = _model(cfg)
    assert dict(vdvae_state_shapes(cfg)) == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    grey = torch.randint(0, 256, (3, 8, 8, 1), dtype=torch.uint8, generator=g)
    rgb = grey.expand(-1, -1, -1, 3).contiguous()
    assert torch.equal(ops.as_channels(rgb, 1), grey)  # grey stored as RGB: the exact grey
    a = ops.elbo(model, rgb, noise=torch.Generator().manual_seed(2))
    b = ops.elbo(model, grey, noise=torch.Generator().manual_seed(2))
    assert torch.equal(a.elbo, b.elbo) and torch.isfinite(a.elbo).all()
    colour = torch.tensor([[[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]]], dtype=torch.uint8)
    assert ops.as_channels(colour, 1).flatten().tolist() == [76, 150, 29, 18]  # BT.601 luma, rounded
    out = ops.sample(model, 2, temperatures=1.0, noise=torch.Generator().manual_seed(3))
    assert out.shape == (2, 8, 8, 3) and out.dtype == torch.uint8
    assert torch.equal(out[..., 0], out[..., 1]) and torch.equal(out[..., 0], out[..., 2])
    path = save_checkpoint(model.state_dict(), cfg, tmp_path / "grey.safetensors")
    again = load_file_model(path)
    assert again.cfg == cfg
    redo = ops.sample(again, 2, temperatures=1.0, noise=torch.Generator().manual_seed(3))
    assert torch.equal(out, redo)


def test_bound_logstd_is_smooth_below_the_bound():
    pv = torch.tensor([-20.0, -3.0, 0.0, 3.0, 160.0])
    b = bound_logstd(pv, 1.0)
    assert (b <= 1.0).all() and torch.all(b[1:] >= b[:-1]) and torch.all(b[:4] < 1.0)
    assert float(b[0]) == pytest.approx(-20.0, abs=1e-6)
    assert float(b[2]) == pytest.approx(1.0 - math.log1p(math.e), abs=1e-6)


def test_a_bounded_prior_cannot_blow_a_sample_up():
    """The failure the option is for: a prior head whose log-std output is huge (fashion32 once drew
    a log-scale of 160 at temperature 1). Unbounded the sample overflows; bounded it stays finite."""
    for bound, finite in ((None, False), (1.0, True)):
        model = _model(_cfg(prior_logstd_max=bound))
        with torch.no_grad():
            for block in model.decoder.dec_blocks:
                block.prior.c4.bias[block.zdim : 2 * block.zdim] = 200.0  # log-std channels
            out = model.decoder(2, temperatures=1.0, trace=True, noise=ops.as_noise(torch.Generator().manual_seed(0)))
        pv_max = max(float(t["pv"].max()) for t in out.trace)
        if bound is None:
            assert pv_max == pytest.approx(200.0)
        else:
            assert pv_max <= bound
        assert bool(torch.isfinite(out.px_z).all()) == finite


# --------------------------------------------------------------------------------------------------
# NVAE: grey on an RGB-style dataset (config ``grey``)

NV_TINY = dict(dataset="custom_8", num_channels_enc=4, num_channels_dec=4, num_latent_scales=2, num_groups_per_scale=2,
               num_latent_per_group=3, num_preprocess_blocks=1, num_preprocess_cells=1, num_postprocess_blocks=1,
               num_postprocess_cells=1, num_cell_per_cond_enc=1, num_cell_per_cond_dec=1, num_nf=1, num_mixture_dec=2)


def test_nvae_grey_config():
    from vdvae_cli.families.nvae.config import NVAEConfig

    rgb = NVAEConfig(**NV_TINY)
    assert "grey" not in rgb.to_dict() and rgb.image_channels == 3 and rgb.output_channels == 20
    grey = NVAEConfig(**NV_TINY, grey=True)
    assert grey.to_dict()["grey"] is True and NVAEConfig.from_dict(grey.to_dict()) == grey
    assert grey.image_channels == 1 and grey.output_channels == 6 and grey.n_dims == 64
    assert NVAEConfig(**{**NV_TINY, "num_mixture_dec": 1}, grey=True).output_channels == 2
    with pytest.raises(ConfigError, match="binary"):
        NVAEConfig(**{**NV_TINY, "dataset": "mnist"}, grey=True)


@pytest.mark.parametrize("mixtures", [2, 1])  # DMoL, and the normal output
def test_nvae_grey_model_reads_grey_and_writes_rgb(tmp_path, mixtures):
    from vdvae_cli.engine.registry import family_of
    from vdvae_cli.families.nvae.config import NVAEConfig

    cfg = NVAEConfig(**{**NV_TINY, "num_mixture_dec": mixtures}, grey=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = family_of(cfg).network(cfg).eval()
    assert dict(family_of(cfg).state_shapes(cfg)) == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    grey = torch.randint(0, 256, (2, 8, 8, 1), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    a = ops.elbo(model, grey.expand(-1, -1, -1, 3).contiguous(), noise=torch.Generator().manual_seed(2))
    b = ops.elbo(model, grey, noise=torch.Generator().manual_seed(2))
    assert torch.equal(a.elbo, b.elbo) and torch.isfinite(a.elbo).all()
    out = ops.sample(model, 2, temperatures=1.0, noise=torch.Generator().manual_seed(3))
    assert out.shape == (2, 8, 8, 3) and torch.equal(out[..., 0], out[..., 2])
    path = save_checkpoint(model.state_dict(), cfg, tmp_path / "g.safetensors")
    assert load_file_model(path).cfg == cfg


def test_vdvae_train_takes_an_nvae_hparams_json(tmp_path):
    import json

    import numpy as np
    from typer.testing import CliRunner

    from vdvae_cli.cli import app

    data = tmp_path / "grey.npy"
    rng = np.random.default_rng(0)
    np.save(data, np.repeat(rng.integers(0, 256, (24, 8, 8, 1), dtype=np.uint8), 3, axis=-1))
    hp = tmp_path / "nv.json"
    hp.write_text(json.dumps({"family": "nvae", "grey": True, **NV_TINY}))
    res = CliRunner().invoke(app, ["train", str(data), "--hparams", str(hp), "-o", str(tmp_path / "run"), "--steps", "2",
                                   "--batch-size", "8", "--holdout", "8", "--dtype", "fp32", "--json", "-q"])
    assert res.exit_code == 0, res.output
    model = load_file_model(tmp_path / "run" / "model.safetensors")
    assert model.cfg.grey and model.cfg.name == "nv" and model.cfg.image_channels == 1
