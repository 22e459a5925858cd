"""The trainer, its data pipeline and ``vdvae train``: fast, on a tiny 8x8 config and synthetic data."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vdvae_cli.cli import app
from vdvae_cli.families.vdvae.config import config_from_reference
from vdvae_cli.training.data import ShardedBatches, holdout_split, load_images
from vdvae_cli.base.errors import TrainingError, UsageError
from vdvae_cli.engine.recipe import TrainConfig
from vdvae_cli.training.loop import lr_at, read_run, train

TINY_HPS = {
    "name": "tiny8",
    "dataset": "synthetic",
    "image_size": 8,
    "width": 16,
    "zdim": 4,
    "num_mixtures": 2,
    "enc_blocks": "8x1,8d2,4x1,4d4,1x1",
    "dec_blocks": "1x1,4m1,4x1,8m4,8x1",
    "preprocessing": {"shift": -127.5, "scale": 1 / 64.0},
}


def synthetic_images(n: int = 96, size: int = 8, seed: int = 0) -> np.ndarray:
    """Simple structured RGB images: a bright bar (random row or column, random colour) on dark grey."""
    rng = np.random.default_rng(seed)
    imgs = np.full((n, size, size, 3), 40.0)
    for i in range(n):
        colour = rng.integers(120, 230, size=3)
        k = rng.integers(0, size)
        if rng.random() < 0.5:
            imgs[i, k, :, :] = colour
        else:
            imgs[i, :, k, :] = colour
    imgs += rng.normal(0.0, 6.0, size=imgs.shape)  # sensor noise: keeps the likelihood finite-peaked
    return np.clip(np.round(imgs), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tiny_cfg():
    return config_from_reference(TINY_HPS, name="tiny8")


@pytest.fixture(scope="module")
def images():
    return torch.from_numpy(synthetic_images())


def fast(**kw) -> TrainConfig:
    base = dict(steps=20, lr=2e-3, batch_size=16, warmup=5, holdout=16, eval_every=10, ema_rate=0.9)
    base.update(kw)
    return TrainConfig(**base)


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------------------------
# Config and schedule


def test_train_config_defaults_are_the_reference_recipe():
    tc = TrainConfig(steps=1)
    assert (tc.lr, tc.wd, tc.betas, tc.warmup) == (1.5e-4, 0.01, (0.9, 0.9), 100)
    assert (tc.grad_clip, tc.skip_threshold, tc.ema_rate, tc.batch_size) == (200.0, 400.0, 0.999, 32)
    assert TrainConfig.from_dict(json.loads(json.dumps(tc.to_dict()))) == tc
    with pytest.raises(UsageError):
        TrainConfig()  # neither steps nor epochs
    with pytest.raises(UsageError, match="fp16"):
        TrainConfig(steps=1, dtype="fp16")


def test_lr_warmup_then_constant_or_cosine():
    tc = TrainConfig(steps=100, lr=1.0, warmup=10)
    assert lr_at(tc, 0, 100) == pytest.approx(0.1)
    assert lr_at(tc, 9, 100) == 1.0 and lr_at(tc, 99, 100) == 1.0
    cos = tc.replace(lr_schedule="cosine", lr_final=0.1)
    assert lr_at(cos, 10, 100) == pytest.approx(1.0)
    assert lr_at(cos, 100, 100) == pytest.approx(0.1)
    assert 0.1 < lr_at(cos, 55, 100) < 1.0


# --------------------------------------------------------------------------------------------------
# Data


def test_load_folder_npz_npy_and_fit_size(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    Image.new("RGB", (20, 10), (255, 0, 0)).save(folder / "a.png")
    Image.new("L", (12, 12), 77).save(folder / "sub" / "b.jpg")
    Image.new("RGBA", (16, 16), (0, 0, 0, 0)).save(folder / "c.png")  # transparent -> white
    (folder / "notes.txt").write_text("not an image")
    x = load_images(folder, 8)
    assert x.shape == (3, 8, 8, 3) and x.dtype == torch.uint8
    assert x[0, :, :, 0].min() > 240 and x[0, :, :, 1].max() < 15  # red, cropped to a square
    assert (x[1] == 255).all()  # sorted by path: a.png, c.png, sub/b.jpg
    assert abs(int(x[2].float().mean()) - 77) <= 2 and (x[2, ..., 0] == x[2, ..., 2]).all()  # grey -> RGB

    grey = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8)
    np.save(tmp_path / "g.npy", grey)
    y = load_images(tmp_path / "g.npy")
    assert y.shape == (2, 8, 8, 3) and torch.equal(y[..., 1], torch.from_numpy(grey))
    np.savez(tmp_path / "d.npz", images=synthetic_images(4, 16), labels=np.arange(4))
    assert load_images(tmp_path / "d.npz", 8).shape == (4, 8, 8, 3)


@pytest.mark.parametrize(
    "content, message",
    [(np.zeros((2, 8, 8, 3), np.float32), "uint8"), (np.zeros((2, 8, 8, 2), np.uint8), "expected")],
)
def test_bad_arrays_are_named(tmp_path, content, message):
    from vdvae_cli.base.errors import ImageError

    np.save(tmp_path / "bad.npy", content)
    with pytest.raises(ImageError, match=message):
        load_images(tmp_path / "bad.npy")


def test_holdout_split_is_seeded_and_disjoint():
    tr, ho = holdout_split(100, 0.1, seed=3)
    assert len(ho) == 10 and len(tr) == 90 and not set(tr.tolist()) & set(ho.tolist())
    tr2, ho2 = holdout_split(100, 10, seed=3)
    assert torch.equal(ho, ho2) and torch.equal(tr, tr2)
    assert not torch.equal(holdout_split(100, 10, seed=4)[1], ho)
    with pytest.raises(UsageError):
        holdout_split(10, 10, seed=0)


def test_sharded_batches_give_ranks_disjoint_equal_shards():
    a = ShardedBatches(103, 8, seed=1, rank=0, world=2)
    b = ShardedBatches(103, 8, seed=1, rank=1, world=2)
    assert a.steps_per_epoch == b.steps_per_epoch == 6
    for epoch in (0, 1):
        sa, sb = set(a.shard(epoch).tolist()), set(b.shard(epoch).tolist())
        assert len(sa) == len(sb) == 48 and not sa & sb
    assert not torch.equal(a.shard(0), a.shard(1))  # a fresh order every epoch
    assert torch.equal(a.indices(7), a.shard(1)[8:16])  # step 7 = epoch 1, batch 1
    with pytest.raises(UsageError, match="batch"):
        ShardedBatches(10, 8, seed=0, world=2)


# --------------------------------------------------------------------------------------------------
# The loop


@pytest.mark.slow
def test_loss_goes_down_and_outputs_are_written(tmp_path, tiny_cfg, images):
    from vdvae_cli.modelfiles.checkpoint import load_file_model
    from vdvae_cli.modelfiles.header import metadata_of
    from vdvae_cli.engine.ops import sample

    losses = []
    events = []

    def cb(e):
        events.append(e["event"])
        if e["event"] == "step":
            losses.append(e["loss_bpd"])

    tc = fast(steps=200, eval_every=100, lr=3e-3)
    res = train(tiny_cfg, tc, images, tmp_path / "run", callback=cb, data_info={"dataset": "synthetic"})
    assert res.step == 200 and res.stopped == "done" and res.skipped == 0
    first, last = np.mean(losses[:10]), np.mean(losses[-20:])
    assert last < first - 1.0, (first, last)  # bits/dim: a clear drop, not noise
    assert [h["step"] for h in res.history] == [100, 200]
    assert res.history[-1]["heldout_bpd"] < res.history[0]["heldout_bpd"]
    assert {"start", "step", "eval", "samples", "checkpoint", "done"} <= set(events)

    run = tmp_path / "run"
    cfg, tc2, info = read_run(run)
    assert cfg == tiny_cfg and tc2 == tc and info["n_heldout"] == 16 and info["n_train"] == 80
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step-0000100.png", "step-0000200.png"]
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["event"] == "eval"] == [100, 200]
    # The export is the EMA, in the format `vdvae sample` loads, with the training facts.
    model = load_file_model(run / "model.safetensors")
    assert states_equal(model.state_dict(), res.ema.state_dict())
    meta = metadata_of(run / "model.safetensors")
    assert meta["train_steps"] == "200" and float(meta["heldout_bpd"]) == pytest.approx(res.heldout_bpd, abs=1e-4)
    assert meta["dataset"] == "synthetic"
    out = sample(model, 4, temperatures=0.8, noise=torch.Generator().manual_seed(0))
    assert out.shape == (4, 8, 8, 3) and out.dtype == torch.uint8


def test_resume_continues_bit_for_bit(tmp_path, tiny_cfg, images):
    straight = train(tiny_cfg, fast(steps=20), images, tmp_path / "a")
    train(tiny_cfg, fast(steps=10), images, tmp_path / "b")
    resumed = train(tiny_cfg, fast(steps=20), images, tmp_path / "b", resume=True)
    assert resumed.step == 20
    assert states_equal(straight.model.state_dict(), resumed.model.state_dict())
    assert states_equal(straight.ema.state_dict(), resumed.ema.state_dict())
    a = torch.load(tmp_path / "a" / "state.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "state.pt", weights_only=True)
    exp_a, exp_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(exp_a[k]["exp_avg_sq"], exp_b[k]["exp_avg_sq"]) for k in exp_a)
    assert all(torch.equal(x, y) for x, y in zip(a["rng"], b["rng"]))
    assert [h["heldout_bpd"] for h in straight.history] == [h["heldout_bpd"] for h in resumed.history]


def test_time_limit_checkpoints_and_resumes(tmp_path, tiny_cfg, images):
    stopped = train(tiny_cfg, fast(steps=12, time_limit=1e-9), images, tmp_path / "t")
    assert stopped.stopped == "time limit" and stopped.step == 1
    assert [h["step"] for h in stopped.history] == [1]  # evaluated and saved where it stopped
    done = train(tiny_cfg, fast(steps=12), images, tmp_path / "t", resume=True)
    straight = train(tiny_cfg, fast(steps=12), images, tmp_path / "u")
    assert done.step == 12 and states_equal(done.model.state_dict(), straight.model.state_dict())


def test_global_rng_is_left_alone(tmp_path, tiny_cfg, images):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(tiny_cfg, fast(steps=2, eval_every=2), images, tmp_path / "g")
    assert torch.equal(torch.rand(3), expected)


def test_existing_run_is_not_clobbered(tmp_path, tiny_cfg, images):
    from vdvae_cli.base.errors import OutputError

    train(tiny_cfg, fast(steps=2, eval_every=2), images, tmp_path / "r")
    with pytest.raises(OutputError, match="already holds a training run"):
        train(tiny_cfg, fast(steps=2, eval_every=2), images, tmp_path / "r")
    with pytest.raises(TrainingError, match="no checkpoint"):
        train(tiny_cfg, fast(steps=2), images, tmp_path / "empty", resume=True)


def test_skip_guard_stops_with_a_clear_message(tmp_path, tiny_cfg, images):
    warnings = []
    tc = fast(steps=50, skip_threshold=1e-6, max_skips=5)
    with pytest.raises(TrainingError) as err:
        train(tiny_cfg, tc, images, tmp_path / "s", callback=lambda e: e["event"] == "warning" and warnings.append(e))
    assert "last 5 updates were all skipped" in str(err.value) and "grad norm" in str(err.value)
    assert "--skip-threshold" in err.value.hint
    assert warnings and "update skipped" in warnings[0]["message"]


def test_skipped_updates_leave_weights_alone(tmp_path, tiny_cfg, images):
    """A skipped step changes neither the weights nor the EMA (but the step counter moves on)."""
    tc = fast(steps=3, skip_threshold=1e-6, max_skips=10, eval_every=3)
    res = train(tiny_cfg, tc, images, tmp_path / "k")
    torch.manual_seed(tc.seed)
    from vdvae_cli.families.vdvae.model import VAE

    fresh = VAE(tiny_cfg)
    assert res.skipped == 3 and states_equal(res.model.state_dict(), fresh.state_dict())
    assert states_equal(res.ema.state_dict(), fresh.state_dict())


def test_bf16_autocast_keeps_fp32_master_weights(tmp_path, tiny_cfg, images):
    res = train(tiny_cfg, fast(steps=4, eval_every=4, dtype="bf16"), images, tmp_path / "bf")
    assert all(p.dtype == torch.float32 for p in res.model.parameters())
    assert np.isfinite(res.heldout_bpd)


# --------------------------------------------------------------------------------------------------
# Two processes (gloo)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        cfg = config_from_reference(TINY_HPS, name="tiny8")
        imgs = torch.from_numpy(synthetic_images())
        res = train(cfg, fast(steps=6, batch_size=8, eval_every=3), imgs, Path(out) / "run")
        torch.save({"model": res.model.state_dict(), "ema": res.ema.state_dict(), "bpd": res.heldout_bpd},
                   Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_gloo_processes_end_identical(tmp_path, tiny_cfg, images):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert states_equal(r0["model"], r1["model"]) and states_equal(r0["ema"], r1["ema"])
    assert r0["bpd"] == r1["bpd"]  # the held-out score is reduced over both ranks
    torch.manual_seed(0)
    from vdvae_cli.families.vdvae.model import VAE

    assert not states_equal(r0["model"], VAE(tiny_cfg).state_dict())  # it did train
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["world_size"] == 2
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    assert len(state["rng"]) == 2 and not torch.equal(state["rng"][0], state["rng"][1])  # per-rank noise


# --------------------------------------------------------------------------------------------------
# The command


@pytest.fixture()
def data_files(tmp_path):
    np.save(tmp_path / "data.npy", synthetic_images())
    hps = dict(TINY_HPS)
    del hps["preprocessing"]  # computed from the data
    (tmp_path / "tiny.json").write_text(json.dumps(hps))
    return tmp_path / "data.npy", tmp_path / "tiny.json"


def test_cli_train_json_resume_and_errors(tmp_path, data_files):
    data, hps = data_files
    run = tmp_path / "run"
    runner = CliRunner()
    args = ["train", str(data), "--hparams", str(hps), "-o", str(run), "--steps", "6", "--eval-every", "3",
            "--holdout", "16", "--batch-size", "16", "--lr", "1e-3", "--json", "-q"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert [ln["step"] for ln in lines] == [3, 6] and all(ln["event"] == "eval" for ln in lines)
    cfg, tc, info = read_run(run)
    assert cfg.input_shift == pytest.approx(-float(synthetic_images().mean()), rel=1e-6)
    assert tc.lr == 1e-3 and info["data"]["path"] == str(data)

    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "already holds a training run" in again.stderr and "Traceback" not in again.output

    more = runner.invoke(app, ["train", "--resume", str(run), "--steps", "9", "--json", "-q"])
    assert more.exit_code == 0, more.output
    assert [json.loads(line)["step"] for line in more.stdout.splitlines()] == [9]
    assert read_run(run)[1].steps == 9

    bad = runner.invoke(app, ["train", "--resume", str(run), "--batch-size", "4"])
    assert bad.exit_code == 2 and "cannot change when resuming" in bad.stderr
    both = runner.invoke(app, ["train", str(data), "--config", "cifar10", "--hparams", str(hps), "-o", str(tmp_path / "x")])
    assert both.exit_code == 2 and "exactly one of" in both.stderr


def test_cli_skip_guard_is_one_error_line(tmp_path, data_files):
    data, hps = data_files
    res = CliRunner().invoke(app, ["train", str(data), "--hparams", str(hps), "-o", str(tmp_path / "r"), "--steps", "40",
                                   "--batch-size", "16", "--skip-threshold", "1e-9", "--max-skips", "4", "-q"])
    assert res.exit_code == 1
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "skipped" in errors[0] and "Traceback" not in res.output


def test_cli_init_fine_tunes_an_exported_model(tmp_path, data_files):
    data, hps = data_files
    runner = CliRunner()
    first = ["train", str(data), "--hparams", str(hps), "-o", str(tmp_path / "a"), "--steps", "3", "--eval-every", "3",
             "--batch-size", "16", "-q"]
    assert runner.invoke(app, first).exit_code == 0
    model = tmp_path / "a" / "model.safetensors"
    res = runner.invoke(app, ["train", str(data), "--init", str(model), "-o", str(tmp_path / "b"), "--steps", "3",
                              "--eval-every", "3", "--batch-size", "16", "-q"])
    assert res.exit_code == 0, res.output
    assert read_run(tmp_path / "b")[0] == read_run(tmp_path / "a")[0].replace(name="b")  # its own name


@pytest.mark.slow
def test_cli_under_torchrun(tmp_path, data_files):
    import subprocess
    import sys

    data, hps = data_files
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
           "-m", "vdvae_cli", "train", str(data), "--hparams", str(hps), "-o", str(tmp_path / "run"), "--steps", "4",
           "--eval-every", "2", "--batch-size", "8", "--device", "cpu", "--json", "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["step"] for line in proc.stdout.splitlines()] == [2, 4]  # only rank 0 prints
    assert json.loads((tmp_path / "run" / "run.json").read_text())["world_size"] == 2


# --------------------------------------------------------------------------------------------------
# Coarse-first curriculum


def test_elbo_with_only_coarse_layers_inferred(tiny_cfg, images):
    from vdvae_cli.engine import ops
    from vdvae_cli.families.vdvae.model import VAE

    torch.manual_seed(0)
    model = VAE(tiny_cfg)
    full = ops.elbo(model, images[:4], noise=torch.Generator().manual_seed(0))
    coarse = ops.elbo(model, images[:4], noise=torch.Generator().manual_seed(0), n_posterior=2)
    assert (full.kl_per_layer[:, 2:] > 0).all()
    assert torch.equal(coarse.kl_per_layer[:, 2:], torch.zeros_like(coarse.kl_per_layer[:, 2:]))  # q = p there
    torch.testing.assert_close(coarse.kl_per_layer[:, :2], full.kl_per_layer[:, :2])  # same coarse layers
    iw = ops.elbo(model, images[:4], noise=torch.Generator().manual_seed(0), n_posterior=2, samples=3)
    assert torch.isfinite(iw.nll_bound).all()


def test_coarse_first_trains_fine_posteriors_only_afterwards(tmp_path, tiny_cfg, images):
    res = train(tiny_cfg, fast(steps=6, eval_every=6, coarse_res=4, coarse_steps=6), images, tmp_path / "c")
    from vdvae_cli.families.vdvae.model import VAE

    torch.manual_seed(0)  # the trainer builds its network from seed 0 like this
    init = VAE(tiny_cfg)
    fine = tiny_cfg.layers_up_to_res(4)  # layers 0..fine-1 are inferred in the coarse phase
    for i, block in enumerate(res.model.decoder.dec_blocks):
        moved = not torch.equal(block.enc.c1.weight, init.decoder.dec_blocks[i].enc.c1.weight)
        assert moved == (i < fine), i  # fine layers' posteriors get no gradient, so AdamW leaves them be
    with pytest.raises(UsageError, match="coarse resolution 2"):
        train(tiny_cfg, fast(steps=2, coarse_res=2, coarse_steps=1), images, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # refused before the run folder is made
    result = CliRunner().invoke(app, ["train", "x.npz", "-o", str(tmp_path / "z"), "--coarse-first", "4"])
    assert result.exit_code == 2 and "is not RES:STEPS" in result.stderr
