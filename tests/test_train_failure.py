"""A new training run that fails (issue 18, 6) leaves no half-done folder that blocks a rerun: before
its first checkpoint, what it wrote is removed (the folder too, when it made it); after one, the
error says the folder can be resumed."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from vdvae_cli.base.errors import TrainingError
from vdvae_cli.cli import app

runner = CliRunner()


@pytest.fixture()
def data(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8))
    return path


def _fail_at_evaluation(monkeypatch, after: int):
    from vdvae_cli.training import curves

    calls = {"n": 0}
    original = curves.Curves.evaluation

    def evaluation(self, *a, **k):
        calls["n"] += 1
        if calls["n"] > after:
            raise TrainingError("the loss is not finite (simulated)")
        return original(self, *a, **k)

    monkeypatch.setattr(curves.Curves, "evaluation", evaluation)


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing(data, tmp_path, monkeypatch):
    _fail_at_evaluation(monkeypatch, after=0)
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(data), "-o", str(run), "--steps", "2"])
    assert result.exit_code == 1 and result.stderr.count("error:") == 1, result.stderr
    assert f"nothing resumable had been written, so {run} was removed" in result.stderr
    assert not run.exists()
    # a folder that was there keeps what it had, and loses only what the run made
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["train", str(data), "-o", str(run), "--steps", "2"])
    assert result.exit_code == 1 and "the files this run made" in result.stderr
    assert [p.name for p in run.iterdir()] == ["notes.txt"]
    monkeypatch.undo()
    again = runner.invoke(app, ["train", str(data), "-o", str(run), "--steps", "2", "-q"])  # no --force needed
    assert again.exit_code == 0, again.stderr


def test_a_run_that_fails_after_a_checkpoint_says_it_can_resume(data, tmp_path, monkeypatch):
    _fail_at_evaluation(monkeypatch, after=2)
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(data), "-o", str(run), "--steps", "4", "--eval-every", "1"])
    assert result.exit_code == 1 and result.stderr.count("error:") == 1, result.stderr
    assert f"continue with vdvae train --resume {run}" in result.stderr
    assert (run / "state.pt").is_file() and (run / "run.json").is_file()
