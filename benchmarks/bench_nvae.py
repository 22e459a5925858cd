"""NVAE sampling speed of vdvae-cli against a plain eager fp32 path of the same network.

    python benchmarks/bench_nvae.py --models cifar10 --batch 4            # CPU, this machine
    python benchmarks/bench_nvae.py --models celebahq256 --batch 1 --repeats 3
    python benchmarks/bench_nvae.py --models celebahq256 --batch 16 --device cuda

Weights are random (``NVAE(cfg)``'s initialisation; speed does not depend on their values); the
architectures are those of NVAE's README training commands. Every row is one batch through
``ops.sample`` at temperature 0.7 (prior, flows skipped as in sampling, image head, pixel draw).

The *baseline* row (``plain``) is the path NVIDIA's code takes: eager fp32, NCHW, BatchNorm and Swish
as separate passes, the weight normalisation recomputed in every conv call. On this project's 2-core
CPU, when nothing else runs, it takes what NVIDIA's own code took there (about 1.0-1.1 s for a
cifar10 batch of 4, measured outside the project: README, Speed). The other rows are what the CLI
runs: channels-last, then BatchNorm and weight normalisation folded into the convs with oneDNN's
fused conv + Swish / conv + add kernels (``vdvae_cli.families.nvae.fused``, the CLI's default), in fp32 and
bf16. Variants are timed in interleaved rounds and the median is reported, with the load average
before and after: a neighbour using the cores slows a 2-thread run far more than its share (the
threads wait for each other at every operator), so compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vdvae_cli.engine import ops  # noqa: E402
from vdvae_cli.families.nvae.config import readme_config  # noqa: E402
from vdvae_cli.families.nvae.network import NVAE, WNConv2d  # noqa: E402
from vdvae_cli.engine.runtime import configure_backends, prepare_for_inference  # noqa: E402

VARIANTS = {  # name: (dtype, channels-last (None: the CLI's choice), cache the WN weight, fold BN + WN)
    "plain fp32 (official path: eager NCHW, BN and WN per call)": (torch.float32, False, False, False),
    "fp32 channels-last": (torch.float32, True, True, False),
    "fp32 folded + fused (CLI)": (torch.float32, None, True, True),
    "bf16 channels-last": (torch.bfloat16, True, True, False),
    "bf16 folded + fused (CLI)": (torch.bfloat16, None, True, True),
    "fp16 folded (CLI)": (torch.float16, None, True, True),
}
CPU_VARIANTS = [v for v in VARIANTS if not v.startswith("fp16")]  # no fp16 conv kernels worth timing on CPU
CUDA_VARIANTS = ["plain fp32 (official path: eager NCHW, BN and WN per call)", "fp32 folded + fused (CLI)",
                 "bf16 folded + fused (CLI)", "fp16 folded (CLI)"]
# NVIDIA's own code on this project's CPU (seconds per batch, two runs, README: Speed), for the ratios.
OFFICIAL_CPU = {("cifar10", "sample", 4): (1.117, 0.983)}


def build(name: str, device: torch.device, dtype: torch.dtype, channels_last: bool | None, fold: bool,
          fuse: bool) -> NVAE:
    torch.manual_seed(0)
    model = NVAE(readme_config(name)).to(device=device, dtype=dtype).eval().requires_grad_(False)
    for m in model.modules():
        if isinstance(m, WNConv2d):
            m.fold = fold
    return prepare_for_inference(model, channels_last=channels_last, fuse=fuse)


def task_fn(model: NVAE, task: str, batch: int, device: torch.device) -> Callable[[], object]:
    g = torch.Generator(device=device).manual_seed(0)
    if task == "sample":
        return lambda: ops.sample(model, batch, temperatures=0.7, noise=g)
    size = model.cfg.image_size
    images = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return lambda: ops.reconstruct(model, images, noise=g)


CPU_TIMES: dict[int, list[float]] = {}  # id(fn) -> process CPU seconds of each timed call


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one call (its process CPU seconds go to CPU_TIMES: with one thread that is the
    work itself, which a busy neighbour does not inflate the way it inflates the wall time)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    CPU_TIMES.setdefault(id(fn), []).append(time.process_time() - c0)
    return time.perf_counter() - t0


def run_group(name: str, task: str, batch: int, device: torch.device, variants: list[str], repeats: int
              ) -> dict[str, tuple[list[float], float | None, list[float]]]:
    """Seconds per batch of every variant (and the CUDA peak memory). CPU: interleaved rounds, the
    first one not counted; CUDA: one variant after the other, each with its own peak."""
    out: dict[str, tuple[list[float], float | None, list[float]]] = {}
    if device.type == "cuda":
        for v in variants:
            dtype = VARIANTS[v][0]
            model = build(name, device, *VARIANTS[v])
            configure_backends(device, dtype)
            fn = task_fn(model, task, batch, device)
            timed(fn, device)  # warm-up: cuDNN autotuning (its trial workspaces would swamp the peak)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            times = [timed(fn, device) for _ in range(repeats)]
            out[v] = (times, torch.cuda.max_memory_allocated(device) / 2**30, CPU_TIMES[id(fn)][1:])
            del model, fn
            torch.cuda.empty_cache()
        return out
    fns = {}
    for v in variants:
        fns[v] = task_fn(build(name, device, *VARIANTS[v]), task, batch, device)
    times: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(repeats + 1):
        for v, fn in fns.items():
            configure_backends(device, VARIANTS[v][0])
            t = timed(fn, device)
            if r:
                times[v].append(t)
    return {v: (ts, None, CPU_TIMES[id(fns[v])][1:]) for v, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["cifar10"])
    ap.add_argument("--tasks", nargs="+", default=["sample"], choices=["sample", "reconstruct"])
    ap.add_argument("--batch", type=int, nargs="+", default=[4])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS),
                    help="default: every variant that runs on the device (the plain one first)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    variants = args.variants or (CUDA_VARIANTS if device.type == "cuda" else CPU_VARIANTS)
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        variants = [v for v in variants if not v.startswith("bf16")]
    rows = []
    for name in args.models:
        for task in args.tasks:
            for batch in args.batch:
                load_before = os.getloadavg()[0]
                result = run_group(name, task, batch, device, variants, args.repeats)
                load_after = os.getloadavg()[0]
                base = statistics.median(result[variants[0]][0])
                official = OFFICIAL_CPU.get((name, task, batch)) if device.type == "cpu" else None
                for v, (ts, peak, cpu) in result.items():
                    seconds = statistics.median(ts)
                    row = {"model": f"nvae-{name}", "task": task, "device": str(device), "variant": v, "batch": batch,
                           "seconds": round(seconds, 4), "seconds_all": [round(t, 4) for t in ts],
                           "cpu_seconds": round(statistics.median(cpu), 4),
                           "images_per_s": round(batch / seconds, 3),
                           "speedup_vs_first": round(base / seconds, 2), "baseline": variants[0],
                           "peak_mem_gb": None if peak is None else round(peak, 2),
                           "threads": torch.get_num_threads(), "load_avg_before_after": [load_before, load_after]}
                    if official:
                        row["official_seconds"] = list(official)
                        row["speedup_vs_official_cpu"] = [round(o / seconds, 2) for o in official]
                    rows.append(row)
                    vs = (f"  vs official x{'/x'.join(f'{x:.2f}' for x in row['speedup_vs_official_cpu'])}"
                          if official else "")
                    mem = f"  peak {peak:.2f} GB" if peak is not None else ""
                    print(f"{row['model']:17} {task:11} {v:58} batch {batch:3} {seconds:8.3f} s "
                          f"(CPU {row['cpu_seconds']:7.3f} s) "
                          f"{row['images_per_s']:9.3f} img/s  vs first x{row['speedup_vs_first']:.2f}{vs}{mem}",
                          flush=True)
                print(f"load average {load_before:.2f} -> {load_after:.2f} on {os.cpu_count()} cores", file=sys.stderr)
                if args.json:  # after every group: a run cut short by a time limit keeps what it measured
                    args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
