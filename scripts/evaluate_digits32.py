"""The figures of the digits32 model card (weights/README.md), recomputed from scratch.

    pip install -e '.[data]'
    python scripts/evaluate_digits32.py weights/digits32.safetensors --grid weights/samples.png

Measures, all on the held-out split the trainer used (``holdout_split(1797, 0.1, seed=0)``: 180 images):

1. Negative ELBO in bits/dim (and the importance-weighted bound with K posterior samples), against
   two histogram baselines fitted on the training split (add-one smoothing): every sub-pixel
   independent (the issue's baseline), and the stronger "one grey histogram per pixel, exact RGB
   copies" (which knows the images are grey).
2. Sample quality: a logistic-regression classifier trained on the real training split (images
   shrunk back to 8x8) labels unconditional samples at temperature 0.8; we report the share it labels
   with confidence >= 0.9, the mean confidence, and how the labels spread over the 10 classes, next
   to the same figures for the real held-out images and for an untrained (randomly initialised) model;
   the same for temperatures 0.5 to 1.0. A confident classifier alone is easy to please (an untrained
   model's grey blobs are all called "4" with confidence), so we also report the classifier score
   exp(E[KL(p(y|x) || p(y))]) (the Inception Score with this classifier): 1 = useless, 10 = every
   sample confidently one digit with all digits equally common.
3. Reconstruction PSNR with ``--posterior mean`` as a function of how many latent layers are kept
   (the rest sampled from the prior at t = 1.0), both with the DMoL output sampled (output
   temperature 1, the CLI default) and at its mode (output temperature 0).

Prints one JSON object on stdout; ``--grid`` writes a PNG of 64 samples at t = 0.8.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from prepare_digits import digits32  # noqa: E402

from vdvae_cli.modelfiles.checkpoint import load_file_model  # noqa: E402
from vdvae_cli.training.data import holdout_split  # noqa: E402
from vdvae_cli.families.vdvae.model import VAE  # noqa: E402
from vdvae_cli.engine.ops import elbo, reconstruct, sample  # noqa: E402
from vdvae_cli.training.loop import save_grid  # noqa: E402

LN2 = math.log(2.0)


def histogram_bpd(train: np.ndarray, test: np.ndarray, alpha: float = 1.0) -> float:
    """Bits/dim of ``test`` under independent per-position 256-bin histograms fitted on ``train``."""
    t = train.reshape(len(train), -1)
    x = test.reshape(len(test), -1)
    counts = np.zeros((t.shape[1], 256))
    for v in range(256):
        counts[:, v] = (t == v).sum(0)
    probs = (counts + alpha) / (len(t) + 256 * alpha)
    logp = np.log2(probs[np.arange(x.shape[1])[None, :], x])
    return float(-logp.mean())


def shrink(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) uint8 -> (N, 64) features on the digits' 0..16 ink scale (4x4 box average)."""
    grey = images[..., 0].astype(np.float64)
    small = grey.reshape(len(grey), 8, 4, 8, 4).mean(axis=(2, 4))
    return ((255.0 - small) * 16.0 / 255.0).reshape(len(grey), 64)


