"""NVAE training: the recipe's parts checked by hand on small numbers, and short runs of a tiny 8x8
NVAE (the loop, resume, export) and of the ``nvae-small32`` preset through ``vdvae train``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from test_train import states_equal, synthetic_images
from vdvae_cli.cli import app
from vdvae_cli.base.errors import UsageError
from vdvae_cli.families.nvae.config import NVAEConfig
from vdvae_cli.families.nvae.network import NVAE
from vdvae_cli.families.nvae.training import NVAERecipe, NVAERecipeConfig, SpectralNorms, balance_alpha, balance_coefficients, balanced_kl, bn_term, kl_coeff, norm_coeff, train_defaults
from vdvae_cli.engine.recipe import TrainConfig
from vdvae_cli.training.loop import read_run, train
from vdvae_cli.training.schedule import auto_settings

TINY = dict(dataset="custom_8", num_channels_enc=4, num_channels_dec=4, num_latent_scales=2, num_groups_per_scale=2,
            num_latent_per_group=3, num_preprocess_blocks=1, num_preprocess_cells=1, num_postprocess_blocks=1,
            num_postprocess_cells=1, num_cell_per_cond_enc=1, num_cell_per_cond_dec=1, num_nf=1, num_mixture_dec=2)
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_cfg():
    return NVAEConfig(**TINY, name="tiny-nvae")


@pytest.fixture(scope="module")
def images():
    return torch.from_numpy(synthetic_images(96, 8))


def nvae_tc(**kw) -> TrainConfig:
    """NVAE's recipe (parser defaults) with a spectral coefficient, sized for a few CPU steps."""
    settings = dict(train_defaults(None).settings, family_options={"weight_decay_norm": 1e-2})
    settings.update(dict(steps=8, batch_size=16, warmup=3, holdout=16, eval_every=4))
    settings.update(kw)
    return TrainConfig(**settings)


# --------------------------------------------------------------------------------------------------
# The recipe's parts


def test_kl_warmup_beta_by_hand():
    rc = NVAERecipeConfig(kl_anneal_portion=0.5, kl_const_portion=0.1, kl_const_coeff=0.05)
    # total 100: constant until step 10, then a ramp over 50 steps, floored at 0.05
    assert kl_coeff(0, 100, rc) == 0.05 and kl_coeff(12, 100, rc) == 0.05  # (12 - 10) / 50 = 0.04 < floor
    assert kl_coeff(35, 100, rc) == pytest.approx(0.5) and kl_coeff(60, 100, rc) == 1.0
    assert kl_coeff(10_000, 100, rc) == 1.0
    default = NVAERecipeConfig()  # NVAE's parser: 0.3 / 1e-4 / 1e-4
    assert kl_coeff(0, 1000, default) == 1e-4 and kl_coeff(150, 1000, default) == pytest.approx((150 - 0.1) / 300)


def test_kl_balancing_coefficients_by_hand():
    # nvae-small32's layout: decoder scale 0 (8x8) has 2 groups, scale 1 (16x16) has 4:
    # alpha = 4^j / groups = [0.5, 0.5, 1, 1, 1, 1] -> over the minimum [1, 1, 2, 2, 2, 2]
    from vdvae_cli.families.nvae.presets import NVAE_PRESETS

    small = NVAEConfig(**NVAE_PRESETS["nvae-small32"])
    assert balance_alpha(small).tolist() == [1.0, 1.0, 2.0, 2.0, 2.0, 2.0]

    # 2 images, 3 groups, alpha [1, 1, 2]: every group's mean |KL| is 2, + 0.01 = 2.01; over alpha and
    # times their sum 6.03: [12.1203, 12.1203, 6.06015], mean 10.1002 -> gamma = [1.2, 1.2, 0.6]
    kl = torch.tensor([[1.0, 3.0, -2.0], [3.0, 1.0, 2.0]], requires_grad=True)
    alpha = torch.tensor([1.0, 1.0, 2.0])
    assert torch.allclose(balance_coefficients(kl, alpha), torch.tensor([1.2, 1.2, 0.6]))
    out = balanced_kl(kl, 0.5, alpha)
    assert torch.allclose(out, torch.tensor([1.2 + 3.6 - 1.2, 3.6 + 1.2 + 1.2]))
    out.sum().backward()  # the coefficients are constants for the gradient
    assert torch.allclose(kl.grad, torch.tensor([[1.2, 1.2, 0.6]] * 2))
    assert balanced_kl(kl, 1.0, alpha).tolist() == [2.0, 6.0]  # beta = 1: no balancing


