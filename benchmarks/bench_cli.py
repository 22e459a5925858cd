"""Sampling speed through the real command, ``vdvae sample``, as the marginal cost of a batch.

    python benchmarks/bench_cli.py                                   # both families, fp32 and bf16, CPU
    python benchmarks/bench_cli.py --cases nvae-cifar10:4 --dtypes fp32 --rounds 3
    python benchmarks/bench_cli.py --cases nvae-celebahq256:1 --dtypes fp32 bf16 --batches 1 2

Each case is ``MODEL:BATCH`` (``cifar10``, ``imagenet32``, ``ffhq256``... for VDVAE, ``nvae-NAME``
for NVAE's README architectures), run with random weights written once to ``--workdir`` as
ordinary model files. For every round, dtype and case the command is run twice, with ``k1`` and
``k2`` batches (``--batches``); the difference divided by ``k2 - k1`` is the cost of one batch
with the start-up (imports, loading the file, first-call set-up) cancelled out. Everything the
command does per batch counts: noise from one generator per image, the network, the pixel draw,
writing the PNGs. Runs are interleaved (all variants in each round) and the median over rounds is
reported with the load average and, per measurement, the cores the other processes kept busy
meanwhile (from /proc/stat): a neighbour on a 2-core machine slows a 2-thread run far more than its
share, because the threads wait for each other at every operator. ``--quiet-wait S`` waits up to S
seconds before each measurement for the rest of the machine to fall below 0.3 busy cores. The
marginal CPU seconds are reported too: with ``--threads 1`` they are the work itself, which a busy
machine inflates far less than the wall time.

A second figure comes from the same runs: the seconds the command itself reports for each batch
(``--json``'s ``batch_seconds``: noise, network and pixel draw of that batch, the PNGs left out),
for every batch after the first, median over all of them. The marginal cost subtracts two whole
runs, so the variation of start-up (reading a 525 MB NVAE file, the first batch's weight folding)
lands in it, divided by ``k2 - k1``; the per-batch figure does not see start-up at all and moves
much less from run to run.

The ``official`` column is NVIDIA's / OpenAI's own code timed on this project's 2-core CPU
(outside the project, same random official-size weights, temperature 1, in-process and logits only,
which favours it): the figures in the README's Speed section. Those were measured at another time,
and this machine's speed drifts by 10-25% between sessions, so ``--official-vdvae DIR`` (a checkout
of openai/vdvae) and ``--official-nvae DIR`` (of NVlabs/NVAE) also time the official code in every
round, between our runs (``official_vdvae_time.py``, ``official_nvae_time.py``: the same weights
file, the same conditions), and report the speed-up over that same-moment figure too
(``official_now_seconds``, ``speedup_vs_official_now``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

# Seconds per batch of the official code on this project's CPU (two runs each; README, Speed).
OFFICIAL_CPU = {("nvae-cifar10", 4): (1.117, 0.983), ("cifar10", 8): (1.954, 1.792)}


def model_file(name: str, workdir: Path) -> Path:
    """A model file of ``name``'s official architecture with random weights (made once)."""
    from vdvae_cli.modelfiles.checkpoint import save_checkpoint

    path = workdir / f"random-{name}.safetensors"
    if path.exists():
        return path
    torch.manual_seed(0)
    if name.startswith("nvae-"):
        from vdvae_cli.families.nvae.config import readme_config
        from vdvae_cli.families.nvae.network import NVAE

        cfg = readme_config(name.removeprefix("nvae-"))
        model: torch.nn.Module = NVAE(cfg)  # NVAE's own initialisation (weight norm, BatchNorm at identity)
    else:
        from vdvae_cli.families.vdvae.config import official_config
        from vdvae_cli.families.vdvae.model import VAE

        cfg = official_config(name)  # type: ignore[assignment]
        model = VAE(cfg)  # type: ignore[arg-type]
        with torch.no_grad():
            for p in model.parameters():  # small random weights keep activations finite (as bench.py)
                p.normal_(0.0, 0.02)
    save_checkpoint(model, cfg, path)
    return path


def busy_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine so far (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def others_cores(busy0: tuple[int, int], busy1: tuple[int, int], own_cpu_s: float) -> float:
    """Cores the rest of the machine kept busy over an interval, given our own CPU seconds in it."""
    hz = os.sysconf("SC_CLK_TCK")
    total_s = (busy1[1] - busy0[1]) / hz / (os.cpu_count() or 1)  # wall seconds of the interval
    return max(0.0, ((busy1[0] - busy0[0]) / hz - own_cpu_s) / max(total_s, 1e-9))


def wait_quiet(limit_s: float, threshold: float = 0.3) -> float:
    """Wait (at most ``limit_s``) until the rest of the machine keeps fewer than ``threshold`` cores
    busy over two seconds; returns the last such reading."""
    deadline = time.monotonic() + limit_s
    while True:
        b0 = busy_jiffies()
        time.sleep(2.0)
        busy = others_cores(b0, busy_jiffies(), 0.0)
        if busy < threshold or time.monotonic() >= deadline:
            return busy


def run_once(path: Path, n: int, batch: int, dtype: str, out: Path, threads: int | None
             ) -> tuple[float, float, list[float]]:
    """(wall seconds, CPU seconds, the command's own seconds for each batch) of one ``vdvae sample``."""
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall, batches = _run(path, n, batch, dtype, out, threads)
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime), batches


