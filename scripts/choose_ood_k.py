"""Choose the ``vdvae ood`` defaults (k and prior temperature) a model file records, on validation data.

    python scripts/choose_ood_k.py MODEL.safetensors --data /work/data/fashion-mnist -o choice.json

In-distribution: the training split's images the trainer held out (``vdvae train --holdout 2000
--seed 0`` keeps them out of training: the same seeded split is rebuilt here), never the test split.
Out-of-distribution, for validation only: the same images turned upside down (a vertical flip) and
with their grey levels inverted (255 - x): near- and far-OOD sets made from Fashion-MNIST itself,
and, with ``--digits``, scikit-learn's bundled UCI handwritten digits (another source than MNIST,
light ink on black): so the pair a card reports (Fashion-MNIST test vs MNIST) plays no part in the
choice.

For every k from 1 to the number of latent layers (or those in ``--ks``) and every prior temperature in ``--temps``, the
LLR>k score (:func:`vdvae_cli.ood.llr_scores`: ELBO minus the bound with the k finest layers drawn
from the prior) is computed with one sample per image, per-image seeded noise; the choice is the
(k, temperature) with the highest mean AUROC over the OOD sets (ties: the smaller k). The
input-complexity score (Serra et al. 2020: the ELBO's bits minus the PNG's, no k) is a candidate
too; a tie goes to the likelihood ratio. Prints a table and writes the JSON; feed the choice to
``scripts/export_shipped.py --ood-score S --ood-k K --ood-prior-temp T``.
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

from vdvae_cli.engine import ops
from vdvae_cli.modelfiles.checkpoint import load_file_model
from vdvae_cli.training.data import holdout_split
from vdvae_cli.engine.distributions import PerImageNoise
from vdvae_cli.tools.ood import auroc, png_bits_per_dim
from vdvae_cli.engine.runtime import image_generators

LN2 = math.log(2.0)


def edges(images: np.ndarray) -> np.ndarray:
    """Each image's outline: the gradient magnitude (central differences), scaled so the strongest
    edge is white. Thin light strokes on black: an image simpler than the garment it came from."""
    x = images.astype(np.float64)
    gy = np.zeros_like(x)
    gx = np.zeros_like(x)
    gy[:, 1:-1] = (x[:, 2:] - x[:, :-2]) / 2
    gx[:, :, 1:-1] = (x[:, :, 2:] - x[:, :, :-2]) / 2
    g = np.hypot(gx, gy)
    top = g.reshape(len(g), -1).max(1).reshape(-1, 1, 1, 1)
    return np.round(255 * g / np.maximum(top, 1e-9)).astype(np.uint8)


def blurred(images: np.ndarray) -> np.ndarray:
    """Each image under a Gaussian blur of radius 1.5: the garment with its texture gone."""
    from PIL import Image, ImageFilter

    out = [np.asarray(Image.fromarray(im[..., 0]).filter(ImageFilter.GaussianBlur(1.5))) for im in images]
    return np.repeat(np.stack(out)[..., None], images.shape[-1], axis=-1)


SETS = {
    "vflip": lambda images: np.ascontiguousarray(images[:, ::-1]),
    "inverted": lambda images: 255 - images,
    "edges": edges,
    "blurred": blurred,
}


def transforms(images: np.ndarray, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """The validation OOD sets ``names`` (default: vflip, inverted) made from in-distribution uint8 NHWC ``images``."""
    return {name: SETS[name](images) for name in (names or ["vflip", "inverted"])}


def uci_digits(path: Path, n: int, channels: int) -> np.ndarray:
    """The first ``n`` of ``prepare_digits.py``'s images (scikit-learn's bundled UCI digits, CC BY 4.0,
    dark ink on white), turned to light ink on black as Fashion-MNIST's garments are, with
    ``channels`` channels: a near-OOD set from another source than the MNIST a card reports."""
    images = 255 - np.load(path)["images"][:n]
    return np.ascontiguousarray(images[..., :channels])


def nll_bounds(model, images: np.ndarray, *, k: int, temp: float, seed: int, batch: int = 250) -> np.ndarray:
    """-L>k per image in bits/dim (k = 0: the ELBO), image i seeded by (seed, i)."""
    out = []
    n_layers = model.cfg.n_layers
    for start in range(0, len(images), batch):
        idx = list(range(start, min(start + batch, len(images))))
        noise = PerImageNoise(image_generators(seed, idx))
        x = torch.from_numpy(images[idx[0] : idx[-1] + 1])
        r = ops.elbo(model, x, noise=noise, n_posterior=n_layers - k, temperatures=temp)
        out.append(r.nll_bound.double().numpy() / LN2)
    return np.concatenate(out)


def export_args(row: dict) -> str:
    """The ``scripts/export_shipped.py`` options that record ``row``'s choice."""
    if row["score"] == "complexity":
        return "--ood-score complexity"
    return f"--ood-score llr --ood-k {row['k']} --ood-prior-temp {row['prior_temp']!r}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--data", type=Path, default=Path("/work/data/fashion-mnist"), help="prepare_fashion_mnist.py's folder")
    ap.add_argument("--holdout", type=int, default=2000, help="the run's --holdout (a count)")
    ap.add_argument("--split-seed", type=int, default=0, help="the run's held-out split seed (its --seed's split: 0)")
    ap.add_argument("-n", type=int, default=1000, help="held-out images used (the first n of the split)")
    ap.add_argument("--temps", default="1.0,0.0", help="prior temperatures to try (comma-separated)")
    ap.add_argument("--ks", help="the k to try (comma-separated) [1 to the number of latent layers]")
    ap.add_argument("--sets", default="vflip,inverted", help=f"validation OOD sets made from the held-out images: {', '.join(SETS)}")
    ap.add_argument("--digits", type=Path, help="prepare_digits.py's .npz: a third validation OOD set (UCI digits)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--output", type=Path, help="JSON output")
    args = ap.parse_args()
    t0 = time.perf_counter()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    train = np.load(args.data / "train.npz")["images"]
    _, held = holdout_split(len(train), args.holdout, args.split_seed)
    inside = train[held.numpy()[: args.n]]
    sets = transforms(inside, args.sets.split(","))
    model = load_file_model(args.model)
    if args.digits:
        sets["uci-digits"] = uci_digits(args.digits, args.n, inside.shape[-1])
    temps = [float(t) for t in args.temps.split(",")]
    elbo = {name: nll_bounds(model, x, k=0, temp=1.0, seed=args.seed) for name, x in {"in": inside, **sets}.items()}
    rows = []
    ks = [int(v) for v in args.ks.split(",")] if args.ks else range(1, model.cfg.n_layers + 1)
    for k in ks:
        for temp in temps:
            looser = {name: nll_bounds(model, x, k=k, temp=temp, seed=args.seed) for name, x in {"in": inside, **sets}.items()}
            score = {name: looser[name] - elbo[name] for name in looser}
            au = {name: auroc(torch.from_numpy(score["in"]), torch.from_numpy(score[name])) for name in sets}
            rows.append({"score": "llr", "k": k, "prior_temp": temp, **{f"auroc_{n}": round(v, 4) for n, v in au.items()},
                         "auroc_mean": round(float(np.mean(list(au.values()))), 4)})
            print(f"k={k:>2} temp={temp:g}: " + "  ".join(f"{n} {v:.4f}" for n, v in au.items()), file=sys.stderr)
    # the input-complexity score (Serra et al. 2020): the ELBO's code length minus the PNG's; no k
    png = {name: png_bits_per_dim(torch.from_numpy(x), model.cfg.image_channels).numpy()
           for name, x in {"in": inside, **sets}.items()}
    score = {name: elbo[name] - png[name] for name in png}
    au = {name: auroc(torch.from_numpy(score["in"]), torch.from_numpy(score[name])) for name in sets}
    rows.append({"score": "complexity", **{f"auroc_{n}": round(v, 4) for n, v in au.items()},
                 "auroc_mean": round(float(np.mean(list(au.values()))), 4)})
    print("complexity: " + "  ".join(f"{n} {v:.4f}" for n, v in au.items()), file=sys.stderr)
    best = max(rows, key=lambda r: (r["auroc_mean"], r["score"] == "llr", -r.get("k", 0)))
    plain = {name: round(auroc(torch.from_numpy(elbo["in"]), torch.from_numpy(elbo[name])), 4) for name in sets}
    out = {"model": str(args.model), "in_distribution": f"{len(inside)} held-out Fashion-MNIST training images "
           f"(holdout {args.holdout}, split seed {args.split_seed})", "ood_sets": list(sets),
           "elbo_auroc": plain, "rows": rows, "choice": {**{key: best[key] for key in ("score", "k", "prior_temp", "auroc_mean")
                                                            if key in best}, "export_args": export_args(best)},
           "seconds": round(time.perf_counter() - t0, 1)}
    text = json.dumps(out, indent=2)
    if args.output:
        args.output.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
