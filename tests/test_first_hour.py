"""What a new user meets in the first hour (issue 17): pipes that keep a failure's exit status,
messages that say what the command waits for and what it tiled, help that tells the truth."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vdvae_cli.cli import app

GOLDEN = Path(__file__).parent / "data" / "golden"
SRC = Path(__file__).resolve().parent.parent / "src"
runner = CliRunner()


def run_into_closed_pipe(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``vdvae ARGS | head -0``: stdout is a pipe whose reader has already gone."""
    read, write = os.pipe()
    os.close(read)
    env = dict(os.environ, PYTHONPATH=str(SRC))
    try:
        return subprocess.run([sys.executable, "-m", "vdvae_cli", *args], stdout=write, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, cwd=cwd, env=env, timeout=300)
    finally:
        os.close(write)


def test_convert_check_failure_survives_a_closed_pipe(tmp_path):
    failed = run_into_closed_pipe(["convert", str(GOLDEN / "tiny-ref.th"), "--config", "cifar10", "--check"], tmp_path)
    assert failed.returncode == 1, failed.stderr.decode()
    assert b"missing key(s)" in failed.stderr and b"Traceback" not in failed.stderr
    as_json = run_into_closed_pipe(["convert", str(GOLDEN / "tiny-ref.th"), "--config", "cifar10", "--check", "--json"],
                                   tmp_path)
    assert as_json.returncode == 1, as_json.stderr.decode()
