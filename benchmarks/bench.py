"""Sampling and reconstruction speed of vdvae-cli, with FLOP counts, against a plain eager fp32 path.

Prints a table (model, device, dtype, layout, compiled, batch, images/s, TFLOP/s, % of limit, peak
memory) and writes it as JSON. Weights are random: speed does not depend on their values.

    python benchmarks/bench.py --models cifar10 --batch 8                 # CPU, this machine
    python benchmarks/bench.py --models ffhq256 imagenet64 --batch 64 --device cuda --compile

FLOPs are 2 x conv multiply-adds, counted from the architecture (``flops()``): sampling runs the
prior, latent projection and resnet of every decoder layer plus the output conv; the full forward
adds the encoder and the posterior convs. ``% of limit`` compares with the device's dense peak for
the dtype (``--peak-tflops``; known GPUs are filled in, on CPU it is measured with a large matmul).

The *baseline* row (``plain``) is this package's own network run the plain way: eager fp32, NCHW, no
fused kernels, no compile; the ``vs plain`` ratios are measured against it in the same run. It is
not OpenAI's code: on this project's 2-core CPU the official code took 1.79-1.95 s for a cifar10
batch of 8 (measured outside the project; README, Speed), while this plain path takes about 1.4 s
(it has none of the reference's extra passes, such as adding each resolution's first state to a
tensor of zeros). Where that official time is known (``OFFICIAL_CPU``), rows also carry
``speedup_vs_official_cpu``. On a CPU the variants run in interleaved rounds; compare rows of one
run (a neighbour on the cores slows a multi-threaded run far more than its share).
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

from vdvae_cli.engine import ops  # noqa: E402
from vdvae_cli.families.vdvae.config import VDVAEConfig, official_config  # noqa: E402
from vdvae_cli.families.vdvae.model import VAE  # noqa: E402
from vdvae_cli.engine.runtime import configure_backends, prepare_for_inference  # noqa: E402

# Dense bf16/fp16 tensor-core peak, IEEE fp32 (CUDA-core, no TF32) peak, both TFLOP/s, and memory
# bandwidth (TB/s): datasheet figures (H100 SXM bf16 at the ~790 TFLOP/s measured on random data);
# pass --peak-tflops / --peak-fp32-tflops / --peak-tbps for other parts.
# OpenAI's VDVAE code on this project's 2-core CPU, seconds per batch (two runs; README, Speed).
OFFICIAL_CPU = {("cifar10", "sample", 8): (1.954, 1.792)}
GPU_PEAKS = {"H100": (790.0, 67.0, 3.35), "H200": (989.0, 67.0, 4.8), "A100": (312.0, 19.5, 2.0),
             "L4": (121.0, 30.3, 0.3), "4090": (165.0, 82.6, 1.0)}


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


def traffic(cfg: VDVAEConfig, itemsize: int) -> dict[str, float]:
    """Bytes per image that must cross device memory at the least: every conv reads its input and
    writes its output once (GELU, residual adds and biases fused into them; weights are shared by the
    batch and left out). Gives the memory-bound ceiling in images/s."""

    def block(cin: int, mid: int, cout: int, r: int) -> float:
        return (cin + mid + mid + mid + mid + mid + mid + cout) * r * r * itemsize

    sample = (cfg.width + 10 * cfg.num_mixtures) * cfg.image_size**2 * itemsize
    posterior = 0.0
    for l in cfg.decoder_layers:
        w, m, r, z = l.width, l.middle, l.res, l.zdim
        sample += block(w, m, 2 * z + w, r) + (z + w) * r * r * itemsize + block(w, m, w, r)
        posterior += block(2 * w, m, 2 * z, r)
    encoder = (cfg.image_channels + cfg.width) * cfg.image_size**2 * itemsize
    for l in cfg.encoder_layers:
        encoder += block(l.width, l.middle, l.width, l.res)
    return {"sample": sample, "forward": sample + posterior + encoder}


def cpu_peak(dtype: torch.dtype, seconds: float = 0.5, trials: int = 4) -> float:
    """Dense matmul TFLOP/s on this CPU for ``dtype``: the best of a few short trials (a practical
    ceiling; a shared machine only ever makes a trial slower)."""
    n = 2048
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    a @ b
    best = 0.0
    for _ in range(trials):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ b
            count += 1
        best = max(best, 2 * n**3 * count / (time.perf_counter() - start) / 1e12)
    return best


def cpu_bandwidth(seconds: float = 1.0) -> float:
    """Measured copy bandwidth (TB/s, bytes read + written) of this machine's memory."""
    src = torch.empty(64 * 2**20, dtype=torch.float32).fill_(1.0)  # 256 MB, far past the caches
    dst = torch.empty_like(src)
    dst.copy_(src)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        dst.copy_(src)
        count += 1
    return 2 * src.numel() * 4 * count / (time.perf_counter() - start) / 1e12


