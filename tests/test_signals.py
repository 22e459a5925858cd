"""Signals at any moment (issue 18, class 5): SIGINT, SIGTERM or SIGHUP at any time after `vdvae`
starts (during its imports, while torch loads, while images are written) ends it with one line,
128 + the signal's number, and no temporary file; whole records already on stdout stay whole."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _interrupt(args: list[str], delay: float, sig: int, cwd: Path) -> subprocess.CompletedProcess:
    # the child gets the default disposition of the signal even when this runner ignores it (under
    # nohup SIGHUP is ignored, and `vdvae` rightly keeps ignoring an ignored signal)
    proc = subprocess.Popen([sys.executable, "-m", "vdvae_cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=lambda: signal.signal(sig, signal.SIG_DFL))
    time.sleep(delay)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def test_an_ignored_hangup_stays_ignored(tiny_ckpt, tmp_path):
    """Under nohup SIGHUP is ignored; neither the entry point nor a command's own handlers take it
    back (a hang-up then lets the job finish, which is what nohup is for)."""
    def ignore_hup() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    proc = subprocess.Popen([sys.executable, "-m", "vdvae_cli", "sample", "-m", str(tiny_ckpt), "-n", "3",
                             "-o", f"{tmp_path}/s/", "-q"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=ignore_hup)
    for delay in (0.5, 0.6, 0.6):  # during the imports, while torch loads, while sampling
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGHUP)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-500:]
    assert len(list((tmp_path / "s").glob("*.png"))) == 3


@pytest.mark.parametrize("sig, word", [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated"),
                                       (signal.SIGHUP, "terminated")])
def test_a_signal_at_any_moment_is_one_line_and_leaves_nothing(tiny_ckpt, tmp_path, sig, word):
    # from our first imports to writing images: ~0.4 s is inside `import typer`, ~1 s inside `import torch`.
    # (Earlier, Python is still starting up, before the entry point exists: a signal then gets
    # Python's own behaviour; on a busy machine that window reaches ~0.1 s.)
    for i, delay in enumerate((0.4, 0.8, 1.2, 1.8, 2.5)):
        out = tmp_path / f"s{i}"
        r = _interrupt(["sample", "-m", str(tiny_ckpt), "-n", "100000", "-o", f"{out}/", "--json", "-q"],
                       delay, sig, tmp_path)
        assert r.returncode == 128 + sig, (delay, r.returncode, r.stderr[-500:])
        assert r.stderr.decode() == f"error: {word}\n", (delay, r.stderr[-500:])
        assert not [p for p in out.glob("*") if p.suffix != ".png"] if out.exists() else True
        assert not list(out.glob(".*")) if out.exists() else True  # no hidden temporary files
        written = sorted(p.name for p in out.glob("*.png")) if out.exists() else []
        records = [json.loads(line) for line in r.stdout.decode().splitlines()]  # every line whole JSON
        assert {Path(rec["path"]).name for rec in records} <= set(written)
