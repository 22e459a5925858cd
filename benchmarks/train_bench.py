"""Training speed of vdvae-cli's step (images/s) against a plain fp32 step, on this machine.

Each variant runs the trainer's own optimizer step (:class:`vdvae_cli.training.step.Updater`:
forward, backward, clipping, the family's optimizer and objective, EMA) on random images; weights are random too, speed does not
depend on them. The *plain* variant is fp32 in NCHW layout, i.e. a straightforward port of the
reference; the others add channels-last layout and/or bf16 autocast (fp32 master weights). The
variants are timed in interleaved rounds, so a busy neighbour slows each alike; the median round counts.

    python benchmarks/train_bench.py                                   # small32, batch 16, this CPU
    python benchmarks/train_bench.py --models small32 small64 --batch 32 --threads 2 --json out.json
    python benchmarks/train_bench.py --models cifar10 --batch 16 --device cuda
    python benchmarks/train_bench.py --models nvae-small32 --variants "fp32 channels-last" --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from copy import deepcopy
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vdvae_cli.engine.distributions import BatchNoise  # noqa: E402
from vdvae_cli.engine.registry import architecture_family, family_of  # noqa: E402
from vdvae_cli.engine.recipe import TrainConfig  # noqa: E402
from vdvae_cli.training.step import ElboLoss, Updater  # noqa: E402

VARIANTS = {  # name: (dtype, channels_last)
    "fp32 (plain)": ("fp32", False),
    "fp32 channels-last": ("fp32", True),
    "bf16 autocast": ("bf16", False),
    "bf16 autocast channels-last": ("bf16", True),
}


def make_step(name: str, dtype: str, channels_last: bool, batch: int, device: torch.device):
    arch = architecture_family(name)  # the family with a preset or official architecture of that name
    preset = name in arch.preset_names()
    size = arch.preset_image_size(name) if preset else arch.official_config(name).image_size
    images = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0)).to(device)
    cfg = arch.preset_config(name, images.cpu()) if preset else arch.official_config(name)
    family = family_of(cfg)  # its recipe: optimizer and objective (NVAE's adds the spectral regulariser)
    tc = TrainConfig(**{**family.train_defaults(name).settings, "steps": 10**6, "dtype": dtype,
                        "channels_last": channels_last, "skip_threshold": -1})
    recipe = family.training_recipe(cfg, tc, 10**6)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = family.network(cfg).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = deepcopy(model).eval().requires_grad_(False)
    loss_fn = ElboLoss(model)
    loss_fn.noise = BatchNoise(torch.Generator(device=device).manual_seed(0))
    updater = Updater(model, ema, recipe.optimizer(model), loss_fn, tc, recipe, total=10**6, world=1, coarse_layers=None)
    counter = iter(range(10**9))

    def step() -> None:
        updater(images, next(counter))
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["small32"], help="presets (small32, small64, nvae-small32) or official names")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; each times --steps steps per variant")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for name in args.models:
        steps = {v: make_step(name, *VARIANTS[v], args.batch, device) for v in args.variants}
        for fn in steps.values():  # warm-up: allocator, oneDNN primitive caches
            fn()
        times: dict[str, list[float]] = {v: [] for v in steps}
        for _ in range(args.rounds):
            for v, fn in steps.items():
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    fn()
                times[v].append((time.perf_counter() - t0) / args.steps)
        base = statistics.median(times[args.variants[0]])
        for v in args.variants:
            sec = statistics.median(times[v])
            rows.append({"model": name, "variant": v, "device": str(device), "batch": args.batch,
                         "threads": torch.get_num_threads(), "seconds_per_step": round(sec, 4),
                         "images_per_s": round(args.batch / sec, 2), "vs_plain_fp32": round(base / sec, 3)})
    print(f"{'model':<12} {'variant':<28} {'batch':>5} {'s/step':>8} {'images/s':>9} {'vs plain fp32':>14}")
    for r in rows:
        print(f"{r['model']:<12} {r['variant']:<28} {r['batch']:>5} {r['seconds_per_step']:>8.3f} "
              f"{r['images_per_s']:>9.2f} {'x' + format(r['vs_plain_fp32'], '.2f'):>14}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
