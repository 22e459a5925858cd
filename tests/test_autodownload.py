"""Models that fetch themselves: a named model downloads on its first use (against the local
127.0.0.1 server), later runs need no network, offline mode refuses with the command to run, and
``vdvae cache`` lists and removes what was fetched."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from test_hub import TH_URL_PATH, official, server  # noqa: F401  (fixtures: tiny-official on a local server)
from vdvae_cli.modelfiles import cache
from vdvae_cli.modelfiles import fetch, paths
from vdvae_cli.cli import app
from vdvae_cli.base.errors import ModelNotFoundError

runner = CliRunner()


def _sample(out: Path, *extra: str):
    return runner.invoke(app, ["sample", "--model", "tiny-official", "-n", "2", "--seed", "3", "--grid",
                               "-o", str(out), *extra])


def test_first_use_downloads_then_runs_offline(official, server, tmp_path):  # noqa: F811
    cached = paths.official_cache_path("tiny-official")
    assert not cached.exists()
    first = _sample(tmp_path / "a.png")
    assert first.exit_code == 0, first.output
    assert server.count(TH_URL_PATH, "GET") == 1
    assert cached.is_file()
    assert "downloading tiny-iter-1-model-ema.th" in first.stderr and "converting to tiny-official" in first.stderr
    # the downloaded pickle is gone: converted once, only the safetensors file stays
    assert sorted(p.name for p in cached.parent.rglob("*") if p.is_file()) == ["tiny-official.safetensors"]

    server.stop()  # no network from now on
    n = server.count()
    second = _sample(tmp_path / "b.png", "--offline")
    assert second.exit_code == 0, second.output
    assert "downloading" not in second.stderr and server.count() == n
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png")))


@pytest.mark.parametrize("how", ["--offline", "VDVAE_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_refuses_and_says_what_to_run(official, server, tmp_path, monkeypatch, how):  # noqa: F811
    extra = []
    if how == "--offline":
        extra = ["--offline"]
    else:
        monkeypatch.setenv(how, "1")
    result = _sample(tmp_path / "a.png", *extra)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: tiny-official is not downloaded yet and downloads are off ({how if how == '--offline' else how + '=1'}) "
        f"(run `vdvae download tiny-official` once with network access (about 446.1 kB); it is then used offline)"
    ]
    assert server.count() == 0 and not (tmp_path / "a.png").exists()


def test_offline_hf_reference_not_cached():
    with pytest.raises(ModelNotFoundError, match=r"hf://acme/none is not downloaded yet and downloads are off \(--offline\)"):
        cache.fetch_model("hf://acme/none", offline=True)


def test_library_load_downloads_on_first_use(official, server):  # noqa: F811
    import vdvae_cli as vd

    model = vd.load("tiny-official", device="cpu")
    assert model.cfg.n_layers == 13 and server.count(TH_URL_PATH, "GET") == 1
    vd.load("tiny-official", device="cpu", offline=True)
    assert server.count(TH_URL_PATH, "GET") == 1


def test_cache_lists_and_removes(official, server, tmp_path):  # noqa: F811
    empty = runner.invoke(app, ["cache"])
    assert empty.exit_code == 0 and empty.stdout == "" and "is empty" in empty.stderr
    fetch.download_official("tiny-official")
    partial = paths.cache_dir() / "downloads" / "other.th.part"
    partial.write_bytes(b"x" * 1000)
    listed = runner.invoke(app, ["cache", "--json"])
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    model_file = paths.official_cache_path("tiny-official")
    assert rows == [
        {"name": "tiny-official", "kind": "model", "path": str(model_file), "bytes": model_file.stat().st_size},
        {"name": "other.th.part", "kind": "partial", "path": str(partial), "bytes": 1000},
    ]
    table = runner.invoke(app, ["cache"])
    assert table.stdout.splitlines()[0].split() == ["name", "kind", "size", "where"]
    assert str(model_file) in table.stdout and all(len(line) < 80 + len(str(model_file)) for line in table.stdout.splitlines())

    missing = runner.invoke(app, ["cache", "--remove", "nope"])
    assert missing.exit_code == 1 and "nothing named 'nope'" in missing.stderr and model_file.exists()
    gone = runner.invoke(app, ["cache", "--remove", "tiny-official"])
    assert gone.exit_code == 0 and not model_file.exists() and partial.exists()
    assert gone.stderr.startswith("removed tiny-official")
    runner.invoke(app, ["cache", "--remove-all"])
    assert not partial.exists() and cache.cached_models() == []
    assert os.listdir(paths.cache_dir() / "downloads") == []
