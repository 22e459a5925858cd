"""Self-describing safetensors checkpoints and conversion of official pickles."""

from __future__ import annotations

import json
import pickle
from collections import OrderedDict

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from vdvae_cli.families.vdvae import pixels as vdvae_pixels
from vdvae_cli.modelfiles.header import config_of, metadata_of
from vdvae_cli.families.vdvae.official import infer_config
from vdvae_cli.modelfiles.convert import convert_official
from vdvae_cli.modelfiles.checkpoint import load_file_model, read_checkpoint, save_checkpoint
from vdvae_cli.cli import app
from vdvae_cli.families.vdvae.config import official_config
from vdvae_cli.base.errors import CheckpointError, OutputError


def test_roundtrip_rebuilds_model_from_file_alone(tiny_ckpt, golden_cfg, golden_state, golden_cases):
    cfg, state = read_checkpoint(tiny_ckpt)
    assert cfg == golden_cfg
    assert list(state) == list(golden_state)
    assert all(torch.equal(state[k], golden_state[k]) for k in state)
    model = load_file_model(tiny_ckpt)
    z = [golden_cases[f"post.z.{i:02d}"] for i in range(13)]
    with torch.no_grad():
        px = model.decoder(2, latents=z).px_z
    torch.testing.assert_close(px, golden_cases["setall.px_z"], atol=1e-5, rtol=0)
    assert metadata_of(tiny_ckpt)["format"] == "vdvae-cli"


def test_save_refuses_to_clobber(tiny_ckpt, golden_state, golden_cfg):
    before = tiny_ckpt.read_bytes()
    with pytest.raises(OutputError, match="already exists"):
        save_checkpoint(golden_state, golden_cfg, tiny_ckpt)
    assert tiny_ckpt.read_bytes() == before


@pytest.fixture()
def official_pickle(tmp_path, golden_state):
    path = tmp_path / "tiny-model-ema.th"
    torch.save(golden_state, path)
    return path


@pytest.fixture()
def hparams_file(tmp_path, golden_hparams):
    path = tmp_path / "tiny-hparams.json"
    path.write_text(json.dumps(golden_hparams))
    return path


def test_convert_plain_and_module_prefixed(tmp_path, official_pickle, golden_state, golden_cfg):
    out, cfg = convert_official(official_pickle, tmp_path / "a.safetensors", config=golden_cfg)
    ddp = tmp_path / "tiny-model.th"
    torch.save(OrderedDict(("module." + k, v) for k, v in golden_state.items()), ddp)
    out2, _ = convert_official(ddp, tmp_path / "b.safetensors", config=golden_cfg)
    for path in (out, out2):
        cfg2, state = read_checkpoint(path)
        assert cfg2 == golden_cfg
        assert all(torch.equal(state[k], golden_state[k]) for k in golden_state)


def test_convert_fp16(tmp_path, official_pickle, golden_cfg, golden_state):
    out, _ = convert_official(official_pickle, tmp_path / "h.safetensors", config=golden_cfg, dtype="fp16")
    _, state = read_checkpoint(out)
    assert state["decoder.gain"].dtype == torch.float16
    assert out.stat().st_size < official_pickle.stat().st_size * 0.6


def test_convert_names_every_bad_key(tmp_path, golden_state, golden_cfg):
    bad = OrderedDict(golden_state)
    del bad["decoder.bias_xs.2"]
    bad["decoder.extra"] = torch.zeros(1)
    bad["encoder.in_conv.weight"] = torch.zeros(16, 3, 1, 1)
    src = tmp_path / "bad.th"
    torch.save(bad, src)
    with pytest.raises(CheckpointError) as info:
        convert_official(src, tmp_path / "x.safetensors", config=golden_cfg)
    msg = str(info.value)
    assert "decoder.bias_xs.2" in msg and "decoder.extra" in msg and "encoder.in_conv.weight (16, 3, 1, 1)" in msg
    assert not (tmp_path / "x.safetensors").exists()


def test_convert_wrong_config(tmp_path, official_pickle):
    with pytest.raises(CheckpointError, match="does not match config 'cifar10'"):
        convert_official(official_pickle, tmp_path / "x.safetensors", config=official_config("cifar10"))


