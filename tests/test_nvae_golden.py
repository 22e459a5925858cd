"""NVAE parity with NVIDIA's code: tiny checkpoints in the official format and the official code's
outputs on them (tests/data/golden-nvae/tiny-nvae-README.md says what each tensor is).

Tolerances are the README's: 1e-5 on latents and feature maps, 1e-4 on logits, rtol 1e-5 on nats
per image and the bounds; noise-free images compared where the top-2 mixture gap exceeds 1e-4.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vdvae_cli.engine import ops
from vdvae_cli.modelfiles.checkpoint import build_model
from vdvae_cli.engine.distributions import BatchNoise, Noise, dmol_sample
from vdvae_cli.families.nvae.batchnorm import bn_state, readjust_bn
from vdvae_cli.families.nvae.distributions import dmol_mean
from vdvae_cli.families.nvae.pixels import output_unit, recon_log_prob, unit_images
from vdvae_cli.families.nvae.network import official_state_keys
from vdvae_cli.families.nvae.official import read_official

DATA = Path(__file__).parent / "data" / "golden-nvae"
MODELS = {"cifar": "tiny-nvae", "mnist": "tiny-nvae-mnist"}


class StoredNoise(Noise):
    """Hands out stored standard-normal tensors in call order (the official code's draw order)."""

    def __init__(self, tensors):
        self.tensors = list(tensors)

    def normal(self, shape, *, device):
        t = self.tensors.pop(0)
        assert tuple(t.shape) == tuple(shape), (t.shape, shape)
        return t.to(device)

    def uniform(self, shape, *, device):
        raise AssertionError("no uniform draw expected")


@pytest.fixture(scope="module", params=list(MODELS))
def golden(request):
    torch.set_num_threads(1)
    stem = MODELS[request.param]
    cfg, state, _ = read_official(DATA / f"{stem}.pt")
    model = build_model(cfg, state)
    cases = load_file(str(DATA / f"{stem}-cases.safetensors"))
    derived = json.loads((DATA / f"{stem}-args.json").read_text())["derived"]
    return request.param, cfg, state, model, cases, derived


def close(got, want, tol=1e-5):
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)


def groups(cases, prefix):
    """The two-digit group indices stored under ``prefix.GG.``."""
    depth = prefix.count(".") + 1
    return sorted({k.split(".")[depth] for k in cases
                   if k.startswith(prefix + ".") and k.split(".")[depth].isdigit()})


def uint8_images(kind, cases):
    """The uint8 NHWC images whose NVAE data tensor is ``input.x`` (MNIST: the binarised digit)."""
    if kind == "cifar":
        return cases["input.x_uint8"]
    return (cases["input.x"][:, 0, 2:-2, 2:-2, None] * 255).to(torch.uint8)


def test_layout_and_keys(golden):
    kind, cfg, state, model, cases, derived = golden
    assert [list(s) for s in cfg.latent_shapes] == derived["latent_shapes_decoder_order"]
    assert list(cfg.groups_per_scale) == derived["groups_per_scale"]
    assert cfg.output_channels == derived["output_channels"] and cfg.n_dims == derived["num_output"]
    official = {k: tuple(v[1:]) for k, v in derived["state_dict"].items()}  # key -> [dtype, *shape]
    assert dict(official_state_keys(model)) == official
    assert all(v[0] == ("int64" if k.endswith("num_batches_tracked") else "float32")
               for k, v in derived["state_dict"].items())


def test_input_pipeline(golden):
    kind, cfg, state, model, cases, derived = golden
    assert torch.equal(unit_images(cfg, uint8_images(kind, cases)), cases["input.x"])
    if kind == "cifar":
        five = unit_images(cfg.replace(num_x_bits=5), cases["input.x_uint8"])
        assert torch.equal(five, cases["input.x_5bit"])


def test_flow_masks(golden):
    kind, cfg, state, model, cases, derived = golden
    for key in (k for k in cases if k.startswith("mask.")):
        conv = model.get_submodule(key[len("mask."):])
        assert torch.equal(conv.mask, cases[key]), key


