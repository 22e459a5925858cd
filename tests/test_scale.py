"""Scaling out: ``--batch-size auto`` (grow, back off on out-of-memory) and torchrun sharding of
sample / reconstruct / eval, checked image for image against one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vdvae_cli.cli import app
from vdvae_cli.base.errors import DeviceError
from vdvae_cli.engine.runtime import Shard, across_cores, run_in_batches

runner = CliRunner()
CPU = torch.device("cpu")


def vdvae(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.stderr}"
    return result.stdout


def images_in(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.iterdir())}


# --------------------------------------------------------------------------------------------------
# run_in_batches


def _fits(limit: int):
    """A batch function that 'runs out of memory' above ``limit`` images, recording every attempt."""
    attempts: list[int] = []

    def fn(chunk: list[int]) -> list[int]:
        attempts.append(len(chunk))
        if len(chunk) > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [i * 10 for i in chunk]

    return fn, attempts


def test_auto_grows_until_out_of_memory_then_keeps_the_half():
    fn, attempts = _fits(limit=5)
    out = list(run_in_batches(range(40), fn, batch_size=None, device=CPU))
    assert attempts == [1, 2, 4, 8, 4, 4, 4, 4, 4, 4, 4, 4, 1]  # 8 failed once; then 4s; the tail
    assert [i for chunk, _ in out for i in chunk] == list(range(40))  # every image once, in order
    assert all(res == [i * 10 for i in chunk] for chunk, res in out)


def test_auto_stops_growing_at_the_cap_and_fixed_sizes_do_not_grow():
    fn, attempts = _fits(limit=1000)
    list(run_in_batches(range(100), fn, batch_size=None, device=CPU, cap=16))
    assert attempts == [1, 2, 4, 8, 16, 16, 16, 16, 16, 5]
    fn, attempts = _fits(limit=1000)
    list(run_in_batches(range(10), fn, batch_size=4, device=CPU))
    assert attempts == [4, 4, 2]


def test_out_of_memory_with_a_fixed_batch_or_one_image_is_a_clear_error():
    fn, _ = _fits(limit=2)
    with pytest.raises(DeviceError, match="at batch size 4") as info:
        list(run_in_batches(range(10), fn, batch_size=4, device=CPU))
    assert "--batch-size" in info.value.hint
    fn, _ = _fits(limit=0)
    with pytest.raises(DeviceError, match="single image"):
        list(run_in_batches(range(3), fn, batch_size=None, device=CPU))


def test_other_errors_pass_through():
    def fn(chunk):
        raise ValueError("not memory")

    with pytest.raises(ValueError):
        list(run_in_batches(range(3), fn, batch_size=None, device=CPU))


def test_across_cores_runs_one_single_threaded_part_per_thread_and_keeps_the_order():
    seen: list[tuple[list[int], int, str]] = []

    def fn(chunk: list[int]) -> torch.Tensor:
        import threading

        seen.append((chunk, torch.get_num_threads(), threading.current_thread().name))
        return torch.tensor(chunk, dtype=torch.float32)[:, None] * 10

    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        split = across_cores(fn, CPU)
        assert split(list(range(7))).flatten().tolist() == [i * 10.0 for i in range(7)]
        assert sorted(c for c, _, _ in seen) == [[0, 1], [2, 3], [4, 5, 6]]  # three parts, each once
        assert {n for _, n, _ in seen} == {1}  # each with one intra-op thread
        assert len({t for _, _, t in seen}) == 3  # at the same time, on three threads
        assert torch.get_num_threads() == 3  # restored
        seen.clear()
        assert split([5]).flatten().tolist() == [50.0] and seen == [([5], 3, seen[0][2])]  # one image: as is
    finally:
        torch.set_num_threads(before)
    assert across_cores(fn, torch.device("cuda")) is fn


def test_across_cores_raises_what_a_part_raised():
    def fn(chunk: list[int]) -> torch.Tensor:
        if 3 in chunk:
            raise torch.OutOfMemoryError("out of memory")
        return torch.zeros(len(chunk), 1)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(torch.OutOfMemoryError):
            across_cores(fn, CPU)([0, 1, 2, 3])  # the worker's part fails
        assert torch.get_num_threads() == 2
        with pytest.raises(DeviceError, match="at batch size 4"):  # and run_in_batches still says what to do
            list(run_in_batches(range(4), across_cores(fn, CPU), batch_size=4, device=CPU))
    finally:
        torch.set_num_threads(before)


def test_sampling_split_across_cores_gives_the_images_of_one_thread(tmp_path, tiny_ckpt):
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):  # one pass; two parts of 3 and 2 images; three parts
            torch.set_num_threads(threads)
            vdvae("sample", "-n", 5, "--seed", 4, "-b", 5, "-m", tiny_ckpt, "-o", f"{tmp_path / str(threads)}/", "-q")
    finally:
        torch.set_num_threads(before)
    one, two, three = (images_in(tmp_path / str(t)) for t in (1, 2, 3))
    assert len(one) == 5 and one.keys() == two.keys() == three.keys()
    for name in one:
        np.testing.assert_array_equal(one[name], two[name])
        np.testing.assert_array_equal(one[name], three[name])


def test_shards_cover_every_index_once():
    parts = [list(Shard(r, 3).indices(10)) for r in range(3)]
    assert parts == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert list(Shard().indices(4)) == [0, 1, 2, 3] and Shard().main
    assert len(Shard(1, 4).indices(10**12)) == 250_000_000_000  # lazy: no list of a trillion numbers


def test_batch_size_auto_gives_the_same_images_as_fixed(tmp_path, tiny_ckpt):
    for b in ("auto", "2", "5"):
        vdvae("sample", "-n", 5, "--seed", 4, "-b", b, "-m", tiny_ckpt, "-o", f"{tmp_path / b}/", "-q")
    auto, two, five = (images_in(tmp_path / b) for b in ("auto", "2", "5"))
    assert len(auto) == 5 and auto.keys() == two.keys() == five.keys()
    for name in auto:
        np.testing.assert_array_equal(auto[name], two[name])
        np.testing.assert_array_equal(auto[name], five[name])


@pytest.mark.parametrize("bad", ["0", "-3", "many", "2.5"])
def test_bad_batch_size_is_a_usage_error(bad, tiny_ckpt, tmp_path):
    result = runner.invoke(app, ["sample", "-m", str(tiny_ckpt), "-b", bad, "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: --batch-size must be a whole number >= 1 or auto, got {bad!r}"]


# --------------------------------------------------------------------------------------------------
# torchrun: two gloo processes against one process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, ranks: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--master-port",
           str(_free_port()), "-m", "vdvae_cli", *map(str, args), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture()
def pics(tmp_path) -> Path:
    """Five 32x32 images in a folder."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(5):
        img = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8).repeat(4, 0).repeat(4, 1)
        Image.fromarray(img).save(folder / f"img{i}.png")
    return folder


