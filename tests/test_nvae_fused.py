"""NVAE inference with BatchNorm and weight normalisation folded into the convs (families/nvae/fused.py):
the official code's outputs at the golden tolerances (1e-5 on feature maps and latents, 1e-4 on
logits), the plain forward's outputs on random networks of every cell kind, and the plain forward
back whenever gradients, train mode or changed weights call for it."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from vdvae_cli.engine.runtime import prepare_for_inference
from vdvae_cli.families.nvae.config import NVAEConfig
from vdvae_cli.families.nvae.fused import fuse_cells, onednn
from vdvae_cli.families.nvae.network import NVAE
from vdvae_cli.families.nvae.official import read_official
from vdvae_cli.modelfiles.checkpoint import build_model

DATA = Path(__file__).parent / "data" / "golden-nvae"


def close(got, want, tol=1e-5):
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)


def _groups(cases, prefix):
    depth = prefix.count(".") + 1
    return sorted({k.split(".")[depth] for k in cases
                   if k.startswith(prefix + ".") and k.split(".")[depth].isdigit()})


@pytest.fixture(scope="module", params=["tiny-nvae", "tiny-nvae-mnist"])
def golden_fused(request):
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    cfg, state, _ = read_official(DATA / f"{request.param}.pt")
    model = prepare_for_inference(build_model(cfg, state))  # what every command does with a loaded model
    assert any(getattr(m, "_nvae_fused", False) for m in model.modules())
    return cfg, model, load_file(str(DATA / f"{request.param}-cases.safetensors"))


@pytest.mark.parametrize("case", ["prior_t1", "prior_t07", "prior_t0"])
def test_fused_prior_matches_official(golden_fused, case):
    cfg, model, cases = golden_fused
    t = float(cases[f"{case}.t"])
    eps = [cases[f"{case}.{g}.eps"] for g in _groups(cases, case)]
    with torch.inference_mode():
        out = model.decoder(2, temperatures=t, eps=eps, trace=True)
        logits = model.logits(out.px_z)
    for g in _groups(cases, case):
        for name, mine in (("mu", "mu"), ("sigma", "sigma"), ("z", "z")):
            if f"{case}.{g}.{name}" in cases:
                close(out.trace[int(g)][mine], cases[f"{case}.{g}.{name}"])
    if f"{case}.logits" in cases:
        close(logits, cases[f"{case}.logits"], 1e-4)


def test_fused_posterior_matches_official(golden_fused):
    cfg, model, cases = golden_fused
    eps = [cases[f"post.{g}.eps"] for g in _groups(cases, "post")]
    with torch.inference_mode():
        trace: dict = {}
        acts = model.encoder(cases["input.x"], trace=trace)
        out = model.decoder(cases["input.x"].shape[0], acts, eps=eps, trace=True, want_kl=True)
        logits = model.logits(out.px_z)
    close(trace["enc.pre"], cases["post.enc.pre"])
    for g in _groups(cases, "post"):
        for name in ("ftr", "q_mu", "z"):
            close(out.trace[int(g)][name], cases[f"post.{g}.{name}"])
    close(out.px_z, cases["post.dec_out"])
    close(logits, cases["post.logits"], 1e-4)


# Random networks with every cell kind: mbconv and res_bnswish decoders, with and without SE.
SMALL = dict(dataset="custom_16", num_channels_enc=8, num_channels_dec=8, num_latent_scales=2,
             num_groups_per_scale=2, num_latent_per_group=4, num_preprocess_blocks=1, num_preprocess_cells=2,
             num_postprocess_blocks=1, num_postprocess_cells=2, num_cell_per_cond_enc=1, num_cell_per_cond_dec=2,
             num_nf=1, res_dist=True, num_mixture_dec=3)


def _random(arch: str, use_se: bool) -> NVAE:
    torch.manual_seed(0)
    model = NVAE(NVAEConfig(**SMALL, arch_instance=arch, use_se=use_se, name="t")).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():  # statistics and affines away from the identity, so folding is not trivial
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.3, generator=g)
            m.running_var.uniform_(0.3, 3.0, generator=g)
            m.weight.uniform_(0.5, 1.5, generator=g)
            m.bias.normal_(0, 0.2, generator=g)
    return model


def _passes(model: NVAE, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    x = torch.rand(3, cfg.image_channels, cfg.image_size, cfg.image_size, generator=g)
    x = x.to(next(model.parameters()).dtype)
    eps = [torch.randn(3, *grp.latent_shape, generator=g) for grp in cfg.decoder_layers]
    prior = model.decoder(3, temperatures=0.8, eps=eps).px_z
    post = model.decoder(3, model.encoder(x), eps=eps).px_z
    return prior, post, model.logits(post)


@pytest.mark.parametrize("arch,use_se", [("res_mbconv", True), ("mbconv_res", True), ("res_bnswish", False),
                                         ("mbconv_sep", False)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_fused_equals_plain(arch, use_se, channels_last):
    plain = _random(arch, use_se)
    fused = copy.deepcopy(plain)
    assert fuse_cells(fused, channels_last=channels_last) > 0
    if channels_last:
        fused = fused.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        for a, b in zip(_passes(plain), _passes(fused)):
            close(b, a)
    with torch.no_grad():  # no_grad without inference mode takes the folded path too
        close(_passes(fused)[0], _passes(plain)[0])
    assert list(fused.state_dict()) == list(plain.state_dict())


@pytest.mark.skipif(not onednn(torch.bfloat16), reason="no oneDNN bf16 kernels on this CPU")
def test_fused_bf16_close_to_fp32():
    """bf16 (8-bit mantissa) through a few cells: within 5% of the output scale of the fp32 plain pass."""
    plain = _random("res_mbconv", True)
    fused = prepare_for_inference(copy.deepcopy(plain).to(torch.bfloat16))
    with torch.inference_mode():
        for a, b in zip(_passes(plain), _passes(fused)):
            assert b.dtype == torch.bfloat16
            scale = a.abs().max()
            assert (b.float() - a).abs().max() <= 0.05 * scale


def test_fused_follows_weights_and_falls_back():
    model = _random("res_mbconv", True)
    fused = copy.deepcopy(model)
    fuse_cells(fused)
    with torch.inference_mode():
        _passes(fused)  # builds the folded weights
    # train mode and gradients take the plain forward (BatchNorm batch statistics, autograd)
    fused.train()
    model.train()
    torch.manual_seed(3)
    a = _passes(model)[0]
    torch.manual_seed(3)
    b = _passes(fused)[0]
    close(b, a)
    fused.eval()
    model.eval()
    # changed statistics and weights (as --readjust-bn and load_state_dict change them) are refolded
    with torch.no_grad():
        for m in (model, fused):
            for bn in (x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)):
                bn.running_var.mul_(2.0)
            m.stem.weight.mul_(-1.0)
            m.dec_tower[-1].conv.log_weight_norm.add_(0.5)
    with torch.inference_mode():
        for x, y in zip(_passes(model), _passes(fused)):
            close(y, x)
    fresh = _random("res_mbconv", True)  # (ARConv2d's mask cache made in inference mode cannot enter autograd)
    fuse_cells(fresh)
    fresh.requires_grad_(True)
    _passes(fresh)[2].sum().backward()
    assert fresh.stem.weight.grad is not None


@pytest.mark.skipif(not onednn(torch.float32), reason="no oneDNN fused kernels in this build")
def test_a_kernel_that_raises_falls_back(monkeypatch):
    """oneDNN's fused kernels are PyTorch internals: one that raises switches to F.conv2d (same maths)."""
    from vdvae_cli.families.nvae import fused as nvae_fused

    def broken(*args, **kwargs):
        raise RuntimeError("no such kernel here")

    plain = _random("res_mbconv", True)
    model = prepare_for_inference(copy.deepcopy(plain))
    monkeypatch.setattr(nvae_fused, "_onednn_conv", broken)
    monkeypatch.setattr(nvae_fused, "_failed", False)
    with torch.inference_mode():
        for a, b in zip(_passes(plain), _passes(model)):
            close(b, a)
    assert nvae_fused._failed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_fused_on_cuda_equals_plain():
    """On a GPU the folded convs run as F.conv2d (no oneDNN): the plain forward's results in fp32
    (TF32 off), and bf16 through prepare_for_inference within 5% of the output scale."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        _compare_on_cuda()
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _compare_on_cuda():
    plain = _random("res_mbconv", True).cuda()
    fused = copy.deepcopy(plain)
    fuse_cells(fused, channels_last=False)
    half = prepare_for_inference(copy.deepcopy(plain).to(torch.bfloat16))
    with torch.inference_mode():
        ref = [t.cpu() for t in _passes_on(plain, "cuda")]
        for a, b in zip(ref, _passes_on(fused, "cuda")):
            close(b.cpu(), a, 1e-4)
        for a, b in zip(ref, _passes_on(half, "cuda")):
            assert (b.float().cpu() - a).abs().max() <= 0.05 * a.abs().max()


def _passes_on(model: NVAE, device: str):
    """:func:`_passes` with the inputs drawn on the CPU (the same numbers) and moved to ``device``."""
    g = torch.Generator().manual_seed(2)
    cfg = model.cfg
    dtype = next(model.parameters()).dtype
    x = torch.rand(3, cfg.image_channels, cfg.image_size, cfg.image_size, generator=g).to(device, dtype)
    eps = [torch.randn(3, *grp.latent_shape, generator=g).to(device) for grp in cfg.decoder_layers]
    prior = model.decoder(3, temperatures=0.8, eps=eps).px_z
    post = model.decoder(3, model.encoder(x), eps=eps).px_z
    return prior.float(), post.float(), model.logits(post).float()