def test_norm_coefficient_fixed_or_annealed():
    assert norm_coeff(0.3, NVAERecipeConfig(weight_decay_norm=0.1)) == 0.1
    annealed = NVAERecipeConfig(weight_decay_norm=1e-2, weight_decay_norm_init=1.0, weight_decay_norm_anneal=True)
    assert norm_coeff(0.0, annealed) == pytest.approx(1.0)
    assert norm_coeff(0.5, annealed) == pytest.approx(0.1)  # geometric: exp(0.5 log 1 + 0.5 log 0.01)
    assert norm_coeff(1.0, annealed) == pytest.approx(1e-2)
    with pytest.raises(UsageError, match="annealed"):
        NVAERecipeConfig(weight_decay_norm_anneal=True)  # weight_decay_norm 0 cannot be annealed to
    with pytest.raises(UsageError, match="unknown NVAE training option"):
        NVAERecipeConfig.from_dict({"kl_anneal": 0.3})


def test_power_iteration_finds_the_largest_singular_values():
    g = torch.Generator().manual_seed(0)
    square = [torch.randn(6, 10, generator=g) for _ in range(3)]
    tall = [torch.randn(12, 5, generator=g)]
    expected = sum(float(torch.linalg.svdvals(w)[0]) for w in square + tall)
    norms = SpectralNorms(iterations=4, generator=torch.Generator().manual_seed(1))
    first = norms(square + tall)  # 40 iterations the first time a shape is met
    assert set(norms.u) == {"6x10", "12x5"} and norms.u["6x10"].shape == (3, 6) and norms.v["6x10"].shape == (3, 10)
    assert float(first) == pytest.approx(expected, rel=1e-3)
    again = norms(square + tall)  # 4 more from where it stopped: closer still
    assert abs(float(again) - expected) <= abs(float(first) - expected) + 1e-6
    # the state a resumed run gets back gives the same next value
    copy = SpectralNorms(iterations=4)
    copy.load_state_dict(norms.state_dict())
    assert torch.equal(copy(square + tall), norms(square + tall))
    # the term's gradient is u v^T, the gradient of the largest singular value (here well separated)
    u, _, vh = torch.linalg.svd(square[0], full_matrices=False)
    w = (u @ torch.diag(torch.tensor([3.0, 1.5, 1.0, 0.5, 0.2, 0.1])) @ vh).requires_grad_(True)
    single = SpectralNorms(generator=torch.Generator().manual_seed(2))
    assert float(single([w]).detach()) == pytest.approx(3.0, rel=1e-5)
    single([w]).backward()
    assert torch.allclose(w.grad, torch.outer(u[:, 0], vh[0]), atol=1e-4)


def test_bn_term_and_adamax(tiny_cfg):
    net = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 3, 1), nn.BatchNorm2d(2, affine=False), nn.BatchNorm2d(2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([0.5, -2.0, 1.0]))
        net[3].weight.copy_(torch.tensor([0.25, 0.1]))
    assert float(bn_term(net).detach()) == pytest.approx(2.25)  # max |gamma| per affine layer: 2 + 0.25

    tc = nvae_tc()
    assert (tc.lr, tc.wd, tc.betas, tc.adam_eps, tc.lr_schedule, tc.lr_final) == (1e-2, 3e-4, (0.9, 0.999), 1e-3, "cosine", 1e-2)
    assert (tc.ema_rate, tc.grad_clip, tc.skip_threshold) == (0.0, 0.0, -1.0)
    opt = NVAERecipe(tiny_cfg, tc, 8).optimizer(net)
    group = opt.param_groups[0]
    assert isinstance(opt, torch.optim.Adamax) and (group["eps"], group["betas"], group["weight_decay"]) == (1e-3, (0.9, 0.999), 3e-4)


def test_official_nvae_recipes_and_vdvae_only_options(tiny_cfg):
    ffhq = train_defaults("nvae-ffhq256").settings
    assert (ffhq["lr"], ffhq["batch_size"], ffhq["lr_final"]) == (8e-3, 4, pytest.approx(1e-4 / 8e-3))
    assert ffhq["family_options"]["weight_decay_norm_anneal"] and ffhq["family_options"]["weight_decay_norm"] == 0.1
    # NVAE's schedules are fractions of the run: with a time limit the run keeps a length (30 epochs)
    assert train_defaults("nvae-small32").open_ended is False
    assert auto_settings(64, {"time_limit": 600.0}, open_ended=False)["steps"] == 500
    for option in (dict(kl_warmup=10), dict(free_bits=0.5), dict(coarse_res=2, coarse_steps=3)):
        with pytest.raises(UsageError, match="VDVAE option"):
            NVAERecipe(tiny_cfg, nvae_tc(**option), 8)


