"""The trainer's options against posterior collapse (KL warm-up, free bits) and the per-layer KL it logs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_train import TINY_HPS, fast, images, synthetic_images, tiny_cfg  # noqa: F401 (fixtures)
from typer.testing import CliRunner

from vdvae_cli.cli import app
from vdvae_cli.base.errors import UsageError
from vdvae_cli.engine.recipe import TrainConfig, kl_weight, objective
from vdvae_cli.training.loop import train


def test_defaults_leave_the_reference_objective():
    tc = TrainConfig(steps=10)
    assert tc.kl_warmup == 0 and tc.free_bits == 0.0
    assert [kl_weight(tc, s) for s in (0, 5)] == [1.0, 1.0]
    d, kl = torch.tensor([1.0, 3.0]), torch.tensor([[0.1, 0.0], [0.3, 0.0]])
    assert float(objective(tc, 0, d, kl, n_dims=10)) == pytest.approx(2.0 + 0.2)  # mean distortion + mean KL


def test_kl_warmup_and_free_bits_by_hand():
    tc = TrainConfig(steps=10, kl_warmup=4)
    assert [kl_weight(tc, s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    # free bits: 10 dims, floor 0.05 nats/dim = 0.5 nats per image = 0.5 / ln 2 bits
    tc = TrainConfig(steps=10, kl_warmup=2, free_bits=0.5 / math.log(2))
    d = torch.tensor([1.0, 3.0])
    kl = torch.tensor([[0.1, 0.0], [0.3, 0.02]], requires_grad=True)  # layer means 0.2 and 0.01 (< floor 0.05)
    obj = objective(tc, 0, d, kl, n_dims=10)  # weight 0.5 at step 0
    assert float(obj.detach()) == pytest.approx(2.0 + 0.5 * (0.2 + 0.05))
    obj.backward()
    assert kl.grad[:, 0].tolist() == pytest.approx([0.25, 0.25])  # 0.5 weight / 2 images
    assert kl.grad[:, 1].tolist() == [0.0, 0.0]  # below the floor: no pull towards the prior
    for bad in (dict(kl_warmup=-1), dict(free_bits=-0.5), dict(free_bits=float("nan"))):
        with pytest.raises(UsageError):
            TrainConfig(steps=10, **bad)


def test_the_floor_and_the_warmup_hold_back_the_posterior_only():
    """With the prior's side of the KL given separately, a layer under the floor (and every layer
    during warm-up) still pulls its prior towards the posterior at full weight; the objective's value
    is unchanged."""
    tc = TrainConfig(steps=10, kl_warmup=2, free_bits=0.5 / math.log(2))
    d = torch.tensor([1.0, 3.0])
    q_side = torch.tensor([[0.1, 0.0], [0.3, 0.02]], requires_grad=True)
    p_side = q_side.detach().clone().requires_grad_(True)
    obj = objective(tc, 0, d, q_side, 10, p_side)
    assert float(obj.detach()) == pytest.approx(2.0 + 0.5 * (0.2 + 0.05))
    obj.backward()
    assert q_side.grad.flatten().tolist() == pytest.approx([0.25, 0.0, 0.25, 0.0])  # warm-up weight, floor
    assert p_side.grad.flatten().tolist() == pytest.approx([0.5] * 4)  # full weight, every layer


def test_split_kl_sends_each_side_its_own_gradient(tiny_cfg):
    """ops.elbo(split_kl=True): both KL tensors hold the same values; in the last layer (whose state
    feeds no later KL) the posterior's side reaches only the posterior's own block and the prior's
    side only the prior's."""
    from vdvae_cli.families.vdvae.model import VAE
    from vdvae_cli.engine.ops import elbo

    torch.manual_seed(0)
    model = VAE(tiny_cfg)
    with torch.no_grad():  # a prior that is not the fresh model's zero output
        for p in model.decoder.dec_blocks[-1].prior.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randint(0, 256, (2, tiny_cfg.image_size, tiny_cfg.image_size, 3), dtype=torch.uint8)
    out = elbo(model, x, noise=torch.Generator().manual_seed(1), grad=True, split_kl=True)
    assert torch.equal(out.kl_per_layer, out.kl_prior_per_layer)
    last = model.decoder.dec_blocks[-1]
    q_params, p_params = list(last.enc.parameters()), list(last.prior.parameters())

    def norms(kl):
        gs = torch.autograd.grad(kl[:, -1].sum(), q_params + p_params, allow_unused=True, retain_graph=True)
        total = [0.0 if g is None else float(g.abs().sum()) for g in gs]
        return sum(total[:len(q_params)]), sum(total[len(q_params):])

    q_q, q_p = norms(out.kl_per_layer)
    p_q, p_p = norms(out.kl_prior_per_layer)
    assert q_q > 0 and q_p == 0
    assert p_q == 0 and p_p > 0


