"""Peak memory of sampling and reconstruction with the official architectures (random weights).

Each case runs in a fresh process. On a GPU the figure is ``torch.cuda.max_memory_allocated`` of a
second pass (the first pass's peak, which includes cuDNN's autotuning trials, is shown beside it); on a
CPU it is the process's peak resident memory (VmHWM) above what it held once the model was built,
plus the weights: an upper bound for what the same pass needs on a GPU, since the CPU peak also
holds allocator slack.

    python benchmarks/memory.py                                  # the issue's two cases, on CPU
    python benchmarks/memory.py --case ffhq256:sample:bf16:1 --case ffhq256:sample:bf16:8 --device cuda
    python benchmarks/memory.py --case nvae-celebahq256:sample:bf16:1       # NVAE: nvae-<README name>
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CASES = ["ffhq256:sample:bf16:1", "ffhq1024:reconstruct:fp32:1", "ffhq1024:reconstruct:bf16:1"]


def _rss_peak_kb() -> tuple[int, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def run_one(case: str, device_name: str) -> dict:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench import build
    from vdvae_cli.engine import ops
    from vdvae_cli.families.vdvae.config import official_config

    name, task, dtype_name, batch_text = case.split(":")
    batch = int(batch_text)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    device = torch.device(device_name)
    if name.startswith("nvae-"):  # NVAE README architectures, folded as the CLI runs them
        from bench_nvae import build as build_nvae

        model = build_nvae(name.removeprefix("nvae-"), device, dtype, None, True, True)
        cfg = model.cfg
    else:
        cfg = official_config(name)
        model = build(cfg, device, dtype, channels_last=True, compile=False, fuse=device.type == "cpu")
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    g = torch.Generator(device=device).manual_seed(0)
    images = torch.randint(0, 256, (batch, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    def run() -> None:
        if task == "sample":
            ops.sample(model, batch, temperatures=0.8, noise=g)
        else:
            ops.reconstruct(model, images, noise=g)

    first = None
    if device.type == "cuda":
        # The first pass also holds cuDNN's autotuning workspaces (it tries algorithms with whatever
        # memory is free, backing off where an allocation fails): report it, but count the second.
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        run()
        torch.cuda.synchronize()
        first = torch.cuda.max_memory_allocated(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before, _ = _rss_peak_kb()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(device)
        working = peak - weights
    else:
        _, hwm = _rss_peak_kb()
        working = (hwm - before) * 1024
        peak = weights + working
    return {"model": name, "task": task, "dtype": dtype_name, "batch": batch, "device": device_name,
            "weights_gb": round(weights / 2**30, 3), "working_gb": round(working / 2**30, 3),
            "peak_gb": round(peak / 2**30, 3),
            "first_pass_peak_gb": None if first is None else round(first / 2**30, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", action="append", help="MODEL:TASK:DTYPE:BATCH (task sample or reconstruct)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/memory.json"))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.device)))
        return
    rows = []
    print(f"{'model':<18}{'task':<13}{'dtype':<6}{'batch':>6}{'weights GB':>12}{'working GB':>12}{'peak GB':>9}"
          f"{'1st pass GB':>12}")
    for case in args.case or CASES:
        out = subprocess.run([sys.executable, __file__, "--one", case, "--device", args.device],
                             capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{case}: failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{row['model']:<18}{row['task']:<13}{row['dtype']:<6}{row['batch']:>6}{row['weights_gb']:>12.3f}"
              f"{row['working_gb']:>12.3f}{row['peak_gb']:>9.3f}"
              + (f"{row['first_pass_peak_gb']:>12.3f}" if row["first_pass_peak_gb"] is not None else f"{'-':>12}"), flush=True)
    args.json.write_text(json.dumps({"device": args.device, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
