"""The VDVAE paper's comparison on this machine: hierarchical VAEs against PixelCNN++ on the same
data, one row per model file: parameters, test bits/dim (a VAE's negative ELBO, an upper bound; the
autoregressive model's exact likelihood), sampling speed at batch 1 and batch 64, and the sample
quality of ``scripts/evaluate_fashion32.py`` (classifier confidence, Frechet distance). A VAE with
a learned prior beside it (``NAME.prior.safetensors``) gets a second row with it.

    python benchmarks/compare_families.py weights/fashion.safetensors /work/runs/px-fashion/model.safetensors \\
        --data /work/data/fashion-mnist-grey --n-test 2000 --samples 200 --threads 1 --json benchmarks/compare-fashion.json

Each model runs with ``--threads`` intra-op threads in this one process, one model after another (a
busy neighbour slows them all; rerun on a quiet machine for figures to quote). Sampling times are
wall seconds of ``ops.sample`` at the model's recommended temperatures, after one warm-up batch of 1.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from evaluate_fashion32 import classify, load_classifier, quality  # noqa: E402

from vdvae_cli.modelfiles.priors import read_prior  # noqa: E402
from vdvae_cli.engine import ops  # noqa: E402
from vdvae_cli.engine.companion import companion_path  # noqa: E402
from vdvae_cli.engine.registry import family_of  # noqa: E402
from vdvae_cli.engine.temperature import parse_temperature_spec  # noqa: E402
from vdvae_cli.modelfiles.checkpoint import load_file_model  # noqa: E402


def test_bits(model, images: np.ndarray, batch: int = 100, prior=None) -> float:
    total = 0.0
    g = torch.Generator().manual_seed(0)
    for start in range(0, len(images), batch):
        x = torch.from_numpy(images[start : start + batch])
        total += float(ops.elbo(model, x, noise=g, prior=prior).nll_bound.double().sum())
    return total / len(images) / math.log(2)


def timed_sample(model, n: int, temps, output_temp: float, prior=None) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    images = ops.sample(model, n, temperatures=temps, output_temperature=output_temp,
                        noise=torch.Generator().manual_seed(n), prior=prior)
    return time.perf_counter() - t0, images


def print_table(rows: list[dict], real: dict, samples: int) -> None:
    print("| model | family | training (min, 1 core) | parameters | test bits/dim | images/s (batch 1) | images/s (batch 64) | "
          f"classifier >= 90% sure ({samples}) | Frechet |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        bound = "" if r["bound"] == "exact" else " (ELBO)"
        mins = f"{r['training_minutes']:g}" if r["training_minutes"] else "?"
        print(f"| {r['name']} | {r['family']} | {mins} | {r['parameters'] / 1e6:.2f}M | {r['test_bits_per_dim']:.3f}{bound} | "
              f"{r['images_per_s_batch1']:.3g} | {r['images_per_s_batch64']:.3g} | "
              f"{100 * r['samples']['share_conf_ge_0.9']:.1f}% | {r['samples']['frechet_distance']:.1f} |")
    print(f"| real test images | | | | | | | {100 * real['share_conf_ge_0.9']:.1f}% | {real['frechet_distance']:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", type=Path)
    ap.add_argument("--data", type=Path, default=Path("/work/data/fashion-mnist-grey"))
    ap.add_argument("--n-test", type=int, default=2000, help="test images for bits/dim")
    ap.add_argument("--samples", type=int, default=200, help="samples judged by the classifier (batches of 64)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--labels", help="comma-separated row names, one per model [the model's name]")
    ap.add_argument("--minutes", help="comma-separated training minutes, one per model [the file's train_wall_time_min]")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--grids", type=Path, help="also write each row's first 32 samples as PNG grids into this folder")
    ap.add_argument("--table-from", type=Path, nargs="+", help="only print one table from these --json files")
    args = ap.parse_args()
    if args.table_from:
        parts = [json.loads(p.read_text()) for p in args.table_from]
        print_table([r for part in parts for r in part["rows"]], parts[0]["real_test_images"],
                    parts[0]["rows"][0]["samples"]["n"])
        return
    torch.set_num_threads(args.threads)
    train, test = np.load(args.data / "train.npz"), np.load(args.data / "test.npz")
    x_te = test["images"]
    net = load_classifier(args.data / "classifier.pt", train["images"], train["labels"])
    _, ref_feats = classify(net, x_te)
    rows = []
    runs = []
    labels = args.labels.split(",") if args.labels else [None] * len(args.models)
    minutes = args.minutes.split(",") if args.minutes else [None] * len(args.models)
    for path, label, mins in zip(args.models, labels, minutes):  # each model, and each VAE again with its learned prior
        runs.append((path, None, label, mins))
        if companion_path(path).is_file():
            runs.append((path, companion_path(path), label, mins))
    for path, prior_path, label, mins in runs:
        model = load_file_model(path)
        cfg = model.cfg
        prior = read_prior(prior_path, model) if prior_path else None
        temps = parse_temperature_spec(model.default_temperature or "1.0", cfg)
        output_temp = float(model.default_output_temperature or 1.0)
        bits = test_bits(model, x_te[: args.n_test], prior=prior)
        timed_sample(model, 1, temps, output_temp, prior)  # warm-up
        one, _ = timed_sample(model, 1, temps, output_temp, prior)
        drawn, seconds = [], []
        while sum(len(d) for d in drawn) < max(64, args.samples):
            s, images = timed_sample(model, 64, temps, output_temp, prior)
            seconds.append(s)
            drawn.append(images.numpy())
        samples = np.concatenate(drawn)[: args.samples]
        if args.grids:
            from vdvae_cli.training.evaluation import save_grid

            args.grids.mkdir(parents=True, exist_ok=True)
            slug = "".join(ch if ch.isalnum() else "-" for ch in (label or cfg.name)).strip("-").lower()
            save_grid(torch.from_numpy(samples[:32]), args.grids / f"{slug}{'-prior' if prior else ''}.png", 8)
        q = quality(net, samples, ref_feats[args.samples :])
        from vdvae_cli.modelfiles.header import metadata_of

        mins = mins or metadata_of(path).get("train_wall_time_min")
        row = {"model": str(path), "name": (label or cfg.name) + (" + learned prior" if prior else ""),
               "training_minutes": float(mins) if mins else None,
               "prior": str(prior_path) if prior_path else None, "family": family_of(cfg).name, "parameters": sum(p.numel() for p in model.parameters()),
               "latent_layers": cfg.n_layers, "test_bits_per_dim": round(bits, 4), "bound": "elbo" if cfg.n_layers else "exact",
               "n_test": args.n_test, "images_per_s_batch1": round(1 / one, 3),
               "images_per_s_batch64": round(64 / min(seconds), 3), "samples": q,
               "temperature": model.default_temperature, "output_temperature": output_temp, "threads": args.threads}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    real = quality(net, x_te[: args.samples], ref_feats[args.samples :])
    print_table(rows, real, args.samples)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "real_test_images": real}, indent=2) + "\n")


if __name__ == "__main__":
    main()
