"""What a new user meets in the first hour (issue 17): pipes that keep a failure's exit status,
messages that say what the command waits for and what it tiled, help that tells the truth."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from test_hub import official, server  # noqa: F401  (fixtures: tiny-official on a local server)
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


# --------------------------------------------------------------------------------------------------
# what --grid tiles, and where the images went


def _ok(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture()
def two_pics(tmp_path):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


def _tiles(path: Path, size: int = 32) -> int:
    """How many tiles a grid of ``make_grid`` holds (tiles of size+2 with a 2-pixel border)."""
    import numpy as np
    from PIL import Image

    grid = np.asarray(Image.open(path))
    cols, rows = (grid.shape[1] - 2) // (size + 2), (grid.shape[0] - 2) // (size + 2)
    return sum(int(grid[2 + r * (size + 2):r * (size + 2) + size + 2, 2 + c * (size + 2):c * (size + 2) + size + 2].any())
               for r in range(rows) for c in range(cols))


def test_grid_messages_say_what_is_tiled(tiny_ckpt, two_pics, tmp_path):
    rec = _ok("reconstruct", two_pics, "-m", tiny_ckpt, "--seed", 0, "--grid", "-o", tmp_path / "r.png")
    assert "wrote a grid of 2 input/reconstruction pairs (4 tiles) to" in rec.stderr
    assert _tiles(tmp_path / "r.png") == 4
    var = _ok("mix", two_pics / "p0.png", "--keep-layers", 3, "-n", 3, "-m", tiny_ckpt, "--seed", 0, "--grid",
              "-o", tmp_path / "m.png")
    assert "wrote a grid of A and 3 completions of its prefix (4 tiles) to" in var.stderr
    assert _tiles(tmp_path / "m.png") == 4
    pairs = _ok("mix", two_pics / "p0.png", two_pics, "--keep-layers", 3, "-m", tiny_ckpt, "--seed", 0, "--grid",
                "-o", tmp_path / "ab.png")
    assert "wrote a grid of 2 A/B/mix triples (6 tiles) to" in pairs.stderr
    assert _tiles(tmp_path / "ab.png") == 6
    plain = _ok("sample", "-n", 3, "-m", tiny_ckpt, "--seed", 0, "--grid", "-o", tmp_path / "s.png")
    assert "wrote a grid of 3 images to" in plain.stderr
    assert "each input, then its reconstruction" in " ".join(_ok("reconstruct", "--help").stdout.split())
    assert "without B, A first, then its N completions" in " ".join(_ok("mix", "--help").stdout.split())


def test_stdout_is_called_stdout(tiny_ckpt):
    result = _ok("sample", "-n", 1, "-m", tiny_ckpt, "--seed", 0, "-o", "-")
    assert "wrote 1 image to stdout" in result.stderr and result.stdout_bytes[:4] == b"\x89PNG"


# --------------------------------------------------------------------------------------------------
# small untruths


def test_no_seed_advice_for_a_run_that_draws_no_noise(tiny_ckpt, two_pics, tmp_path):
    fixed = _ok("sample", "-n", 1, "-m", tiny_ckpt, "--temp", 0, "--output-temp", 0, "-o", tmp_path / "a.png")
    assert "--seed" not in fixed.stderr
    _ok("sample", "-n", 1, "-m", tiny_ckpt, "--temp", 0, "--output-temp", 0, "-o", tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()  # indeed the same
    rec = _ok("reconstruct", two_pics, "-m", tiny_ckpt, "--output-temp", 0, "-o", f"{tmp_path}/r/")
    assert "--seed" not in rec.stderr
    random = _ok("sample", "-n", 1, "-m", tiny_ckpt, "--temp", 0, "-o", tmp_path / "c.png")  # pixels drawn at 1.0
    assert "repeat this run with --seed" in random.stderr
    partial = _ok("reconstruct", two_pics, "-m", tiny_ckpt, "--keep-layers", 3, "--output-temp", 0, "-o", f"{tmp_path}/p/")
    assert "repeat this run with --seed" in partial.stderr  # the other layers come from the prior at 1.0


@pytest.mark.parametrize("command", [["interpolate", "a.png", "b.png", "-o", "x.gif"], ["ood", "a.png"]])
def test_interpolate_and_ood_take_offline(command, two_pics, monkeypatch):
    monkeypatch.chdir(two_pics)
    for name in ("a.png", "b.png"):
        (two_pics / name).write_bytes((two_pics / "p0.png").read_bytes())
    result = runner.invoke(app, [*command, "--model", "cifar10", "--offline"])
    assert result.exit_code == 1, result.output
    assert "downloads are off (--offline)" in result.stderr


def test_help_says_what_is_true():
    models = " ".join(_ok("models", "--help").stdout.split())
    assert "the shipped one" not in models and "weights/ folder" in models
    info = " ".join(_ok("info", "--help").stdout.split())
    assert "downloaded on first use" not in info and "described without a download" in info
    interp = _ok("interpolate", "--help").stdout
    assert "--keep-layers K|all" in interp and "--output FILE|DIR/|-" in interp and "TEXT" not in interp
    assert "one row per segment" in " ".join(interp.split())


def test_cache_lists_and_removes_batchnorm_statistics(tmp_path):
    import os

    stats = Path(os.environ["VDVAE_CACHE"]) / "bn" / "0123abcd.safetensors"
    stats.parent.mkdir(parents=True)
    stats.write_bytes(b"x" * 100)
    listing = _ok("cache")
    assert "bn/0123abcd" in listing.stdout and " bn " in listing.stdout
    gone = _ok("cache", "--remove", "bn/0123abcd")
    assert "removed bn/0123abcd" in gone.stderr and not stats.exists()


def test_quick_start_grid_is_ignored_by_git():
    root = Path(__file__).resolve().parent.parent
    lines = (root / ".gitignore").read_text().split()
    assert "/grid.png" in lines


# --------------------------------------------------------------------------------------------------
# silent waits


def test_a_first_download_says_what_it_waits_for_at_once(official, server, tmp_path):  # noqa: F811
    server.stop()  # no network: the line must come before the (failing) wait
    result = runner.invoke(app, ["sample", "--model", "tiny-official", "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0].startswith("fetching tiny-official from 127.0.0.1:"), lines
    assert "waiting for the network" in lines[0] and lines[-1].startswith("error:")
    down = runner.invoke(app, ["download", "tiny-official"])
    assert down.stderr.splitlines()[0].startswith("fetching tiny-official from"), down.stderr


def test_compile_says_the_first_batch_waits(tiny_ckpt):
    from vdvae_cli.cli._run import Session

    run = Session()
    run.load_model(str(tiny_ckpt), "cpu", compile=True)  # torch.compile compiles on the first call, not here
    assert any(note.startswith("compiling the network (--compile)") for note in run._notes)


def test_the_tours_fingerprint_is_the_tools(tmp_path):
    """The README's tour converts the golden tiny model and shows `vdvae info`: the fingerprint there
    is the one the tool prints for that file."""
    import json

    out = tmp_path / "tiny.safetensors"
    _ok("convert", GOLDEN / "tiny-ref.th", "--hparams", GOLDEN / "tiny-hparams.json", "-o", out)
    fingerprint = json.loads(_ok("info", "--model", out, "--json").stdout)["fingerprint"]
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert f"fingerprint  {fingerprint}" in readme
    assert f"'tiny-hparams' ({fingerprint}, 13 latent layers)" in readme


def test_an_nvae_file_loads_without_torchs_decompositions():
    """An NVAE's load built its shapes-only (meta) network with weight-norm arithmetic, which imports
    torch's compiler and decompositions: seconds of a 0.3 s load. In a fresh process, loading one
    leaves them unimported (and the shapes are computed once per load)."""
    code = (
        "import sys, torch\n"
        "from vdvae_cli.engine.registry import family_named\n"
        "from vdvae_cli.modelfiles.checkpoint import save_checkpoint\n"
        "from vdvae_cli.modelfiles.resolve import load_model, resolve_model\n"
        "from vdvae_cli.modelfiles import header\n"
        "fam = family_named('nvae')\n"
        "cfg = fam.preset_config('nvae-small32', torch.zeros(4, 32, 32, 3, dtype=torch.uint8) + 99, run_name='n')\n"
        "save_checkpoint(fam.network(cfg), cfg, sys.argv[1])\n"
        "loaded = [m for m in sys.modules if m.startswith('torch._dynamo')]\n"
        "calls = []\n"
        "real = type(fam).state_shapes\n"
        "type(fam).state_shapes = lambda self, c: calls.append(1) or real(self, c)\n"
        "header._SHAPES.clear()\n"
        "load_model(resolve_model(sys.argv[1]))\n"
        "after = [m for m in sys.modules if m.startswith('torch._dynamo')]\n"
        "print(len(loaded), len(after), len(calls))\n"
    )
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, "-c", code, str(Path(tmp) / "n.safetensors")], capture_output=True,
                              text=True, env=dict(os.environ, PYTHONPATH=str(SRC)), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    before, after, calls = map(int, done.stdout.split())
    assert after == before == 0 and calls == 1, done.stdout
