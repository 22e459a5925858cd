"""Choose a model's recommended sampling temperature on validation data, not on the test split.

    python scripts/choose_temperature.py MODEL.safetensors --data /work/data/fashion-mnist-grey

For each prior temperature in ``--temps`` (pixels at ``--output-temp``), N samples (seeded) are
judged by the cached classifier of ``evaluate_fashion32.py`` against the training images the
trainer held out (``--holdout 2000``, split seed 0; the classifier was trained on the whole training
split, so these are not unseen by it, but they are not the test images the card reports): the
share it is >= 90% sure of and the Frechet distance of its penultimate features. The choice is the
temperature with the lowest Frechet distance; feed it to ``export_shipped.py --default-temp``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from evaluate_fashion32 import classify, load_classifier, quality  # noqa: E402

from vdvae_cli.engine import ops  # noqa: E402
from vdvae_cli.engine.registry import family_of  # noqa: E402
from vdvae_cli.modelfiles.checkpoint import load_file_model  # noqa: E402
from vdvae_cli.engine.temperature import parse_temperature_spec  # noqa: E402
from vdvae_cli.training.data import holdout_split  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--data", type=Path, default=Path("/work/data/fashion-mnist-grey"))
    ap.add_argument("--temps", default="0.6,0.7,0.8,0.9,1.0")
    ap.add_argument("--specs", help="instead of --temps: full --temp specs separated by ';' (e.g. '1.0;1.0,r32=0.5')")
    ap.add_argument("--prior", type=Path, help="a learned prior file (vdvae prior fit) for the top layers")
    ap.add_argument("--output-temp", type=float, default=0.0)
    ap.add_argument("--readjust-bn", type=int, default=0, metavar="ITERS",
                    help="NVAE: before each temperature's samples, fit BatchNorm statistics to ITERS prior passes at it "
                    "(vdvae sample --readjust-bn); 0: off")
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--holdout", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--output", type=Path)
    args = ap.parse_args()
    train = np.load(args.data / "train.npz")
    x, y = train["images"], train["labels"]
    _, held = holdout_split(len(x), args.holdout, 0)
    net = load_classifier(args.data / "classifier.pt", x, y)
    _, ref = classify(net, x[held.numpy()])
    model = load_file_model(args.model)
    top = None
    if args.prior:
        from vdvae_cli.modelfiles.priors import read_prior

        top = read_prior(args.prior, model)
    rows = []
    specs = args.specs.split(";") if args.specs else args.temps.split(",")
    for t in specs:
        temps = parse_temperature_spec(t, model.cfg)
        if args.readjust_bn:
            model = load_file_model(args.model)  # from the file's own statistics each time, not the last spec's
            with tempfile.TemporaryDirectory() as cache:
                family_of(model).readjust_bn(model, ops.layer_temperatures(model.cfg, temps), Path(cache),
                                             iters=args.readjust_bn)
        s = ops.sample(model, args.n, temperatures=temps, output_temperature=args.output_temp,
                       noise=torch.Generator().manual_seed(args.seed), prior=top).numpy()
        q = quality(net, s, ref)
        rows.append({"temperature": t, **q})
        print(f"temp {t}: conf>=0.9 {q['share_conf_ge_0.9']:.3f}, classes {q['classes_present']}, "
              f"Frechet {q['frechet_distance']:.1f}", file=sys.stderr)
    best = min(rows, key=lambda r: r["frechet_distance"])
    out = {"model": str(args.model), "prior": str(args.prior) if args.prior else None,
           "reference": f"{len(held)} held-out training images", "rows": rows,
           "choice": best["temperature"]}
    text = json.dumps(out, indent=2)
    if args.output:
        args.output.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