def build(cfg: VDVAEConfig, device: torch.device, dtype: torch.dtype, *, channels_last: bool, compile: bool,
          fuse: bool = False) -> VAE:
    torch.manual_seed(0)
    with torch.device("meta"):
        model = VAE(cfg)
    model = model.to_empty(device=device)
    for p in model.parameters():  # small random weights keep activations finite
        torch.nn.init.normal_(p, std=0.02)
    model = model.to(dtype).eval().requires_grad_(False)
    if channels_last or compile:
        model = prepare_for_inference(model, channels_last=channels_last, compile=compile, fuse=fuse)
    configure_backends(device, dtype)
    return model


CPU_TIMES: dict[int, list[float]] = {}  # id(fn) -> process CPU seconds of each timed call


def timed(fn, device: torch.device, repeats: int) -> list[float]:
    """Wall seconds of each call; the process CPU seconds go to CPU_TIMES (with one thread, the work
    itself, which a busy neighbour inflates far less than the wall time)."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        CPU_TIMES.setdefault(id(fn), []).append(time.process_time() - c0)
    return times


def make_case(name: str, task: str, device: torch.device, dtype: torch.dtype, batch: int, *, channels_last: bool,
              compile: bool, fuse: bool):
    """The model for one variant and a function that runs one batch of ``task`` with it."""
    cfg = official_config(name)
    model = build(cfg, device, dtype, channels_last=channels_last, compile=compile, fuse=fuse)
    g = torch.Generator(device=device).manual_seed(0)
    if task == "sample":
        return cfg, lambda: ops.sample(model, batch, temperatures=0.8, noise=g)
    images = torch.randint(0, 256, (batch, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    return cfg, lambda: ops.reconstruct(model, images, noise=g)


def make_row(cfg: VDVAEConfig, task: str, device: torch.device, dtype: torch.dtype, batch: int, *, channels_last: bool,
             compile: bool, fuse: bool, times: list[float], t_first: float, peak_tflops: float | None,
             peak_tbps: float | None, peak_mem: float | None) -> dict:
    sec = statistics.median(times)
    kind = "sample" if task == "sample" else "forward"
    f = flops(cfg)[kind]
    itemsize = torch.empty((), dtype=dtype).element_size()
    bytes_per_image = traffic(cfg, itemsize)[kind]
    bounds = []
    if peak_tflops:
        bounds.append(peak_tflops * 1e12 / f)
    if peak_tbps:
        bounds.append(peak_tbps * 1e12 / bytes_per_image)
    limit = min(bounds) if bounds else None
    images_per_s = batch / sec
    return {
        "model": cfg.name, "task": task, "device": str(device), "dtype": str(dtype).removeprefix("torch."),
        "layout": ("channels_last" if channels_last else "nchw") + ("+fused" if fuse else ""), "compiled": compile,
        "batch": batch, "seconds_per_batch": round(sec, 4), "seconds_all": [round(t, 4) for t in times],
        "first_call_s": round(t_first, 2), "images_per_s": round(images_per_s, 3), "gflop_per_image": round(f / 1e9, 1),
        "tflops": round(f * images_per_s / 1e12, 4), "limit_images_per_s": round(limit, 2) if limit else None,
        "bound": None if not limit else ("compute" if peak_tflops and limit == bounds[0] else "memory"),
        "pct_of_limit": round(100 * images_per_s / limit, 1) if limit else None,
        "peak_mem_gb": None if peak_mem is None else round(peak_mem / 2**30, 2),
    }


def run_group(name: str, task: str, device: torch.device, batch: int, variants, dtypes, *, repeats: int,
              peaks: dict, tbps: float | None) -> list[dict]:
    """Time every variant. On a GPU one after the other (each with its own peak-memory count); on a
    CPU, whose speed drifts with its neighbours, in interleaved rounds (plain, ours, plain, ours...)
    so that the ratios compare the same moments."""
    rows = []
    if device.type == "cuda":
        for d, cl, fuse, comp in variants:
            cfg, fn = make_case(name, task, device, dtypes[d], batch, channels_last=cl, compile=comp, fuse=fuse)
            torch.cuda.empty_cache()
            t_first = timed(fn, device, 1)[0]  # warm-up: compilation and cuDNN autotuning (its trial workspaces
            torch.cuda.empty_cache()           # would swamp the peak), so the peak below is the steady one
            torch.cuda.reset_peak_memory_stats(device)
            times = timed(fn, device, repeats)
            rows.append(make_row(cfg, task, device, dtypes[d], batch, channels_last=cl, compile=comp, fuse=fuse,
                                 times=times, t_first=t_first, peak_tflops=peaks.get(d), peak_tbps=tbps,
                                 peak_mem=torch.cuda.max_memory_allocated(device)))
            del fn
        return rows
    cases = []
    for d, cl, fuse, comp in variants:
        cfg, fn = make_case(name, task, device, dtypes[d], batch, channels_last=cl, compile=comp, fuse=fuse)
        cases.append((d, cl, fuse, comp, cfg, fn, timed(fn, device, 1)[0], []))
    for _ in range(repeats):
        for case in cases:
            case[7].append(timed(case[5], device, 1)[0])
    for d, cl, fuse, comp, cfg, fn, t_first, times in cases:
        rows.append(make_row(cfg, task, device, dtypes[d], batch, channels_last=cl, compile=comp, fuse=fuse,
                             times=times, t_first=t_first, peak_tflops=peaks.get(d), peak_tbps=tbps, peak_mem=None))
        rows[-1]["cpu_seconds_per_batch"] = round(statistics.median(CPU_TIMES[id(fn)][1:]), 4)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | task | dtype | layout | compiled | batch | images/s | TFLOP/s | % of limit | peak GPU mem | vs plain fp32 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        dtype = "fp32 (plain)" if r["plain"] else {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[r["dtype"]]
        mem = f"{r['peak_mem_gb']:.2f} GB" if r["peak_mem_gb"] is not None else "–"
        pct = f"{r['pct_of_limit']:.1f}%" if r["pct_of_limit"] is not None else "–"
        lines.append(f"| {r['model']} | {r['task']} | {dtype} | {r['layout']} | {'yes' if r['compiled'] else 'no'} | "
                     f"{r['batch']} | {r['images_per_s']:.2f} | {r['tflops']:.3f} | {pct} | {mem} | "
                     f"×{r['speedup_vs_plain_fp32']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["cifar10"])
    ap.add_argument("--tasks", nargs="+", default=["sample"], choices=["sample", "reconstruct"])
    ap.add_argument("--batch", type=int, nargs="+", default=[8], help="one or more batch sizes")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd variants")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak of the device (TFLOP/s)")
    ap.add_argument("--peak-fp32-tflops", type=float, default=None, help="IEEE fp32 peak of the GPU (TFLOP/s)")
    ap.add_argument("--peak-tbps", type=float, default=None, help="memory bandwidth of the device (TB/s)")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results.json"))
    ap.add_argument("--markdown", action="store_true", help="also print the table as Markdown (for the README)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    wanted = ["fp32", *[d for d in args.dtypes if d != "fp32"]]
    if device.type == "cpu":
        wanted = [d for d in wanted if d != "fp16"]  # no fp16 conv kernels worth timing on CPU
    peaks: dict[str, float | None] = {}
    tbps = args.peak_tbps
    if device.type == "cpu":
        for d in wanted:
            peaks[d] = args.peak_tflops / (1 if d != "fp32" else 2) if args.peak_tflops else cpu_peak(dtypes[d])
        tbps = tbps or cpu_bandwidth()
        what = f"{torch.get_num_threads()} threads"
    else:
        gpu = torch.cuda.get_device_name(device)
        known = next((v for k, v in GPU_PEAKS.items() if k in gpu), None)
        bf16_peak = args.peak_tflops or (known[0] if known else None)
        fp32_peak = args.peak_fp32_tflops or (known[1] if known else None)
        tbps = tbps or (known[2] if known else None)
        for d in wanted:  # fp32 is IEEE fp32 (TF32 off, as the CLI runs it): CUDA cores, not tensor cores
            peaks[d] = fp32_peak if d == "fp32" else bf16_peak
        what = gpu
    print(f"device {device} ({what}), torch {torch.__version__}; limits: "
          + ", ".join(f"{d} {p:.3f} TFLOP/s" if p else f"{d} ?" for d, p in peaks.items())
          + (f", {tbps:.3f} TB/s" if tbps else ""), file=sys.stderr)

    from vdvae_cli.families.vdvae.fused import available as fused_available

    variants = [("fp32", False, False, False)]  # the plain eager baseline: NCHW, fp32, no compile
    for d in wanted:
        variants.append((d, True, False, False))
        if device.type == "cpu" and fused_available(dtypes[d]):
            variants.append((d, True, True, False))  # oneDNN fused conv+GELU / conv+add
        if args.compile:
            variants.append((d, True, False, True))
    rows = []
    header = (f"{'model':<11}{'task':<12}{'dtype':<11}{'layout':<20}{'compiled':<9}{'batch':>5}{'img/s':>10}"
              f"{'TFLOP/s':>9}{'limit img/s':>12}{'%limit':>7}{'mem GB':>8}{'vs plain':>9}")
    print(header)
    summary = []
    for name in args.models:
        for task in args.tasks:
            for batch in args.batch:
                group_rows = run_group(name, task, device, batch, variants, dtypes, repeats=args.repeats, peaks=peaks,
                                       tbps=tbps)
                base = group_rows[0]
                for row in group_rows:
                    row["plain"] = row is base
                    row["speedup_vs_plain_fp32"] = round(base["seconds_per_batch"] / row["seconds_per_batch"], 2)
                    official = OFFICIAL_CPU.get((name, task, batch)) if device.type == "cpu" else None
                    if official:
                        row["official_seconds"] = list(official)
                        row["speedup_vs_official_cpu"] = [round(o / row["seconds_per_batch"], 2) for o in official]
                    rows.append(row)
                    mem = f"{row['peak_mem_gb']:.2f}" if row["peak_mem_gb"] is not None else "-"
                    pct = f"{row['pct_of_limit']:.1f}" if row["pct_of_limit"] is not None else "-"
                    lim = f"{row['limit_images_per_s']:.1f}" if row["limit_images_per_s"] else "-"
                    label = "plain fp32" if row["plain"] else row["dtype"]
                    print(f"{name:<11}{task:<12}{label:<11}{row['layout']:<20}{str(row['compiled']):<9}{batch:>5}"
                          f"{row['images_per_s']:>10.2f}{row['tflops']:>9.3f}{lim:>12}{pct:>7}{mem:>8}"
                          f"{'x' + str(row['speedup_vs_plain_fp32']):>9}", flush=True)
                group = [r for r in rows if (r["model"], r["task"], r["batch"]) == (name, task, batch) and not r["plain"]]
                fp32 = max((r for r in group if r["dtype"] == "float32"), key=lambda r: r["images_per_s"], default=None)
                best = max(group, key=lambda r: r["images_per_s"], default=None)
                if fp32 and best:
                    summary.append({"model": name, "task": task, "batch": batch,
                                    "fp32_speedup": fp32["speedup_vs_plain_fp32"],
                                    "fastest_speedup": best["speedup_vs_plain_fp32"],
                                    "fp32_vs_official": fp32.get("speedup_vs_official_cpu"),
                                    "fastest_vs_official": best.get("speedup_vs_official_cpu"),
                                    "fastest": f"{best['dtype']} {best['layout']}{' compiled' if best['compiled'] else ''}"})
    print()
    for srow in summary:
        print(f"{srow['model']} {srow['task']} batch {srow['batch']}: our fp32 path x{srow['fp32_speedup']} "
              f"the plain eager fp32 path; fastest ({srow['fastest']}) x{srow['fastest_speedup']}")
        if srow["fp32_vs_official"]:
            print(f"  against the official code on this CPU ({'/'.join(map(str, OFFICIAL_CPU[(srow['model'], srow['task'], srow['batch'])]))} s): "
                  f"fp32 x{'/x'.join(map(str, srow['fp32_vs_official']))} (target x1.3), "
                  f"fastest x{'/x'.join(map(str, srow['fastest_vs_official']))} (target x3)")
    if args.markdown:
        print()
        print(markdown(rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"device": str(device), "device_name": what, "threads": torch.get_num_threads(),
                                     "torch": torch.__version__, "peaks_tflops": peaks, "bandwidth_tbps": tbps,
                                     "command": " ".join(["python", *sys.argv]), "rows": rows, "summary": summary},
                                    indent=1))
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
