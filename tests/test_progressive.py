"""The progressive recipe (`vdvae train --progressive STEPS`): latent levels trained one resolution at
a time, finest first, the newest under a fixed N(0, I) prior, the levels not reached yet at z = 0;
then every level jointly. For both VAE families."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_nvae_train import TINY as NVAE_TINY
from test_nvae_train import nvae_tc
from test_train import TINY_HPS, fast, images, synthetic_images, tiny_cfg  # noqa: F401 (fixtures)
from typer.testing import CliRunner

from vdvae_cli.base.errors import UsageError
from vdvae_cli.cli import app
from vdvae_cli.engine.distributions import BatchNoise
from vdvae_cli.engine.ops import elbo
from vdvae_cli.engine.registry import family_of
from vdvae_cli.engine.recipe import TrainConfig
from vdvae_cli.families.nvae.config import NVAEConfig
from vdvae_cli.families.nvae.network import NVAE
from vdvae_cli.families.vdvae.model import VAE
from vdvae_cli.training.loop import train
from vdvae_cli.training.schedule import progressive_stage


def test_stages_run_finest_first_then_joint(tiny_cfg):
    # tiny8: layer 0 at 1x1, layers 1-2 at 4x4, layers 3-4 at 8x8
    assert [layer.res for layer in tiny_cfg.decoder_layers] == [1, 4, 4, 8, 8]
    tc = TrainConfig(steps=100, progressive_steps=10)
    stages = [progressive_stage(tiny_cfg, tc, s) for s in (0, 9, 10, 19, 20, 29, 30, 99)]
    assert stages == [(3, 5), (3, 5), (1, 3), (1, 3), (0, 1), (0, 1), None, None]
    assert progressive_stage(tiny_cfg, TrainConfig(steps=100), 0) is None  # off by default
    with pytest.raises(UsageError):
        TrainConfig(steps=100, progressive_steps=-1)
    with pytest.raises(UsageError, match="coarse-first"):
        TrainConfig(steps=100, progressive_steps=10, coarse_res=1, coarse_steps=5)


def _noise(seed: int) -> BatchNoise:
    return BatchNoise(torch.Generator().manual_seed(seed))


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """A model whose priors are not the fresh model's N(0, 1) outputs."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _gaussian_kl_to_standard(qm: torch.Tensor, q_logstd: torch.Tensor) -> torch.Tensor:
    """Per image, KL(N(qm, e^{2 q_logstd}) || N(0, 1)) summed over the layer's elements, by hand."""
    kl = 0.5 * (qm.double() ** 2 + torch.exp(2 * q_logstd.double()) - 1) - q_logstd.double()
    return kl.sum(dim=(1, 2, 3))


def test_vdvae_stage_pass_by_hand(tiny_cfg):
    model = _perturbed(VAE(tiny_cfg))
    x = torch.randint(0, 256, (3, 8, 8, 3), dtype=torch.uint8)
    acts = model.encoder(family_of(model).model_input(model, x, torch.float32))
    out = model.decoder(3, acts, noise=_noise(1), want_kl=True, want_latents=True,
                        trace=True, stage=(1, 3))
    assert out.kl[0] is None and torch.equal(out.latents[0], torch.zeros_like(out.latents[0]))  # not trained yet
    for i in (1, 2):  # the newest level: KL to N(0, I), exactly
        t = out.trace[i]
        assert torch.equal(t["pm"], torch.zeros_like(t["pm"])) and torch.equal(t["pv"], torch.zeros_like(t["pv"]))
        want = _gaussian_kl_to_standard(t["qm"], t["qv"])
        assert torch.allclose(out.kl[i].double().sum(dim=(1, 2, 3)), want, rtol=1e-5)
    for i in (3, 4):  # finer levels keep their learned priors
        assert out.trace[i]["pm"].abs().max() > 0
    # stage (0, 0) is the ordinary pass, bit for bit
    a = model.decoder(3, acts, noise=_noise(1), want_kl=True, stage=(0, 0))
    b = model.decoder(3, acts, noise=_noise(1), want_kl=True)
    assert torch.equal(a.px_z, b.px_z) and all(torch.equal(p, q) for p, q in zip(a.kl, b.kl))
    # the stage's bound counts only the trained layers' KL
    res = elbo(model, x, noise=torch.Generator().manual_seed(1), stage=(1, 3))
    assert float(res.kl_per_layer[:, 0].abs().max()) == 0.0 and float(res.kl_per_layer[:, 1:].min()) > 0


