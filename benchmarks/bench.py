"""Sampling and reconstruction speed of vdvae-cli, with FLOP counts, against a plain eager fp32 path.

Prints a table (model, device, dtype, layout, compiled, batch, images/s, TFLOP/s, % of limit, peak
memory) and writes it as JSON. Weights are random: speed does not depend on their values.

    python benchmarks/bench.py --models cifar10 --batch 8                 # CPU, this machine
    python benchmarks/bench.py --models ffhq256 imagenet64 --batch 64 --device cuda --compile

FLOPs are 2 x conv multiply-adds, counted from the architecture (``flops()``): sampling runs the
prior, latent projection and resnet of every decoder layer plus the output conv; the full forward
adds the encoder and the posterior convs. ``% of limit`` compares with the device's dense peak for
the dtype (``--peak-tflops``; known GPUs are filled in, on CPU it is measured with a large matmul).

The *baseline* row is the plain eager fp32 path (NCHW, no compile), i.e. what a straightforward
port of the reference computes; the ratios printed at the end are measured against it in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vdvae_cli import ops  # noqa: E402
from vdvae_cli.config import VDVAEConfig, official_config  # noqa: E402
from vdvae_cli.model import VAE  # noqa: E402
from vdvae_cli.runtime import prepare_for_inference  # noqa: E402

# Dense bf16/fp16 tensor-core peaks (TFLOP/s) and memory bandwidth (TB/s) of common GPUs.
GPU_PEAKS = {"H100": (989.0, 3.35), "H200": (989.0, 4.8), "A100": (312.0, 2.0), "L4": (121.0, 0.3), "4090": (165.0, 1.0)}


def flops(cfg: VDVAEConfig) -> dict[str, float]:
    """FLOPs per image (2 x MACs of every conv) for sampling and for the full posterior forward."""

    def conv(cin: int, cout: int, k: int, r: int) -> float:
        return 2.0 * cin * cout * k * k * r * r

    def block(cin: int, mid: int, cout: int, k: int, r: int) -> float:
        return conv(cin, mid, 1, r) + 2 * conv(mid, mid, k, r) + conv(mid, cout, 1, r)

    sample = conv(cfg.width, 10 * cfg.num_mixtures, 1, cfg.image_size)
    posterior = 0.0
    for l in cfg.decoder_layers:
        w, m, k, r, z = l.width, l.middle, l.kernel, l.res, l.zdim
        sample += block(w, m, 2 * z + w, k, r) + conv(z, w, 1, r) + block(w, m, w, k, r)
        posterior += block(2 * w, m, 2 * z, k, r)
    encoder = conv(cfg.image_channels, cfg.width, 3, cfg.image_size)
    for l in cfg.encoder_layers:
        encoder += block(l.width, l.middle, l.width, l.kernel, l.res)
    return {"sample": sample, "forward": sample + posterior + encoder}


def cpu_peak(dtype: torch.dtype, seconds: float = 1.5) -> float:
    """Measured dense matmul TFLOP/s on this CPU for ``dtype`` (a practical ceiling)."""
    n = 2048
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e12


def build(cfg: VDVAEConfig, device: torch.device, dtype: torch.dtype, *, channels_last: bool, compile: bool) -> VAE:
    torch.manual_seed(0)
    with torch.device("meta"):
        model = VAE(cfg)
    model = model.to_empty(device=device)
    for p in model.parameters():  # small random weights keep activations finite
        torch.nn.init.normal_(p, std=0.02)
    model = model.to(dtype).eval().requires_grad_(False)
    if channels_last or compile:
        model = prepare_for_inference(model, channels_last=channels_last, compile=compile)
    return model


def timed(fn, device: torch.device, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def run_case(name: str, task: str, device: torch.device, dtype: torch.dtype, batch: int, *, channels_last: bool,
             compile: bool, repeats: int, peak_tflops: float | None) -> dict:
    cfg = official_config(name)
    model = build(cfg, device, dtype, channels_last=channels_last, compile=compile)
    g = torch.Generator(device=device).manual_seed(0)
    if task == "sample":
        fn = lambda: ops.sample(model, batch, temperatures=0.8, noise=g)  # noqa: E731
    else:
        images = torch.randint(0, 256, (batch, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        fn = lambda: ops.reconstruct(model, images, noise=g)  # noqa: E731
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_first = timed(fn, device, 1)[0]  # warm-up (and compilation)
    times = timed(fn, device, repeats)
    sec = statistics.median(times)
    f = flops(cfg)["sample" if task == "sample" else "forward"] * batch
    tflops = f / sec / 1e12
    row = {
        "model": name, "task": task, "device": str(device), "dtype": str(dtype).removeprefix("torch."),
        "layout": "channels_last" if channels_last else "nchw", "compiled": compile, "batch": batch,
        "seconds_per_batch": round(sec, 4), "first_call_s": round(t_first, 2),
        "images_per_s": round(batch / sec, 3), "gflop_per_image": round(f / batch / 1e9, 1),
        "tflops": round(tflops, 4),
        "pct_of_limit": round(100 * tflops / peak_tflops, 1) if peak_tflops else None,
        "peak_mem_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
    }
    del model
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["cifar10"])
    ap.add_argument("--tasks", nargs="+", default=["sample"], choices=["sample", "reconstruct"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd variants")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak of the device")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    peaks: dict[str, float | None] = {}
    for d in args.dtypes:
        if args.peak_tflops:
            peaks[d] = args.peak_tflops / (1 if d != "fp32" else 2)
        elif device.type == "cpu":
            peaks[d] = cpu_peak(dtypes[d])
        else:
            gpu = torch.cuda.get_device_name(device)
            peak = next((v[0] for k, v in GPU_PEAKS.items() if k in gpu), None)
            peaks[d] = peak / (1 if d != "fp32" else 2) if peak else None
    print(f"device {device} ({torch.get_num_threads()} threads), peak TFLOP/s by dtype: "
          + ", ".join(f"{d} {p:.3f}" if p else f"{d} ?" for d, p in peaks.items()), file=sys.stderr)

    variants = [("fp32", False, False)]  # the plain eager baseline first
    for d in args.dtypes:
        variants.append((d, True, False))
        if args.compile:
            variants.append((d, True, True))
    rows = []
    header = f"{'model':<11}{'task':<12}{'dtype':<7}{'layout':<14}{'comp':<6}{'batch':>5}{'img/s':>10}{'TFLOP/s':>9}{'%limit':>8}{'mem GB':>8}"
    print(header)
    for name in args.models:
        for task in args.tasks:
            base = None
            for d, cl, comp in variants:
                if d == "fp16" and device.type == "cpu":
                    continue  # no fp16 conv kernels worth timing on CPU
                row = run_case(name, task, device, dtypes[d], args.batch, channels_last=cl, compile=comp,
                               repeats=args.repeats, peak_tflops=peaks.get(d))
                base = base or row
                row["speedup_vs_plain_fp32"] = round(base["seconds_per_batch"] / row["seconds_per_batch"], 2)
                rows.append(row)
                print(f"{row['model']:<11}{task:<12}{row['dtype']:<7}{row['layout']:<14}{str(comp):<6}{row['batch']:>5}"
                      f"{row['images_per_s']:>10.2f}{row['tflops']:>9.3f}{(row['pct_of_limit'] or 0):>8.1f}"
                      f"{(row['peak_mem_gb'] or 0):>8.2f}   x{row['speedup_vs_plain_fp32']}", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"device": str(device), "threads": torch.get_num_threads(),
                                     "torch": torch.__version__, "peaks_tflops": peaks, "rows": rows}, indent=1))
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
