"""The command line with stderr on a terminal, as people run it: ``vdvae ... --json > out.jsonl``.

The rest of the suite runs commands with pipes or files for every stream, where no progress bar is
drawn. Here each command runs in a child process (forked from the test, which has imported torch
once) whose stderr is a real pseudo-terminal and whose stdout is a file, exactly what a shell does
for ``--json > file``: every record must reach the file, and none the screen. (``fid --json``
needs torch-fidelity and writes its one record after its work, through the same stdout.)
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_hub import official, server  # noqa: F401  (fixtures: tiny-official on a local server)
from test_train import TINY_HPS, synthetic_images

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "win32", reason="needs fork and a pty")


@dataclass
class Run:
    code: int
    stdout: str
    screen: str  # what the terminal received on stderr


def at_terminal(args: list[str], cwd: Path, *, timeout: float = 240.0, stdout_tty: bool = False) -> Run:
    """``vdvae ARGS > out`` with stderr on a pseudo-terminal (and stdout on one too if ``stdout_tty``)."""
    master, slave = os.openpty()
    out_path = cwd / f".stdout-{time.monotonic_ns()}"
    pid = os.fork()
    if pid == 0:  # the child: the console script's process, streams as a shell sets them up
        code = 70
        try:
            os.chdir(cwd)
            os.environ.update(TERM="xterm-256color", COLUMNS="100")
            os.environ.pop("NO_COLOR", None)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            out_fd = slave if stdout_tty else os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(out_fd, 1)
            os.dup2(slave, 2)
            os.close(master)
            sys.stdin = open(0, "r", closefd=False)
            sys.stdout = open(1, "w", closefd=False)
            sys.stderr = open(2, "w", closefd=False)
            sys.argv = ["vdvae", *args]
            from vdvae_cli._entry import main  # as the console script runs it

            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    os.close(slave)
    screen = bytearray()

    def read() -> None:  # drain the terminal while the child runs (a full pty would block it)
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                return
            if not chunk:
                return
            screen.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError(f"vdvae {' '.join(args)} ran over {timeout}s")
        time.sleep(0.05)
    reader.join(10)
    os.close(master)
    stdout = out_path.read_text() if out_path.exists() else ""
    out_path.unlink(missing_ok=True)
    return Run(os.waitstatus_to_exitcode(status), stdout, screen.decode("utf-8", "replace"))


def records(run: Run) -> list[dict]:
    assert run.code == 0, run.screen[-3000:]
    lines = run.stdout.splitlines()
    parsed = [json.loads(line) for line in lines]
    # nothing of a record reached the terminal (rich once redirected stdout into its console: stderr)
    assert '"type"' not in run.screen and '"event"' not in run.screen and '"path"' not in run.screen, run.screen[-2000:]
    return parsed


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_ckpt):
    """A folder with three images, the tiny model, and their latents."""
    root = tmp_path_factory.mktemp("tty")
    imgs = root / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(imgs / f"i{i}.png")
    return root


def _model(tiny_ckpt) -> list[str]:
    return ["--model", str(tiny_ckpt), "--seed", "0", "--batch-size", "1"]


@pytest.mark.parametrize("args, count", [
    (["sample", "-n", "3", "-o", "s/"], 3),
    (["reconstruct", "imgs/", "-o", "r/"], 3),
    (["mix", "imgs/i0.png", "imgs/i1.png", "imgs/i2.png", "--keep-res", "4", "-o", "m/"], 2),
    (["eval", "imgs/"], 4),
    (["ood", "imgs/"], 3),
    (["interpolate", "imgs/i0.png", "imgs/i1.png", "--steps", "3", "-o", "fr/"], 3),
])
def test_json_records_reach_stdout_with_stderr_on_a_terminal(work, tiny_ckpt, args, count):
    run = at_terminal([*args, *_model(tiny_ckpt), "--json"], work)
    got = records(run)
    assert len(got) == count, (run.stdout, run.screen[-2000:])
    assert all(isinstance(r.get("type"), str) for r in got)


def test_encode_and_decode_at_a_terminal(work, tiny_ckpt):
    enc = records(at_terminal(["encode", "imgs/", "-o", "lat.safetensors", *_model(tiny_ckpt), "--json", "--force"], work))
    assert [r["type"] for r in enc] == ["latents"]
    dec = records(at_terminal(["decode", "lat.safetensors", "-o", "d/", *_model(tiny_ckpt), "--json"], work))
    assert [r["index"] for r in dec] == [0, 1, 2]


def test_info_models_cache_convert_at_a_terminal(work, tiny_ckpt):
    info = records(at_terminal(["info", "--model", str(tiny_ckpt), "--json"], work))
    assert len(info) == 1 and info[0]["config"]
    models = records(at_terminal(["models", "--json"], work))
    assert {"fashion32", "digits32", "cifar10"} <= {m["name"] for m in models}
    records(at_terminal(["cache", "--json"], work))  # an empty cache: no line, and nothing on the screen
    golden = Path(__file__).parent / "data" / "golden"
    conv = records(at_terminal(["convert", str(golden / "tiny-ref.th"), "--hparams", str(golden / "tiny-hparams.json"),
                                "--check", "--json"], work))
    assert len(conv) == 1


def test_download_at_a_terminal(work, official, server):  # noqa: F811
    got = records(at_terminal(["download", "tiny-official", "--json"], work))
    assert [r["name"] for r in got] == ["tiny-official"]


def test_train_json_at_a_terminal(tmp_path):
    np.save(tmp_path / "data.npy", synthetic_images())
    hps = dict(TINY_HPS)
    del hps["preprocessing"]
    (tmp_path / "tiny.json").write_text(json.dumps(hps))
    run = at_terminal(["train", "data.npy", "--hparams", "tiny.json", "-o", "run", "--steps", "6", "--eval-every", "3",
                       "--holdout", "16", "--batch-size", "16", "--json"], tmp_path)
    got = records(run)
    assert [r["step"] for r in got if r["event"] == "eval"] == [3, 6], run.stdout
    assert "held-out" in run.screen  # the messages still reach the terminal


def test_json_to_the_same_terminal_has_no_bar_between_records(work, tiny_ckpt):
    """stdout and stderr both on the terminal: the records arrive whole, with no bar drawn through them."""
    run = at_terminal(["sample", "-n", "3", "-o", "s2/", *_model(tiny_ckpt), "--json"], work, stdout_tty=True)
    assert run.code == 0
    lines = [ln for ln in run.screen.replace("\r\n", "\n").split("\n") if ln.startswith("{")]
    assert len(lines) == 3 and all(json.loads(ln)["type"] == "image" for ln in lines), run.screen
    assert "\x1b[2K" not in run.screen  # no live display (its line erasures) on that screen