def test_convert_never_runs_pickled_code(tmp_path, golden_cfg):
    class Evil:
        def __reduce__(self):
            return (exec, ("open('PWNED', 'w').write('x')",))

    src = tmp_path / "evil.th"
    with open(src, "wb") as f:
        pickle.dump({"a": Evil()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="holds pickled Python objects, not only tensors") as info:
        convert_official(src, tmp_path / "x.safetensors", config=golden_cfg)
    assert not (tmp_path / "PWNED").exists()
    assert "weights_only" not in f"{info.value} {info.value.hint}"


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda p, ck: p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n"), "git-lfs pointer"),
        (lambda p, ck: p.write_bytes(ck.read_bytes()[: len(ck.read_bytes()) // 2]), "truncated"),
        (lambda p, ck: p.write_bytes(b""), "not a safetensors file"),
        (lambda p, ck: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 100), "not a safetensors file"),
        (lambda p, ck: torch.save({"a": torch.zeros(1)}, p), "PyTorch pickle"),
        (lambda p, ck: save_file({"a": torch.zeros(1)}, str(p)), "no vdvae_config metadata"),
    ],
)
def test_bad_files_give_one_clear_error(tmp_path, tiny_ckpt, make, needle):
    path = tmp_path / "bad.safetensors"
    make(path, tiny_ckpt)
    with pytest.raises(CheckpointError) as info:
        load_file_model(path)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_metadata_and_tensors_disagree(tmp_path, golden_state, golden_cfg):
    state = {k: v for k, v in golden_state.items() if k != "decoder.gain"}
    path = tmp_path / "x.safetensors"
    save_file(state, str(path), metadata={"vdvae_config": golden_cfg.to_json()})
    with pytest.raises(CheckpointError, match="1 missing key.*decoder.gain"):
        read_checkpoint(path)


def test_infer_recovers_plain_block_counts(golden_cfg):
    # A checkpoint with one more res-16 encoder block and one fewer res-32 decoder block than the base
    # layout: widths make both runs unambiguous (res 16/8 share width 32 in the encoder, so use res 32).
    truth = golden_cfg.replace(enc_blocks="32x3,32d2,16,16x1,16d2,8x2,8d2,4x2,4d4,1x2",
                               dec_blocks="1x2,4m1,4x2,8m4,8x2,16m8,16x2,32m16")
    from vdvae_cli.modelfiles.header import expected_shapes

    got = infer_config(expected_shapes(truth), base=golden_cfg)
    assert expected_shapes(got) == expected_shapes(truth)


def test_infer_refuses_to_guess_between_equal_widths(golden_cfg):
    truth = golden_cfg.replace(enc_blocks="32x2,32d2,16,16x2,16d2,8x2,8d2,4x2,4d4,1x2")  # res 16 and 8 share width 32
    from vdvae_cli.modelfiles.header import expected_shapes

    with pytest.raises(CheckpointError, match="cannot be read from shapes"):
        infer_config(expected_shapes(truth), base=golden_cfg)


def test_infer_official_ffhq1024_unchanged():
    from vdvae_cli.modelfiles.header import expected_shapes

    cfg = official_config("ffhq1024")
    assert expected_shapes(infer_config(expected_shapes(cfg))) == expected_shapes(cfg)


runner = CliRunner()


def test_cli_convert(tmp_path, official_pickle, hparams_file, golden_cases):
    out = tmp_path / "tiny.safetensors"
    res = runner.invoke(app, ["convert", str(official_pickle), "--hparams", str(hparams_file), "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["layers"] == 13 and config_of(out).n_layers == 13
    before = out.read_bytes()
    res = runner.invoke(app, ["convert", str(official_pickle), "--hparams", str(hparams_file), "-o", str(out)])
    assert res.exit_code == 1 and "already exists" in res.output and "--force" in res.output
    assert out.read_bytes() == before
    res = runner.invoke(app, ["convert", str(official_pickle), "--config", "cifar10", "-o", str(tmp_path / "c.safetensors")])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "missing key" in res.output
    res = runner.invoke(app, ["convert", str(official_pickle), "-o", str(tmp_path / "d.safetensors")])
    assert res.exit_code == 2 and "exactly one of --config" in res.output
    # The converted model computes what the reference computed.
    model = load_file_model(out)
    with torch.no_grad():
        acts = model.encoder(vdvae_pixels.model_input(model.cfg, golden_cases["input.x_uint8"]))
        px = model.decoder(2, acts, posterior_mean=True).px_z
    torch.testing.assert_close(px, golden_cases["postmean.px_z"], atol=1e-5, rtol=0)


def test_cli_convert_check_lists_every_difference(tmp_path, golden_state, hparams_file):
    """The ffhq1024 situation (the published file lacks encoder.enc_blocks.68/69 of hps.py), in small:
    a checkpoint with two encoder blocks fewer and one mis-shaped tensor; --check lists each key."""
    state = OrderedDict((k, v) for k, v in golden_state.items() if not k.startswith(("encoder.enc_blocks.12.", "encoder.enc_blocks.13.")))
    state["decoder.gain"] = torch.zeros(1, 32, 1, 1)
    src = tmp_path / "tiny-model-ema.th"
    torch.save(state, src)
    out = tmp_path / "x.safetensors"
    res = runner.invoke(app, ["convert", str(src), "--hparams", str(hparams_file), "--check", "--json", "-o", str(out)])
    assert res.exit_code == 1
    report = json.loads(res.stdout)
    assert sorted(report["missing"]) == sorted(k for k in golden_state if k.startswith(("encoder.enc_blocks.12.", "encoder.enc_blocks.13.")))
    assert len(report["missing"]) == 16 and report["unexpected"] == []
    assert report["mismatched"] == [{"key": "decoder.gain", "shape": [1, 32, 1, 1], "expected": [1, 16, 1, 1]}]
    assert not out.exists()
    res = runner.invoke(app, ["convert", str(src), "--hparams", str(hparams_file), "--check", "-o", str(out)])
    assert res.exit_code == 1 and "missing     encoder.enc_blocks.13.c4.bias" in res.stdout


@pytest.mark.parametrize("name", ["cifar10", "imagenet32", "imagenet64", "ffhq256", "ffhq1024", "tiny"])
def test_shapes_from_the_config_are_the_networks(name, golden_cfg):
    """expected_shapes computes keys and shapes from the config alone (so a hostile config is compared
    with its file before anything is built); it must stay equal to the network's own state_dict."""
    from collections import OrderedDict

    from vdvae_cli.modelfiles.header import expected_shapes, parameter_count
    from vdvae_cli.families.vdvae.config import official_config
    from vdvae_cli.families.vdvae.model import VAE

    cfg = golden_cfg if name == "tiny" else official_config(name)
    with torch.device("meta"):
        model = VAE(cfg)
    built = OrderedDict((k, tuple(v.shape)) for k, v in model.state_dict().items())
    assert list(expected_shapes(cfg).items()) == list(built.items())
    assert parameter_count(cfg) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("damage, says", [
    (lambda t: t.fill_(float("nan")), "holds 432 NaN values"),
    (lambda t: t.fill_(float("inf")), "holds 432 infinite values"),
    (lambda t: t.to(torch.int64), "is int64, weights are floating point"),
])
def test_convert_checks_what_it_writes_like_the_loader(tmp_path, golden_state, golden_cfg, golden_hparams, damage, says):
    """Issue 18, 7: convert exited 0 on NaN weights (the loader refused the file later) and cast
    int64 weights silently; the file written must pass the loader's checks."""
    bad = OrderedDict((k, v.clone()) for k, v in golden_state.items())
    key = "encoder.in_conv.weight"
    assert bad[key].numel() == 432
    bad[key] = damage(bad[key])
    src = tmp_path / "bad.th"
    torch.save(bad, src)
    hparams = tmp_path / "tiny.json"
    hparams.write_text(json.dumps(golden_hparams))
    result = CliRunner().invoke(app, ["convert", str(src), "--hparams", str(hparams),
                                      "-o", str(tmp_path / "x.safetensors")])
    assert result.exit_code == 1 and result.stderr.count("error:") == 1, result.stderr
    assert says in result.stderr and "encoder.in_conv.weight" in result.stderr
    assert not (tmp_path / "x.safetensors").exists()
    # a cast to fp16 that overflows is refused too
    big = OrderedDict((k, v.clone()) for k, v in golden_state.items())
    big[key] = torch.full_like(big[key], 1e6)
    torch.save(big, src)
    with pytest.raises(CheckpointError, match="infinite"):
        convert_official(src, tmp_path / "h.safetensors", config=golden_cfg, dtype="fp16")



@pytest.mark.parametrize("version, works", [("1", True), (None, True), ("1.0", True), ("2", False), ("1.1", False),
                                            ("v2\x1b[31m", False)])
def test_format_version_newer_than_this_code_is_refused(tmp_path, tiny_ckpt, version, works):
    from safetensors.torch import load_file, save

    meta = metadata_of(tiny_ckpt)
    meta.pop("format_version")
    if version is not None:
        meta["format_version"] = version
    path = tmp_path / "m.safetensors"
    path.write_bytes(save(load_file(str(tiny_ckpt)), metadata=meta))
    for argv in (["info", "-m", path], ["sample", "-m", path, "--seed", "1", "-o", tmp_path / "x.png"]):
        result = CliRunner().invoke(app, [str(a) for a in argv])
        assert "Traceback" not in result.stderr
        if works:
            assert result.exit_code == 0, result.stderr
            continue
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 1 and lines[-1].startswith("error: ") and len(lines) == 1, result.stderr
        assert "format" in lines[-1] and "\x1b" not in lines[-1]
        assert (f"format version {version}; this vdvae-cli reads versions up to 1" in lines[-1]) if version[0].isdigit() else "not a version" in lines[-1]
