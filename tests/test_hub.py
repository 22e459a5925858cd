"""Model resolution, Hub loading and official downloads, against a real local HTTP server (no mocks).

The golden tiny model (official pickle format, tests/data/golden/tiny-ref.th) stands in for an
official checkpoint: it is registered as ``tiny-official`` with its hyperparameters in an
official-style ``-log.jsonl``, the way ffhq1024 takes its hyperparameters.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from httpserver import LocalServer
from typer.testing import CliRunner

from vdvae_cli.modelfiles import catalog as registry
from vdvae_cli.modelfiles import transfer, fetch, hfhub, paths, resolve
from vdvae_cli.modelfiles.header import metadata_of
from vdvae_cli.modelfiles.checkpoint import read_checkpoint
from vdvae_cli.cli import app
from vdvae_cli.base.errors import CheckpointError, ModelNotFoundError, NetworkError, UsageError
from vdvae_cli.modelfiles.catalog import RegistryEntry

GOLDEN = Path(__file__).parent / "data" / "golden"
TH = "vdvae-assets-2/tiny-iter-1-model-ema.th"
LOG = "vdvae-assets-2/tiny-iter-1-log.jsonl"
TH_URL_PATH = f"/assets/{TH}"


@pytest.fixture()
def server(tmp_path):
    with LocalServer(tmp_path / "www") as srv:
        yield srv


@pytest.fixture()
def official(server, monkeypatch, golden_hparams):
    """The tiny golden pickle served as an official checkpoint, registered as ``tiny-official``."""
    monkeypatch.setenv("VDVAE_OFFICIAL_BASE_URL", server.url + "/assets")
    monkeypatch.setattr(transfer, "RETRY_WAIT", 0.0)
    server.put(f"assets/{TH}", GOLDEN / "tiny-ref.th")
    lines = [json.dumps({"type": "hparam", "key": k, "value": v}) for k, v in golden_hparams.items()]
    server.put(f"assets/{LOG}", ("\n".join(lines) + "\n").encode())
    entry = registry.register_entry(RegistryEntry(
        name="tiny-official", title="tiny stand-in", resolution=32, latent_layers=13, parameters=111_518,
        checkpoint=TH, log=LOG, hparams_from_log=True,
    ))
    yield entry
    registry.unregister_entry("tiny-official")


def _same_config(a, b) -> bool:
    da, db = a.to_dict(), b.to_dict()
    da.pop("name"), db.pop("name")
    return da == db


# --------------------------------------------------------------------------------------------------
# hf:// references


@pytest.mark.parametrize(
    "ref, repo, filename, revision",
    [
        ("hf://acme/vdvae", "acme/vdvae", "model.safetensors", None),
        ("hf://acme/vdvae@v1.0", "acme/vdvae", "model.safetensors", "v1.0"),
        ("hf://acme/vdvae/sub/dir/m.safetensors@refs/pr/3", "acme/vdvae", "sub/dir/m.safetensors", "refs/pr/3"),
    ],
)
def test_parse_hf_ref(ref, repo, filename, revision):
    parsed = hfhub.parse_hf_ref(ref)
    assert (parsed.repo_id, parsed.filename, parsed.revision) == (repo, filename, revision)
    assert hfhub.parse_hf_ref(str(parsed)) == parsed


@pytest.mark.parametrize("ref", ["hf://acme", "hf://acme/vdvae@", "hf:///vdvae", "hf://a b/c"])
def test_parse_hf_ref_rejects(ref):
    with pytest.raises(UsageError):
        hfhub.parse_hf_ref(ref)


def test_hf_download_lands_in_hf_cache_then_works_offline(server, monkeypatch, tiny_ckpt, golden_state):
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    commit = server.add_hub_file("acme/tiny-vdvae", "model.safetensors", tiny_ckpt)
    url_path = "/acme/tiny-vdvae/resolve/main/model.safetensors"

    resolved = resolve.resolve_model("hf://acme/tiny-vdvae")
    hub_cache = Path(os.environ["HF_HUB_CACHE"])
    assert resolved.source == "hub" and resolved.detail == "hf://acme/tiny-vdvae/model.safetensors"
    assert resolved.path == hub_cache / "models--acme--tiny-vdvae" / "snapshots" / commit / "model.safetensors"
    assert resolved.path.read_bytes() == tiny_ckpt.read_bytes()
    assert server.count(url_path, "GET") == 1
    assert (hub_cache / "models--acme--tiny-vdvae" / "refs" / "main").read_text() == commit

    model = resolve.load_model("hf://acme/tiny-vdvae", device="cpu")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in golden_state.items())
    assert server.count(url_path, "GET") == 1  # second resolution: a HEAD only, no new download

    server.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again = resolve.resolve_model("hf://acme/tiny-vdvae")
    assert again.path == resolved.path
    model = resolve.load_model("hf://acme/tiny-vdvae", device="cpu", dtype="bf16")
    assert model.decoder.gain.dtype == torch.bfloat16


def test_hf_subpath_and_revision(server, monkeypatch, tiny_ckpt):
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    commit = server.add_hub_file("acme/tiny-vdvae", "ckpts/ema.safetensors", tiny_ckpt, revision="v2")
    resolved = resolve.resolve_model("hf://acme/tiny-vdvae/ckpts/ema.safetensors@v2")
    assert resolved.path.parts[-4:] == ("snapshots", commit, "ckpts", "ema.safetensors")
    assert server.count("/acme/tiny-vdvae/resolve/v2/ckpts/ema.safetensors", "GET") == 1


def test_hf_download_reports_progress(server, monkeypatch, tiny_ckpt):
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    server.add_hub_file("acme/tiny-vdvae", "model.safetensors", tiny_ckpt)
    events = []
    resolved = fetch.download("hf://acme/tiny-vdvae", progress=events.append)
    size = tiny_ckpt.stat().st_size
    assert resolved.path.stat().st_size == size
    assert [(e.stage, e.done, e.total) for e in events][-1] == ("done", size, size)
    assert max(e.done for e in events if e.stage == "download") == size

    result = CliRunner().invoke(app, ["download", "hf://acme/tiny-vdvae", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["path"] == str(resolved.path)


def test_hf_missing_repo_and_file(server, monkeypatch, tiny_ckpt):
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    server.add_hub_file("acme/tiny-vdvae", "model.safetensors", tiny_ckpt)
    with pytest.raises(ModelNotFoundError, match="has no file 'other.safetensors'"):
        resolve.resolve_model("hf://acme/tiny-vdvae/other.safetensors")
    with pytest.raises(ModelNotFoundError, match="no repository acme/nothing"):
        resolve.resolve_model("hf://acme/nothing")


def test_hf_offline_nothing_cached(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as info:
        resolve.resolve_model("hf://acme/tiny-vdvae")
    assert "HF_HUB_OFFLINE" in str(info.value)
    assert "vdvae download hf://acme/tiny-vdvae" in info.value.hint


def test_registry_entry_with_hub_location(server, monkeypatch, tiny_ckpt):
    """An official entry with hf_repo set loads the converted file from the Hub, pinned to its revision."""
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    commit = server.add_hub_file("vdvae/tiny", "tiny.safetensors", tiny_ckpt, revision="v1")
    registry.register_entry(RegistryEntry(name="tiny-hub", title="t", checkpoint="x.th", hf_repo="vdvae/tiny",
                                          hf_filename="tiny.safetensors", hf_revision=commit))
    try:
        entry = registry.get_entry("tiny-hub")
        assert fetch.cached_path(entry) is None
        resolved = resolve.resolve_model("tiny-hub")
        assert resolved.source == "hub" and resolved.name == "tiny-hub"
        assert fetch.cached_path(entry) == resolved.path
        assert server.count(f"/vdvae/tiny/resolve/{commit}/tiny.safetensors", "GET") == 1
        n = server.count()
        assert resolve.resolve_model("tiny-hub").path == resolved.path
        assert server.count() == n  # a pinned commit already in the cache needs no request at all
    finally:
        registry.unregister_entry("tiny-hub")


# --------------------------------------------------------------------------------------------------
# Official downloads


def test_download_official_converts_once(official, server, golden_cfg, golden_state):
    events = []
    dest = fetch.download_official("tiny-official", progress=events.append)
    assert dest == Path(os.environ["VDVAE_CACHE"]) / "tiny-official.safetensors"
    cfg, state = read_checkpoint(dest)
    assert cfg.name == "tiny-official" and _same_config(cfg, golden_cfg)
    assert list(state) == list(golden_state)
    assert all(torch.equal(state[k], v) for k, v in golden_state.items())
    meta = metadata_of(dest)
    assert meta["source_url"] == f"{server.url}/assets/{TH}" and meta["registry_name"] == "tiny-official"
    # the pickle and the log are gone, nothing half-written is left behind
    assert sorted(p.name for p in dest.parent.rglob("*") if p.is_file()) == ["tiny-official.safetensors"]
    size = (GOLDEN / "tiny-ref.th").stat().st_size
    downloads = [e for e in events if e.stage == "download" and e.filename.endswith(".th")]
    assert downloads[-1].done == downloads[-1].total == size
    assert [e.stage for e in events][-2:] == ["convert", "done"]

    n = server.count()
    assert fetch.download_official("tiny-official") == dest
    assert server.count() == n  # already converted: no network
    resolved = resolve.resolve_model("tiny-official")
    assert (resolved.path, resolved.source) == (dest, "official")
    model = resolve.load_model("tiny-official", device="cpu")
    assert torch.equal(model.decoder.out_net.out_conv.weight, golden_state["decoder.out_net.out_conv.weight"])


def test_download_keep_original_and_force(official, server):
    dest = fetch.download_official("tiny-official", keep_original=True)
    kept = dest.parent / "downloads" / Path(TH).name
    assert kept.read_bytes() == (GOLDEN / "tiny-ref.th").read_bytes()
    assert (dest.parent / "downloads" / Path(LOG).name).is_file()
    gets = server.count(TH_URL_PATH, "GET")
    fetch.download_official("tiny-official", force=True)
    assert server.count(TH_URL_PATH, "GET") == gets + 1
    assert not kept.exists()


def test_download_resumes_after_a_dropped_connection(official, server):
    server.drop(TH_URL_PATH, after=200_000)
    dest = fetch.download_official("tiny-official")
    gets = server.seen(TH_URL_PATH, "GET")
    assert len(gets) == 2
    assert "Range" not in gets[0].headers
    start = int(gets[1].headers["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= 200_000
    assert read_checkpoint(dest)[0].n_layers == 13


def test_interrupted_download_resumes_on_the_next_call(official, server):
    server.drop(TH_URL_PATH, after=100_000, times=transfer.RETRIES)
    with pytest.raises(NetworkError) as info:
        fetch.download_official("tiny-official")
    assert "broke off" in str(info.value) and "\n" not in str(info.value)
    assert "resumes" in info.value.hint
    part = Path(os.environ["VDVAE_CACHE"]) / "downloads" / (Path(TH).name + ".part")
    have = part.stat().st_size
    assert 0 < have < (GOLDEN / "tiny-ref.th").stat().st_size
    assert not paths.official_cache_path("tiny-official").exists()

    dest = fetch.download_official("tiny-official")
    last = server.seen(TH_URL_PATH, "GET")[-1]
    assert last.headers["Range"] == f"bytes={have}-"
    assert read_checkpoint(dest)[0].n_layers == 13
    assert not part.exists()


def test_stale_part_longer_than_remote_is_restarted(official, server):
    import hashlib

    part = Path(os.environ["VDVAE_CACHE"]) / "downloads" / (Path(TH).name + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * ((GOLDEN / "tiny-ref.th").stat().st_size + 10))
    # with the server's validator recorded, the part is offered for resuming (and found too long)
    etag = f'"{hashlib.sha256((GOLDEN / "tiny-ref.th").read_bytes()).hexdigest()[:32]}"'
    part.with_name(part.name + ".json").write_text(json.dumps({"url": f"{server.url}{TH_URL_PATH}", "validator": etag}))
    dest = fetch.download_official("tiny-official")
    assert read_checkpoint(dest)[0].n_layers == 13
    assert [("Range" in r.headers) for r in server.seen(TH_URL_PATH, "GET")] == [True, False]


def test_part_without_validator_is_not_resumed(official, server):
    part = Path(os.environ["VDVAE_CACHE"]) / "downloads" / (Path(TH).name + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 1000)  # from who knows which version of the file: never spliced
    dest = fetch.download_official("tiny-official")
    assert read_checkpoint(dest)[0].n_layers == 13
    assert [("Range" in r.headers) for r in server.seen(TH_URL_PATH, "GET")] == [False]


def test_damaged_cached_file_is_fetched_again(official, server):
    dest = fetch.download_official("tiny-official")
    dest.write_bytes(dest.read_bytes()[:-100])  # e.g. a disk-full copy
    gets = server.count(TH_URL_PATH, "GET")
    assert fetch.download_official("tiny-official") == dest
    assert server.count(TH_URL_PATH, "GET") == gets + 1
    assert read_checkpoint(dest)[0].n_layers == 13


def test_concurrent_download_is_refused(official):
    downloads = paths.cache_dir() / "downloads"
    downloads.mkdir(parents=True)
    with fetch._cache_lock(downloads):
        with pytest.raises(NetworkError, match="another `vdvae download`"):
            fetch.download_official("tiny-official")
    assert fetch.download_official("tiny-official").is_file()


def test_log_that_does_not_match_the_weights(official, server, golden_hparams):
    wrong = dict(golden_hparams, dec_blocks="1x2,4m1,4x2,8m4,8x2,16m8,16x2,32m16,32x2")
    lines = [json.dumps({"type": "hparam", "key": k, "value": v}) for k, v in wrong.items()]
    server.put(f"assets/{LOG}", "\n".join(lines).encode())
    with pytest.raises(CheckpointError, match="missing key") as info:
        fetch.download_official("tiny-official")
    assert "--force" in info.value.hint
    assert not paths.official_cache_path("tiny-official").exists()


def test_size_mismatch_is_detected(official, server):
    server.announce_extra(TH_URL_PATH, 1000)
    with pytest.raises(NetworkError, match="size mismatch") as info:
        fetch.download_official("tiny-official")
    assert "\n" not in str(info.value)
    assert not (Path(os.environ["VDVAE_CACHE"]) / "downloads" / (Path(TH).name + ".part")).exists()
    assert not paths.official_cache_path("tiny-official").exists()


def test_network_down_is_one_clear_error(official, server):
    server.stop()
    with pytest.raises(NetworkError) as info:
        fetch.download_official("tiny-official")
    text = str(info.value)
    assert text == f"cannot reach 127.0.0.1:{server.port}: connection refused"
    assert "vdvae convert" in info.value.hint


def test_http_404_names_the_url(official, server):
    (server.root / "assets" / TH).unlink()
    with pytest.raises(NetworkError, match=r"HTTP 404") as info:
        fetch.download_official("tiny-official")
    assert f"{server.url}/assets/{TH}" in str(info.value)


def test_offline_with_nothing_cached_names_the_download_command(monkeypatch):
    with pytest.raises(ModelNotFoundError, match=r"vdvae download cifar10"):
        resolve.resolve_model("cifar10")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match=r"HF_HUB_OFFLINE is set; run `vdvae download ffhq256`"):
        resolve.load_model("ffhq256", device="cpu")
    with pytest.raises(NetworkError, match="HF_HUB_OFFLINE"):
        fetch.download_official("ffhq256")


# --------------------------------------------------------------------------------------------------
# Local references and the default model


def test_local_paths(tmp_path, tiny_ckpt, golden_state):
    resolved = resolve.resolve_model(str(tiny_ckpt))
    assert (resolved.path, resolved.source, resolved.name) == (tiny_ckpt, "file", "tiny")
    assert os.fspath(resolved) == str(tiny_ckpt)
    model = resolve.load_model(resolved, device="cpu")
    assert torch.equal(model.encoder.in_conv.weight, golden_state["encoder.in_conv.weight"])

    with pytest.raises(ModelNotFoundError, match="no such model file"):
        resolve.resolve_model(str(tmp_path / "missing.safetensors"))
    with pytest.raises(ModelNotFoundError, match="is a folder"):
        resolve.resolve_model(str(tmp_path))
    th = tmp_path / "tiny-model-ema.th"
    shutil.copy(GOLDEN / "tiny-ref.th", th)
    with pytest.raises(CheckpointError) as info:
        resolve.resolve_model(str(th))
    assert "vdvae convert" in info.value.hint
    renamed = tmp_path / "weights.safetensors"  # a pickle with the wrong suffix is recognised too
    shutil.copy(GOLDEN / "tiny-ref.th", renamed)
    with pytest.raises(CheckpointError, match="PyTorch pickle"):
        resolve.resolve_model(str(renamed))


def test_unknown_name_suggests_close_ones():
    with pytest.raises(ModelNotFoundError) as info:
        resolve.resolve_model("ffhq265")
    assert str(info.value) == "unknown model 'ffhq265'"
    assert "ffhq256" in info.value.hint


def test_default_model(tmp_path, monkeypatch, tiny_ckpt):
    weights = tmp_path / "weights"
    weights.mkdir()
    monkeypatch.setenv("VDVAE_WEIGHTS_DIR", str(weights))
    with pytest.raises(ModelNotFoundError, match="no default model"):
        resolve.resolve_model(None)
    for name in ("b-model", "a-model"):
        shutil.copy(tiny_ckpt, weights / f"{name}.safetensors")
    resolved = resolve.resolve_model(None)
    assert (resolved.name, resolved.source) == ("a-model", "shipped")
    (weights / "DEFAULT").write_text("b-model\n")
    assert resolve.resolve_model(None).name == "b-model"
    assert resolve.resolve_model("a-model").path == weights / "a-model.safetensors"
    monkeypatch.setenv("VDVAE_MODEL", str(tiny_ckpt))
    assert resolve.resolve_model(None).path == tiny_ckpt


# --------------------------------------------------------------------------------------------------
# CLI


def _models_json(runner):
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    return {row["name"]: row for row in map(json.loads, result.stdout.splitlines())}


def test_cli_models_json(tmp_path, monkeypatch, tiny_ckpt):
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(tiny_ckpt, weights / "tiny-shipped.safetensors")
    monkeypatch.setenv("VDVAE_WEIGHTS_DIR", str(weights))
    runner = CliRunner()
    rows = _models_json(runner)
    assert list(rows)[:1] == ["tiny-shipped"]
    assert {"cifar10", "imagenet32", "imagenet64", "ffhq256", "ffhq1024"} <= set(rows)
    shipped = rows["tiny-shipped"]
    assert shipped["default"] and shipped["cached"] and shipped["kind"] == "shipped"
    assert (shipped["resolution"], shipped["latent_layers"], shipped["parameters"]) == (32, 13, 111_518)
    assert rows["cifar10"]["cached"] is False and rows["cifar10"]["default"] is False
    assert rows["cifar10"]["checkpoint_url"].endswith("/vdvae-assets-2/cifar10-seed0-iter-900000-model-ema.th")
    assert "CC BY-NC-SA 4.0" in rows["ffhq256"]["license"]

    paths.cache_dir().mkdir(parents=True)
    shutil.copy(tiny_ckpt, paths.official_cache_path("cifar10"))
    rows = _models_json(runner)
    assert rows["cifar10"]["cached"] and rows["cifar10"]["cached_path"] == str(paths.official_cache_path("cifar10"))

    table = runner.invoke(app, ["models"])
    assert table.exit_code == 0
    assert "tiny-shipped *" in table.stdout and "ffhq1024" in table.stdout


def test_cli_download_success_and_errors(official, server):
    runner = CliRunner()
    result = runner.invoke(app, ["download", "tiny-official", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["path"] == str(paths.official_cache_path("tiny-official")) and info["source"] == "official"
    assert info["bytes"] == paths.official_cache_path("tiny-official").stat().st_size

    result = runner.invoke(app, ["download", "cifar100"])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: unknown model 'cifar100' (did you mean cifar10 or nvae-cifar10? `vdvae models` lists them all)"
    ]

    result = runner.invoke(app, ["download", "hf://nope"])
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1

    server.stop()
    result = runner.invoke(app, ["download", "tiny-official", "--force", "--quiet"])
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot reach 127.0.0.1:{server.port}: connection refused")


def test_a_hub_file_with_nan_weights_is_not_kept(server, monkeypatch, tmp_path, golden_state, golden_cfg):
    """Issue 18, 7: `download hf://...` kept a file with NaN weights that every load then refused."""
    from typer.testing import CliRunner

    from vdvae_cli.cli import app
    from vdvae_cli.modelfiles.checkpoint import save_checkpoint

    monkeypatch.setenv("HF_ENDPOINT", server.url)
    bad = {k: v.clone() for k, v in golden_state.items()}
    bad["decoder.gain"].fill_(float("nan"))
    src = tmp_path / "nan.safetensors"
    # written past save_checkpoint's own check, as a hostile publisher would
    from safetensors.torch import save_file

    good = save_checkpoint(golden_state, golden_cfg, tmp_path / "good.safetensors")
    from vdvae_cli.modelfiles.header import metadata_of

    save_file({k: v.contiguous() for k, v in bad.items()}, str(src), metadata=metadata_of(good))
    server.add_hub_file("acme/nan-vdvae", "model.safetensors", src)
    result = CliRunner().invoke(app, ["download", "hf://acme/nan-vdvae"])
    assert result.exit_code == 1 and result.stderr.count("error:") == 1, result.stderr
    assert "NaN" in result.stderr and "nothing was kept" in result.stderr
    hub_cache = Path(os.environ["HF_HUB_CACHE"])
    assert not list(hub_cache.rglob("model.safetensors"))


def test_a_hub_model_brings_its_learned_prior(server, monkeypatch, tiny_ckpt, tmp_path):
    """A repository holding NAME.prior.safetensors beside NAME.safetensors: the prior lands beside the
    model in the snapshot, and sample uses it (online, then offline); a repository without one works
    as before."""
    import numpy as np

    from vdvae_cli.engine.companion import companion_path

    local = tmp_path / "m.safetensors"
    shutil.copy(tiny_ckpt, local)
    np.save(tmp_path / "d.npy", np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8))
    runner = CliRunner()
    fit = runner.invoke(app, ["prior", "fit", str(local), str(tmp_path / "d.npy"), "--kind", "exemplar", "--layers", "2",
                              "--exemplars", "4"])
    assert fit.exit_code == 0, fit.stderr
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    server.add_hub_file("acme/with-prior", "model.safetensors", tiny_ckpt)
    server.add_hub_file("acme/with-prior", "model.prior.safetensors", companion_path(local))
    server.add_hub_file("acme/plain", "model.safetensors", tiny_ckpt)

    resolved = resolve.resolve_model("hf://acme/with-prior")
    assert companion_path(resolved.path).read_bytes() == companion_path(local).read_bytes()
    plain = resolve.resolve_model("hf://acme/plain")
    assert not companion_path(plain.path).exists()
    for env in ({}, {"HF_HUB_OFFLINE": "1"}):
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        result = runner.invoke(app, ["sample", "-m", "hf://acme/with-prior", "-n", "2", "--grid", "--seed", "1",
                                     "-o", str(tmp_path / "s.png"), "--force"])
        assert result.exit_code == 0, result.stderr
        assert "exemplar prior over latent layers 0-1" in result.stderr
    result = runner.invoke(app, ["sample", "-m", "hf://acme/plain", "-n", "2", "--grid", "-o", str(tmp_path / "p.png")])
    assert result.exit_code == 0 and "prior over latent layers" not in result.stderr
