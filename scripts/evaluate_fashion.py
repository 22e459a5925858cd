"""The figures of a Fashion-MNIST model card (weights/README.md), measured from scratch, for any
shipped or trained Fashion-MNIST model (grey one-channel or grey-as-RGB).

    python scripts/prepare_fashion_mnist.py -o /work/data/fashion-mnist
    python scripts/prepare_mnist.py -o /work/data/mnist32.npz            # for the OOD figure only
    python scripts/evaluate_fashion.py weights/fashion.safetensors -o weights/fashion-eval.json

Everything is on the Fashion-MNIST **test** split (training never saw it); every random draw comes
from a seeded ``torch.Generator`` (image i of a pass from (seed, i)), so the figures repeat.

1. Likelihood: the negative ELBO in the model's bits/dim, in bits per image, per grey pixel of the
   32x32 image, and per pixel of the 28x28 original (bits per image / 784: the figure comparable to
   published 28x28 results, an upper bound on ours since the padding is paid for too); the rate of
   every latent layer in bits per image.
2. Reconstruction: the first K layers from the posterior mean, the rest at prior temperature 0,
   pixels at output temperature 0 (``vdvae reconstruct --keep-layers K --temp 0 --output-temp 0``;
   K = all is the full reconstruction), for K = 0, 2, 4, ... and all: mean PSNR (dB; 32x32 and the
   central 28x28) and SSIM (Gaussian window 11, sigma 1.5, on the 32x32 grey image).
3. Sample quality (as ``evaluate_fashion32.py``): N samples at the model's recommended temperatures
   judged by the cached CNN classifier: share >= 90% sure, classes present, class entropy, Frechet
   distance of its penultimate features to test images N.. (real test images 0..N-1 alongside).
   The samples' top layers come from the learned prior beside the model when there is one (``--prior``,
   as the CLI's ``--prior auto``); the same draws with the model's own prior sit beside them. Copying:
   each sample's RMS distance to its nearest training image, against the real test images' own.
   ``--extra-seeds K`` repeats the samples with K more seeds (the spread a 1,000-sample figure has).
4. Overflow: samples whose output is not finite, in ``--finite-n`` samples at the recommended
   temperature and ``--finite-n-t1`` at temperature 1.0, with the largest prior log-std drawn.
5. Where the prior loses (``prior_gap``): the N test images reconstructed keeping the first K
   latent layers from the posterior (a draw, not the mean) and drawing the rest from the prior at
   the recommended temperatures, judged as the samples are, for K = 0 (plain samples) up to all
   layers: how far the samples would come if the prior of the layers above K matched the encoder.
6. OOD: the Fashion-MNIST test images 0..1999 against 2,000 MNIST digits (a seeded subset of
   ``--mnist``): LLR>k at the k and prior temperature the model file records, the input-complexity
   score, the plain likelihood, and under "default" the score ``vdvae ood`` uses without
   --score/--k (the file's record).
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
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from evaluate_fashion32 import classify, load_classifier, quality  # noqa: E402
from fashion_metrics import copy_report, nearest_rms  # noqa: E402
from prepare_fashion_mnist import CLASSES  # noqa: E402

from vdvae_cli.engine import ops  # noqa: E402
from vdvae_cli.engine.companion import companion_path  # noqa: E402
from vdvae_cli.modelfiles.checkpoint import load_file_model  # noqa: E402
from vdvae_cli.engine.distributions import PerImageNoise  # noqa: E402
from vdvae_cli.modelfiles.header import ood_score, ood_settings  # noqa: E402
from vdvae_cli.tools.ood import detection_metrics, llr_scores, png_bits_per_dim  # noqa: E402
from vdvae_cli.engine.runtime import image_generators  # noqa: E402
from vdvae_cli.engine.temperature import parse_temperature_spec  # noqa: E402
from vdvae_cli.training.loop import save_grid  # noqa: E402

LN2 = math.log(2.0)


def noise(seed: int, start: int, stop: int) -> PerImageNoise:
    return PerImageNoise(image_generators(seed, list(range(start, stop))))


# --------------------------------------------------------------------------------------------------
# image metrics (grey uint8 (N, H, W))


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB of uint8 grey images (N, H, W); identical images count as 100 dB."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    return np.where(mse > 0, 10 * np.log10(255.0**2 / np.maximum(mse, 1e-12)), 100.0)


def ssim(a: np.ndarray, b: np.ndarray, *, sigma: float = 1.5, size: int = 11) -> np.ndarray:
    """Per-image SSIM (Wang et al. 2004) of uint8 grey images (N, H, W): Gaussian window (size 11,
    sigma 1.5), K1 = 0.01, K2 = 0.03, L = 255, mean over the positions where the window fits."""
    x = torch.from_numpy(a.astype(np.float64))[:, None]
    y = torch.from_numpy(b.astype(np.float64))[:, None]
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    w = (g[:, None] * g[None, :])[None, None]
    blur = lambda t: F.conv2d(t, w)  # noqa: E731  (valid positions only)
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3)).numpy()


def grey(images: np.ndarray) -> np.ndarray:
    return images[..., 0] if images.ndim == 4 else images


# --------------------------------------------------------------------------------------------------


def likelihood(model, x: np.ndarray, seed: int, top=None) -> dict:
    """The negative ELBO with the model's prior (and with a learned prior ``top`` beside it)."""
    n_layers = model.cfg.n_layers
    nll, dist, rate, learned = [], [], [], []
    kl = np.zeros(n_layers)
    for start in range(0, len(x), 250):
        stop = min(start + 250, len(x))
        r = ops.elbo(model, torch.from_numpy(x[start:stop]), noise=noise(seed, start, stop))
        nll.append(r.nll_bound.double().numpy())
        dist.append(r.distortion.double().numpy())
        rate.append(r.rate.double().numpy())
        kl += r.kl_per_layer.double().sum(0).numpy()
        if top is not None:
            r2 = ops.elbo(model, torch.from_numpy(x[start:stop]), noise=noise(seed, start, stop), prior=top)
            learned.append(r2.nll_bound.double().numpy())
    d = model.cfg.n_dims
    extra = {}
    if learned:
        extra["neg_elbo_bpd_learned_prior"] = round(float(np.concatenate(learned).mean() / LN2), 5)
        extra["learned_minus_model_bits_per_image"] = round(
            float((np.concatenate(learned) - np.concatenate(nll)).mean() * d / LN2), 3)
    bits_image = np.concatenate(nll) * d / LN2
    pixels = model.cfg.image_size**2
    return {
        "n": len(x),
        "neg_elbo_bpd_model": round(float(np.concatenate(nll).mean() / LN2), 4),
        "model_dims_per_image": d,
        "neg_elbo_bits_per_image": round(float(bits_image.mean()), 1),
        "bits_per_grey_pixel_32x32": round(float(bits_image.mean() / pixels), 4),
        "bits_per_pixel_of_the_28x28_original": round(float(bits_image.mean() / 784), 4),
        "distortion_bits_per_image": round(float(np.concatenate(dist).mean() * d / LN2), 1),
        "rate_bits_per_image": round(float(np.concatenate(rate).mean() * d / LN2), 1),
        "layer_rate_bits_per_image": [round(v / len(x) * d / LN2, 1) for v in kl],
        **extra,
    }