def test_nvae_stage_pass_by_hand():
    cfg = NVAEConfig(**NVAE_TINY, name="tiny-nvae")
    model = _perturbed(NVAE(cfg))
    G = cfg.n_layers
    assert [g.res for g in cfg.decoder_layers] == sorted(g.res for g in cfg.decoder_layers)
    x = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    acts = model.encoder(family_of(model).model_input(model, x, torch.float32))
    a, b = 1, 2
    out = model.decoder(2, acts, noise=_noise(3), want_kl=True, want_latents=True,
                        trace=True, stage=(a, b))
    assert out.kl[0] is None and float(out.latents[0].abs().max()) == 0.0
    t = out.trace[a]  # the stage's fixed prior: NVAE's top-group Normal from zeros (sigma = 1 + 0.01)
    assert float(t["p_mu"].abs().max()) == 0.0 and torch.allclose(t["p_sigma"], torch.full_like(t["p_sigma"], 1.01))
    assert float(out.trace[G - 1]["p_mu"].detach().abs().max()) > 0  # a finer group keeps its learned prior
    plain = model.decoder(2, acts, noise=_noise(3), want_kl=True)
    same = model.decoder(2, acts, noise=_noise(3), want_kl=True, stage=(0, 0))
    assert torch.equal(plain.px_z, same.px_z)


def test_a_progressive_run_logs_its_stages_and_learns(tmp_path, tiny_cfg, images):
    run = train(tiny_cfg, fast(steps=40, eval_every=20, progressive_steps=8), images, tmp_path / "p")
    log = [json.loads(line) for line in (tmp_path / "p" / "log.jsonl").read_text().splitlines()]
    stages = [r for r in log if r["event"] == "stage"]
    assert [r["step"] for r in stages] == [0, 8, 16, 24]
    assert [r.get("fixed_prior_layers") for r in stages] == [[3, 5], [1, 3], [0, 1], None]
    assert math.isfinite(run.heldout_bpd) and run.heldout_bpd < run.history[0]["heldout_bpd"]


def test_an_nvae_trains_progressively(tmp_path):
    cfg = NVAEConfig(**NVAE_TINY, name="tiny-nvae")
    imgs = torch.from_numpy(synthetic_images(96, 8))
    run = train(cfg, nvae_tc(steps=8, eval_every=4, progressive_steps=2), imgs, tmp_path / "n")
    assert math.isfinite(run.heldout_bpd)
    log = [json.loads(line) for line in (tmp_path / "n" / "log.jsonl").read_text().splitlines()]
    assert sum(r["event"] == "stage" for r in log) == len(cfg.resolutions) + 1


def test_cli_progressive_and_its_refusals(tmp_path):
    import numpy as np

    np.save(tmp_path / "data.npy", synthetic_images())
    hps = {k: v for k, v in TINY_HPS.items() if k != "preprocessing"}
    (tmp_path / "tiny.json").write_text(json.dumps(hps))
    base = ["train", str(tmp_path / "data.npy"), "--hparams", str(tmp_path / "tiny.json"), "--holdout", "16",
            "--batch-size", "16"]
    res = CliRunner().invoke(app, base + ["--steps", "8", "--progressive", "2", "-o", str(tmp_path / "ok")])
    assert res.exit_code == 0, res.output
    assert "progressive recipe: training latent layers 3-4" in res.stderr
    assert "every latent level now trains jointly" in res.stderr
    assert json.loads((tmp_path / "ok" / "run.json").read_text())["train_config"]["progressive_steps"] == 2
    for extra, why in ((["--steps", "6", "--progressive", "2"], "would not finish"),
                       (["--steps", "20", "--progressive", "2", "--coarse-first", "1:5"], "coarse-first")):
        res = CliRunner().invoke(app, base + extra + ["-o", str(tmp_path / "bad"), "-q"])
        assert res.exit_code == 2, res.output
        assert res.stderr.startswith("error:") and why in res.stderr and "Traceback" not in res.stderr
