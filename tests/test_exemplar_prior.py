"""The exemplar prior (``vdvae prior fit --kind exemplar``): stored images whose posterior draws give
the top layers, on the golden tiny VDVAE (two 1x1 layers of 4 dims on top) and the tiny NVAE."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clirun import vdvae
from vdvae_cli.base.errors import CheckpointError
from vdvae_cli.engine import ops
from vdvae_cli.engine.companion import companion_path
from vdvae_cli.engine.distributions import BatchNoise
from vdvae_cli.modelfiles.checkpoint import load_file_model
from vdvae_cli.modelfiles.priors import read_prior

NVAE_DATA = Path(__file__).parent / "data" / "golden-nvae"


@pytest.fixture(scope="module")
def stored(tmp_path_factory, tiny_ckpt) -> Path:
    """A copy of the tiny model with an exemplar prior of 10 of 40 images over its first 2 layers."""
    folder = tmp_path_factory.mktemp("exemplar")
    model = folder / "tiny.safetensors"
    shutil.copy(tiny_ckpt, model)
    np.save(folder / "data.npy", np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8))
    result = vdvae("prior", "fit", model, folder / "data.npy", "--kind", "exemplar", "--layers", 2, "--exemplars", 10,
                   "--json")
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["exemplars"] == 10 and summary["of_images"] == 40 and summary["layers"] == 2
    assert summary["covered_rate_bits_per_image"] > 0 and Path(summary["path"]) == companion_path(model)
    assert "stored 10 of 40 images as an exemplar prior over latent layers 0-1" in result.stderr
    return model


def test_the_file_holds_the_chosen_images_as_pixels(stored):
    top = read_prior(companion_path(stored), load_file_model(stored))
    data = np.load(stored.parent / "data.npy")
    images = top.prior.images.numpy()
    assert top.layers == 2 and images.dtype == np.uint8 and images.shape == (10, 32, 32, 3)
    # every stored image is one of the data's, and no two are the same one
    matches = [int(np.flatnonzero((data == im).all(axis=(1, 2, 3)))[0]) for im in images]
    assert len(set(matches)) == 10
    # 4 bytes per pixel would be 122,880 of payload: the pixels stay bytes
    assert companion_path(stored).stat().st_size < 10 * 32 * 32 * 3 + 4096


def test_draws_follow_the_posterior_of_the_stored_images(stored, tmp_path):
    """With one stored image, the top layer's draws have its posterior mean and spread."""
    one = tmp_path / "one.prior.safetensors"
    vdvae("prior", "fit", stored, stored.parent / "data.npy", "--kind", "exemplar", "--layers", 2, "--exemplars", 1,
          "-o", one)
    model = load_file_model(stored)
    top = read_prior(one, model)
    image = top.prior.images
    n = 4000
    drawn = top.complete(n, [], [1.0] * model.cfg.n_layers, BatchNoise(torch.Generator().manual_seed(0)), torch.device("cpu"))
    mean = ops.encode(model, image, posterior="mean", n_layers=1)[0][0]
    direct = ops.encode(model, image.expand(n, -1, -1, -1), noise=torch.Generator().manual_seed(1), n_layers=1)[0]
    spread = direct.std(0)
    assert torch.all((drawn[0].mean(0) - mean).abs() < 5 * spread / n ** 0.5)
    assert torch.allclose(drawn[0].std(0), spread, rtol=0.1)
    assert drawn[1].shape == (n, 4, 1, 1) and not torch.allclose(drawn[1].std(0), torch.zeros(4, 1, 1))