# --------------------------------------------------------------------------------------------------
# Runs


def test_short_run_lowers_heldout_bpd_and_exports_an_nvae(tmp_path, tiny_cfg, images):
    from vdvae_cli.modelfiles.checkpoint import load_file_model
    from vdvae_cli.modelfiles.header import metadata_of
    from vdvae_cli.engine.registry import family_of
    from vdvae_cli.engine.ops import sample

    res = train(tiny_cfg, nvae_tc(steps=30, eval_every=15, eval_at_start=True), images, tmp_path / "run",
                data_info={"dataset": "bars"})
    bpd = [h["heldout_bpd"] for h in res.history]
    assert [h["step"] for h in res.history] == [0, 15, 30] and bpd[-1] < bpd[0] - 1.0, bpd
    assert all(len(h["layer_bits"]) == tiny_cfg.n_layers for h in res.history)
    assert res.history[0]["kl_coeff"] == 1e-4 and res.history[-1]["kl_coeff"] == 1.0
    assert res.history[-1]["norm_coeff"] == 1e-2
    run = tmp_path / "run"
    assert (run / "curves.png").is_file() and (run / "samples" / "step-0000030.png").is_file()
    assert read_run(run)[0] == tiny_cfg and json.loads((run / "run.json").read_text())["family"] == "nvae"

    # The export is the evaluated copy (weights and BatchNorm running statistics), as an NVAE file.
    model = load_file_model(run / "model.safetensors")
    assert family_of(model).name == "nvae" and metadata_of(run / "model.safetensors")["family"] == "nvae"
    assert states_equal(model.state_dict(), res.ema.state_dict())
    assert states_equal(res.ema.state_dict(), res.model.state_dict())  # no EMA: ema_rate 0
    assert not torch.equal(model.pre_process[0]._ops[0].bn_act.running_var, torch.ones(4))  # stats were learnt
    out = sample(model, 16, temperatures=1.0, noise=torch.Generator().manual_seed(0))
    assert out.shape == (16, 8, 8, 3) and out.dtype == torch.uint8
    assert out.float().std() > 5 and len(torch.unique(out)) > 20  # not a constant or a saturated image


def test_time_limit_stops_resumably(tmp_path, tiny_cfg, images):
    stopped = train(tiny_cfg, nvae_tc(steps=6, time_limit=1e-9), images, tmp_path / "t")
    assert stopped.stopped == "time limit" and stopped.step == 1 and [h["step"] for h in stopped.history] == [1]
    done = train(tiny_cfg, nvae_tc(steps=6), images, tmp_path / "t", resume=True)
    assert done.stopped == "done" and done.step == 6 and [h["step"] for h in done.history] == [1, 4, 6]


class _Stop(Exception):
    pass


