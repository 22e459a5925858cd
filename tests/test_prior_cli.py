"""The learned prior in use: ``vdvae prior fit`` (companion file, resume, refusals), and the commands
that draw from the prior or score against it (``--prior auto|learned|model``), on the golden tiny
VDVAE (its two top layers are 1x1: 8 dimensions)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clirun import vdvae
from vdvae_cli.modelfiles.priors import read_prior
from vdvae_cli.engine import ops
from vdvae_cli.engine.distributions import BatchNoise, gaussian_log_prob
from vdvae_cli.engine.companion import companion_path
from vdvae_cli.modelfiles.checkpoint import load_file_model

NVAE_DATA = Path(__file__).parent / "data" / "golden-nvae"

@pytest.fixture(scope="module")
def fitted(tmp_path_factory, tiny_ckpt) -> Path:
    """A copy of the tiny model with a prior fitted beside it (60 steps)."""
    folder = tmp_path_factory.mktemp("prior")
    model = folder / "tiny.safetensors"
    shutil.copy(tiny_ckpt, model)
    images = np.random.default_rng(0).integers(0, 256, (120, 32, 32, 3), dtype=np.uint8)
    np.save(folder / "data.npy", images)
    result = vdvae("prior", "fit", model, folder / "data.npy", "--steps", 60, "--holdout", 20, "--hidden", "32,32",
                   "--batch-size", 64, "--json")
    records = [json.loads(line) for line in result.stdout.splitlines()]
    summary = records[-1]
    assert summary["type"] == "summary" and summary["steps"] == 60 and Path(summary["path"]) == companion_path(model)
    assert {r["step"] for r in records if r.get("event") == "eval"} == {0, 60}
    assert "covering latent layers 0-1 (4x1x1, 4x1x1) (the default: every leading 1x1 layer" in result.stderr
    assert math.isfinite(summary["rate_learned_prior_bits"]) and math.isfinite(summary["rate_model_prior_bits"])
    return model


def test_the_companion_is_written_beside_the_model_and_names_its_fingerprint(fitted):
    top = read_prior(companion_path(fitted), load_file_model(fitted))
    assert top.layers == 2 and top.dims == [4, 4]
    assert (fitted.parent / "tiny.prior.safetensors.state.pt").is_file()


def test_a_second_fit_does_not_clobber_and_resume_continues(fitted, tmp_path):
    before = companion_path(fitted).read_bytes()
    result = vdvae("prior", "fit", fitted, fitted.parent / "data.npy", code=1)
    assert "exists" in result.stderr and "--resume" in result.stderr
    assert companion_path(fitted).read_bytes() == before
    model = tmp_path / "m.safetensors"
    shutil.copy(fitted, model)
    for suffix in ("", ".state.pt", ".latents.pt"):
        shutil.copy(str(companion_path(fitted)) + suffix, str(companion_path(model)) + suffix)
    result = vdvae("prior", "fit", model, fitted.parent / "data.npy", "--resume", "--steps", 80, "--json")
    evals = [json.loads(line) for line in result.stdout.splitlines() if '"eval"' in line]
    assert [r["step"] for r in evals] == [80] and "from step 60 to 80" in result.stderr


def test_sample_uses_the_learned_prior_when_present(fitted, tmp_path):
    out = {}
    for choice in ("auto", "learned", "model"):
        result = vdvae("sample", "--model", fitted, "-n", 2, "--grid", "--seed", 5, "--prior", choice,
                       "-o", tmp_path / f"{choice}.png")
        out[choice] = np.asarray(Image.open(tmp_path / f"{choice}.png"))
        assert ("learned prior over latent layers 0-1" in result.stderr) == (choice != "model")
    assert np.array_equal(out["auto"], out["learned"]) and not np.array_equal(out["auto"], out["model"])
    vdvae("sample", "--model", fitted, "-n", 2, "--grid", "--seed", 5, "-o", tmp_path / "again.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "again.png")), out["auto"])


def test_eval_reports_both_bounds(fitted, tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    summary = json.loads(vdvae("eval", path, "--model", fitted, "--seed", 2, "--json").stdout.splitlines()[-1])
    own = json.loads(vdvae("eval", path, "--model", fitted, "--seed", 2, "--json", "--prior", "model").stdout.splitlines()[-1])
    assert summary["prior"] == "learned" and own["prior"] == "model" and "model_prior_bits_per_dim" not in own
    assert summary["model_prior_bits_per_dim"] == pytest.approx(own["bits_per_dim"], rel=1e-6)
    assert summary["bits_per_dim"] != pytest.approx(own["bits_per_dim"], rel=1e-9)
    # below the top layers nothing changes: the same KL per layer
    assert summary["kl_bits_per_layer"][2:] == pytest.approx(own["kl_bits_per_layer"][2:], rel=1e-5)


def test_the_learned_bound_is_log_q_minus_log_p_learned(fitted):
    model = load_file_model(fitted)
    top = read_prior(companion_path(fitted), model)
    images = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    result = ops.elbo(model, images, noise=torch.Generator().manual_seed(4), prior=top)
    # the same posterior draws, traced
    from vdvae_cli.engine.registry import family_of

    acts = model.encoder(family_of(model).model_input(model, images, torch.float32))
    out = model.decoder(3, acts, noise=BatchNoise(torch.Generator().manual_seed(4)), trace=True, want_kl=True)
    zs = [t["z"] for t in out.trace[:2]]
    log_q = sum(gaussian_log_prob(t["z"], t["qm"], t["qv"]).sum((1, 2, 3)) for t in out.trace[:2])
    expected = (log_q - top.prior.log_prob(top.flatten(zs))) / model.cfg.n_dims
    assert torch.allclose(result.kl_per_layer[:, :2].sum(1), expected, atol=1e-5)


def test_decode_keeps_a_given_top_layer_and_draws_the_next_from_the_prior(fitted):
    model = load_file_model(fitted)
    top = read_prior(companion_path(fitted), model)
    z0 = torch.randn(2, 4, 1, 1)
    filled = ops.with_learned_prior(top, [z0, None, None], 2, [1.0] * model.cfg.n_layers,
                                     BatchNoise(torch.Generator().manual_seed(1)), z0)
    assert torch.equal(filled[0], z0) and filled[1] is not None and filled[2] is None
    images = ops.decode(model, [z0], temperatures=1.0, noise=torch.Generator().manual_seed(0), prior=top)
    assert images.shape == (2, 32, 32, 3)


def test_refusals_are_one_line(fitted, tmp_path, tiny_ckpt):
    data = fitted.parent / "data.npy"
    result = vdvae("prior", "fit", fitted, data, "--layers", 40, "-o", tmp_path / "p.safetensors", code=2)
    assert "covers 1 to" in result.stderr and "at most 2048 dimensions" in result.stderr
    # a prior fitted to another model's weights
    other = tmp_path / "other.safetensors"
    state = load_file_model(tiny_ckpt).state_dict()
    from vdvae_cli.modelfiles.checkpoint import save_checkpoint

    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key] + 0.01
    save_checkpoint(state, load_file_model(tiny_ckpt).cfg, other)
    shutil.copy(companion_path(fitted), companion_path(other))
    result = vdvae("sample", "--model", other, "-o", tmp_path / "s.png", code=1)
    assert "was fitted to model 'tiny'" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    vdvae("sample", "--model", other, "-o", tmp_path / "s.png", "--prior", "model")
    result = vdvae("sample", "--model", tiny_ckpt, "--prior", "learned", "-o", tmp_path / "t.png", code=2)
    assert "has no learned prior beside it" in result.stderr


def test_nvae_top_group_gets_a_prior_too(tmp_path):
    """NVAE's top group is spatial (4x8x8 here): by default the spatial prior (PixelCNN++ blocks)
    covers it, `--kind made` a MADE over it flattened; the bound uses the family's own traced
    densities (with flows), and sampling draws that group from it."""
    model = tmp_path / "n.safetensors"
    vdvae("convert", NVAE_DATA / "tiny-nvae.pt", "-o", model)
    np.save(tmp_path / "d.npy", np.random.default_rng(0).integers(0, 256, (60, 32, 32, 3), dtype=np.uint8))
    result = vdvae("prior", "fit", model, tmp_path / "d.npy", "--steps", 20, "--holdout", 10, "--json")
    assert "covering latent layers 0-0 (4x8x8)" in result.stderr and "spatial (PixelCNN++ blocks)" in result.stderr
    vae = load_file_model(model)
    top = read_prior(companion_path(model), vae)
    assert top.layers == 1 and top.dims == [256] and top.prior.kind == "spatial"
    assert "learned (spatial, PixelCNN++ blocks), over latent layers 0-0" in vdvae("info", "-m", model).stdout
    images = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    with_prior = ops.elbo(vae, images, noise=torch.Generator().manual_seed(3), prior=top)
    own = ops.elbo(vae, images, noise=torch.Generator().manual_seed(3))
    assert torch.allclose(with_prior.kl_per_layer[:, 1:], own.kl_per_layer[:, 1:])
    assert not torch.allclose(with_prior.kl_per_layer[:, 0], own.kl_per_layer[:, 0])
    a = ops.sample(vae, 2, noise=torch.Generator().manual_seed(1), prior=top)
    b = ops.sample(vae, 2, noise=torch.Generator().manual_seed(1))
    assert a.shape == b.shape and not torch.equal(a, b)
    result = vdvae("prior", "fit", model, tmp_path / "d.npy", "--layers", 9, "-o", tmp_path / "p.safetensors", code=2)
    assert "covers 1 to" in result.stderr
    made = tmp_path / "made.safetensors"
    result = vdvae("prior", "fit", model, tmp_path / "d.npy", "--kind", "made", "--steps", 5, "--holdout", 10, "-o", made)
    assert "fitting a MADE prior" in result.stderr and read_prior(made, vae).prior.kind == "made"
    c = ops.sample(vae, 2, noise=torch.Generator().manual_seed(1), prior=read_prior(made, vae))
    assert c.shape == a.shape
    result = vdvae("prior", "fit", model, tmp_path / "d.npy", "--kind", "spatial", "--layers", 2,
                   "-o", tmp_path / "s2.safetensors", code=2)
    assert "one spatial layer" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_restoration_draws_the_layers_past_the_kept_ones_from_the_learned_prior(fitted, tmp_path):
    """inpaint with --keep-layers 1: layer 1 (covered by the prior) is drawn from it given layer 0,
    so the result differs from --prior model with the same seed; with every layer kept the learned
    prior draws nothing and the two agree bit for bit."""
    from vdvae_cli.engine import restore as R

    model = load_file_model(fitted)
    top = read_prior(companion_path(fitted), model)
    x = R.to_unit(torch.from_numpy(np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)))

    def step(keep, prior):
        return R.autoencode(model, x, keep_layers=keep, posterior="mean", noise=torch.Generator().manual_seed(4),
                            pixel_samples=0, prior=prior)

    assert not torch.equal(step(1, top), step(1, None))
    assert torch.equal(step(model.cfg.n_layers, top), step(model.cfg.n_layers, None))
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    outs = {}
    for prior in ("auto", "model"):
        out = tmp_path / f"{prior}.png"
        vdvae("inpaint", tmp_path / "in.png", "--mask", tmp_path / "mask.png", "--keep-layers", 1, "--model", fitted,
              "--seed", 3, "--prior", prior, "--steps", 2, "-o", out)
        outs[prior] = np.asarray(Image.open(out))
    assert not np.array_equal(outs["auto"], outs["model"])
