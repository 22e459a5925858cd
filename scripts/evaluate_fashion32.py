"""The figures of the fashion32 model card (weights/README.md), measured from scratch.

    python scripts/prepare_fashion_mnist.py -o /work/data/fashion-mnist
    python scripts/evaluate_fashion32.py weights/fashion32.safetensors --data /work/data/fashion-mnist

1. Likelihood on the Fashion-MNIST test split (which training never saw): the model's negative ELBO
   in bits/dim against two baselines fitted on the training split (add-one smoothing): independent
   256-bin histograms per sub-pixel (the simple baseline), and one grey histogram per pixel with
   the G and B copies free (a baseline that knows the images are grey).
2. Sample quality, judged by a small CNN classifier trained on the training split (trained once,
   then cached beside the data as ``classifier.pt``): for N samples at the model's default
   temperatures (prior and pixel, as ``vdvae sample`` uses them), and for the first N real test images, the share the classifier is >= 90% sure of,
   how many of the ten classes appear, the entropy of the class histogram (log2 10 = 3.32 bits when
   every class is equally common), and the Fréchet distance between the classifier's penultimate
   features of those images and of the rest of the test split (the images from N on, so the real
   images are not compared with themselves).

Writes the JSON to ``--output`` (default: beside the model, ``<stem>-eval.json``) and prints it.
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
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fashion_metrics import (  # noqa: E402
    class_histogram, classes_present, confident_share, confident_share_by_class, frechet_distance, grey_histogram_bpd,
    histogram_bpd, histogram_entropy_bits,
)
from prepare_fashion_mnist import CLASSES  # noqa: E402

from vdvae_cli.modelfiles.checkpoint import load_file_model  # noqa: E402
from vdvae_cli.engine.ops import elbo, sample  # noqa: E402
from vdvae_cli.engine.temperature import parse_temperature_spec  # noqa: E402
from vdvae_cli.training.loop import save_grid  # noqa: E402

LN2 = math.log(2.0)


class Classifier(nn.Module):
    """Three conv blocks and a 128-wide penultimate layer, on the R plane of 32x32 images."""

    def __init__(self, n_classes: int = len(CLASSES)):
        super().__init__()
        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2))

        self.body = nn.Sequential(block(1, 32), block(32, 64), block(64, 64), nn.Flatten(),
                                  nn.Linear(64 * 4 * 4, 128), nn.ReLU())
        self.head = nn.Linear(128, n_classes)

    @staticmethod
    def prepare(images: torch.Tensor) -> torch.Tensor:  # uint8 (N, 32, 32, 3) -> float (N, 1, 32, 32)
        return images[..., :1].permute(0, 3, 1, 2).float() / 255.0

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(self.prepare(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def train_classifier(x: np.ndarray, y: np.ndarray, *, epochs: int = 2, seed: int = 0) -> Classifier:
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = Classifier()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    net.train()
    for epoch in range(epochs):
        order = torch.randperm(len(xs), generator=g)
        for start in range(0, len(xs), 128):
            idx = order[start : start + 128]
            loss = nn.functional.cross_entropy(net(xs[idx]), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        for group in opt.param_groups:
            group["lr"] *= 0.3
        print(f"classifier epoch {epoch + 1}/{epochs}: last batch loss {float(loss.detach()):.3f}", file=sys.stderr)
    return net.eval()


@torch.no_grad()
def classify(net: Classifier, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (N, 10), penultimate features (N, 128)) of uint8 images."""
    probs, feats = [], []
    for start in range(0, len(images), 500):
        f = net.features(torch.from_numpy(images[start : start + 500]))
        feats.append(f.numpy())
        probs.append(torch.softmax(net.head(f), dim=1).numpy())
    return np.concatenate(probs), np.concatenate(feats)


def load_classifier(path: Path, x: np.ndarray, y: np.ndarray) -> Classifier:
    net = Classifier()
    if path.is_file():
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return net.eval()
    net = train_classifier(x, y)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(net.state_dict(), tmp)
    tmp.replace(path)
    return net


