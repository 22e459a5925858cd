"""NVAE sampling speed of vdvae-cli against a plain eager fp32 path of the same network.

    python benchmarks/bench_nvae.py --models cifar10 --batch 8            # CPU, this machine
    python benchmarks/bench_nvae.py --models celebahq256 --batch 16 --device cuda

Weights are random (speed does not depend on their values); the architectures are those of NVAE's
README training commands. The *baseline* is the plain eager fp32 NCHW pass with the weight
normalisation recomputed in every conv call, as NVIDIA's code does. The other rows are what the CLI
runs: weight normalisation folded once (``WNConv2d.fold``), channels-last, and bf16. Variants are
timed in interleaved rounds (best of ``--repeats``), so a busy machine slows them all alike.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vdvae_cli.engine import ops  # noqa: E402
from vdvae_cli.families.nvae.config import readme_config  # noqa: E402
from vdvae_cli.families.nvae.network import NVAE, WNConv2d  # noqa: E402
from vdvae_cli.engine.runtime import configure_backends, prepare_for_inference  # noqa: E402

VARIANTS = {  # name: (dtype, channels_last, fold)
    "baseline fp32 (eager NCHW, WN per call)": (torch.float32, False, False),
    "fp32 channels-last": (torch.float32, True, False),
    "fp32 channels-last, WN folded": (torch.float32, True, True),
    "bf16 channels-last": (torch.bfloat16, True, False),
    "bf16 channels-last, WN folded": (torch.bfloat16, True, True),
}


def build(name: str, device: torch.device, dtype: torch.dtype, channels_last: bool, fold: bool) -> NVAE:
    torch.manual_seed(0)
    model = NVAE(readme_config(name)).to(device=device, dtype=dtype).eval().requires_grad_(False)
    for m in model.modules():
        if isinstance(m, WNConv2d):
            m.fold = fold
    return prepare_for_inference(model, channels_last=channels_last)


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
    rows = []
    for name in args.models:
        models = {v: build(name, device, *spec) for v, spec in VARIANTS.items()}
        best = {v: float("inf") for v in VARIANTS}
        for _ in range(args.repeats + 1):  # the first round warms up and is not counted
            for v, model in models.items():
                configure_backends(device, VARIANTS[v][0])
                g = torch.Generator(device=device).manual_seed(0)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                ops.sample(model, args.batch, temperatures=0.7, noise=g)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                best[v] = min(best[v], time.perf_counter() - t0) if _ else best[v]
        base = best[next(iter(VARIANTS))]
        for v, seconds in best.items():
            row = {"model": f"nvae-{name}", "device": str(device), "variant": v, "batch": args.batch,
                   "seconds": round(seconds, 4), "images_per_s": round(args.batch / seconds, 3),
                   "speedup": round(base / seconds, 2), "threads": torch.get_num_threads()}
            rows.append(row)
            print(f"{row['model']:18} {v:42} batch {args.batch:3}  {row['images_per_s']:9.3f} img/s  x{row['speedup']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
