"""NVAE config and network layout: every released configuration's key and shape list equals the
official one exactly (tests/data/keys-nvae-*.txt, made by instantiating NVIDIA's AutoEncoder)."""

from __future__ import annotations

import argparse
import math
import re
import warnings
from pathlib import Path

import pytest
import torch

from vdvae_cli.base.errors import ConfigError
from vdvae_cli.families.nvae.config import README_ARGS, NVAEConfig, config_from_args, readme_config
from vdvae_cli.families.nvae.network import NVAE, count_parameters, official_aliases, official_state_keys

DATA = Path(__file__).parent / "data"


def read_keys(name: str) -> tuple[str, list[tuple[str, tuple[int, ...]]]]:
    lines = (DATA / f"keys-nvae-{name}.txt").read_text().splitlines()
    rows = [line.split("\t") for line in lines[1:]]
    return lines[0], [(k, tuple(int(x) for x in s.split(",")) if s else ()) for k, s in rows]


@pytest.mark.parametrize("name", list(README_ARGS))
def test_keys_and_shapes_equal_the_official_lists(name):
    header, official = read_keys(name)
    with torch.device("meta"):
        model = NVAE(readme_config(name))
    assert official_state_keys(model) == official  # same keys, same shapes, same order
    params = int(re.search(r"(\d+) trainable parameters", header).group(1))
    assert count_parameters(model) == params
    assert len(official_aliases(model)) == int(re.search(r"(\d+) weight_normalized", header).group(1))


def test_released_layouts():
    assert readme_config("mnist").groups_per_scale == (10, 5)
    hq = readme_config("celebahq256")
    assert hq.groups_per_scale == (16, 8, 4, 4, 4) and hq.n_layers == 36
    assert [g.res for g in hq.decoder_layers][:5] == [8, 8, 8, 8, 16]
    assert hq.latent_dims == 6_005_760 and hq.n_dims == 196_608
    m = readme_config("mnist")
    assert (m.image_size, m.input_size, m.n_dims, m.likelihood) == (28, 32, 784, "bernoulli")
    assert readme_config("cifar10").output_channels == 100
    assert readme_config("celeba64").layers_up_to_res(16) == 15


def test_config_from_args_applies_evaluate_patches_and_ignores_bookkeeping():
    args = {**readme_config("cifar10").to_dict(), "ada_groups": True, "min_groups_per_scale": 3}
    args.pop("name")
    for old in ("ada_groups", "min_groups_per_scale", "num_mixture_dec"):
        args.pop(old)
    ns = argparse.Namespace(**args, learning_rate=0.01, batch_size=32, save="/tmp/x")
    cfg = config_from_args(ns)
    assert (cfg.ada_groups, cfg.min_groups_per_scale, cfg.num_mixture_dec) == (False, 1, 10)
    assert NVAEConfig.from_dict(cfg.to_dict()) == cfg
    args.pop("num_nf")
    with pytest.raises(ConfigError, match="num_nf"):
        config_from_args(args)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"num_channels_enc": 0}, "num_channels_enc"),
        ({"num_latent_scales": 9}, "num_latent_scales"),
        ({"num_nf": True}, "num_nf"),
        ({"use_se": 1}, "use_se"),
        ({"arch_instance": "res_mbconv9"}, "not supported"),
        ({"dataset": "stacked_mnist"}, "no input size"),
        ({"num_latent_scales": 6}, "cannot be halved"),
        ({"num_postprocess_blocks": 2}, "must equal"),
        ({"num_latent_scales": 1, "num_groups_per_scale": 1}, "vanilla"),
        ({"num_x_bits": 9}, "num_x_bits"),
        ({"num_channels_enc": 1}, r"num_channels_enc must be an integer in \[2, 1024\]"),
        ({"arch_instance": "mbconv_den", "num_channels_dec": 100}, "convolves 300 channels in 8 groups"),
    ],
)
def test_invalid_configs_are_refused(change, message):
    with pytest.raises(ConfigError, match=message):
        NVAEConfig(**{**README_ARGS["cifar10"], **change})


def test_folded_weight_norm_is_exact_and_follows_weight_changes():
    from vdvae_cli.families.nvae.network import ARConv2d, WNConv2d

    g = torch.Generator().manual_seed(0)
    for conv in (WNConv2d(4, 6, 3, padding=1), ARConv2d(4, 24, 3, zero_diag=True, mirror=True)):
        x = torch.randn(2, 4, 5, 5, generator=g)
        with torch.no_grad():
            folded = conv(x)
            assert conv._folded is not None
            conv.weight.mul_(-0.5)  # an in-place update must not be served from the stale fold
            changed = conv(x)
        conv.fold = False
        with torch.no_grad():
            assert torch.equal(changed, conv(x))
        assert not torch.allclose(folded, changed)
        conv.fold = True
        with torch.inference_mode():
            assert torch.equal(conv(x), changed)
        y = conv(x)  # with gradients: recomputed, so they reach log_weight_norm
        y.sum().backward()
        assert conv.log_weight_norm.grad is not None and conv.log_weight_norm.grad.abs().sum() > 0


