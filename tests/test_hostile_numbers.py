"""Hostile numbers and sizes (issue 18, classes 2-4): every number option is checked where it is
parsed, with its allowed range in one line; sizes are bounded before anything is allocated; what can
be streamed is streamed (peak memory measured, not limited); FIFOs and devices are refused where a
file is needed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vdvae_cli.cli import app

runner = CliRunner()


def vdvae(*args, code: int):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, f"exit {result.exit_code}: {result.stderr}"
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    return result


def one_error(*args, code: int = 2, says: str) -> None:
    result = vdvae(*args, code=code)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and says in lines[0], result.stderr


@pytest.fixture()
def data(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8))
    return path


@pytest.mark.parametrize("option, value", [
    ("--lr", "nan"), ("--lr", "inf"), ("--lr", "-inf"), ("--grad-clip", "nan"), ("--holdout", "nan"),
    ("--wd", "inf"), ("--skip-threshold", "nan"), ("--ema-rate", "nan"), ("--time-limit", "nan"),
])
def test_train_refuses_non_finite_numbers_before_it_starts(data, tmp_path, option, value):
    one_error("train", data, "-o", tmp_path / "run", "--steps", 2, option, value,
              says=f"{option} must be a finite number, got {value}")
    assert not (tmp_path / "run").exists()


def test_counts_have_a_range(tiny_ckpt, tmp_path, data):
    one_error("sample", "-m", tiny_ckpt, "-n", 2**63, "-o", f"{tmp_path}/d/", says="-n must be 1 to 1,000,000,000")
    one_error("sample", "-m", tiny_ckpt, "-n", 10**12, "-o", f"{tmp_path}/d/", says="-n must be 1 to 1,000,000,000")
    one_error("eval", "-m", tiny_ckpt, data, "--samples", 10**6, says="--samples must be 1 to 5,000")
    one_error("ood", "-m", tiny_ckpt, data, "--samples", 10**9, says="--samples must be 1 to 5,000")
    one_error("interpolate", "-m", tiny_ckpt, "--seeds", 1, 2, "--steps", 2**63, "-o", f"{tmp_path}/f/",
              says="--steps must be 2 to 100,000")
    keys = [str(i) for i in range(50)]
    one_error("interpolate", "-m", tiny_ckpt, "--seeds", *keys, "--steps", 10**5, "-o", f"{tmp_path}/f/",
              says="50 keys x --steps 100000 make 4,899,952 frames (at most 1,000,000)")
    one_error("interpolate", "-m", tiny_ckpt, "--seeds", 1, 2, "--fps", "1e-300", "-o", tmp_path / "a.gif",
              says="--fps must be 0.01 to 100")
    one_error("interpolate", "-m", tiny_ckpt, "--seeds", "9" * 5000, 2, "-o", f"{tmp_path}/f/",
              says="--seeds takes whole numbers of at most 40 digits")
    assert not any(tmp_path.glob("d")) and not (tmp_path / "f").exists() and not (tmp_path / "a.gif").exists()


def test_an_animation_that_would_not_fit_is_refused_up_front(tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr("vdvae_cli.base.safety.available_memory", lambda: 64 * 2**20)
    one_error("interpolate", "-m", tiny_ckpt, "--seeds", 1, 2, "--steps", 5000, "--scale", 4, "-o", tmp_path / "a.gif",
              says="needs about")
    assert not (tmp_path / "a.gif").exists()


def test_ood_with_an_unreadable_side_is_one_summary(tiny_ckpt, tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir(), bad.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(good / "a.png")
    for name in ("a.png", "b.png"):
        (bad / name).write_bytes(b"")
    result = vdvae("ood", "-m", tiny_ckpt, "--in", good, "--out", bad, code=1)
    assert "2 of 3 inputs could not be read" in result.stderr


def test_fifos_and_devices_are_refused_where_a_file_is_needed(tiny_ckpt, tmp_path, data):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    one_error("sample", "-m", fifo, "-o", tmp_path / "s.png", code=1, says="is a FIFO (named pipe), not a model file")
    one_error("info", "-m", fifo, code=1, says="is a FIFO")
    hp = tmp_path / "h.json"
    os.mkfifo(hp)
    one_error("train", data, "--hparams", hp, "-o", tmp_path / "r", says="is a FIFO (named pipe), not a hyperparameters")
    one_error("convert", tiny_ckpt, "--hparams", "/dev/zero", "-o", tmp_path / "c.safetensors",
              says="/dev/zero is a device, not a hyperparameters file")


def _peak_rss_after(args: list[str], seconds: float, cwd: Path) -> tuple[int, int]:
    """Run ``vdvae ARGS`` for ``seconds``, then stop it; (peak resident KiB, exit status or -signal)."""
    proc = subprocess.Popen([sys.executable, "-m", "vdvae_cli", *args], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            # Ctrl-C's default even under a runner that ignores SIGINT (a background job
                            # of a script), which `vdvae` rightly keeps ignoring
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    peak = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak = max(peak, int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))))
        except (OSError, StopIteration):
            pass
        time.sleep(0.2)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    return peak, proc.returncode


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_huge_requests_stream_in_bounded_memory(tiny_ckpt, tmp_path):
    """Measured: a trillion samples and a 100,000-step path written to folders grow by the images
    written, not by what was asked (before: 6.6 GB in 25 s, 23 GB in 60 s)."""
    peak, _ = _peak_rss_after(["sample", "-m", str(tiny_ckpt), "-n", "1000000000", "-o", "s/", "-q"], 8, tmp_path)
    assert 0 < peak < 1_500_000, f"peak {peak} KiB"
    assert len(list((tmp_path / "s").glob("*.png"))) > 0
    peak, _ = _peak_rss_after(["interpolate", "-m", str(tiny_ckpt), "--seeds", "1", "2", "--steps", "100000",
                               "-o", "f/", "-q"], 8, tmp_path)
    assert 0 < peak < 1_500_000, f"peak {peak} KiB"
    assert len(list((tmp_path / "f").glob("*.png"))) > 0
    assert not list(tmp_path.rglob("*.tmp"))  # interrupted: nothing half-written left behind


@pytest.mark.parametrize("rank", [0, 1])
def test_a_rank_that_never_comes_is_one_line_after_the_rendezvous_timeout(tiny_ckpt, tmp_path, rank):
    """Issue 18, 3: rank 0 waited for ever for a rank 1 that never started (and rank 1 for a rank 0)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "VDVAE_RENDEZVOUS_TIMEOUT": "2", "OMP_NUM_THREADS": "1"}
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "vdvae_cli", "sample", "-m", str(tiny_ckpt), "-n", "2", "-o", "out/"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and time.monotonic() - t0 < 60
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"did not meet within 2 s: rank {rank} waited at 127.0.0.1:{port}" in errors[0], r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()
    bad = subprocess.run([sys.executable, "-m", "vdvae_cli", "sample", "-m", str(tiny_ckpt), "-o", "x.png"], cwd=tmp_path,
                         env={**env, "VDVAE_RENDEZVOUS_TIMEOUT": "nan"}, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "VDVAE_RENDEZVOUS_TIMEOUT must be 1 to 86400 seconds" in bad.stderr


def test_an_empty_output_name_is_refused_not_taken_for_the_current_folder(tmp_path, tiny_ckpt):
    for args in (["sample", "-m", str(tiny_ckpt), "-o", ""], ["reconstruct", "x.png", "--output", " "],
                 ["train", "x.npy", "--output="]):
        r = subprocess.run([sys.executable, "-m", "vdvae_cli", *args], cwd=tmp_path, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 2 and r.stderr.count("error:") == 1 and "is empty" in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_folder_of_bad_files_names_five_then_counts(tiny_ckpt, tmp_path):
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(12):
        (folder / f"bad{i:02d}.png").write_bytes(b"not an image")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "good.png")
    for cmd in (["eval"], ["reconstruct", "-o", f"{tmp_path}/r/"], ["encode", "-o", str(tmp_path / "z.npz")],
                ["ood"]):
        r = vdvae(cmd[0], "-m", tiny_ckpt, folder, *cmd[1:], "-q", code=1)
        lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 7, (cmd, r.stderr)  # five named, one "more", one summary
        assert lines[-1].startswith("error: 12 of 13 inputs could not be read") and "and 7 more" in lines[-1]


def _npz_declaring(path: Path, members: dict[str, tuple[int, ...]]) -> Path:
    """An .npz whose members honestly declare ``shape`` of float32 zeros (compressed to almost nothing)."""
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, shape in members.items():
            with z.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
                left = int(np.prod(shape)) * 4
                chunk = bytes(min(left, 16 * 2**20))
                while left:
                    f.write(chunk[:left])
                    left -= min(left, len(chunk))
    return path


def test_an_npz_that_declares_gigabytes_is_refused_before_it_is_inflated(tiny_ckpt, tmp_path, monkeypatch):
    foreign = _npz_declaring(tmp_path / "foreign.npz", {"latents": (256, 1024, 1024)})  # 1 GiB in ~1 MB
    assert foreign.stat().st_size < 4 * 2**20
    one_error("decode", "-m", tiny_ckpt, foreign, "-o", f"{tmp_path}/d/", code=1, says="is not an npz of vdvae latents")
    monkeypatch.setenv("VDVAE_MAX_MEMORY", "64MiB")
    from vdvae_cli.tools.latents_npz import _read_npz
    from vdvae_cli.base.errors import LatentsError

    ours = _npz_declaring(tmp_path / "ours.npz", {k: (1,) for k in ("format", "layer_shapes", "model_fingerprint")}
                          | {"latents": (64, 1024, 1024)})
    with pytest.raises(LatentsError, match="more than fits in memory"):
        _read_npz(ours.read_bytes(), "ours.npz")


def test_vdvae_max_memory_is_a_size(tiny_ckpt, tmp_path, monkeypatch):
    from vdvae_cli.base.safety import available_memory, parse_size

    assert parse_size("2GiB", "x") == 2 * 2**30 and parse_size("512MB", "x") == 512 * 10**6 and parse_size("1e9", "x") == 10**9
    monkeypatch.setenv("VDVAE_MAX_MEMORY", "10x")
    one_error("sample", "-m", tiny_ckpt, "-o", tmp_path / "s.png", says="VDVAE_MAX_MEMORY='10x' is not a size")
    held = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    monkeypatch.setenv("VDVAE_MAX_MEMORY", str(held + 200 * 2**20))  # 200 MiB more than this process holds
    free = available_memory()
    assert free is not None and free < 210 * 2**20
    one_error("interpolate", "-m", tiny_ckpt, "--seeds", 1, 2, "--steps", 5000, "--scale", 8, "-o", tmp_path / "a.gif",
              says="needs about")


def test_a_copied_header_does_not_lend_another_models_identity(tmp_path, golden_cfg, golden_state, tiny_ckpt):
    """Issue 18, 7: which weights a model holds comes from the bytes, never from its header's claim."""
    import torch
    from PIL import Image

    from vdvae_cli.modelfiles.checkpoint import load_file_model, save_checkpoint
    from vdvae_cli.modelfiles.header import metadata_of
    from vdvae_cli.engine.statedict import digest_of, weights_digest

    claim = metadata_of(tiny_ckpt)["weights_sha256"]
    other = {k: v + 0.01 if v.is_floating_point() else v for k, v in golden_state.items()}
    honest = save_checkpoint(other, golden_cfg, tmp_path / "honest.safetensors", metadata={"weights_sha256": claim})
    assert metadata_of(honest)["weights_sha256"] == weights_digest(other)  # save_checkpoint writes no claim it was handed
    from safetensors.torch import load_file, save_file

    liar = tmp_path / "liar.safetensors"  # the header forged by hand
    save_file(load_file(honest), liar, metadata={**metadata_of(honest), "weights_sha256": claim})
    assert metadata_of(liar)["weights_sha256"] == claim
    assert digest_of(load_file_model(liar)) == weights_digest(other) != claim
    assert digest_of(load_file_model(tiny_ckpt)) == claim
    assert digest_of(load_file_model(tiny_ckpt, dtype=torch.bfloat16)) == claim  # the file's tensors, not the cast
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    z = tmp_path / "z.safetensors"
    vdvae("encode", "-m", tiny_ckpt, tmp_path / "a.png", "-o", z, "-q", code=0)
    one_error("decode", "-m", liar, z, "-o", tmp_path / "d.png", code=1, says="was made by model")


@pytest.mark.parametrize("scale", [3.0, 1e-320])
def test_a_model_files_pixel_scale_is_checked_before_pixels_are_divided_by_it(tmp_path, tiny_ckpt, scale):
    """pixel_scale divides pixels by round(1 / pixel_scale): 3 made that 0 (every likelihood n/a, every
    reconstruction an error about the weights), 1e-320 an internal OverflowError."""
    import json
    import struct

    from PIL import Image

    blob = tiny_ckpt.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    cfg = json.loads(header["__metadata__"]["vdvae_config"])
    header["__metadata__"]["vdvae_config"] = json.dumps({**cfg, "pixel_scale": scale})
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    model = tmp_path / "scaled.safetensors"
    model.write_bytes(struct.pack("<Q", len(raw)) + raw + blob[8 + n:])
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    for command in (["eval", tmp_path / "a.png"], ["reconstruct", tmp_path / "a.png", "-o", tmp_path / "r.png"]):
        one_error(*command, "-m", model, code=1, says="pixel_scale must be 1/256 to 1")
    assert not (tmp_path / "r.png").exists()


@pytest.mark.parametrize("args", [
    ["sample", "--seed", 2**64, "-o", "{tmp}/x.png"],  # the same images as --seed 0, recorded as another seed
    ["sample", "--seed=-1", "-o", "{tmp}/x.png"],  # the same images as --seed 18446744073709551615
    ["eval", "{tmp}/x.npy", "--seed", 2**63],
    ["train", "{tmp}/x.npy", "-o", "{tmp}/run", "--steps", 1, "--seed", 2**64],  # was an internal ValueError
    ["interpolate", "--seeds", 1, 2**64, "-o", "{tmp}/a.gif"],
])
def test_seeds_are_0_to_2_63_minus_1(tiny_ckpt, tmp_path, data, args):
    args = [str(a).format(tmp=tmp_path) for a in args] + ([] if args[0] == "train" else ["-m", str(tiny_ckpt)])
    one_error(*args, says="must be whole numbers from 0 to 9,223,372,036,854,775,807"
              if args[0] == "interpolate" else "--seed must be a whole number from 0 to 9,223,372,036,854,775,807")
    assert not (tmp_path / "run").exists() and not (tmp_path / "x.png").exists()


def test_training_takes_the_largest_seed(tmp_path):
    """Its noise generator's seed is seed * 1,000,003 + rank: above about 1.8e13 that overflowed torch's
    64 bits (an internal ValueError); it now wraps, unchanged for every seed that worked."""
    import json

    np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8))
    hps = {"name": "tiny8", "dataset": "synthetic", "image_size": 8, "width": 16, "zdim": 4, "num_mixtures": 2,
           "enc_blocks": "8x1,8d2,4x1,4d4,1x1", "dec_blocks": "1x1,4m1,4x1,8m4,8x1",
           "preprocessing": {"shift": -127.5, "scale": 1 / 64.0}}
    (tmp_path / "hps.json").write_text(json.dumps(hps))
    vdvae("train", tmp_path / "x.npy", "--hparams", tmp_path / "hps.json", "-o", tmp_path / "run", "--steps", 1,
          "--holdout", 4, "-b", 4, "-q", "--seed", 2**63 - 1, code=0)


