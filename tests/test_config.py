"""Hyperparameters: official sets, block-string grammar, validation, key/shape parity with the reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vdvae_cli.modelfiles.header import expected_shapes
from vdvae_cli.families.vdvae.config import OFFICIAL_NAMES, VDVAEConfig, config_from_reference, load_config_arg, official_config, parse_block_string, read_hparams_file
from vdvae_cli.base.errors import ConfigError
from vdvae_cli.families.vdvae.model import VAE

DATA = Path(__file__).parent / "data"

# (layers, params, keys) from the reference spec's table.
FACTS = {
    "cifar10": (43, 39_145_700, 1393),
    "imagenet32": (78, 119_280_868, 2423),
    "imagenet64": (75, 125_005_860, 2482),
    "ffhq256": (66, 114_874_852, 2272),
    "ffhq1024": (70, 109_366_904, 2392),
}


def read_keys(name):
    out = []
    for line in (DATA / f"keys-{name}.txt").read_text().splitlines():
        key, shape = line.split("\t")
        out.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())))
    return out


@pytest.mark.parametrize("name", OFFICIAL_NAMES)
def test_official_keys_and_shapes_equal_reference(name):
    cfg = official_config(name)
    got = list(expected_shapes(cfg).items())
    assert got == read_keys(name)
    layers, params, keys = FACTS[name]
    assert cfg.n_layers == layers
    assert len(got) == keys
    with torch.device("meta"):
        model = VAE(cfg)
    assert sum(p.numel() for p in model.parameters()) == params


def test_official_facts():
    assert official_config("ffhq256").low_bit and not official_config("imagenet64").low_bit
    f1024 = official_config("ffhq1024")
    assert f1024.pixel_scale == pytest.approx(1 / 255) and f1024.target_scale == 2.0
    assert official_config("cifar10").latent_dims == 412_432
    assert official_config("ffhq256").latent_dims == 4_470_816
    assert official_config("ffhq256").bias_resolutions == (1, 4, 8, 16, 32, 64)
    assert official_config("ffhq256").layers_up_to_res(32) == 43


def test_block_grammar():
    assert parse_block_string("32x2,32d2,16", kind="enc") == [(32, None), (32, None), (32, 2), (16, None)]
    assert parse_block_string("1x1,4m1", kind="dec") == [(1, None), (4, 1)]


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("enc_blocks", "32x2,32q2", "'32q2'"),
        ("enc_blocks", "32x2,32d2,8x1", "resolution 8"),
        ("enc_blocks", "32x0", "'32x0'"),
        ("dec_blocks", "1x1,4d1", "'4d1'"),
        ("dec_blocks", "1x1,4m1,4x2,8m4,8x2,16m8,16x2,32m16,32x1,64m32", "64"),
        ("enc_blocks", "", "empty"),
        ("custom_width_str", "16:32,8", "'8'"),
        ("custom_width_str", "16:8,8:32,4:48,1:48", "width grows"),
        ("pixel_scale", 3.0, "pixel_scale must be 1/256 to 1"),  # divided pixels by round(1/3) = 0
        ("pixel_scale", 1e-320, "pixel_scale must be 1/256 to 1"),  # round(1/1e-320): OverflowError
        ("pixel_scale", -1.0, "pixel_scale must be 1/256 to 1"),
    ],
)
def test_bad_configs_name_the_problem(golden_cfg, field, value, needle):
    with pytest.raises(ConfigError) as info:
        golden_cfg.replace(**{field: value})
    assert needle in str(info.value)


def test_golden_hparams_accepted_as_is(golden_hparams, golden_cfg):
    derived = golden_hparams["derived"]
    assert golden_cfg.n_layers == len(derived["dec_layers"])
    for layer, ref in zip(golden_cfg.decoder_layers, derived["dec_layers"]):
        assert (layer.res, layer.mixin, layer.width, layer.middle, layer.kernel == 3) == (
            ref["res"], ref["mixin"], ref["width"], ref["middle"], ref["use_3x3"])
    for layer, ref in zip(golden_cfg.encoder_layers, derived["enc_layers"]):
        assert (layer.res, layer.down_rate, layer.width, layer.middle) == (ref["res"], ref["down_rate"], ref["width"], ref["middle"])
    assert list(golden_cfg.bias_resolutions) == derived["bias_xs_resolutions"]
    assert len(expected_shapes(golden_cfg)) == derived["n_keys"]


def test_unknown_dataset_needs_preprocessing(golden_hparams):
    hps = dict(golden_hparams)
    hps.pop("preprocessing")
    with pytest.raises(ConfigError, match="shift/scale"):
        config_from_reference(hps)


def test_config_roundtrip_is_exact(golden_cfg):
    again = VDVAEConfig.from_dict(json.loads(golden_cfg.to_json()))
    assert again == golden_cfg
    assert again.decoder_layers == golden_cfg.decoder_layers


def test_config_is_frozen(golden_cfg):
    from dataclasses import FrozenInstanceError

    with pytest.raises(FrozenInstanceError):
        golden_cfg.width = 3  # type: ignore[misc]


def test_hparams_from_official_log_jsonl(tmp_path):
    cfg = official_config("ffhq256")
    log = tmp_path / "run-log.jsonl"
    lines = [{"type": "hparam", "key": k, "value": v} for k, v in
             {"dataset": "ffhq_256", "width": 512, "zdim": 16, "enc_blocks": cfg.enc_blocks, "dec_blocks": cfg.dec_blocks,
              "custom_width_str": "", "bottleneck_multiple": 0.25, "no_bias_above": 64, "num_mixtures": 10, "lr": 1.5e-4}.items()]
    lines.append({"type": "train_loss", "elbo": 1.0})
    log.write_text("\n".join(json.dumps(x) for x in lines))
    got = load_config_arg(None, log)
    assert got.replace(name="ffhq256") == cfg
    assert read_hparams_file(log)["lr"] == 1.5e-4


def test_load_config_arg_needs_exactly_one(tmp_path):
    with pytest.raises(ConfigError):
        load_config_arg(None, None)
    with pytest.raises(ConfigError):
        load_config_arg("cifar10", tmp_path / "x.json")
    with pytest.raises(ConfigError, match="unknown official config"):
        load_config_arg("cifar100", None)
