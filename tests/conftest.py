"""Shared fixtures: the golden tiny model (official format), a tiny safetensors checkpoint, and an
isolated Hugging Face / vdvae environment so no test reads or writes the user's caches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden"


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("hf_home")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("VDVAE_CACHE", str(home / "vdvae"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("VDVAE_OFFLINE", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.delenv("VDVAE_MODEL", raising=False)
    monkeypatch.delenv("VDVAE_DEBUG", raising=False)
    # CLI runs compare bit for bit with the engine run on the CPU here; tests/test_cuda.py covers GPUs.
    monkeypatch.setenv("VDVAE_DEVICE", "cpu")
    torch.set_num_threads(1)  # golden data were made single-threaded; also keeps the suite fair on 2 cores


@pytest.fixture(scope="session")
def golden_hparams() -> dict:
    return json.loads((GOLDEN / "tiny-hparams.json").read_text())


@pytest.fixture(scope="session")
def golden_cfg(golden_hparams):
    from vdvae_cli.families.vdvae.config import config_from_reference

    return config_from_reference(golden_hparams, name="tiny")


@pytest.fixture(scope="session")
def golden_state():
    return torch.load(GOLDEN / "tiny-ref.th", map_location="cpu", weights_only=True)


@pytest.fixture(scope="session")
def golden_cases():
    from safetensors.torch import load_file

    return load_file(str(GOLDEN / "tiny-cases.safetensors"))


@pytest.fixture()
def golden_model(golden_cfg, golden_state):
    from vdvae_cli.modelfiles.checkpoint import build_model

    return build_model(golden_cfg, golden_state)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, golden_cfg, golden_state) -> Path:
    """The golden tiny model as a vdvae-cli safetensors checkpoint (32x32, 13 latent layers)."""
    from vdvae_cli.modelfiles.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    return save_checkpoint(golden_state, golden_cfg, path)