def test_ood_prior_temp_has_the_temperature_range(tiny_ckpt, data):
    """1e300 passed the option's check and failed after the model loaded, naming a layer, not the option."""
    result = runner.invoke(app, ["ood", "-m", str(tiny_ckpt), str(data), "--prior-temp", "1e300"])
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == ["error: --prior-temp must be a number from 0 to 10, got 1e+300"]


def test_latents_far_beyond_any_draw_are_refused(tiny_ckpt, tmp_path):
    """A latents file holding 1e30 decoded with exit 0 to an image that said nothing about it."""
    from PIL import Image
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    z = tmp_path / "z.safetensors"
    vdvae("encode", "-m", tiny_ckpt, tmp_path / "a.png", "-o", z, "-q", code=0)
    with safe_open(str(z), "pt") as f:
        meta = f.metadata()
    tensors = load_file(z)
    tensors["layer.02"] = tensors["layer.02"] + 1e30
    save_file(tensors, tmp_path / "big.safetensors", metadata=meta)
    one_error("decode", "-m", tiny_ckpt, tmp_path / "big.safetensors", "-o", tmp_path / "d.png", code=1,
              says="layer.02 holds values as large as 1e+30, above 10000")
    assert not (tmp_path / "d.png").exists()
    vdvae("encode", "-m", tiny_ckpt, tmp_path / "a.png", "-o", tmp_path / "z.npz", "-q", code=0)
    with np.load(tmp_path / "z.npz") as npz:
        arrays = dict(npz)
    key = next(k for k, v in arrays.items() if v.dtype == np.float32 and v.ndim == 2)
    arrays[key][0, 0] = -3e9
    np.savez(tmp_path / "big.npz", **arrays)
    one_error("decode", "-m", tiny_ckpt, tmp_path / "big.npz", "-o", tmp_path / "d.png", code=1,
              says="holds values as large as 3e+09")


