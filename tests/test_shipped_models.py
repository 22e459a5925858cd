"""The models in weights/: what a fresh install samples from without --model.

The default model is the grey fashion (weights/DEFAULT), a VDVAE; fashion-nvae is the NVAE trained
under the same budget; every shipped file rebuilds from its own header,
carries the facts of its model card, and samples finite images at the temperatures it recommends
(fashion32's card: at --temp 1.0 about one sample in 40,000 overflows, never in 40,000 at its
recommended 0.9; this checks the first 2,000 seeds of a run).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from vdvae_cli.modelfiles import catalog as registry
from vdvae_cli.modelfiles.checkpoint import load_file_model
from vdvae_cli.modelfiles.header import default_ood, default_temperatures, metadata_of
from vdvae_cli.engine.ops import sample
from vdvae_cli.engine.temperature import parse_temperature_spec

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
SHIPPED = sorted(p for p in WEIGHTS.glob("*.safetensors") if not p.name.endswith(".prior.safetensors"))
PRIORS = sorted(WEIGHTS.glob("*.prior.safetensors"))


def test_fashion_is_the_default(monkeypatch):
    monkeypatch.delenv("VDVAE_WEIGHTS_DIR", raising=False)
    assert (WEIGHTS / "DEFAULT").read_text().strip() == "fashion"
    assert registry.default_name() == "fashion"
    assert {p.stem for p in SHIPPED} == {"fashion", "fashion-nvae", "fashion32", "digits32"}
    # Two priors ship, both exemplar priors (weights/README.md: they lift the samples, and they claim
    # no density, so the bound stays the model's own). A MADE fitted to fashion improved neither figure.
    assert [p.name for p in PRIORS] == ["fashion-nvae.prior.safetensors", "fashion.prior.safetensors"]


@pytest.mark.parametrize("path", PRIORS, ids=lambda p: p.name)
def test_a_shipped_learned_prior_fits_its_model_and_is_used(path):
    """A shipped learned prior names its weights' fingerprint (a retrained model without a refitted
    prior fails here) and changes the samples it draws."""
    from vdvae_cli.modelfiles.priors import read_prior

    weights = path.with_name(path.name.removesuffix(".prior.safetensors") + ".safetensors")
    model = load_file_model(weights)
    top = read_prior(path, model)
    temps = parse_temperature_spec(default_temperatures(weights)[0] or "1.0", model.cfg)
    with_prior = sample(model, 8, temperatures=temps, output_temperature=0.0, noise=torch.Generator().manual_seed(0),
                        prior=top)
    without = sample(model, 8, temperatures=temps, output_temperature=0.0, noise=torch.Generator().manual_seed(0))
    assert not torch.equal(with_prior, without)
    if top.prior.kind == "exemplar":  # its images are what the model reads, and few enough to ship
        assert top.prior.images.shape[1:] == (model.cfg.image_size, model.cfg.image_size, model.cfg.image_channels)
        assert path.stat().st_size < 20e6


def test_fashion_is_grey_bounded_and_records_its_ood_defaults():
    """One channel, a bounded prior scale, and the k / prior temperature ``vdvae ood`` uses without
    --k; its samples at the recommended temperatures are finite grey garments on black."""
    path = WEIGHTS / "fashion.safetensors"
    model = load_file_model(path)
    assert model.cfg.image_channels == 1 and model.cfg.prior_logstd_max == 1.0
    assert default_temperatures(path) == ("1.0,r16=0.7,r32=0.5", "0.0")
    assert default_ood(path) is not None and default_ood(path)["score"] == "complexity"
    temps = parse_temperature_spec("1.0", model.cfg)
    with torch.inference_mode():
        for start in range(0, 2000, 500):  # ops.sample raises NumericalError on any non-finite output
            images = sample(model, 500, temperatures=temps, output_temperature=0.0,
                            noise=torch.Generator().manual_seed(start))
            assert images.shape == (500, 32, 32, 3) and torch.equal(images[..., 0], images[..., 2])
    border = torch.cat([images[:, :2].flatten(), images[:, -2:].flatten()]).float()
    assert float(border.mean()) < 10


def test_fashion_nvae_is_the_same_budgets_nvae_grey_and_records_its_ood_defaults():
    """The NVAE trained under fashion's budget (368 trainer minutes): one channel, its temperatures
    and ood score recorded, and finite grey garments from its own prior at temperature 1.0."""
    path = WEIGHTS / "fashion-nvae.safetensors"
    model = load_file_model(path)
    meta = metadata_of(path)
    assert meta["family"] == "nvae" and model.cfg.image_channels == 1 and model.cfg.name == "fashion-nvae"
    assert float(meta["train_wall_time_min"]) <= 368.0
    assert default_temperatures(path) == ("1.0", "1.0")
    assert default_ood(path) is not None and default_ood(path)["score"] == "complexity"
    temps = parse_temperature_spec("1.0", model.cfg)
    with torch.inference_mode():
        images = sample(model, 500, temperatures=temps, output_temperature=1.0, noise=torch.Generator().manual_seed(0))
    assert images.shape == (500, 32, 32, 3) and torch.equal(images[..., 0], images[..., 2])
    border = torch.cat([images[:, :2].flatten(), images[:, -2:].flatten()]).float()
    assert float(border.mean()) < 10


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_a_shipped_file_describes_itself(path):
    meta = metadata_of(path)
    assert meta.get("license", "").startswith("MIT") and meta.get("description")
    assert path.stat().st_size < 20e6  # the bound on a shipped file
    card = json.loads((WEIGHTS / f"{path.stem}-eval.json").read_text())
    model = load_file_model(path)
    assert sum(p.numel() for p in model.parameters()) == card["parameters"]


@pytest.mark.slow
def test_fashion32_samples_are_finite_at_its_recommended_temperatures():
    path = WEIGHTS / "fashion32.safetensors"
    prior, pixels = default_temperatures(path)
    assert (prior, pixels) == ("0.9", "0.0")
    model = load_file_model(path)
    temps = parse_temperature_spec(prior, model.cfg)
    with torch.inference_mode():
        for start in range(0, 2000, 500):  # ops.sample raises NumericalError on any non-finite output
            images = sample(model, 500, temperatures=temps, output_temperature=float(pixels),
                            noise=torch.Generator().manual_seed(start))
            assert images.dtype == torch.uint8 and images.shape == (500, 32, 32, 3)
    # the images are garments on black, not noise: the border the data set pads with stays dark
    border = torch.cat([images[:, :2].flatten(), images[:, -2:].flatten()]).float()
    assert float(border.mean()) < 10 and math.isfinite(float(images.float().std()))
