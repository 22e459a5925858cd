"""Latents files: round trip, metadata, and every check made when loading one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load, save

from vdvae_cli.base.errors import LatentsError
from vdvae_cli.engine.latents import FORMAT, latents_bytes, layer_key, load_latents, model_fingerprint


@pytest.fixture()
def layers(golden_cfg):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(3, *shape, generator=g) for shape in golden_cfg.latent_shapes]


def test_roundtrip_keeps_every_tensor_and_the_metadata(golden_cfg, layers):
    data = latents_bytes(layers, golden_cfg, ["a.png", "b.png", "c.png"], posterior="sample", seed=5)
    tensors = load(data)
    assert sorted(tensors) == [f"layer.{i:02d}" for i in range(13)]
    assert tensors["layer.12"].shape == (3, 4, 32, 32) and tensors["layer.00"].dtype == torch.float32
    got = load_latents(data, golden_cfg, label="x")
    assert got.n == 3 and got.names == ["a.png", "b.png", "c.png"] and got.posterior == "sample"
    for a, b in zip(got.layers, layers):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    meta = got.metadata
    assert meta["format"] == FORMAT and meta["model_name"] == "tiny" and meta["seed"] == "5"
    assert meta["model_fingerprint"] == model_fingerprint(golden_cfg)
    assert json.loads(meta["vdvae_config"]) == golden_cfg.to_dict()


def test_fingerprint_depends_on_config_and_name(golden_cfg):
    assert model_fingerprint(golden_cfg) == model_fingerprint(golden_cfg.replace())
    assert model_fingerprint(golden_cfg) != model_fingerprint(golden_cfg.replace(name="other"))
    assert model_fingerprint(golden_cfg) != model_fingerprint(golden_cfg.replace(zdim=8))
    assert len(model_fingerprint(golden_cfg)) == 16


def test_layer_keys_pad_to_the_layer_count():
    assert layer_key(3, 13) == "layer.03"
    assert layer_key(3, 120) == "layer.003"


def _meta(data: bytes) -> dict:
    return json.loads(data[8:8 + int.from_bytes(data[:8], "little")])["__metadata__"]


def _edit(data: bytes, *, drop=(), add=None, meta=None, reshape=None) -> bytes:
    """Rewrite a latents file as another tool would: drop/add/reshape tensors, change metadata."""
    tensors = load(data)
    header_meta = _meta(data)
    for key in drop:
        del tensors[key]
    tensors.update(add or {})
    if reshape:
        key, shape = reshape
        tensors[key] = torch.zeros(shape)
    header_meta.update(meta or {})
    return save(tensors, metadata={k: v for k, v in header_meta.items() if v is not None})


def test_a_dropped_layer_is_free(golden_cfg, layers):
    data = _edit(latents_bytes(layers, golden_cfg, ["a", "b", "c"]), drop=["layer.05", "layer.12"])
    got = load_latents(data, golden_cfg)
    assert got.layers[5] is None and got.layers[12] is None and got.layers[4] is not None


def test_names_default_when_missing(golden_cfg, layers):
    data = latents_bytes(layers, golden_cfg, ["a", "b", "c"])
    tensors = load(data)
    meta = _meta(data)
    del meta["image_names"]
    got = load_latents(save(tensors, metadata=meta), golden_cfg)
    assert got.names == ["latent_00000", "latent_00001", "latent_00002"]


@pytest.mark.parametrize(
    "edit, match",
    [
        (dict(meta={"model_fingerprint": "0123456789abcdef", "model_name": "ffhq256"}), "made by model 'ffhq256'"),
        (dict(meta={"format": "something-else"}), "not a latents file"),
        (dict(reshape=("layer.03", (3, 4, 8, 8))), r"layer.03 has shape \(3, 4, 8, 8\), expected \(N, 4, 4, 4\)"),
        (dict(reshape=("layer.03", (2, 4, 4, 4))), "holds 2 images but other layers hold 3"),
        (dict(add={"layer.13": torch.zeros(3, 4, 32, 32)}), "13 latent layers"),
        (dict(add={"extra": torch.zeros(1)}), "unexpected tensor 'extra'"),
        (dict(add={"layer.3": torch.zeros(3, 4, 4, 4)}), "layer 3 appears twice"),
        (dict(meta={"image_names": json.dumps(["a"])}), "lists 1 names for 3 images"),
        (dict(meta={"image_names": "not json"}), "not a JSON list"),
    ],
)
def test_load_rejects(golden_cfg, layers, edit, match):
    data = _edit(latents_bytes(layers, golden_cfg, ["a", "b", "c"]), **edit)
    with pytest.raises(LatentsError, match=match):
        load_latents(data, golden_cfg, label="lat.safetensors")


def test_load_rejects_another_model(golden_cfg, layers):
    data = latents_bytes(layers, golden_cfg, ["a", "b", "c"])
    with pytest.raises(LatentsError) as info:
        load_latents(data, golden_cfg.replace(name="tiny-retrained"), label="lat.safetensors")
    assert "lat.safetensors was made by model 'tiny'" in str(info.value)
    assert info.value.hint == "decode it with the model file that encoded it"  # no model_ref: no guess
    data = latents_bytes(layers, golden_cfg, ["a", "b", "c"], metadata={"model_ref": "/models/tiny.safetensors"})
    with pytest.raises(LatentsError) as info:
        load_latents(data, golden_cfg.replace(name="tiny-retrained"), label="lat.safetensors")
    assert info.value.hint == "decode it with --model /models/tiny.safetensors, the model that encoded it"


def test_load_rejects_files_that_are_not_latents(golden_cfg, golden_state, layers, tmp_path):
    from vdvae_cli.modelfiles.checkpoint import save_checkpoint

    ckpt = save_checkpoint(golden_state, golden_cfg, tmp_path / "m.safetensors").read_bytes()
    with pytest.raises(LatentsError, match="is a model checkpoint, not a latents file"):
        load_latents(ckpt, golden_cfg, label="m.safetensors")
    with pytest.raises(LatentsError, match="not a safetensors latents file"):
        load_latents(b"\x89PNG\r\n\x1a\n" + bytes(40), golden_cfg)
    with pytest.raises(LatentsError, match=r"\(3 bytes\)"):
        load_latents(b"abc", golden_cfg)
    data = latents_bytes(layers, golden_cfg, ["a", "b", "c"])
    with pytest.raises(LatentsError, match="truncated"):
        load_latents(data[: len(data) - 100], golden_cfg)
    no_id = _edit(data, meta={"model_fingerprint": None})
    with pytest.raises(LatentsError, match="does not say which model"):
        load_latents(no_id, golden_cfg)
    empty = save({}, metadata=_meta(data))
    with pytest.raises(LatentsError, match="holds no latent layers"):
        load_latents(empty, golden_cfg)


def test_latents_bytes_checks_shapes(golden_cfg, layers):
    with pytest.raises(ValueError, match="layer 0 has shape"):
        latents_bytes(layers, golden_cfg, ["a", "b"])


def test_same_architecture_other_weights_is_another_model(golden_cfg, golden_state, tmp_path):
    """Two trainings of one architecture: the fingerprint includes the weights digest."""
    from typer.testing import CliRunner

    from vdvae_cli.modelfiles.checkpoint import save_checkpoint
    from vdvae_cli.modelfiles.header import stored_digest
    from vdvae_cli.engine.statedict import weights_digest
    from vdvae_cli.cli import app

    a = save_checkpoint(golden_state, golden_cfg, tmp_path / "a.safetensors")
    other = {k: v + 0.01 if k.endswith("c4.bias") else v for k, v in golden_state.items()}
    b = save_checkpoint(other, golden_cfg, tmp_path / "b.safetensors")
    assert stored_digest(a) == weights_digest(golden_state) != stored_digest(b)
    img = tmp_path / "x.png"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(img)
    runner = CliRunner()
    lat = tmp_path / "z.safetensors"
    assert runner.invoke(app, ["encode", str(img), "-m", str(a), "-o", str(lat)]).exit_code == 0
    ok = runner.invoke(app, ["decode", str(lat), "-m", str(a), "-o", str(tmp_path / "ok.png")])
    assert ok.exit_code == 0, ok.stderr
    bad = runner.invoke(app, ["decode", str(lat), "-m", str(b), "-o", str(tmp_path / "bad.png")])
    assert bad.exit_code == 1 and "was made by model 'tiny' with other weights" in bad.stderr and not (tmp_path / "bad.png").exists()


@pytest.mark.parametrize("kind", ["safetensors", "npz"])
@pytest.mark.parametrize("version, works", [("1", True), (None, True), ("2", False), ("x", False)])
def test_format_version_newer_than_this_code_is_refused(tiny_ckpt, tmp_path, kind, version, works):
    import io

    from vdvae_cli.cli import app
    from typer.testing import CliRunner

    runner = CliRunner()
    img = tmp_path / "a.png"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(img)
    lat = tmp_path / f"lat.{kind}"
    argv = ["encode", str(img), "-m", str(tiny_ckpt), "-o", str(lat)] + (["--format", "npz"] if kind == "npz" else [])
    assert runner.invoke(app, argv).exit_code == 0
    if kind == "npz":
        arrays = dict(np.load(lat))
        arrays.pop("format_version")
        if version is not None:
            arrays["format_version"] = np.str_(version)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        lat.write_bytes(buf.getvalue())
    else:
        lat.write_bytes(_edit(lat.read_bytes(), meta={"format_version": version}))
    result = runner.invoke(app, ["decode", str(lat), "-m", str(tiny_ckpt), "--seed", "1", "-o", str(tmp_path / "d.png")])
    assert "Traceback" not in result.stderr
    if works:
        assert result.exit_code == 0, result.stderr
        return
    lines = [line for line in result.stderr.splitlines() if not line.startswith(("model ", "seed "))]
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert ("format version 2; this vdvae-cli reads versions up to 1" if version == "2" else
            "format_version 'x', which is not a version number") in lines[0]