def test_free_bits_keep_the_latents_in_use(tmp_path, tiny_cfg, images):
    """With a floor far above what the layers carry the KL term has no gradient at all, so the
    latents carry more than under the plain ELBO; the reported loss is still the ELBO."""
    plain = train(tiny_cfg, fast(steps=30, eval_every=30), images, tmp_path / "plain")
    free = train(tiny_cfg, fast(steps=30, eval_every=30, free_bits=1000.0), images, tmp_path / "free")
    rate_plain, rate_free = plain.history[-1]["rate_bpd"], free.history[-1]["rate_bpd"]
    assert rate_free > 2 * rate_plain, (rate_plain, rate_free)
    last = free.history[-1]
    assert len(last["layer_bits"]) == tiny_cfg.n_layers
    # the per-layer figures add up to the rate (bits per image / dims = bits/dim), up to rounding
    assert sum(last["layer_bits"]) / tiny_cfg.n_dims == pytest.approx(last["rate_bpd"], abs=1e-3)
    logged = [json.loads(x) for x in (tmp_path / "free" / "log.jsonl").read_text().splitlines()]
    assert any("layer_bits" in r for r in logged)


def test_cli_options_reach_the_run_and_bad_values_are_one_line(tmp_path):
    import numpy as np

    np.save(tmp_path / "data.npy", synthetic_images())
    hps = {k: v for k, v in TINY_HPS.items() if k != "preprocessing"}
    (tmp_path / "tiny.json").write_text(json.dumps(hps))
    base = ["train", str(tmp_path / "data.npy"), "--hparams", str(tmp_path / "tiny.json"), "--steps", "2",
            "--holdout", "16", "--batch-size", "16", "-q"]
    res = CliRunner().invoke(app, base + ["-o", str(tmp_path / "r"), "--kl-warmup", "5", "--free-bits", "2.5"])
    assert res.exit_code == 0, res.output
    tc = json.loads((tmp_path / "r" / "run.json").read_text())["train_config"]
    assert (tc["kl_warmup"], tc["free_bits"]) == (5, 2.5)
    res = CliRunner().invoke(app, base + ["-o", str(tmp_path / "bad"), "--free-bits", "-1"])
    assert res.exit_code == 2 and res.stderr.startswith("error:") and "free_bits" in res.stderr
    assert "Traceback" not in res.stderr


def test_free_bits_per_resolution_floor_only_their_layers():
    """--free-bits-res RES=BITS: the layers at RES get that floor, the others --free-bits."""
    from vdvae_cli.engine.recipe import LN2, free_bits_floors

    tc = TrainConfig(steps=10, free_bits=1.0, free_bits_res={"8": 100.0})
    floors = free_bits_floors(tc, [1, 8, 8], 64)
    assert torch.allclose(floors, torch.tensor([1.0, 100.0, 100.0]) * LN2 / 64)
    assert free_bits_floors(TrainConfig(steps=10), [1, 8], 64) is None
    kl = torch.tensor([[0.5, 200.0, 1.0]]) * LN2 / 64  # bits -> nats/dim
    kl.requires_grad_(True)
    total = objective(tc, 5, torch.zeros(1), kl, 64, floors=floors)
    assert float(total.detach()) == pytest.approx((1.0 + 200.0 + 100.0) * LN2 / 64)
    total.backward()
    assert kl.grad.tolist()[0] == [0.0, 1.0, 0.0]  # only the layer above its floor is pushed down
    again = TrainConfig.from_dict(tc.to_dict())
    assert dict(again.free_bits_res) == {"8": 100.0}
    with pytest.raises(UsageError):
        TrainConfig(steps=10, free_bits_res={"x": 1.0})


def test_cli_free_bits_res_reaches_the_run_and_is_checked(tmp_path):
    import numpy as np

    np.save(tmp_path / "data.npy", synthetic_images())
    hps = {k: v for k, v in TINY_HPS.items() if k != "preprocessing"}
    (tmp_path / "tiny.json").write_text(json.dumps(hps))
    base = ["train", str(tmp_path / "data.npy"), "--hparams", str(tmp_path / "tiny.json"), "--steps", "2",
            "--holdout", "16", "--batch-size", "16", "-q"]
    res = CliRunner().invoke(app, base + ["-o", str(tmp_path / "r"), "--free-bits-res", "8=30"])
    assert res.exit_code == 0, res.output
    tc = json.loads((tmp_path / "r" / "run.json").read_text())["train_config"]
    assert tc["free_bits_res"] == {"8": 30.0}
    for bad, words in ((["--free-bits-res", "8"], "RES=BITS"), (["--free-bits-res", "64=3"], "resolution 64")):
        res = CliRunner().invoke(app, base + ["-o", str(tmp_path / "bad"), *bad])
        assert res.exit_code == 2 and words in res.stderr and "Traceback" not in res.stderr, res.stderr