def reconstruction(model, x: np.ndarray, seed: int) -> list[dict]:
    n_layers = model.cfg.n_layers
    keeps = sorted({*range(0, n_layers, 2), n_layers})
    xt = torch.from_numpy(x)
    latents = []
    for start in range(0, len(x), 250):
        latents.append(ops.encode(model, xt[start : start + 250], posterior="mean"))
    rows = []
    for keep in keeps:
        outs = []
        for b, start in enumerate(range(0, len(x), 250)):
            stop = min(start + 250, len(x))
            zs = latents[b][:keep]
            out = ops.decode(model, list(zs) + [None] * (n_layers - keep), n=stop - start, temperatures=0.0,
                             output_temperature=0.0, noise=noise(seed, start, stop))
            outs.append(out.numpy())
        rec = grey(np.concatenate(outs))
        ref = grey(x)
        p32, p28 = psnr(rec, ref), psnr(rec[:, 2:-2, 2:-2], ref[:, 2:-2, 2:-2])
        rows.append({"keep_layers": keep, "psnr_db": round(float(p32.mean()), 2),
                     "psnr_db_central_28x28": round(float(p28.mean()), 2),
                     "ssim": round(float(ssim(rec, ref).mean()), 4)})
        print(f"keep {keep:>2}: PSNR {rows[-1]['psnr_db']:.2f} dB, SSIM {rows[-1]['ssim']:.3f}", file=sys.stderr)
    return rows