def quality(net: Classifier, images: np.ndarray, reference_features: np.ndarray) -> dict:
    probs, feats = classify(net, images)
    labels = probs.argmax(1)
    return {
        "n": len(images),
        "share_conf_ge_0.9": round(confident_share(probs, 0.9), 4),
        "classes_present": classes_present(labels, len(CLASSES)),
        "class_entropy_bits": round(histogram_entropy_bits(labels, len(CLASSES)), 4),
        "class_counts": class_histogram(labels, len(CLASSES)).tolist(),
        "share_conf_ge_0.9_by_class": confident_share_by_class(probs, len(CLASSES), 0.9),
        "frechet_distance": round(frechet_distance(feats, reference_features), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--data", type=Path, default=Path("/work/data/fashion-mnist"), help="prepare_fashion_mnist.py's folder")
    ap.add_argument("--classifier", type=Path, help="cached classifier weights [DATA/classifier.pt]")
    ap.add_argument("-n", "--samples", type=int, default=1000)
    ap.add_argument("--temp", help="prior temperature of the samples [the model's default, else 1.0]")
    ap.add_argument("--output-temp", type=float, help="pixel temperature of the samples [the model's default, else 1.0]")
    ap.add_argument("--n-test", type=int, default=10_000, help="test images for the likelihood figures")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grid", type=Path, help="also write 64 of the samples as a PNG grid (2x) here")
    ap.add_argument("-o", "--output", type=Path, help="JSON output [beside the model: STEM-eval.json]")
    args = ap.parse_args()
    t0 = time.perf_counter()
    train, test = np.load(args.data / "train.npz"), np.load(args.data / "test.npz")
    x_tr, y_tr, x_te, y_te = train["images"], train["labels"], test["images"], test["labels"]
    model = load_file_model(args.model)
    temp = args.temp or model.default_temperature or "1.0"
    output_temp = args.output_temp if args.output_temp is not None else float(model.default_output_temperature or 1.0)
    out: dict = {"model": str(args.model), "parameters": sum(p.numel() for p in model.parameters()),
                 "latent_layers": model.cfg.n_layers, "temperature": temp, "output_temperature": output_temp}

    # 1. likelihood on the test split ---------------------------------------------------------------
    held = torch.from_numpy(x_te[: args.n_test])
    g = torch.Generator().manual_seed(args.seed)
    sums = np.zeros(3)
    kl = np.zeros(model.cfg.n_layers)
    for start in range(0, len(held), 250):
        r = elbo(model, held[start : start + 250], noise=g)
        sums += [float(r.distortion.sum()), float(r.rate.sum()), 0.0]
        kl += r.kl_per_layer.double().sum(0).numpy()
    n = len(held)
    out["test_likelihood"] = {
        "n": n,
        "neg_elbo_bpd": round((sums[0] + sums[1]) / n / LN2, 4),
        "distortion_bpd": round(sums[0] / n / LN2, 4),
        "rate_bpd": round(sums[1] / n / LN2, 4),
        "layer_bits_per_image": [round(v / n / LN2 * model.cfg.n_dims, 2) for v in kl],
        "baseline_subpixel_histogram_bpd": round(histogram_bpd(x_tr, x_te[: args.n_test]), 4),
        "baseline_grey_pixel_histogram_bpd": round(grey_histogram_bpd(x_tr, x_te[: args.n_test]), 4),
    }

    # 2. sample quality -------------------------------------------------------------------------------
    net = load_classifier(args.classifier or args.data / "classifier.pt", x_tr, y_tr)
    probs, ref_feats = classify(net, x_te)
    m = args.samples
    samples = sample(model, m, temperatures=parse_temperature_spec(temp, model.cfg), output_temperature=output_temp,
                     noise=torch.Generator().manual_seed(args.seed)).numpy()
    out["classifier"] = {"test_accuracy": round(float((probs.argmax(1) == y_te).mean()), 4),
                         "reference": f"features of test images {m}..{len(x_te) - 1}"}
    out["real_test_images"] = quality(net, x_te[:m], ref_feats[m:])
    out["samples"] = quality(net, samples, ref_feats[m:])
    out["classes"] = list(CLASSES)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    if args.grid:
        big = torch.from_numpy(samples[:64]).repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
        save_grid(big, args.grid, columns=8)
    text = json.dumps(out, indent=2)
    dst = args.output or args.model.with_name(f"{args.model.stem}-eval.json")
    dst.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