@pytest.mark.slow
def test_torchrun_sample_writes_what_one_process_writes(tmp_path, tiny_ckpt):
    proc = torchrun("sample", "-n", 7, "--seed", 11, "--temp", "0.7", "-b", 2, "-m", tiny_ckpt,
                    "-o", f"{tmp_path / 'two'}/", "--json")
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert sorted(r["index"] for r in records) == list(range(7))  # each image written once, by one rank
    vdvae("sample", "-n", 7, "--seed", 11, "--temp", "0.7", "-b", 3, "-m", tiny_ckpt, "-o", f"{tmp_path / 'one'}/", "-q")
    two, one = images_in(tmp_path / "two"), images_in(tmp_path / "one")
    assert len(one) == 7 and two.keys() == one.keys()
    for name in one:
        np.testing.assert_array_equal(two[name], one[name])
    # A grid is gathered on rank 0 and written once.
    torchrun("sample", "-n", 7, "--seed", 11, "--temp", "0.7", "-m", tiny_ckpt, "--grid", "-o", tmp_path / "g2.png", "-q")
    vdvae("sample", "-n", 7, "--seed", 11, "--temp", "0.7", "-m", tiny_ckpt, "--grid", "-o", tmp_path / "g1.png", "-q")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "g2.png")), np.asarray(Image.open(tmp_path / "g1.png")))


@pytest.mark.slow
def test_torchrun_reconstruct_and_eval_match_one_process(tmp_path, tiny_ckpt, pics):
    torchrun("reconstruct", pics, "--keep-layers", 4, "--seed", 2, "-b", 1, "-m", tiny_ckpt, "-o", f"{tmp_path / 'r2'}/", "-q")
    vdvae("reconstruct", pics, "--keep-layers", 4, "--seed", 2, "-m", tiny_ckpt, "-o", f"{tmp_path / 'r1'}/", "-q")
    two, one = images_in(tmp_path / "r2"), images_in(tmp_path / "r1")
    assert len(one) == 5 and two.keys() == one.keys()
    for name in one:
        np.testing.assert_array_equal(two[name], one[name])

    proc = torchrun("eval", pics, "--seed", 5, "-m", tiny_ckpt, "--json")
    rows = [json.loads(line) for line in proc.stdout.splitlines()]  # rank 0 alone reports, in input order
    single = [json.loads(line) for line in vdvae("eval", pics, "--seed", 5, "-m", tiny_ckpt, "--json").splitlines()]
    assert [r.get("index") for r in rows] == [0, 1, 2, 3, 4, None]
    for a, b in zip(rows, single):
        assert a["type"] == b["type"]
        assert a["bits_per_dim"] == pytest.approx(b["bits_per_dim"], rel=1e-6)
    assert rows[-1]["type"] == "summary" and rows[-1]["images"] == 5
    assert rows[-1]["bits_per_dim"] == pytest.approx(np.mean([r["bits_per_dim"] for r in single[:-1]]), rel=1e-6)


def test_encode_refuses_to_split(tmp_path, tiny_ckpt, pics, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = runner.invoke(app, ["encode", str(pics), "-m", str(tiny_ckpt), "-o", str(tmp_path / "z.safetensors")])
    assert result.exit_code == 2 and "does not split across processes" in result.stderr