def test_resume_continues_exactly(tmp_path, tiny_cfg, images):
    tc = nvae_tc(steps=8, eval_every=4)
    straight = train(tiny_cfg, tc, images, tmp_path / "a")

    def stop_at_first_checkpoint(event):
        if event["event"] == "checkpoint":
            raise _Stop

    with pytest.raises(_Stop):  # interrupted right after the step-4 checkpoint
        train(tiny_cfg, tc, images, tmp_path / "b", callback=stop_at_first_checkpoint)
    resumed = train(tiny_cfg, tc, images, tmp_path / "b", resume=True)
    assert resumed.step == 8
    assert states_equal(straight.model.state_dict(), resumed.model.state_dict())
    assert states_equal(straight.ema.state_dict(), resumed.ema.state_dict())
    a = torch.load(tmp_path / "a" / "state.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "state.pt", weights_only=True)
    assert a["recipe"] and states_equal(a["recipe"], b["recipe"])  # the power-iteration vectors
    assert [h["heldout_bpd"] for h in straight.history] == [h["heldout_bpd"] for h in resumed.history]


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        res = train(NVAEConfig(**TINY, name="tiny-nvae"), nvae_tc(steps=4, batch_size=8, eval_every=4),
                    torch.from_numpy(synthetic_images(96, 8)), Path(out) / "run")
        torch.save({"params": dict(res.model.named_parameters()), "bpd": res.heldout_bpd}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_gloo_processes_keep_nvae_replicas_identical(tmp_path):
    """The regularisers are added outside DDP's forward, in the same backward: gradients (hence
    weights) still agree across ranks."""
    import torch.multiprocessing as mp

    from test_train import _free_port

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert states_equal(r0["params"], r1["params"]) and r0["bpd"] == r1["bpd"]
    torch.manual_seed(0)  # the trainer's initialisation (seed 0)
    untrained = {k: v.detach() for k, v in NVAE(NVAEConfig(**TINY)).named_parameters()}
    assert not states_equal(r0["params"], untrained)  # it did train


# --------------------------------------------------------------------------------------------------
# The command


@pytest.fixture(scope="module")
def data32(tmp_path_factory):
    path = tmp_path_factory.mktemp("nvdata") / "bars.npy"
    np.save(path, synthetic_images(40, 32))
    return path


@pytest.mark.slow
def test_cli_trains_the_nvae_preset_samples_and_fine_tunes(tmp_path, data32):
    run = tmp_path / "run"
    common = ["--steps", "4", "--batch-size", "8", "--holdout", "8", "--eval-every", "4", "--dtype", "fp32"]
    res = runner.invoke(app, ["train", str(data32), "--config", "nvae-small32", "-o", str(run), *common, "--json", "-q",
                              "--recipe", "weight_decay_norm=0.05", "--recipe", "weight_decay_norm_anneal=true",
                              "--recipe", "weight_decay_norm_init=1"])
    assert res.exit_code == 0, res.output
    (line,) = [json.loads(x) for x in res.stdout.splitlines()]
    assert line["step"] == 4 and len(line["layer_bits"]) == 6 and math.isfinite(line["heldout_bpd"])
    cfg, tc, info = read_run(run)
    assert cfg.name == "run" and cfg.dataset == "custom_32" and info["data"]["dataset"] == "bars"
    assert tc.lr == 1e-2 and tc.family_options["kl_anneal_portion"] == 0.3  # NVAE's, with the three given
    assert (tc.family_options["weight_decay_norm"], tc.family_options["weight_decay_norm_anneal"]) == (0.05, True)
    assert line["norm_coeff"] == pytest.approx(0.05)  # annealed from 1 to 0.05: beta is 1 by step 4

    png = tmp_path / "s.png"
    sampled = runner.invoke(app, ["sample", "--model", str(run / "model.safetensors"), "-n", "4", "--grid", "-o", str(png),
                                  "--seed", "0", "-q"])
    assert sampled.exit_code == 0, sampled.output
    from PIL import Image

    grid = np.asarray(Image.open(png))
    assert grid.std() > 5

    more = runner.invoke(app, ["train", "--resume", str(run), "--steps", "6", "--eval-every", "2", "--json", "-q"])
    assert more.exit_code == 0, more.output
    assert [json.loads(x)["step"] for x in more.stdout.splitlines()] == [6]

    tuned = runner.invoke(app, ["train", str(data32), "--init", str(run / "model.safetensors"), "-o",
                                str(tmp_path / "ft"), *common, "-q"])
    assert tuned.exit_code == 0, tuned.output
    cfg2, tc2, _ = read_run(tmp_path / "ft")
    assert cfg2 == cfg.replace(name="ft") and tc2.family_options["weight_decay_norm"] == 0.0  # NVAE's parser default


@pytest.mark.parametrize("extra, message", [
    (["--coarse-first", "8:10"], "--coarse-first is a VDVAE option"),
    (["--kl-warmup", "10", "--free-bits", "0.5"], "--kl-warmup, --free-bits are VDVAE options"),
    (["--recipe", "kl_anneal=0.5"], "unknown NVAE training option(s): kl_anneal"),
    (["--recipe", "weight_decay_norm=-1"], "weight_decay_norm must be a finite number >= 0"),
    (["--recipe", "weight_decay_norm"], "--recipe 'weight_decay_norm' is not KEY=VALUE"),
    (["--recipe", "weight_decay_norm=high"], "must be a number, true or false"),
    (["--config", "small32", "--recipe", "weight_decay_norm=0.1"], "VDVAE training has no family options"),
])
def test_cli_vdvae_only_options_on_nvae_are_one_error_line(tmp_path, data32, extra, message):
    res = runner.invoke(app, ["train", str(data32), "--config", "nvae-small32", "-o", str(tmp_path / "x"),
                              "--steps", "2", *extra])
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1 and message in errors[0], res.output
    assert "Traceback" not in res.output and not (tmp_path / "x").exists()


def test_cli_lists_nvae_names_for_an_unknown_config(tmp_path, data32):
    res = runner.invoke(app, ["train", str(data32), "--config", "nvae-small64", "-o", str(tmp_path / "x")])
    assert res.exit_code == 2 and "nvae-small32" in res.stderr and "nvae-cifar10" in res.stderr