def test_after_kept_layers_the_model_prior_draws(stored):
    """It draws only from nothing given: reconstruct keeping a layer, and decode of a given top layer,
    are what they are with the model's own prior, draw for draw."""
    model = load_file_model(stored)
    top = read_prior(companion_path(stored), model)
    images = torch.from_numpy(np.load(stored.parent / "data.npy")[:3])
    for keep in (1, 2):
        a = ops.reconstruct(model, images, keep_layers=keep, noise=torch.Generator().manual_seed(4), prior=top)
        b = ops.reconstruct(model, images, keep_layers=keep, noise=torch.Generator().manual_seed(4))
        assert torch.equal(a, b)
    z0 = torch.randn(3, 4, 1, 1)
    a = ops.decode(model, [z0], noise=torch.Generator().manual_seed(5), prior=top)
    b = ops.decode(model, [z0], noise=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    c = ops.reconstruct(model, images, keep_layers=0, noise=torch.Generator().manual_seed(4), prior=top)
    d = ops.reconstruct(model, images, keep_layers=0, noise=torch.Generator().manual_seed(4))
    assert not torch.equal(c, d)  # from nothing, it draws


def test_sample_uses_it_by_default_and_says_so(stored, tmp_path):
    out = {}
    for choice in ("auto", "model"):
        result = vdvae("sample", "--model", stored, "-n", 3, "--grid", "--seed", 4, "--prior", choice,
                       "-o", tmp_path / f"{choice}.png")
        out[choice] = np.asarray(Image.open(tmp_path / f"{choice}.png"))
        assert ("exemplar prior over latent layers 0-1" in result.stderr) == (choice == "auto")
    assert not np.array_equal(out["auto"], out["model"])
    vdvae("sample", "--model", stored, "-n", 3, "--grid", "--seed", 4, "-o", tmp_path / "again.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "again.png")), out["auto"])
    assert "learned (exemplar" in vdvae("info", "-m", stored).stdout


def test_likelihoods_use_the_model_prior_under_auto_and_refuse_it_by_name(stored, tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    auto = vdvae("eval", path, "--model", stored, "--seed", 2, "--json")
    own = vdvae("eval", path, "--model", stored, "--seed", 2, "--json", "--prior", "model")
    assert "no density: likelihoods use the model's own prior" in auto.stderr
    assert json.loads(auto.stdout.splitlines()[-1])["bits_per_dim"] == json.loads(own.stdout.splitlines()[-1])["bits_per_dim"]
    result = vdvae("eval", path, "--model", stored, "--prior", "learned", code=2)
    assert "no density to score latents with" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error:")


def test_refusals(stored, tmp_path):
    data = stored.parent / "data.npy"
    for args, words in [((), "needs --layers"), (("--layers", 99), "out of range"),
                        (("--layers", 1, "--resume"), "no fit to resume"), (("--layers", 1, "--exemplars", 0), "--exemplars")]:
        result = vdvae("prior", "fit", stored, data, "--kind", "exemplar", *args, "-o", tmp_path / "p.safetensors", code=2)
        assert words in result.stderr and result.stderr.strip().splitlines()[-1].startswith("error:")
    assert not (tmp_path / "p.safetensors").exists()
    result = vdvae("prior", "fit", stored, data, "--kind", "exemplar", "--layers", 1, code=1)  # the companion is there
    assert "exists" in result.stderr


def _meta(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return dict(f.metadata())


def _rewrite(src: Path, dst: Path, *, images=None, config=None) -> None:
    from safetensors.torch import load_file, save_file

    meta = _meta(src)
    tensors = load_file(src)
    if images is not None:
        tensors["images"] = images
    if config is not None:
        meta["prior_config"] = json.dumps(config)
    save_file(tensors, dst, metadata=meta)


def test_hostile_files_are_one_clear_error(stored, tmp_path):
    model = load_file_model(stored)
    src = companion_path(stored)
    cfg = json.loads(_meta(src)["prior_config"])
    images = read_prior(src, model).prior.images
    cases = [
        (dict(images=images.float()), "not as 8-bit pixels"),
        (dict(config={**cfg, "count": 11}), "holds"),  # a count the payload does not hold
        (dict(images=images[:, :16, :16].contiguous(), config={**cfg, "size": 16}), "16x16x3 images"),
        (dict(config={**cfg, "dim": 9}), "dims"),
        (dict(config={**cfg, "channels": 2}), "unreadable prior metadata"),
    ]
    for i, (change, words) in enumerate(cases):
        bad = tmp_path / f"bad{i}.safetensors"
        _rewrite(src, bad, **change)
        with pytest.raises(CheckpointError, match=words):
            read_prior(bad, model)


def test_nvae_draws_its_groups_from_stored_images(tmp_path):
    model = tmp_path / "n.safetensors"
    vdvae("convert", NVAE_DATA / "tiny-nvae.pt", "-o", model)
    np.save(tmp_path / "d.npy", np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8))
    vdvae("prior", "fit", model, tmp_path / "d.npy", "--kind", "exemplar", "--layers", 2, "--exemplars", 5)
    vae = load_file_model(model)
    top = read_prior(companion_path(model), vae)
    a = ops.sample(vae, 2, noise=torch.Generator().manual_seed(1), prior=top)
    b = ops.sample(vae, 2, noise=torch.Generator().manual_seed(1))
    assert a.shape == b.shape and not torch.equal(a, b)
    kept = ops.reconstruct(vae, a, keep_layers=1, noise=torch.Generator().manual_seed(2), prior=top)
    assert kept.shape == a.shape


def test_holdout_leaves_out_the_trainers_held_out_images(stored, tmp_path):
    from vdvae_cli.training.data import holdout_split

    out = tmp_path / "h.prior.safetensors"
    result = vdvae("prior", "fit", stored, stored.parent / "data.npy", "--kind", "exemplar", "--layers", 1,
                   "--exemplars", 100, "--holdout", 8, "-o", out)
    assert "storing from 32" in result.stderr
    data = np.load(stored.parent / "data.npy")
    images = read_prior(out, load_file_model(stored)).prior.images.numpy()
    _, held = holdout_split(40, 8, 0)
    assert len(images) == 32
    assert not any((images == data[i]).all(axis=(1, 2, 3)).any() for i in held.tolist())


def test_json_records_name_the_prior_that_drew(stored, tmp_path):
    sample = json.loads(vdvae("sample", "--model", stored, "-n", 1, "--json", "-o", f"{tmp_path / 's'}/").stdout.splitlines()[0])
    assert sample["prior"] == {"kind": "exemplar", "layers": 2, "path": str(companion_path(stored))}
    own = json.loads(vdvae("sample", "--model", stored, "-n", 1, "--json", "--prior", "model",
                           "-o", f"{tmp_path / 'o'}/").stdout.splitlines()[0])
    assert own["prior"] is None
    image = tmp_path / "x.png"
    Image.fromarray(np.load(stored.parent / "data.npy")[0]).save(image)
    for keep, drew in ((0, True), (1, False)):
        rec = json.loads(vdvae("reconstruct", image, "--model", stored, "--keep-layers", keep, "--json",
                               "-o", f"{tmp_path / str(keep)}/").stdout.splitlines()[0])
        assert (rec["prior"] is not None) == drew