@pytest.mark.parametrize("name, fmt, says", [
    ("z.txt", None, "a latents file ends in .safetensors or .npz"),
    ("z", None, "a latents file ends in .safetensors or .npz"),
    ("z.npz", "safetensors", "the file name says npz"),
])
def test_a_latents_file_is_named_for_what_it_holds(tiny_ckpt, tmp_path, name, fmt, says):
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    one_error("encode", "-m", tiny_ckpt, tmp_path / "a.png", "-o", tmp_path / name,
              *(["--format", fmt] if fmt else []), says=says)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_there_is_one_cpu_device(tiny_ckpt, tmp_path):
    """torch takes cpu:5 and runs on the one CPU device: a typo that said nothing."""
    one_error("sample", "-m", tiny_ckpt, "--device", "cpu:5", "-o", tmp_path / "x.png", says="there is one CPU device")
    vdvae("sample", "-m", tiny_ckpt, "--device", "cpu:0", "-o", tmp_path / "x.png", "-q", code=0)


def test_a_cache_that_is_a_file_is_said_to_be_one(tmp_path, monkeypatch):
    """VDVAE_CACHE naming a file listed the cache as empty."""
    (tmp_path / "file").write_bytes(b"x")
    monkeypatch.setenv("VDVAE_CACHE", str(tmp_path / "file"))
    one_error("cache", says="is not a folder")
    one_error("cache", "--remove-all", says="is not a folder")
    monkeypatch.setenv("VDVAE_CACHE", str(tmp_path / "empty"))
    result = vdvae("cache", "--json", code=0)  # JSON lines: none on stdout, the reason on stderr
    assert result.stdout == "" and "is empty" in result.stderr


def test_save_checkpoint_describes_the_file_from_its_config_not_the_callers_metadata(tmp_path, golden_cfg, golden_state):
    """Metadata copied from another file (scripts/export_shipped.py did) kept that file's config:
    the name given in cfg never reached the written file."""
    import dataclasses
    import json

    from vdvae_cli.modelfiles.checkpoint import read_checkpoint, save_checkpoint
    from vdvae_cli.modelfiles.header import metadata_of

    first = save_checkpoint(golden_state, golden_cfg, tmp_path / "a.safetensors", metadata={"license": "MIT"})
    renamed = dataclasses.replace(golden_cfg, name="renamed")
    second = save_checkpoint(golden_state, renamed, tmp_path / "b.safetensors",
                             metadata={**metadata_of(first), "family": "nvae", "format_version": "9"})
    meta = metadata_of(second)
    assert json.loads(meta["vdvae_config"])["name"] == "renamed" and read_checkpoint(second)[0].name == "renamed"
    assert "family" not in meta and meta["format_version"] == "1" and meta["license"] == "MIT"
