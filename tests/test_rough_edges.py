"""The numbered rough edges of issue 12 ("the first five minutes"), one test (or more) each."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vdvae_cli.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "data" / "golden"


def ok(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.stderr}"
    return result


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def vdvae_process(*args: str, **env: str) -> subprocess.CompletedProcess:
    """The real entry point (``main``), in its own process."""
    return subprocess.run([sys.executable, "-m", "vdvae_cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src"), **env})


@pytest.fixture()
def pics(tmp_path) -> list[Path]:
    rng = np.random.default_rng(5)
    paths = []
    for i in range(3):
        p = tmp_path / "in" / f"p{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


# 1. one JSON record, one write -----------------------------------------------------------------


def test_1_json_record_is_one_write(monkeypatch):
    from vdvae_cli.cli._run import Session

    writes = []

    class Recorder:
        def write(self, text):
            writes.append(text)

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stdout", Recorder())
    Session(json_out=True).emit({"index": 0, "input": "ä.png"})
    assert writes == ['{"index": 0, "input": "ä.png"}\n']


# 2. the decode hint names something that works; a fine-tuned model has its own name ------------


def test_2_decode_hint_names_the_model_file(tmp_path, tiny_ckpt, golden_cfg, golden_state, pics):
    from vdvae_cli.modelfiles.checkpoint import save_checkpoint

    other = save_checkpoint(golden_state, golden_cfg.replace(name="other"), tmp_path / "other.safetensors")
    lat = tmp_path / "lat.safetensors"
    ok("encode", pics[0], "-m", tiny_ckpt, "-o", lat)
    result = runner.invoke(app, ["decode", str(lat), "-m", str(other), "-o", str(tmp_path / "d.png")])
    assert result.exit_code == 1
    hint = f"(decode it with --model {tiny_ckpt.resolve()}, the model that encoded it)"
    assert result.stderr.strip().endswith(hint)
    ok("decode", lat, "-m", tiny_ckpt.resolve(), "-o", tmp_path / "d.png")  # the hint works


def test_2_fine_tuned_model_gets_the_run_name(tmp_path, tiny_ckpt, pics):
    from vdvae_cli.modelfiles.header import config_of

    for i in range(8):  # 11 images: 1 held out, batch of 4 fits
        Image.open(pics[i % 3]).rotate(90 * (i + 1)).save(pics[0].parent / f"r{i}.png")
    ok("train", pics[0].parent, "--init", tiny_ckpt, "-o", tmp_path / "my-tuned", "--steps", "1",
       "--batch-size", "4", "--holdout", "1", "--quiet")
    assert config_of(tmp_path / "my-tuned" / "model.safetensors").name == "my-tuned"


# 3. convert --check needs no -o ------------------------------------------------------------------


def test_3_convert_check_without_output(tmp_path):
    result = ok("convert", GOLDEN / "tiny-ref.th", "--hparams", GOLDEN / "tiny-hparams.json", "--check")
    assert "ok: every key and shape matches" in result.stderr
    missing = runner.invoke(app, ["convert", str(GOLDEN / "tiny-ref.th"), "--hparams", str(GOLDEN / "tiny-hparams.json")])
    assert missing.exit_code == 2 and missing.stderr.startswith("error: missing -o FILE.safetensors")


# 4. vdvae models fits 80 columns -----------------------------------------------------------------


def test_4_models_fits_80_columns(monkeypatch):
    monkeypatch.setenv("VDVAE_CACHE", "/tmp/c")
    lines = ok("models").stdout.splitlines()
    assert lines[0].split() == ["name", "res", "layers", "params", "size", "cached", "terms"]
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    ffhq = next(line for line in lines if line.startswith("ffhq256"))
    assert ffhq.split() == ["ffhq256", "256", "66", "114.9M", "459.5", "MB", "no", "non-commercial"]
    long = ok("models", "--long").stdout
    assert "vdvae-assets/ffhq256-iter-1700000-model-ema.th" in long and "CC BY-NC-SA 4.0" in long


# 5. a latents file given as a model --------------------------------------------------------------


def test_5_latents_file_as_model(tmp_path, tiny_ckpt, pics):
    lat = tmp_path / "lat.safetensors"
    ok("encode", pics[0], "-m", tiny_ckpt, "-o", lat)
    for args in (["info"], ["sample", "-o", str(tmp_path / "x.png")]):
        result = runner.invoke(app, [*args, "-m", str(lat)])
        assert result.exit_code == 1 and result.stdout == ""
        assert result.stderr.splitlines() == [
            f"error: {lat} is a latents file (images encoded by model tiny), not a model "
            f"(decode it with: vdvae decode {lat} --model MODEL)"
        ]


# 6. converting what is not a checkpoint ----------------------------------------------------------


class Thing:  # a pickled object: torch's weights-only loader refuses it
    pass


def test_6_convert_non_checkpoints_never_suggests_weights_only_false(tmp_path, pics):
    import torch

    png = tmp_path / "photo.th"
    png.write_bytes(pics[0].read_bytes())
    obj = tmp_path / "object.th"
    torch.save({"model": Thing()}, obj)
    text = tmp_path / "notes.th"
    text.write_text("hello\n")
    for path, says in ((png, "it looks like a PNG image"), (obj, "holds pickled Python objects, not only tensors"),
                       (text, "it looks like a text file")):
        result = runner.invoke(app, ["convert", str(path), "--config", "cifar10", "-o", str(tmp_path / "o.safetensors")])
        assert result.exit_code == 1 and says in result.stderr, result.stderr
        assert "weights_only" not in result.stderr and len(result.stderr.splitlines()) == 1


# 7. one list of readable image types -------------------------------------------------------------


def test_7_train_reads_every_type_reconstruct_reads(tmp_path):
    from vdvae_cli.training import data
    from vdvae_cli.base import images

    assert data.IMAGE_SUFFIXES is images.IMAGE_SUFFIXES
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(folder / "a.pnm", format="PPM")
    Image.new("L", (8, 8), 99).save(folder / "b.pgm")
    loaded = data.load_images(folder, 8)
    assert loaded.shape == (2, 8, 8, 3) and loaded[0, 0, 0].tolist() == [10, 200, 30]


# 8. one error style: Typer's own errors go through our boundary, exit 2 -------------------------


@pytest.mark.parametrize("args, says", [
    (["sample", "--nope"], "error: No such option: --nope"),
    (["sample", "-n", "many"], "error: Invalid value for '--num' / '-n'"),
    (["reconstruct"], "error: Missing argument"),
    (["nosuchcommand"], "error: No such command 'nosuchcommand'"),
])
def test_8_parser_errors_use_our_style(args, says):
    result = vdvae_process(*args)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(says) and "--help`)" in lines[0], result.stderr
    assert "Error:" not in result.stderr and "Usage:" not in result.stderr


# 9. one JSON schema across commands --------------------------------------------------------------


def test_9_one_json_schema(tmp_path, tiny_ckpt, pics):
    m = ["-m", str(tiny_ckpt), "--seed", "1", "--json"]
    lat = tmp_path / "lat.safetensors"
    ok("encode", *pics, "-m", tiny_ckpt, "-o", lat)
    runs = {
        "sample": ok("sample", "-n", "2", "-o", f"{tmp_path}/s/", *m),
        "reconstruct": ok("reconstruct", *pics, "-o", f"{tmp_path}/r/", "-b", "2", *m),
        "mix": ok("mix", pics[0], pics[1], pics[2], "-k", "3", "-o", f"{tmp_path}/x/", *m),
        "decode": ok("decode", lat, "-o", f"{tmp_path}/d/", *m),
        "eval": ok("eval", *pics, "-b", "2", *m),
    }
    expected_inputs = {
        "sample": [None, None], "reconstruct": [str(p) for p in pics], "mix": [str(pics[0])] * 2,
        "decode": [str(p) for p in pics], "eval": [str(p) for p in pics],
    }
    for name, result in runs.items():
        records = [r for r in json_lines(result.stdout) if r["type"] == "image"]
        assert [r["input"] for r in records] == expected_inputs[name], name
        assert [r["index"] for r in records] == list(range(len(records)))
        for r in records:
            assert r["model"] == "tiny" and r["seed"] == 1 and r["batch_seconds"] >= 0 and "seconds" not in r
        if name in ("reconstruct", "eval"):  # batches of 2: two images, then one
            assert [r["batch_size"] for r in records] == [2, 2, 1]
            assert records[0]["batch_seconds"] == records[1]["batch_seconds"]
    assert [r["input_b"] for r in json_lines(runs["mix"].stdout)] == [str(pics[1]), str(pics[2])]
    assert json_lines(runs["eval"].stdout)[-1]["type"] == "summary"


# 10. option names, help text, command order, info --------------------------------------------


def test_10_help_is_consistent():
    top = ok("--help").stdout
    commands = [line.split()[0] for line in top.split("Commands:")[1].splitlines() if line.strip()]
    assert commands[:3] == ["sample", "reconstruct", "mix"]
    mix = ok("mix", "--help").stdout
    assert "-n, --num, --n-variations N" in " ".join(mix.split())
    for command in ("sample", "reconstruct", "mix", "encode", "decode", "eval", "info"):
        text = ok(command, "--help").stdout
        options = text.split("Options:")[1]
        assert "<str>" not in options and "<int>" not in options, command
    train = ok("train", "--help").stdout
    assert "small32.json" not in train and "--config small64" in train  # a preset that exists


def test_10_info_reads_the_header_without_torch(tiny_ckpt):
    """info reads the header only (checked against the config, issue 11): no weights read, no
    network built, and not even torch imported."""
    code = ("import sys\nfrom vdvae_cli.cli._app import app\nfrom vdvae_cli.cli import run\n"
            f"rc = run(['info', '-m', {str(tiny_ckpt)!r}, '--json'])\n"
            "print('torch' in sys.modules, rc, file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert result.stderr.strip() == "False 0"
    info = json.loads(result.stdout)
    assert (info["model"], info["n_layers"], info["parameters"]) == ("tiny", 13, 111_518)


def test_10_every_familys_front_module_imports_no_torch():
    """info and models describe the shipped files (an NVAE among them) through each family's front
    module, so none of those may import torch: a shipped NVAE made every info import it."""
    code = ("import sys\nfrom vdvae_cli.engine.registry import families\n"
            "print(sorted(f.name for f in families()), 'torch' in sys.modules, file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert result.stderr.strip() == "['nvae', 'pixelcnn', 'vdvae'] False"


def test_10_info_describes_a_registry_model_before_its_download(monkeypatch):
    monkeypatch.setenv("VDVAE_OFFICIAL_BASE_URL", "http://127.0.0.1:9")  # nothing listens: no download
    info = json.loads(ok("info", "--model", "ffhq256", "--json").stdout)
    assert (info["n_layers"], info["image_size"], info["parameters"], info["path"]) == (66, 256, 114_874_852, None)
    assert info["source"] == "not downloaded" and info["layers_up_to_res"]["16"] == 21
    text = ok("info", "--model", "ffhq256").stdout
    assert "not downloaded yet" in text and "459.5 MB" in text
    later = json.loads(ok("info", "--model", "ffhq1024", "--json").stdout)  # its layout comes with its log
    assert later["path"] is None and "read from the run's log" in later["note"] and "n_layers" not in later


# 11. grids show what each output came from -------------------------------------------------------


def test_11_reconstruct_and_mix_grids_show_inputs(tmp_path, tiny_ckpt, pics):
    ok("reconstruct", *pics[:2], "-m", tiny_ckpt, "--seed", "0", "--grid", "-o", tmp_path / "r.png")
    grid = np.asarray(Image.open(tmp_path / "r.png").convert("RGB"))
    assert grid.shape == (36, 4 * 34 + 2, 3)  # per row: input, output, input, output
    for k, pic in enumerate(pics[:2]):
        left = 2 + 2 * k * 34
        assert np.array_equal(grid[2:34, left:left + 32], np.asarray(Image.open(pic)))

    ok("mix", *pics, "-m", tiny_ckpt, "-k", "3", "--seed", "0", "--grid", "-o", tmp_path / "m.png")
    grid = np.asarray(Image.open(tmp_path / "m.png").convert("RGB"))
    assert grid.shape == (36, 6 * 34 + 2, 3)  # A, B1, mix1, A, B2, mix2
    a, b2 = np.asarray(Image.open(pics[0])), np.asarray(Image.open(pics[2]))
    assert np.array_equal(grid[2:34, 2:34], a) and np.array_equal(grid[2:34, 2 + 4 * 34:4 * 34 + 34], b2)

    ok("mix", pics[0], "-m", tiny_ckpt, "-k", "3", "-n", "3", "--seed", "0", "--grid", "-o", tmp_path / "v.png")
    grid = np.asarray(Image.open(tmp_path / "v.png").convert("RGB"))
    assert grid.shape == (2 * 34 + 2, 2 * 34 + 2, 3) and np.array_equal(grid[2:34, 2:34], a)  # A, then 3 variations


def test_10_help_uses_the_conventional_notation():
    """Arguments read IMG... / [IMG]... (not Typer's {IMG}...), with no Python type labels; options
    without their own metavar get Click's (INTEGER, PATH, ...)."""
    import re

    commands = ["sample", "reconstruct", "mix", "encode", "decode", "interpolate", "ood", "fid", "eval", "info",
                "download", "models", "cache", "convert", "train"]
    for cmd in commands:
        text = ok(cmd, "--help").stdout
        assert not re.search(r"\{[A-Za-z ]+\}|<(list|int|str|float|path)", text), (cmd, text)
    assert "reconstruct [OPTIONS] IMG..." in ok("reconstruct", "--help").stdout
    assert "mix [OPTIONS] A [B]..." in ok("mix", "--help").stdout
    ood = ok("ood", "--help").stdout
    assert "ood [OPTIONS] [IMG]..." in ood and "--in PATH" in ood and re.search(r"--k INTEGER", ood)


# 12. shell completion ----------------------------------------------------------------------------


def test_12_shell_completion(monkeypatch):
    # --show-completion is a flag that detects the shell from the parent processes; under a runner
    # with no shell above it (nohup, CI) that finds none, so the test names it
    import typer.completion

    monkeypatch.setattr(typer.completion, "_get_shell_name", lambda: "bash")
    result = runner.invoke(app, ["--show-completion"], prog_name="vdvae")
    assert result.exit_code == 0 and "complete" in result.stdout and "vdvae" in result.stdout
    assert "--install-completion" in ok("--help").stdout


# 13. the CPU-torch note comes before the command that would pull the CUDA build -----------------


def test_13_readme_cpu_note_before_install_command():
    readme = (ROOT / "README.md").read_text()
    first_install = readme.index("pip install -e .")
    note = readme.index("CPU build of PyTorch")
    assert note < first_install
    assert math.isfinite(note)
