"""Restoration with the VAE prior (``vdvae inpaint | upscale | denoise | deblur``) against classical
baselines, on held-out images: PSNR, SSIM and seconds per image.

    python scripts/prepare_fashion_mnist.py -o /work/data/fashion-mnist     # once
    python scripts/prepare_mnist.py -o /work/data/mnist32.npz               # once (out of domain)
    python benchmarks/restore.py --data /work/data/fashion-mnist/test.npz --n 100 --json fashion.json
    python benchmarks/restore.py --data /work/data/mnist32.npz --n 100 --json mnist.json

Tasks (every observation is rounded to 8 bits, as a PNG would hold it; the random ones are seeded):

* ``hole``: a centre 12x12 hole (pixels 10-21 of a 32x32 image); ``missing70``: 70% of the pixels
  missing at random. Baseline: harmonic inpainting (Laplace's equation in the holes, the known
  pixels as boundary values, reflecting image edges), solved exactly with scipy's sparse solver.
* ``x4``: the image area-averaged to 8x8 (the operator ``vdvae upscale`` assumes). Baseline: bicubic
  (Pillow's BICUBIC resize).
* ``noise0.1``: additive white Gaussian noise of sigma 0.1 (25.5 grey levels). Baselines: the best
  Gaussian filter (its width picked on these very images: an oracle) and non-local means (Buades,
  Coll & Morel 2005; 5x5 patches, 11x11 search, filtering strength picked the same way).
* ``blur1.5``: a Gaussian blur of sigma 1.5 pixels (circular, as ``vdvae deblur`` assumes) plus noise
  of sigma 0.01 (2.55 grey levels, a usual level in the deblurring literature). Baseline: Wiener
  deconvolution with the known kernel, its noise-to-signal ratio picked on these images (an oracle).

The VAE rows run the engine function the commands run (:func:`vdvae_cli.engine.restore.restore`)
with the commands' defaults for the task (``TASK_DEFAULTS``), ``--posterior mean`` (the
deterministic answer) unless ``--posterior sample``. Metrics are the mean over images of the per-image
PSNR (peak 255) and SSIM (Wang et al. 2004: Gaussian window sigma 1.5, 11x11, on the grey values).
Seconds per image are wall-clock on this machine with ``torch.get_num_threads()`` threads.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

TASKS = ("hole", "missing70", "x4", "noise0.1", "blur1.5")
TASK_LABEL = {"hole": "centre 12x12 hole", "missing70": "70% pixels missing", "x4": "x4 upscaling",
              "noise0.1": "denoising sigma 0.1", "blur1.5": "deblurring sigma 1.5 (+ noise 0.01)"}
BLUR_NOISE = 0.01


# --------------------------------------------------------------------------------------------------
# Metrics


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images (peak 255); 99 for identical images."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _gauss_filter_valid(x: np.ndarray, sigma: float = 1.5, radius: int = 5) -> np.ndarray:
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 * (t / sigma) ** 2)
    g /= g.sum()
    rows = np.apply_along_axis(lambda r: np.convolve(r, g, mode="valid"), 1, x)
    return np.apply_along_axis(lambda c: np.convolve(c, g, mode="valid"), 0, rows)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM (Wang et al. 2004) of the grey values of two uint8 (H, W, 3) images."""
    x, y = a.astype(np.float64).mean(axis=-1), b.astype(np.float64).mean(axis=-1)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = _gauss_filter_valid(x), _gauss_filter_valid(y)
    sxx = _gauss_filter_valid(x * x) - mx * mx
    syy = _gauss_filter_valid(y * y) - my * my
    sxy = _gauss_filter_valid(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(s.mean())


# --------------------------------------------------------------------------------------------------
# Degradations (numpy, seeded)


def centre_hole(size: int, hole: int = 12) -> np.ndarray:
    """(H, W) bool, True = keep."""
    keep = np.ones((size, size), dtype=bool)
    a = (size - hole) // 2
    keep[a:a + hole, a:a + hole] = False
    return keep


def blur_circular(x: np.ndarray, std: float) -> np.ndarray:
    """Circular Gaussian blur of (H, W, C) floats, the kernel of ``engine.restore.gaussian_kernel``."""
    import torch

    from vdvae_cli.engine.restore import GaussianBlur

    t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None])).float()
    return GaussianBlur(std).apply(t)[0].numpy().transpose(1, 2, 0).astype(np.float64)