def prior_gap_keeps(resolutions: list[int]) -> list[int]:
    """The K of the prior-gap rows, for layers at ``resolutions`` (decoder order): 0, the first layer
    of each resolution and the one after it, and all layers."""
    starts = [0] + [i for i in range(1, len(resolutions)) if resolutions[i] != resolutions[i - 1]]
    return sorted({*starts, *(k + 1 for k in starts), len(resolutions)})


def prior_gap(model, net, x: np.ndarray, ref_feats: np.ndarray, temps: list[float], output_temp: float,
              seed: int) -> list[dict]:
    """``quality`` of ``x`` reconstructed keeping the first K layers (posterior draws) and sampling the
    rest at ``temps``, for K at every change of resolution, one past the first layer of each, and all."""
    rows = []
    for keep in prior_gap_keeps([layer.res for layer in model.cfg.decoder_layers]):
        outs = []
        for start in range(0, len(x), 250):
            stop = min(start + 250, len(x))
            outs.append(ops.reconstruct(model, torch.from_numpy(x[start:stop]), keep_layers=keep, posterior="sample",
                                        temperatures=temps, output_temperature=output_temp,
                                        noise=noise(seed, start, stop)).numpy())
        q = quality(net, np.concatenate(outs), ref_feats)
        rows.append({"keep_layers": keep, **{k: q[k] for k in ("share_conf_ge_0.9", "classes_present", "frechet_distance")}})
        print(f"keep {keep:>2} from the posterior: {q['share_conf_ge_0.9']:.1%} sure, Frechet {q['frechet_distance']:.1f}",
              file=sys.stderr)
    return rows


def _prior_logstd(layer: dict) -> float:
    """The largest prior log-std a traced layer drew with: VDVAE records it (``pv``), NVAE its sigma
    (absent where a learned prior gave the layer)."""
    if "pv" in layer:
        return float(layer["pv"].float().max())
    return float(layer["sigma"].float().log().max()) if "sigma" in layer else -math.inf


@torch.inference_mode()
def overflow(model, n: int, temp_spec: str, seed: int, batch: int = 500, top=None) -> dict:
    """How many of ``n`` prior samples give a non-finite output, and the largest prior log-std drawn
    (with a learned prior ``top``: its layers drawn from it, and the largest |z| it drew)."""
    temps = parse_temperature_spec(temp_spec, model.cfg)
    bad, pv_max, z_max = 0, -math.inf, 0.0
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        src = noise(seed, start, stop)
        given = [] if top is None else top.complete(stop - start, [], temps, src, torch.device("cpu"))
        if given:
            z_max = max(z_max, max(float(z.abs().max()) for z in given))
        out = model.decoder(stop - start, latents=given, temperatures=temps, noise=src, trace=True)
        logits = model.logits(out.px_z)
        bad += int((~torch.isfinite(logits.flatten(1)).all(1)).sum())
        pv_max = max(pv_max, max(_prior_logstd(t) for t in out.trace))
    row = {"n": n, "temperature": temp_spec, "non_finite": bad, "max_prior_logstd": round(pv_max, 3)}
    if top is not None:
        row["learned_prior_max_abs_z"] = round(z_max, 3)
    return row


