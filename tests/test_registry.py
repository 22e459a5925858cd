"""The model registry: official entries, shipped models, the default, and packaging of weights/."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from vdvae_cli.modelfiles import catalog as registry
from vdvae_cli.modelfiles.header import expected_shapes
from vdvae_cli.families.vdvae.config import official_config
from vdvae_cli.base.errors import ModelNotFoundError
from vdvae_cli.modelfiles.catalog import RegistryEntry

BASE = "https://openaipublic.blob.core.windows.net/very-deep-vaes-assets"
REPO = Path(__file__).resolve().parent.parent


def test_official_urls_are_the_published_ones():
    urls = {name: (e.checkpoint_url, e.log_url) for name, e in registry.OFFICIAL.items()}
    assert urls == {
        "cifar10": (f"{BASE}/vdvae-assets-2/cifar10-seed0-iter-900000-model-ema.th", None),
        "imagenet32": (f"{BASE}/vdvae-assets/imagenet32-iter-1700000-model-ema.th",
                       f"{BASE}/vdvae-assets/imagenet32-iter-1700000-log.jsonl"),
        "imagenet64": (f"{BASE}/vdvae-assets-2/imagenet64-iter-1600000-model-ema.th",
                       f"{BASE}/vdvae-assets-2/imagenet64-iter-1600000-log.jsonl"),
        "ffhq256": (f"{BASE}/vdvae-assets/ffhq256-iter-1700000-model-ema.th",
                    f"{BASE}/vdvae-assets/ffhq256-iter-1700000-log.jsonl"),
        "ffhq1024": (f"{BASE}/vdvae-assets/ffhq1024-iter-1700000-model-ema.th",
                     f"{BASE}/vdvae-assets/ffhq1024-iter-1700000-log.jsonl"),
    }
    # Only ffhq1024 takes its architecture from the log (hps.py does not match the published file).
    assert [n for n, e in registry.OFFICIAL.items() if e.hparams_from_log] == ["ffhq1024"]
    assert all(e.hf_repo is None and e.hf_revision is None for e in registry.OFFICIAL.values())


@pytest.mark.parametrize("name", ["cifar10", "imagenet32", "imagenet64", "ffhq256"])
def test_official_figures_match_the_configs(name):
    entry, cfg = registry.OFFICIAL[name], official_config(name)
    params = sum(math.prod(s) for s in expected_shapes(cfg).values())
    assert (entry.resolution, entry.latent_layers, entry.parameters) == (cfg.image_size, cfg.n_layers, params)
    assert entry.size_bytes == 4 * params and not entry.approximate


def test_ffhq1024_figures_are_marked_unverified():
    entry = registry.OFFICIAL["ffhq1024"]
    assert entry.resolution == 1024 and entry.latent_layers is None and entry.approximate


def test_licences():
    for name, entry in registry.OFFICIAL.items():
        assert "MIT" in entry.license_text
        assert ("CC BY-NC-SA 4.0" in entry.license_text) == name.startswith("ffhq")


def test_base_url_override(monkeypatch):
    monkeypatch.setenv("VDVAE_OFFICIAL_BASE_URL", "http://127.0.0.1:9/mirror/")
    assert registry.OFFICIAL["cifar10"].checkpoint_url == (
        "http://127.0.0.1:9/mirror/vdvae-assets-2/cifar10-seed0-iter-900000-model-ema.th"
    )
    assert registry.official_url("https://example.org/x.th") == "https://example.org/x.th"


def test_register_and_lookup():
    entry = RegistryEntry(name="extra-model", title="x", checkpoint="a/b.th")
    registry.register_entry(entry)
    try:
        assert registry.get_entry("extra-model") is entry
        assert "extra-model" in registry.names()
        with pytest.raises(ValueError):
            registry.register_entry(entry)
        with pytest.raises(ValueError):
            registry.register_entry(RegistryEntry(name="cifar10", title="x"))
    finally:
        registry.unregister_entry("extra-model")
    assert registry.find_entry("extra-model") is None


def test_unknown_names_get_suggestions():
    with pytest.raises(ModelNotFoundError) as info:
        registry.get_entry("imagenet46")
    assert "imagenet64" in info.value.hint
    with pytest.raises(ModelNotFoundError) as info:
        registry.get_entry("zzz")
    assert "cifar10" in info.value.hint  # no close match: the known names are listed


def test_shipped_models_and_default(tmp_path, monkeypatch, tiny_ckpt):
    monkeypatch.setenv("VDVAE_WEIGHTS_DIR", str(tmp_path))
    assert registry.shipped_entries() == [] and registry.default_name() is None
    (tmp_path / "zeta.safetensors").write_bytes(tiny_ckpt.read_bytes())
    (tmp_path / "alpha.safetensors").write_bytes(tiny_ckpt.read_bytes())
    (tmp_path / "notes.txt").write_text("not a model")
    shipped = registry.shipped_entries()
    assert [e.name for e in shipped] == ["alpha", "zeta"]
    assert (shipped[0].resolution, shipped[0].latent_layers, shipped[0].parameters) == (32, 13, 111_518)
    assert shipped[0].kind == "shipped" and shipped[0].path == tmp_path / "alpha.safetensors"
    assert registry.default_name() == "alpha"
    (tmp_path / "DEFAULT").write_text("zeta.safetensors\n")
    assert registry.default_name() == "zeta"
    (tmp_path / "DEFAULT").write_text("missing\n")
    assert registry.default_name() == "alpha"
    assert [e.name for e in registry.all_entries()][:2] == ["alpha", "zeta"]
    with pytest.raises(ModelNotFoundError, match="nothing to download"):
        registry.official_entry("alpha")


def test_unreadable_shipped_file_is_still_listed(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x00" * 3)
    entry = registry.describe_file(bad)
    assert entry.name == "broken" and entry.parameters is None and "unreadable" in entry.note


def test_weights_dir_in_a_checkout(monkeypatch):
    monkeypatch.delenv("VDVAE_WEIGHTS_DIR", raising=False)
    found = registry.weights_dir()
    package_weights = Path(registry.__file__).resolve().parent / "weights"
    if package_weights.is_dir():  # installed from a wheel
        assert found == package_weights
    elif (REPO / "weights").is_dir():  # editable install / checkout
        assert found == REPO / "weights"
    else:
        assert found is None


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib")
def test_packaging_ships_weights_and_every_subpackage():
    import tomllib

    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {
        ".".join(p.parent.relative_to(REPO / "src").parts) for p in (REPO / "src" / "vdvae_cli").rglob("__init__.py")
    }
    assert found <= set(tool["packages"]), "a new subpackage must be added to [tool.setuptools] packages"
    assert "vdvae_cli.weights" in tool["packages"]
    assert tool["package-dir"] == {"": "src", "vdvae_cli.weights": "weights"}
    assert {"*.safetensors", "DEFAULT"} <= set(tool["package-data"]["vdvae_cli.weights"])