def test_normal_decoder_honours_the_output_temperature():
    """num_mixture_dec = 1 gives NVAE's Normal pixel decoder (6 channels); unlike NVAE's (PR #55) its
    samples scale their noise by the output temperature, and t = 0 is the clamped mean."""
    from vdvae_cli.engine.distributions import BatchNoise
    from vdvae_cli.families.nvae.distributions import normal_params
    from vdvae_cli.families.nvae.pixels import output_unit, recon_log_prob

    cfg = NVAEConfig(**{**README_ARGS["cifar10"], "num_mixture_dec": 1})
    assert (cfg.likelihood, cfg.output_channels) == ("normal", 6)
    logits = torch.randn(2, 6, 4, 4, generator=torch.Generator().manual_seed(0))
    mu, sigma = normal_params(logits[:, :3], logits[:, 3:])
    draw = {t: output_unit(cfg, logits, BatchNoise(torch.Generator().manual_seed(1)), t) for t in (0.0, 0.5, 1.0)}
    assert torch.equal(draw[0.0], torch.clamp(mu, -1, 1).permute(0, 2, 3, 1))
    inside = (draw[1.0].abs() < 1) & (draw[0.5].abs() < 1) & (draw[0.0].abs() < 1)
    half = (draw[0.5] - draw[0.0])[inside]
    full = (draw[1.0] - draw[0.0])[inside]
    torch.testing.assert_close(half, 0.5 * full, atol=1e-6, rtol=1e-5)
    x = torch.rand(2, 3, 4, 4)
    want = (-0.5 * ((2 * x - 1 - mu) / sigma) ** 2 - 0.5 * math.log(2 * math.pi) - torch.log(sigma)).sum((1, 2, 3))
    torch.testing.assert_close(recon_log_prob(cfg, logits, x), want)


def test_both_families_satisfy_the_one_interface(golden_cfg):
    from vdvae_cli.engine.configbase import LatentStackConfig
    from vdvae_cli.engine.interface import LatentModel
    from vdvae_cli.engine.registry import family_of
    from vdvae_cli.families.vdvae.model import VAE

    nvae_cfg = readme_config("mnist")
    with torch.device("meta"):
        models = [VAE(golden_cfg), NVAE(nvae_cfg)]
    for model, name in zip(models, ("vdvae", "nvae")):
        assert isinstance(model, LatentModel) and isinstance(model.cfg, LatentStackConfig)
        assert family_of(model).name == name and family_of(model.cfg).name == name
        layers = model.cfg.decoder_layers
        assert [l.index for l in layers] == list(range(model.cfg.n_layers))
        assert all(len(l.latent_shape) == 3 and l.latent_shape[1] == l.res for l in layers)


def _tiny_nvae_file(path: Path, **changes) -> Path:
    from safetensors.torch import save

    cfg = NVAEConfig(**{**dict(dataset="custom_8", num_channels_enc=2, num_channels_dec=2, num_latent_scales=2,
                                num_groups_per_scale=2, num_latent_per_group=2, num_preprocess_blocks=1,
                                num_preprocess_cells=1, num_postprocess_blocks=1, num_postprocess_cells=1,
                                num_cell_per_cond_enc=1, num_cell_per_cond_dec=1, num_nf=0, name="tiny8"), **changes})
    torch.manual_seed(0)
    with warnings.catch_warnings():  # num_channels_enc = 1: convs of no channels
        warnings.simplefilter("ignore")
        state = NVAE(cfg).state_dict()
    path.write_bytes(save({k: v.contiguous() for k, v in state.items()},
                          metadata={"format": "vdvae-cli", "format_version": "1", "family": "nvae",
                                    "nvae_config": cfg.to_json()}))
    return path


@pytest.mark.parametrize("changes, says", [
    ({"arch_instance": "mbconv_den"}, "convolves 6 channels in 8 groups (down_pre cells)"),  # was a torch ValueError
    ({"num_channels_enc": 1}, r"num_channels_enc must be an integer in [2, 1024], got 1"),  # eval: a torch RuntimeError
])
def test_configs_whose_network_cannot_run_are_refused_in_one_line(tmp_path, monkeypatch, changes, says):
    import numpy as np
    from PIL import Image

    from clirun import vdvae
    from vdvae_cli.families.nvae import config

    # the file as a hostile writer makes it: the network such a config builds, its tensors matching it
    monkeypatch.setattr(config, "_BOUNDS", {**config._BOUNDS, "num_channels_enc": (1, 1024)})
    monkeypatch.setattr(NVAEConfig, "_check_grouped_convs", lambda self: None)
    if changes.get("arch_instance"):  # its grouped convs cannot be built: the tensors of the plain arch
        model = _tiny_nvae_file(tmp_path / "m.safetensors")
        from safetensors import safe_open
        from safetensors.torch import load_file, save

        with safe_open(str(model), "pt") as f:
            meta = f.metadata()
        meta["nvae_config"] = meta["nvae_config"].replace('"res_mbconv"', '"mbconv_den"')
        model.write_bytes(save(load_file(str(model)), metadata=meta))
    else:
        model = _tiny_nvae_file(tmp_path / "m.safetensors", **changes)
    monkeypatch.undo()
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    for argv in (["info"], ["eval", image, "--seed", 1], ["sample", "-n", 2, "--seed", 1, "-o", f"{tmp_path}/s/"]):
        result = vdvae(*argv, "-m", model, code=1)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "describes an invalid model" in lines[0], result.stderr
        assert says in lines[0] and "Traceback" not in result.stderr and "internal error" not in result.stderr