def ood(model, fashion: np.ndarray, mnist: np.ndarray, seed: int, k: int | None, temp: float | None) -> dict:
    """Fashion-MNIST test vs MNIST: the LLR>k score, the input-complexity score and the plain
    likelihood, and which of the first two ``vdvae ood`` uses without --score/--k (the file's record)."""
    recorded_map = getattr(model, "default_ood", None)
    recorded = ood_settings(recorded_map, model.cfg.n_layers)
    default_score = "llr" if k is not None else (ood_score(recorded_map) or "llr")
    if k is None:
        k, temp = recorded if recorded else (1, 1.0)
    temp = 1.0 if temp is None else temp
    both = np.concatenate([fashion, mnist])
    scores, nll, png = [], [], []
    for start in range(0, len(both), 250):
        stop = min(start + 250, len(both))
        x = torch.from_numpy(both[start:stop])
        r = llr_scores(model, x, k=k, prior_temperature=temp, noise=noise(seed, start, stop))
        scores.append(r.score.double())
        nll.append(r.elbo.double())
        png.append(png_bits_per_dim(x, model.cfg.image_channels) * LN2)
    s, e = torch.cat(scores), torch.cat(nll)
    c = e - torch.cat(png)
    n = len(fashion)
    out = {"n_in": n, "n_out": len(mnist), "k": k, "prior_temp": temp, "recorded": recorded_map is not None,
           "default_score": default_score,
           "llr": detection_metrics(s[:n], s[n:]).as_dict(), "complexity": detection_metrics(c[:n], c[n:]).as_dict(),
           "elbo": detection_metrics(e[:n], e[n:]).as_dict()}
    out["default"] = out[default_score]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--data", type=Path, default=Path("/work/data/fashion-mnist"), help="prepare_fashion_mnist.py's folder")
    ap.add_argument("--mnist", type=Path, default=Path("/work/data/mnist32.npz"), help="prepare_mnist.py's .npz")
    ap.add_argument("--classifier", type=Path, help="cached classifier weights [DATA/classifier.pt]")
    ap.add_argument("-n", "--samples", type=int, default=1000)
    ap.add_argument("--temp", help="prior temperature of the samples [the model's default, else 1.0]")
    ap.add_argument("--output-temp", type=float, help="pixel temperature of the samples [the model's default, else 1.0]")
    ap.add_argument("--n-test", type=int, default=10_000, help="test images for the likelihood")
    ap.add_argument("--n-recon", type=int, default=2000, help="test images for the reconstruction figures")
    ap.add_argument("--finite-n", type=int, default=10_000, help="samples checked at the recommended temperature")
    ap.add_argument("--finite-n-t1", type=int, default=40_000, help="samples checked at temperature 1.0")
    ap.add_argument("--ood-k", type=int, help="k for the OOD figure [what the file records, else 1]")
    ap.add_argument("--ood-prior-temp", type=float)
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: likelihood,recon,samples,prior_gap,finite,ood")
    ap.add_argument("--prior", default="auto", help="the samples' top layers: a learned prior file (vdvae prior fit), "
                    "auto (the companion MODEL.prior.safetensors when there is one, as the CLI does) or model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--extra-seeds", type=int, default=0,
                    help="also draw the N samples with seeds SEED+1..SEED+K and report each (the spread over seeds)")
    ap.add_argument("--grid", type=Path, help="also write 64 of the samples as a PNG grid (2x) here")
    ap.add_argument("-o", "--output", type=Path, help="JSON output [beside the model: STEM-eval.json]")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    t0 = time.perf_counter()
    train, test = np.load(args.data / "train.npz"), np.load(args.data / "test.npz")
    x_tr, y_tr, x_te, y_te = train["images"], train["labels"], test["images"], test["labels"]
    model = load_file_model(args.model)
    top = None
    prior_path = companion_path(args.model) if args.prior == "auto" else None if args.prior == "model" else Path(args.prior)
    if prior_path is not None and (args.prior != "auto" or prior_path.is_file()):
        from vdvae_cli.modelfiles.priors import read_prior

        top = read_prior(prior_path, model)
    temp = args.temp or model.default_temperature or "1.0"
    temps = parse_temperature_spec(temp, model.cfg)  # the samples' and the prior-gap rows'
    output_temp = args.output_temp if args.output_temp is not None else float(model.default_output_temperature or 1.0)
    out: dict = {"model": str(args.model), "parameters": sum(p.numel() for p in model.parameters()),
                 "latent_layers": model.cfg.n_layers, "image_channels": model.cfg.image_channels,
                 "temperature": temp, "output_temperature": output_temp,
                 "learned_prior": None if top is None else {"path": str(prior_path), "kind": top.prior.kind,
                                                            "layers": top.layers}}
    if "likelihood" not in skip:
        scored = top if top is not None and top.prior.has_density else None  # an exemplar prior has no density
        out["test_likelihood"] = likelihood(model, x_te[: args.n_test], args.seed, scored)
        print(json.dumps(out["test_likelihood"]), file=sys.stderr)
    if "recon" not in skip:
        out["reconstruction"] = {"n": args.n_recon, "rows": reconstruction(model, x_te[: args.n_recon], args.seed)}
    if "samples" not in skip or "prior_gap" not in skip:
        net = load_classifier(args.classifier or args.data / "classifier.pt", x_tr, y_tr)
        probs, ref_feats = classify(net, x_te)
    m = args.samples
    if "samples" not in skip:
        def draw(seed: int, prior) -> np.ndarray:  # m samples at the recommended temperatures
            return ops.sample(model, m, temperatures=temps, output_temperature=output_temp,
                              noise=torch.Generator().manual_seed(seed), prior=prior).numpy()

        samples = draw(args.seed, top)
        out["classifier"] = {"test_accuracy": round(float((probs.argmax(1) == y_te).mean()), 4),
                             "reference": f"features of test images {m}..{len(x_te) - 1}"}
        out["real_test_images"] = quality(net, x_te[:m], ref_feats[m:])
        out["samples"] = quality(net, samples, ref_feats[m:])
        if top is not None:  # the same draws with the model's own prior, for comparison
            out["samples_model_prior"] = quality(net, draw(args.seed, None), ref_feats[m:])
        if args.extra_seeds:
            rows = [{"seed": args.seed, "share_conf_ge_0.9": out["samples"]["share_conf_ge_0.9"],
                     "frechet_distance": out["samples"]["frechet_distance"]}]
            for seed in range(args.seed + 1, args.seed + 1 + args.extra_seeds):
                q = quality(net, draw(seed, top), ref_feats[m:])
                rows.append({"seed": seed, "share_conf_ge_0.9": q["share_conf_ge_0.9"], "frechet_distance": q["frechet_distance"]})
            out["samples_over_seeds"] = {"n_each": m, "rows": rows,
                                         "mean_share_conf_ge_0.9": round(float(np.mean([r["share_conf_ge_0.9"] for r in rows])), 4)}
        out["nearest_training_image"] = {
            "measure": "RMS grey-level difference to the nearest of the training images",
            **copy_report(nearest_rms(grey(samples), grey(x_tr)), nearest_rms(grey(x_te[:m]), grey(x_tr)))}
        out["classes"] = list(CLASSES)
        if args.grid:
            big = torch.from_numpy(samples[:64]).repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
            save_grid(big, args.grid, columns=8)
        print(json.dumps(out["samples"]), file=sys.stderr)
    if "prior_gap" not in skip and model.cfg.n_layers:
        out["prior_gap"] = {"n": m, "reference": f"features of test images {m}..{len(x_te) - 1}",
                            "rows": prior_gap(model, net, x_te[:m], ref_feats[m:], temps, output_temp, args.seed)}
    if "finite" not in skip:
        out["overflow"] = [overflow(model, args.finite_n, temp, args.seed + 1, top=top)]
        if args.finite_n_t1:
            out["overflow"].append(overflow(model, args.finite_n_t1, "1.0", args.seed + 2, top=top))
        print(json.dumps(out["overflow"]), file=sys.stderr)
    if "ood" not in skip and args.mnist.is_file():
        mnist = np.load(args.mnist)["images"]
        if x_te.shape[-1] == 1:  # grey as stored: the digits' R plane (they are grey as RGB)
            mnist = np.ascontiguousarray(mnist[..., :1])
        pick = torch.randperm(len(mnist), generator=torch.Generator().manual_seed(args.seed))[:2000].sort().values
        out["ood_fashion_test_vs_mnist"] = ood(model, x_te[:2000], mnist[pick.numpy()], args.seed, args.ood_k,
                                               args.ood_prior_temp)
        print(json.dumps(out["ood_fashion_test_vs_mnist"]), file=sys.stderr)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(out, indent=2)
    dst = args.output or args.model.with_name(f"{args.model.stem}-eval.json")
    dst.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
