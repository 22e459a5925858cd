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
fused conv + Swish / conv + add kernels (``vdvae_cli.nvae.fused``, the CLI's default), in fp32 and
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vdvae_cli.engine import ops  # noqa: E402
from vdvae_cli.families.nvae.config import readme_config  # noqa: E402
from vdvae_cli.families.nvae.network import NVAE, WNConv2d  # noqa: E402
from vdvae_cli.engine.runtime import configure_backends, prepare_for_inference  # noqa: E402

VARIANTS = {  # name: (dtype, channels_last, cache the WN weight, fold BN + WN with fused kernels)
    "plain fp32 (official path: eager NCHW, BN and WN per call)": (torch.float32, False, False, False),
    "fp32 channels-last": (torch.float32, True, True, False),
    "fp32 channels-last, folded + fused (CLI)": (torch.float32, True, True, True),
    "bf16 channels-last": (torch.bfloat16, True, True, False),
    "bf16 channels-last, folded + fused (CLI)": (torch.bfloat16, True, True, True),
}
# NVIDIA's own code on this project's CPU (seconds per batch, two runs, README: Speed), for the ratios.
OFFICIAL_CPU = {("cifar10", 4): (1.117, 0.983)}


def build(name: str, device: torch.device, dtype: torch.dtype, channels_last: bool, fold: bool, fuse: bool) -> NVAE:
    torch.manual_seed(0)
    model = NVAE(readme_config(name)).to(device=device, dtype=dtype).eval().requires_grad_(False)
    for m in model.modules():
        if isinstance(m, WNConv2d):
            m.fold = fold
    return prepare_for_inference(model, channels_last=channels_last, fuse=fuse)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["cifar10"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    variants = {v: spec for v, spec in VARIANTS.items() if device.type == "cpu" or spec[0] != torch.bfloat16
                or torch.cuda.is_bf16_supported()}
    rows = []
    for name in args.models:
        models = {v: build(name, device, *spec) for v, spec in variants.items()}
        times: dict[str, list[float]] = {v: [] for v in variants}
        load_before = os.getloadavg()[0]
        for r in range(args.repeats + 1):  # the first round warms up and is not counted
            for v, model in models.items():
                configure_backends(device, variants[v][0])
                g = torch.Generator(device=device).manual_seed(0)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                ops.sample(model, args.batch, temperatures=0.7, noise=g)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if r:
                    times[v].append(time.perf_counter() - t0)
        load_after = os.getloadavg()[0]
        base = statistics.median(times[next(iter(variants))])
        official = OFFICIAL_CPU.get((name, args.batch)) if device.type == "cpu" else None
        for v, ts in times.items():
            seconds = statistics.median(ts)
            row = {"model": f"nvae-{name}", "device": str(device), "variant": v, "batch": args.batch,
                   "seconds": round(seconds, 4), "seconds_all": [round(t, 4) for t in ts],
                   "images_per_s": round(args.batch / seconds, 3), "speedup_vs_plain": round(base / seconds, 2),
                   "threads": torch.get_num_threads(), "load_avg_before_after": [load_before, load_after]}
            if official:
                row["speedup_vs_official_cpu"] = [round(o / seconds, 2) for o in official]
            rows.append(row)
            vs = f"  vs official {'/'.join(f'x{x:.2f}' for x in row['speedup_vs_official_cpu'])}" if official else ""
            print(f"{row['model']:18} {v:58} batch {args.batch:3} {seconds:8.3f} s {row['images_per_s']:8.3f} img/s"
                  f"  vs plain x{row['speedup_vs_plain']:.2f}{vs}", flush=True)
        print(f"load average {load_before:.2f} -> {load_after:.2f} on {os.cpu_count()} cores", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
