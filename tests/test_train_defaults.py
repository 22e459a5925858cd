"""Training that works on a user's folder: `vdvae train FOLDER -o RUN` with defaults (sized to the
data and the time limit), resuming with a new time limit, and curves a person can look at."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vdvae_cli.cli import app
from vdvae_cli.training.loop import read_run
from vdvae_cli.training.curves import plot_curves
from vdvae_cli.training.schedule import UNTIL_TIME_LIMIT, auto_settings

runner = CliRunner()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """64 structured 32x32 images (a coloured bar and a light stripe on dark grey) and a corrupt file."""
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i in range(64):
        img = np.full((32, 32, 3), 30, np.uint8)
        r, c = rng.integers(4, 28), rng.integers(0, 3)
        img[r - 3:r + 3, :, c] = 220
        img[:, rng.integers(4, 28), :] = 200
        Image.fromarray(img).save(d / f"{i:03d}.png")
    (d / "zz-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return d


def test_auto_settings_scale_with_data_and_time():
    small = auto_settings(64, {}, decay=True)
    assert (small["holdout"], small["batch_size"], small["steps"], small["warmup"]) == (0.1, 8, 500, 25)
    assert (small["eval_every"], small["lr_schedule"], small["eval_at_start"], small["max_eval"]) == (50, "cosine", True, 1000)
    big = auto_settings(60_000, {})
    assert (big["batch_size"], big["steps"], big["warmup"], big["eval_every"], big["lr_schedule"]) == (32, 20_000, 100, 2000, "constant")
    timed = auto_settings(60_000, {"time_limit": 600.0}, decay=True)
    assert timed["steps"] == UNTIL_TIME_LIMIT and timed["lr_schedule"] == "constant"
    assert (timed["warmup"], timed["eval_seconds"]) == (60, 60.0) and "eval_every" not in timed
    tiny = auto_settings(5, {})
    assert tiny["holdout"] == 1 and tiny["batch_size"] == 4
    mine = auto_settings(64, {"batch_size": 16, "eval_every": 7, "steps": 40})
    assert "batch_size" not in mine and "eval_every" not in mine and "steps" not in mine and mine["warmup"] == 10


def test_presets_next_to_the_official_configs(folder, tmp_path):
    from vdvae_cli.families.vdvae.presets import preset_config

    big = preset_config("small64", torch.zeros(2, 64, 64, 3, dtype=torch.uint8) + 100)
    assert (big.image_size, big.n_layers, big.resolutions[-1]) == (64, 16, 64)
    wrong = runner.invoke(app, ["train", str(folder), "-o", str(tmp_path / "x"), "--config", "small64", "--image-size", "32"])
    assert wrong.exit_code == 2 and "--config small64 trains on 64x64 images" in wrong.stderr
    unknown = runner.invoke(app, ["train", str(folder), "-o", str(tmp_path / "x"), "--config", "small48"])
    assert unknown.exit_code == 2 and "small48" in unknown.stderr and not (tmp_path / "x").exists()


@pytest.mark.slow
def test_train_a_folder_with_defaults_lowers_heldout_bpd(folder, tmp_path):
    run = tmp_path / "run"
    t0 = time.monotonic()
    result = runner.invoke(app, ["train", str(folder), "-o", str(run), "--time-limit", "0.5", "--json"])
    took = time.monotonic() - t0
    assert result.exit_code == 0, result.output
    assert took <= 30.0, took  # the limit holds for the whole command: final evaluation and export included
    assert f"warning: {folder / 'zz-broken.png'} is corrupt" in result.stderr  # reported; the run goes on
    evals = [json.loads(line) for line in result.stdout.splitlines()]
    assert evals[0]["step"] == 0 and len(evals) >= 3
    first, last = evals[0]["heldout_bpd"], evals[-1]["heldout_bpd"]
    assert last < first - 0.5, [e["heldout_bpd"] for e in evals]  # it learnt something (> 1 bit when the CPU is idle)
    cfg, tc, info = read_run(run)
    assert (cfg.name, cfg.n_layers, cfg.image_size) == ("run", 15, 32)  # the small32 preset, named after the run
    assert (info["n_images"], info["n_heldout"], tc.batch_size, tc.lr) == (64, 6, 8, 1e-3)
    assert "stopped at the time limit" in result.stderr
    assert "training run (0.77M parameters" in result.stderr and "on 58 images (6 held out), 8 per step, for 30 s" in result.stderr
    with Image.open(run / "curves.png") as im:
        assert im.size == (720, 420)
    assert (run / "model.safetensors").is_file()
    # the export recommends the temperatures chosen on the held-out images, and the last lines say how to sample
    from vdvae_cli.modelfiles.header import default_temperatures

    chosen = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()
              if json.loads(line)["event"] == "temperatures"]
    assert len(chosen) == 1 and len(chosen[0]["table"]) == 9
    best = min(chosen[0]["table"], key=lambda row: row["distance"])
    assert default_temperatures(run / "model.safetensors") == (f"{best['temperature']:g}", f"{best['output_temperature']:g}")
    assert f"recommended --temp {best['temperature']:g} --output-temp {best['output_temperature']:g}" in result.stderr
    assert result.stderr.splitlines()[-1] == f"sample with: vdvae sample --model {run / 'model.safetensors'} -n 16 --grid -o grid.png"

    # --resume with a new time limit gets that time (the old run's time does not count against it)
    stopped_at = evals[-1]["step"]
    more = runner.invoke(app, ["train", "--resume", str(run), "--time-limit", "0.3", "--json"])
    assert more.exit_code == 0, more.output
    steps = [json.loads(line)["step"] for line in more.stdout.splitlines()]
    assert steps[-1] > stopped_at + 2, (stopped_at, steps)  # not one step and out, as when the old limit counted
    state = torch.load(run / "state.pt", weights_only=True)
    assert state["step"] == steps[-1] and state["elapsed_s"] > 25


def test_tensorboard_events_when_installed(folder, tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "tb"
    result = runner.invoke(app, ["train", str(folder), "-o", str(run), "--steps", "2", "--eval-every", "1", "-q"])
    assert result.exit_code == 0, result.output
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("eval/heldout_bpd")] == [1, 2]
    assert [e.step for e in events.Scalars("train/loss_bpd")] == [1, 2]


def test_curves_png_shows_both_series(tmp_path):
    history = [{"step": s, "heldout_bpd": 6.0 - s / 100, "train_bpd": 6.5 - s / 90 if s else None} for s in (0, 100, 200)]
    path = plot_curves(history, tmp_path / "c.png")
    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    red = ((img[..., 0] > 150) & (img[..., 1] < 100) & (img[..., 2] < 100)).sum()
    blue = ((img[..., 2] > 150) & (img[..., 0] < 100)).sum()
    assert red > 100 and blue > 100
    assert plot_curves([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_train_help_shows_the_defaults_a_run_uses(folder, tmp_path, monkeypatch):
    """`vdvae train --help` names the values a default run gets, and run.json records them."""
    from vdvae_cli.training import loop

    seen = {}

    def capture(cfg, tc, images, run_dir, **kw):
        seen["tc"] = tc
        raise SystemExit(0)

    monkeypatch.setattr(loop, "train", capture)
    runner.invoke(app, ["train", str(folder), "-o", str(tmp_path / "r")])
    tc = seen["tc"]
    text = " ".join(runner.invoke(app, ["train", "--help"]).stdout.split())
    assert "10 epochs" not in text and "[32]" not in text and "[one epoch]" not in text
    import re

    def said(value_then: str) -> float:
        """The number the help gives right before ``value_then`` ("Default: N for the presets")."""
        found = re.search(r"Default: ([0-9.e+-]+) " + re.escape(value_then), text)
        assert found, value_then
        return float(found.group(1))

    assert said("for the CPU presets") == tc.lr
    clip, skip, ema = (float(m) for m in re.findall(r"Default: ([0-9.e+-]+) for the presets", text))
    assert (clip, skip, ema) == (tc.grad_clip, tc.skip_threshold, tc.ema_rate)
    n_train = 64 - tc.holdout * 64 if tc.holdout < 1 else 64 - tc.holdout
    assert tc.batch_size == 8 and n_train // 4 >= tc.batch_size  # "a power of two near a quarter of the training images"
    assert tc.steps == 500 and "30 epochs, at least 500" in text  # 30 epochs of 7 steps is below the floor
    assert tc.warmup == 25 and "Default: 5% of the steps, 10 to 100" in text
    assert tc.eval_every == 50 and "Default: a tenth of the run" in text
    assert "30 epochs (500-20,000 steps)" in text  # the closing text says the same

    # and run.json holds exactly what the run used (a real, short run)
    monkeypatch.undo()
    run = tmp_path / "real"
    done = runner.invoke(app, ["train", str(folder), "-o", str(run), "--steps", "2", "-q"])
    assert done.exit_code == 0, done.output
    recorded = json.loads((run / "run.json").read_text())["train_config"]
    assert (recorded["lr"], recorded["grad_clip"], recorded["skip_threshold"], recorded["ema_rate"]) == (
        tc.lr, tc.grad_clip, tc.skip_threshold, tc.ema_rate)


def test_time_limit_leaves_room_for_the_final_phase():
    """Training stops once the time left is what the final evaluation, grid, temperature choice and
    export take (as measured), so the whole run ends within --time-limit."""
    from vdvae_cli.engine.recipe import TrainConfig
    from vdvae_cli.training.loop import _Clock

    tc = TrainConfig(time_limit=60.0, batch_size=8, steps=1000)
    now = time.monotonic()
    clock = _Clock(tc, 0.0, started=now - 30.0, n_eval=100, n_choose=144)  # the command began 30 s ago
    clock.eval_seconds = 10.0  # an evaluation takes 10 s: 0.1 s per image, so choosing takes ~14 s
    assert clock.flags()[0]  # 30 s gone + (10 + 14.4 + grid + save) * 1.25 > 60: stop now
    relaxed = _Clock(tc, 0.0, started=now - 30.0, n_eval=100, n_choose=144)
    relaxed.eval_seconds = 1.0
    relaxed.took.update(choose=1.0, samples=0.5, checkpoint=0.5)
    assert not relaxed.flags()[0]  # 30 + (1 + 1 + 0.5 + 0.5) * 1.25 + 2 < 60: go on
    relaxed.start -= 26.0
    assert relaxed.flags()[0]  # 56 s gone: the final phase would end after 60 s