def confidence_stats(clf, images: np.ndarray) -> dict:
    p = clf.predict_proba(shrink(images))
    conf, label = p.max(1), p.argmax(1)
    counts = np.bincount(label, minlength=10)
    marginal = p.mean(0)
    score = float(np.exp(np.mean(np.sum(p * (np.log(p + 1e-12) - np.log(marginal + 1e-12)), axis=1))))
    return {
        "n": len(images),
        "share_conf_ge_0.9": round(float((conf >= 0.9).mean()), 4),
        "share_conf_ge_0.5": round(float((conf >= 0.5).mean()), 4),
        "mean_confidence": round(float(conf.mean()), 4),
        "label_counts": counts.tolist(),
        "classes_present": int((counts > 0).sum()),
        "classifier_score": round(score, 3),  # exp E[KL(p(y|x) || p(y))]: 1 (useless) .. 10 (confident and diverse)
    }


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.double() - b.double()) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return float((10 * torch.log10(255.0**2 / mse)).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--holdout", type=float, default=0.1)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--iw", type=int, default=32, help="posterior samples for the importance-weighted bound")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grid", type=Path, help="write a PNG of 64 samples at t=0.8 here")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    images, labels = digits32()
    tr, ho = holdout_split(len(images), args.holdout, args.split_seed)
    tr, ho = tr.numpy(), ho.numpy()
    x_tr, x_ho, y_tr, y_ho = images[tr], images[ho], labels[tr], labels[ho]
    model = load_file_model(args.model)
    cfg = model.cfg
    held = torch.from_numpy(x_ho)
    out: dict = {"model": str(args.model), "n_train": len(tr), "n_heldout": len(ho), "latent_layers": cfg.n_layers,
                 "parameters": sum(p.numel() for p in model.parameters())}

    # 1. likelihood -------------------------------------------------------------------------------
    g = torch.Generator().manual_seed(args.seed)
    res = elbo(model, held, noise=g)
    iw = torch.cat([elbo(model, held[i : i + 20], samples=args.iw, noise=g).nll_bound for i in range(0, len(held), 20)])
    out["heldout"] = {
        "neg_elbo_bpd": round(float((res.distortion + res.rate).mean()) / LN2, 4),
        "distortion_bpd": round(float(res.distortion.mean()) / LN2, 4),
        "rate_bpd": round(float(res.rate.mean()) / LN2, 4),
        f"iw{args.iw}_bound_bpd": round(float(iw.mean()) / LN2, 4),
        "baseline_independent_subpixel_histogram_bpd": round(histogram_bpd(x_tr, x_ho), 4),
        "baseline_grey_pixel_histogram_bpd": round(histogram_bpd(x_tr[..., :1], x_ho[..., :1]) / 3, 4),
    }
    torch.manual_seed(args.seed)
    untrained = VAE(cfg).eval()
    r0 = elbo(untrained, held, noise=torch.Generator().manual_seed(args.seed))
    out["heldout"]["untrained_model_bpd"] = round(float((r0.distortion + r0.rate).mean()) / LN2, 4)

    # 2. sample quality ---------------------------------------------------------------------------
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=5000, C=0.5).fit(shrink(x_tr), y_tr)
    quality = {"classifier": "LogisticRegression(C=0.5) on 8x8 shrunk training images",
               "classifier_heldout_accuracy": round(float(clf.score(shrink(x_ho), y_ho)), 4),
               "real_heldout": confidence_stats(clf, x_ho)}
    for t in (0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
        s = sample(model, args.samples, temperatures=t, noise=torch.Generator().manual_seed(args.seed))
        quality[f"samples_t{t}"] = confidence_stats(clf, s.numpy())
        if t == 0.8 and args.grid:
            big = s[:64].repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)  # 2x for viewing
            save_grid(big, args.grid, columns=8)
    s = sample(untrained, 200, temperatures=0.8, noise=torch.Generator().manual_seed(args.seed))
    quality["untrained_samples_t0.8"] = confidence_stats(clf, s.numpy())
    out["sample_quality"] = quality

    # 3. reconstructions --------------------------------------------------------------------------
    L = cfg.n_layers
    keeps = range(L + 1)
    table = []
    for k in keeps:
        row = {"keep_layers": k, "resolution_of_last_kept": cfg.decoder_layers[k - 1].res if k else None}
        for ot in (1.0, 0.0):
            rec = reconstruct(model, held, keep_layers=k, posterior="mean", temperatures=1.0, output_temperature=ot,
                              noise=torch.Generator().manual_seed(args.seed))
            row[f"psnr_db_output_temp_{ot:g}"] = round(psnr(rec, held), 2)
        table.append(row)
    out["psnr_vs_kept_layers"] = table
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