def _run(path: Path, n: int, batch: int, dtype: str, out: Path, threads: int | None) -> tuple[float, list[float]]:
    cmd = [sys.executable, "-m", "vdvae_cli", "sample", "-m", str(path), "-n", str(n), "-b", str(batch),
           "--seed", "0", "-t", "1", "--output-temp", "1", "--dtype", dtype, "--device", "cpu",
           "-o", f"{out}/", "-f", "-q", "--json"]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, check=True, env=env, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    # every image of a batch carries its batch's seconds: one value per batch, in order
    batches = [r["batch_seconds"] for r in records if r.get("type") == "image"][::batch]
    return wall, batches


def time_official(official_dir: Path, name: str, weights: Path, batch: int, threads: int | None) -> float:
    """Seconds per batch of the official code on ``weights`` (official_vdvae_time.py, official_nvae_time.py)."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if name.startswith("nvae-"):
        cmd = [sys.executable, str(Path(__file__).with_name("official_nvae_time.py")), "--official-dir", str(official_dir),
               "--weights", str(weights), "--batch", str(batch)]
    else:
        cmd = [sys.executable, str(Path(__file__).with_name("official_vdvae_time.py")), "--official-dir", str(official_dir),
               "--weights", str(weights), "--hps", name, "--batch", str(batch)]
    done = subprocess.run(cmd, check=True, env=env, stdout=subprocess.PIPE, text=True)
    return float(json.loads(done.stdout.strip().splitlines()[-1])["seconds_per_batch"])


def markdown(rows: list[dict]) -> str:
    """The README's table (Speed, *Against the official code*): per case and dtype, the official
    code's two times, ours per batch after the first and marginal, each with its speed-ups."""
    lines = ["| network | batch | dtype | official code (two runs) | ours, per batch | speed-up (per batch) "
             "| ours, marginal | speed-up (marginal) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        off = r.get("official_seconds")
        official = " / ".join(f"{o:.3f} s" for o in off) if off else "–"
        up = " / ".join(f"×{x:.2f}" for x in r.get("speedup_vs_official", [])) or "–"
        bup = " / ".join(f"×{x:.2f}" for x in r.get("batch_speedup_vs_official", [])) or "–"
        name = r["model"] if r["model"].startswith("nvae-") else f"{r['model']} (VDVAE)"
        lines.append(f"| {name} | {r['batch']} | {r['dtype']} | {official} | {r['batch_seconds_median']:.3f} s | "
                     f"**{bup}** | {r['seconds_per_batch']:.3f} s | {up} |")
    now = [r for r in rows if "official_now_seconds" in r]
    if now:
        lines += ["", "| network | batch | dtype | official code, same rounds | ours, per batch | speed-up | ours, marginal | speed-up |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in now:
            name = r["model"] if r["model"].startswith("nvae-") else f"{r['model']} (VDVAE)"
            lines.append(f"| {name} | {r['batch']} | {r['dtype']} | {r['official_now_seconds']:.3f} s | "
                         f"{r['batch_seconds_median']:.3f} s | **×{r['batch_speedup_vs_official_now']:.2f}** | "
                         f"{r['seconds_per_batch']:.3f} s | ×{r['speedup_vs_official_now']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=["nvae-cifar10:4", "cifar10:8"], help="MODEL:BATCH")
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--batches", type=int, nargs=2, default=[1, 4], metavar=("K1", "K2"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the runs")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "vdvae-bench-cli")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", action="store_true", help="also print the rows as the README's Markdown table")
    ap.add_argument("--official-vdvae", type=Path, default=None, metavar="DIR",
                    help="a checkout of openai/vdvae: time its decoder in every round too (VDVAE cases)")
    ap.add_argument("--official-nvae", type=Path, default=None, metavar="DIR",
                    help="a checkout of NVlabs/NVAE: time its sampler in every round too (NVAE cases)")
    ap.add_argument("--quiet-wait", type=float, default=0.0, metavar="S",
                    help="before each measurement wait up to S seconds for the other processes to use < 0.3 cores")
    args = ap.parse_args()
    k1, k2 = args.batches
    args.workdir.mkdir(parents=True, exist_ok=True)
    cases = [(c.split(":")[0], int(c.split(":")[1])) for c in args.cases]
    files = {name: model_file(name, args.workdir) for name, _ in cases}
    variants = [(name, batch, dtype) for name, batch in cases for dtype in args.dtypes]
    marginal: dict[tuple, list[float]] = {v: [] for v in variants}
    marginal_cpu: dict[tuple, list[float]] = {v: [] for v in variants}
    others: dict[tuple, list[float]] = {v: [] for v in variants}
    steady: dict[tuple, list[float]] = {v: [] for v in variants}
    loads = [os.getloadavg()[0]]
    official_now: dict[tuple, list[float]] = {c: [] for c in cases}
    for r in range(args.rounds):
        for name, batch in cases:
            official_dir = args.official_nvae if name.startswith("nvae-") else args.official_vdvae
            if official_dir:
                if args.quiet_wait:
                    wait_quiet(args.quiet_wait)
                official_now[(name, batch)].append(time_official(official_dir, name, files[name], batch, args.threads))
                print(f"round {r}: {name} batch {batch}: official code {official_now[(name, batch)][-1]:.3f} s per batch",
                      file=sys.stderr, flush=True)
        for v in variants:
            name, batch, dtype = v
            out = args.workdir / "out"
            if args.quiet_wait:
                wait_quiet(args.quiet_wait)
            b0 = busy_jiffies()
            t1, cpu1, _ = run_once(files[name], k1 * batch, batch, dtype, out, args.threads)
            t2, cpu2, per_batch = run_once(files[name], k2 * batch, batch, dtype, out, args.threads)
            others[v].append(round(others_cores(b0, busy_jiffies(), cpu1 + cpu2), 2))
            marginal[v].append((t2 - t1) / (k2 - k1))
            marginal_cpu[v].append((cpu2 - cpu1) / (k2 - k1))
            steady[v].extend(per_batch[1:])  # the first batch also pays one-off set-up (NVAE folds its weights)
            print(f"round {r}: {name} batch {batch} {dtype}: {t1:.2f} s ({k1} batches), {t2:.2f} s ({k2}): "
                  f"{marginal[v][-1]:.3f} s per batch (CPU {marginal_cpu[v][-1]:.3f} s); batches after the first "
                  f"{', '.join(f'{t:.3f}' for t in per_batch[1:])} s; "
                  f"other processes used {others[v][-1]:.2f} cores", file=sys.stderr, flush=True)
        loads.append(os.getloadavg()[0])
    rows = []
    for v in variants:
        name, batch, dtype = v
        sec = statistics.median(marginal[v])
        row = {"model": name, "batch": batch, "dtype": dtype, "seconds_per_batch": round(sec, 3),
               "seconds_all": [round(t, 3) for t in marginal[v]], "batches": [k1, k2],
               "cpu_seconds_per_batch": round(statistics.median(marginal_cpu[v]), 3),
               "cpu_seconds_all": [round(t, 3) for t in marginal_cpu[v]],
               "other_processes_cores": others[v],
               "load_avg_per_round": loads, "cores": os.cpu_count(), "threads": args.threads or torch.get_num_threads()}
        per_batch = statistics.median(steady[v]) if steady[v] else float("nan")
        row["batch_seconds_median"] = round(per_batch, 3)
        row["batch_seconds_all"] = [round(t, 3) for t in steady[v]]
        official = OFFICIAL_CPU.get((name, batch))
        if official:
            row["official_seconds"] = list(official)
            row["speedup_vs_official"] = [round(o / sec, 2) for o in official]
            row["batch_speedup_vs_official"] = [round(o / per_batch, 2) for o in official]
        if official_now.get((name, batch)):
            now = statistics.median(official_now[(name, batch)])
            row["official_now_seconds"] = round(now, 3)
            row["official_now_all"] = [round(t, 3) for t in official_now[(name, batch)]]
            row["speedup_vs_official_now"] = round(now / sec, 2)
            row["batch_speedup_vs_official_now"] = round(now / per_batch, 2)
            print(f"{name:18} batch {batch:3} {dtype:5} official code now {now:.3f} s: x{now / per_batch:.2f} per batch, "
                  f"x{now / sec:.2f} marginal")
        rows.append(row)
        vs = "/".join(f"x{x:.2f}" for x in row.get("speedup_vs_official", []))
        bvs = "/".join(f"x{x:.2f}" for x in row.get("batch_speedup_vs_official", []))
        print(f"{name:18} batch {batch:3} {dtype:5} marginal {sec:6.3f} s per batch (CPU {row['cpu_seconds_per_batch']:.3f} s)"
              f"{f' {vs}' if official else ''}; per batch after the first {per_batch:6.3f} s"
              + (f" {bvs}   (official {'/'.join(f'{o:.3f}' for o in official)} s)" if official else ""))
    print(f"load average per round: {', '.join(f'{x:.2f}' for x in loads)} ({os.cpu_count()} cores)", file=sys.stderr)
    if args.markdown:
        print()
        print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "torch": torch.__version__,
                                         "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