def _posterior(model, cases, case):
    n = cases["input.x"].shape[0]
    enc_trace: dict = {}
    acts = model.encoder(cases["input.x"], trace=enc_trace)
    eps = None if case == "postmean" else [cases[f"{case}.{g}.eps"] for g in groups(cases, case)]
    out = model.decoder(n, acts, eps=eps, posterior_mean=case == "postmean", trace=True, want_kl=True)
    return enc_trace, out


@torch.no_grad()
@pytest.mark.parametrize("case", ["post", "postmean"])
def test_posterior_pass(golden, case):
    kind, cfg, state, model, cases, derived = golden
    enc_trace, out = _posterior(model, cases, case)
    if case == "post":
        close(enc_trace["enc.stem"], cases["post.enc.stem"])
        close(enc_trace["enc.pre"], cases["post.enc.pre"])
    names = ("enc_feat", "s_in", "ftr", "mu_q_raw", "log_sig_q_raw", "mu_p_raw", "log_sig_p_raw", "q_mu", "q_sigma",
             "p_mu", "p_sigma", "eps", "z_pre", "z", "log_q", "log_p", "kl")
    checked = 0
    for g in groups(cases, case):
        rec = out.trace[int(g)]
        for name in names + tuple(f"z_flow.{i}{h}" for i in range(cfg.num_nf) for h in (".half", "")):
            key = f"{case}.{g}.{name}"
            if key in cases:
                close(rec[name], cases[key])
                checked += 1
    assert checked >= (5 if case == "postmean" else 12) * cfg.n_layers
    kl_all = torch.stack([k.sum(dim=(1, 2, 3)) for k in out.kl], dim=1)
    close(kl_all, cases[f"{case}.kl_all"], 1e-4)
    close(sum(t["log_q"].sum(dim=(1, 2, 3)) for t in out.trace), cases[f"{case}.log_q"], 1e-4)
    close(sum(t["log_p"].sum(dim=(1, 2, 3)) for t in out.trace), cases[f"{case}.log_p"], 1e-4)
    if case == "post":
        close(torch.stack([k.sum(dim=(2, 3)).mean(0) for k in out.kl]), cases["post.kl_diag"], 1e-4)
        close(out.px_z, cases["post.dec_out"])
    logits = model.logits(out.px_z)
    recon = -recon_log_prob(cfg, logits, cases["input.x"])
    torch.testing.assert_close(recon, cases[f"{case}.recon_loss"], rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(recon + kl_all.sum(1), cases[f"{case}.nelbo_per_image"], rtol=1e-5, atol=1e-3)
    if case == "post":
        close(logits, cases["post.logits"], 1e-4)
        log_iw = -recon - cases["post.log_q"] + cases["post.log_p"]
        torch.testing.assert_close(log_iw, cases["post.log_iw"], rtol=1e-5, atol=1e-3)
    _check_images(cfg, logits, cases, case)


def _check_images(cfg, logits, cases, case):
    if cfg.binary:
        close(torch.sigmoid(logits), cases[f"{case}.out_mean"])
        return
    close((dmol_mean(logits, cfg.num_mixtures) + 1) / 2, cases[f"{case}.out_mean"])
    noiseless = (output_unit(cfg, logits, BatchNoise(torch.Generator()), 0.0) + 1) / 2  # NHWC
    want = cases[f"{case}.out_sample_noiseless"].permute(0, 2, 3, 1)
    clear = (cases[f"{case}.top2_gap"] > 1e-4)[..., None].expand_as(want)
    assert clear.float().mean() > 0.9
    close(noiseless[clear], want[clear])


@torch.no_grad()
def test_likelihood_and_bounds(golden):
    kind, cfg, state, model, cases, derived = golden
    logits = cases["post.logits"]
    close(_recon_map(cfg, logits, cases["input.x"]), cases["post.recon_logp_map"], 1e-4)
    if kind == "cifar":
        five = cfg.replace(num_x_bits=5)
        close(_recon_map(five, logits, cases["input.x_5bit"]), cases["lik5bit.recon_logp_map"], 1e-4)
        torch.testing.assert_close(-recon_log_prob(five, logits, cases["input.x_5bit"]), cases["lik5bit.recon_loss"],
                                   rtol=1e-5, atol=1e-3)
    # ops.elbo with the same noise: the numbers evaluate.py reports (nats and bits per dim).
    images = uint8_images(kind, cases)
    eps = [cases[f"post.{g}.eps"] for g in groups(cases, "post")]
    result = ops.elbo(model, images, eps=eps)
    nelbo = result.elbo.mean() * cfg.n_dims
    torch.testing.assert_close(nelbo, cases["post.nelbo"], rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(result.elbo.mean() / math.log(2), cases["post.nelbo_bpd"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.kl_per_layer * cfg.n_dims, cases["post.kl_all"], rtol=1e-4, atol=1e-4)


def _recon_map(cfg, logits, x):
    """Per-pixel log-likelihood the way the golden file stores it (DMoL: summed over RGB)."""
    from vdvae_cli.engine.distributions import dmol_log_prob
    from vdvae_cli.families.nvae.distributions import bernoulli_log_prob
    from vdvae_cli.families.nvae.pixels import DMOL_UPPER_EDGE

    if cfg.binary:
        return bernoulli_log_prob(logits, x)
    return dmol_log_prob(logits.permute(0, 2, 3, 1), (2 * x - 1).permute(0, 2, 3, 1), cfg.num_mixtures,
                         bits=cfg.num_x_bits, upper_edge=DMOL_UPPER_EDGE)


@torch.no_grad()
def test_importance_weighted_bound(golden):
    kind, cfg, state, model, cases, derived = golden
    K = int(cases["iw.num_samples"])
    noise = StoredNoise(cases[f"iw.{k:02d}.{g}.eps"] for k in range(K) for g in groups(cases, "iw.00"))
    result = ops.elbo(model, uint8_images(kind, cases), samples=K, noise=noise)
    torch.testing.assert_close(result.nll_bound.mean() * cfg.n_dims, cases["iw.neg_log_p"], rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(result.elbo.mean() * cfg.n_dims, cases["iw.nelbo"], rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(result.nll_bound.mean() / math.log(2), cases["iw.neg_log_p_bpd"], rtol=1e-5, atol=1e-6)


@torch.no_grad()
@pytest.mark.parametrize("case", ["prior_t1", "prior_t07", "prior_t0"])
def test_prior_sampling(golden, case):
    kind, cfg, state, model, cases, derived = golden
    t = float(cases[f"{case}.t"])
    eps = [cases[f"{case}.{g}.eps"] for g in groups(cases, case)]
    out = model.decoder(2, temperatures=t, eps=eps, trace=True)
    for g in groups(cases, case):
        rec = out.trace[int(g)]
        for name, mine in (("mu", "mu"), ("sigma", "sigma"), ("z", "z"), ("mu_raw", "mu_p_raw"), ("log_sig_raw", "log_sig_p_raw")):
            if f"{case}.{g}.{name}" in cases:
                close(rec[mine], cases[f"{case}.{g}.{name}"])
    if t == 0:
        for rec in out.trace:
            assert torch.equal(rec["z"], rec["mu"])  # --temp 0 is the prior mean exactly
    logits = model.logits(out.px_z)
    if f"{case}.logits" in cases:
        close(logits, cases[f"{case}.logits"], 1e-4)
    _check_images(cfg, logits, cases, case)
    if f"{case}.out_sample" in cases:  # sample() at t = 1 with the stored uniforms
        u_mix = cases[f"{case}.dmol_u_mix"].permute(0, 2, 3, 1)
        u_log = cases[f"{case}.dmol_u_logistic"].permute(0, 2, 3, 1)
        x = dmol_sample(logits.permute(0, 2, 3, 1), cfg.num_mixtures, u_mix=u_mix, u_logistic=u_log)
        want = cases[f"{case}.out_sample"].permute(0, 2, 3, 1)
        clear = (cases[f"{case}.top2_gap"] > 1e-4)[..., None].expand_as(want)
        close(((x + 1) / 2)[clear], want[clear], 1e-4)


@torch.no_grad()
def test_pixel_temperature_fixes_official_bug(golden):
    """NVAE's sample(t) divides the logistic scale by t (PR #54); ours scales it by t. With the
    stored uniforms, official t = 0.7 spreads pixels more than t = 1, ours less."""
    kind, cfg, state, model, cases, derived = golden
    if cfg.binary:
        pytest.skip("Bernoulli output")
    logits = cases["prior_t07.logits"].permute(0, 2, 3, 1)
    u_mix = cases["prior_t07.dmol_u_mix"].permute(0, 2, 3, 1)
    u_log = cases["prior_t07.dmol_u_logistic"].permute(0, 2, 3, 1)
    ours = (dmol_sample(logits, cfg.num_mixtures, u_mix=u_mix, u_logistic=u_log, temperature=0.7) + 1) / 2
    noiseless = cases["prior_t07.out_sample_noiseless"].permute(0, 2, 3, 1)
    official = cases["prior_t07.out_sample_t"].permute(0, 2, 3, 1)
    at_one = cases["prior_t07.out_sample"].permute(0, 2, 3, 1)
    spread = lambda x: (x - noiseless).abs().mean()  # noqa: E731
    assert spread(ours) < spread(at_one) < spread(official)


@torch.no_grad()
def test_bn_readjustment(golden):
    kind, cfg, state, model, cases, derived = golden
    fresh = build_model(cfg, {k: v.clone() for k, v in state.items()})  # the model would share the tensors
    iters, batch, t = int(cases["bnfix.iters"]), int(cases["bnfix.batch"]), float(cases["bnfix.t"])
    noise = StoredNoise(cases[f"bnfix.{i:02d}.{g}.eps"] for i in range(iters) for g in groups(cases, "bnfix.00"))
    readjust_bn(fresh, t, iters=iters, batch=batch, noise=noise)
    assert not fresh.training
    stats = bn_state(fresh)
    expected = {k[len("bnfix.bn."):]: v for k, v in cases.items() if k.startswith("bnfix.bn.")}
    assert set(stats) == set(expected)
    moved = 0
    for key, want in expected.items():
        if key.endswith("num_batches_tracked"):
            assert int(stats[key]) == int(want), key
            moved += int(want) == 9
        else:
            close(stats[key], want)
    assert moved > 0
    eps = [cases[f"bnfix.sample.{g}.eps"] for g in groups(cases, "bnfix.sample")]
    out = fresh.decoder(2, temperatures=t, eps=eps, trace=True)
    for g in groups(cases, "bnfix.sample"):
        close(out.trace[int(g)]["z"], cases[f"bnfix.sample.{g}.z"])
    _check_images(cfg, fresh.logits(out.px_z), cases, "bnfix.sample")


@torch.no_grad()
def test_ops_encode_decode_mix_on_nvae(golden):
    """The family-agnostic operations on an NVAE: posterior-mean latents are the official postmean
    z (after the flows); decoding them, reconstructing, and mixing a prefix with the rest inferred
    from the same images all give the same noise-free image."""
    kind, cfg, state, model, cases, derived = golden
    images = uint8_images(kind, cases)
    z = ops.encode(model, images, posterior="mean")
    assert [tuple(t.shape[1:]) for t in z] == list(cfg.latent_shapes)
    for k, g in enumerate(groups(cases, "postmean")):
        close(z[k], cases[f"postmean.{g}.z"])
    assert len(ops.encode(model, images, posterior="mean", n_layers=2)) == 2
    recon = ops.reconstruct(model, images, posterior="mean", output_temperature=0)
    assert torch.equal(ops.decode(model, z, output_temperature=0), recon)
    assert torch.equal(ops.mix(model, z[:2], images, posterior="mean", output_temperature=0), recon)
    assert recon.shape == (2, cfg.image_size, cfg.image_size, 3) and recon.dtype == torch.uint8
    a = ops.sample(model, 2, temperatures=0.0, output_temperature=0, noise=torch.Generator().manual_seed(1))
    b = ops.sample(model, 2, temperatures=0.0, output_temperature=0, noise=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, recon)