def degrade(task: str, clean: np.ndarray, rng: np.random.Generator) -> dict:
    """The observation of ``task`` for uint8 (H, W, 3) ``clean``: {"y": uint8, "keep": bool (H, W)}."""
    size = clean.shape[0]
    x = clean.astype(np.float64) / 255
    if task in ("hole", "missing70"):
        keep = centre_hole(size) if task == "hole" else rng.random((size, size)) >= 0.7
        y = np.where(keep[..., None], clean, 0).astype(np.uint8)
        return {"y": y, "keep": keep}
    if task == "x4":
        low = x.reshape(size // 4, 4, size // 4, 4, 3).mean(axis=(1, 3))
        return {"y": np.clip(np.round(low * 255), 0, 255).astype(np.uint8)}
    if task == "noise0.1":
        noisy = x + 0.1 * rng.standard_normal(x.shape[:2])[..., None]  # the same noise on R, G, B: a grey image
        return {"y": np.clip(np.round(noisy * 255), 0, 255).astype(np.uint8)}
    if task == "blur1.5":
        noisy = blur_circular(x, 1.5) + BLUR_NOISE * rng.standard_normal(x.shape[:2])[..., None]
        return {"y": np.clip(np.round(noisy * 255), 0, 255).astype(np.uint8)}
    raise ValueError(task)


# --------------------------------------------------------------------------------------------------
# Classical baselines (numpy / scipy)


def harmonic_inpaint(y: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Laplace's equation in the holes (4-neighbour, reflecting edges), known pixels fixed."""
    from scipy.sparse import lil_matrix
    from scipy.sparse.linalg import spsolve

    h, w = keep.shape
    holes = np.argwhere(~keep)
    if len(holes) == 0:
        return y.copy()
    index = -np.ones((h, w), dtype=np.int64)
    index[~keep] = np.arange(len(holes))
    a = lil_matrix((len(holes), len(holes)))
    b = np.zeros((len(holes), y.shape[2]))
    yf = y.astype(np.float64)
    for k, (i, j) in enumerate(holes):
        for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            p, q = i + di, j + dj
            if not (0 <= p < h and 0 <= q < w):
                continue  # reflecting edge: no flux
            a[k, k] += 1
            if keep[p, q]:
                b[k] += yf[p, q]
            else:
                a[k, index[p, q]] -= 1
    out = yf.copy()
    sol = spsolve(a.tocsr(), b)
    out[~keep] = sol.reshape(len(holes), -1)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def bicubic(y: np.ndarray, factor: int) -> np.ndarray:
    from PIL import Image

    size = y.shape[0] * factor
    return np.asarray(Image.fromarray(y).resize((size, size), Image.Resampling.BICUBIC))


def gaussian_filter(y: np.ndarray, std: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter as gf

    out = gf(y.astype(np.float64), sigma=(std, std, 0), mode="reflect")
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def nl_means(y: np.ndarray, h: float, patch: int = 5, window: int = 11) -> np.ndarray:
    """Non-local means (Buades et al. 2005) of the grey values: each pixel is the average of the
    pixels in its ``window`` whose ``patch``-sized neighbourhoods look alike, weighted by
    exp(-max(d^2 - 2 s^2, 0) / h^2) with d^2 the mean squared patch difference (s = h here)."""
    x = y.astype(np.float64).mean(axis=-1)
    pr, wr = patch // 2, window // 2
    padded = np.pad(x, pr + wr, mode="reflect")
    hh, ww = x.shape
    box = np.ones(patch) / patch

    def local_mean(img: np.ndarray) -> np.ndarray:
        rows = np.apply_along_axis(lambda r: np.convolve(r, box, mode="valid"), 1, img)
        return np.apply_along_axis(lambda c: np.convolve(c, box, mode="valid"), 0, rows)

    total = np.zeros_like(x)
    weights = np.zeros_like(x)
    centre = padded[wr:wr + hh + 2 * pr, wr:wr + ww + 2 * pr]
    for di in range(-wr, wr + 1):
        for dj in range(-wr, wr + 1):
            shifted = padded[wr + di:wr + di + hh + 2 * pr, wr + dj:wr + dj + ww + 2 * pr]
            d2 = local_mean((centre - shifted) ** 2)
            wgt = np.exp(-np.maximum(d2 - 2 * h * h, 0) / (h * h))
            total += wgt * shifted[pr:pr + hh, pr:pr + ww]
            weights += wgt
    out = total / weights
    return np.repeat(np.clip(np.round(out), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def wiener(y: np.ndarray, std: float, nsr: float) -> np.ndarray:
    """Wiener deconvolution with the known circular Gaussian kernel and noise-to-signal ratio ``nsr``."""
    import torch

    from vdvae_cli.engine.restore import GaussianBlur

    x = y.astype(np.float64) / 255
    otf = GaussianBlur(std)._otf(x.shape[:2], torch.device("cpu")).numpy()
    spec = np.fft.rfft2(x, axes=(0, 1))
    out = np.fft.irfft2(spec * np.conj(otf)[..., None] / (np.abs(otf)[..., None] ** 2 + nsr), s=x.shape[:2], axes=(0, 1))
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


def best_of(name: str, grid: list[float], fn: Callable[[np.ndarray, float], np.ndarray], clean: np.ndarray,
            obs: list[dict]) -> tuple[str, list[np.ndarray], float]:
    """The setting in ``grid`` with the best mean PSNR on these images (an oracle choice)."""
    best = None
    for p in grid:
        t0 = time.perf_counter()
        outs = [fn(o["y"], p) for o in obs]
        secs = (time.perf_counter() - t0) / len(obs)
        score = float(np.mean([psnr(c, o) for c, o in zip(clean, outs)]))
        if best is None or score > best[0]:
            best = (score, p, outs, secs)
    assert best is not None
    return f"{name} ({best[1]:g}, oracle)", best[2], best[3]


def baselines(task: str, clean: np.ndarray, obs: list[dict]) -> list[tuple[str, list[np.ndarray], float]]:
    """(name, outputs, seconds per image) of the classical methods for ``task``."""
    rows = []

    def timed(name, fn):
        t0 = time.perf_counter()
        outs = [fn(o) for o in obs]
        rows.append((name, outs, (time.perf_counter() - t0) / len(obs)))

    if task in ("hole", "missing70"):
        timed("harmonic inpainting", lambda o: harmonic_inpaint(o["y"], o["keep"]))
    elif task == "x4":
        timed("bicubic", lambda o: bicubic(o["y"], 4))
    elif task == "noise0.1":
        timed("noisy input", lambda o: o["y"])
        rows.append(best_of("Gaussian filter", [0.5, 0.75, 1.0, 1.25, 1.5], gaussian_filter, clean, obs))
        rows.append(best_of("non-local means", [10.0, 15.0, 20.0, 25.0, 30.0], nl_means, clean, obs))
    elif task == "blur1.5":
        timed("blurred input", lambda o: o["y"])
        rows.append(best_of("Wiener", [1e-3, 3e-3, 1e-2, 3e-2, 1e-1], lambda y, p: wiener(y, 1.5, p), clean, obs))
    return rows


# --------------------------------------------------------------------------------------------------
# The VAE


def vae_restore(model, task: str, obs: list[dict], *, posterior: str, seed: int, batch: int,
                steps: int | None = None, decoder_std: float | None = None, keep: str | None = None,
                temp: str | None = None) -> tuple[list[np.ndarray], float]:
    import torch

    from vdvae_cli.engine import restore as R
    from vdvae_cli.engine.distributions import PerImageNoise
    from vdvae_cli.engine.runtime import image_generators
    from vdvae_cli.engine.temperature import parse_temperature_spec

    kind = {"hole": "inpaint", "missing70": "inpaint", "x4": "upscale", "noise0.1": "denoise", "blur1.5": "deblur"}[task]
    d = R.TASK_DEFAULTS[kind]
    steps = d.steps if steps is None else steps
    gamma = d.decoder_std if decoder_std is None else decoder_std
    keep_layers = R.default_keep_layers(model.cfg, kind, posterior) if keep is None else (
        model.cfg.n_layers if keep == "all" else int(keep))
    spec = temp or model.default_temperature or "1.0"
    temps = parse_temperature_spec(spec, model.cfg)
    outs: list[np.ndarray] = []
    t0 = time.perf_counter()
    for start in range(0, len(obs), batch):
        part = obs[start:start + batch]
        y = torch.from_numpy(np.stack([o["y"] for o in part]))
        if kind == "inpaint":
            op: R.Degradation = R.Inpaint(torch.from_numpy(np.stack([o["keep"] for o in part]))[:, None])
        elif kind == "upscale":
            op = R.AreaDownsample(4)
        elif kind == "denoise":
            op = R.Denoise(0.1)
        else:
            op = R.GaussianBlur(1.5, BLUR_NOISE)
        noise = PerImageNoise(image_generators(seed, range(start, start + len(part))))
        with torch.inference_mode():
            out = R.restore(model, op, y, steps=steps, keep_layers=keep_layers, posterior=posterior,
                            temperatures=temps, decoder_std=gamma, noise=noise)
        outs.extend(out.numpy())
    return outs, (time.perf_counter() - t0) / len(obs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="an .npz with images (N, 32, 32, 3) uint8")
    ap.add_argument("--n", type=int, default=100, help="how many images (a seeded random choice)")
    ap.add_argument("--offset", type=int, default=0, help="choose from images[offset:] (a validation split)")
    ap.add_argument("--model", default="fashion32")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--posterior", default="mean", choices=("mean", "sample"))
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--decoder-std", type=float, default=None)
    ap.add_argument("--keep-layers", default=None)
    ap.add_argument("--temp", default=None)
    ap.add_argument("--dtype", default="auto", help="fp32, bf16 or auto (bf16 where the CPU computes it natively)")
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args()

    import torch

    from vdvae_cli.engine.runtime import fast_bf16, prepare_for_inference
    from vdvae_cli.modelfiles.cache import fetch_model
    from vdvae_cli.modelfiles.resolve import load_model

    dtype = args.dtype if args.dtype != "auto" else ("bf16" if fast_bf16("cpu") else "fp32")
    model = prepare_for_inference(load_model(fetch_model(args.model), device="cpu", dtype=dtype))
    images = np.load(args.data)["images"][args.offset:]
    rng = np.random.default_rng(args.seed)
    pick = np.sort(rng.choice(len(images), size=min(args.n, len(images)), replace=False))
    clean = images[pick]
    print(f"{args.data}: {len(clean)} images; model {args.model} in {dtype}, {torch.get_num_threads()} threads",
          file=sys.stderr)
    results = []
    for task in args.tasks:
        trng = np.random.default_rng([args.seed, TASKS.index(task)])
        obs = [degrade(task, c, trng) for c in clean]
        rows = [] if args.no_baselines else baselines(task, clean, obs)
        outs, secs = vae_restore(model, task, obs, posterior=args.posterior, seed=args.seed, batch=args.batch,
                                 steps=args.steps, decoder_std=args.decoder_std, keep=args.keep_layers, temp=args.temp)
        rows.append((f"VAE prior ({args.model}, posterior {args.posterior})", outs, secs))
        for name, outs, secs in rows:
            p = float(np.mean([psnr(c, o) for c, o in zip(clean, outs)]))
            s = float(np.mean([ssim(c, o) for c, o in zip(clean, outs)]))
            results.append({"task": task, "method": name, "psnr": round(p, 2), "ssim": round(s, 4),
                            "seconds_per_image": round(secs, 4), "images": len(clean)})
            print(f"{TASK_LABEL[task]:38s} {name:48s} PSNR {p:6.2f}  SSIM {s:.4f}  {secs:.3f} s/img", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"data": str(args.data), "model": args.model, "dtype": dtype, "seed": args.seed,
                                         "posterior": args.posterior, "results": results}, indent=1) + "\n")
    print("\n| task | method | PSNR | SSIM | s/image |\n|---|---|---|---|---|")
    for r in results:
        print(f"| {TASK_LABEL[r['task']]} | {r['method']} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['seconds_per_image']:.3f} |")


if __name__ == "__main__":
    main()
