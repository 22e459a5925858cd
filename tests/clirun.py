"""Running the command line in-process for a test: ``vdvae(*args, code=0)`` invokes the app with
every argument as text and asserts the exit code (stderr shown when it differs)."""

from __future__ import annotations

from typer.testing import CliRunner

from vdvae_cli.cli import app

runner = CliRunner()


def vdvae(*args, code: int = 0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, f"exit {result.exit_code}: {result.stderr}"
    return result
