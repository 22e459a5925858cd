"""The README's top figure: samples, and test images reconstructed keeping 0, 2, 4, ... all latent layers.

    python scripts/make_hierarchy_figure.py weights/fashion.safetensors -o docs/hierarchy-fashion.png

Top: ``--samples`` samples at the model's recommended temperatures (``vdvae sample --seed SEED``).
Below: for each of ``--images`` Fashion-MNIST test images, the image itself, then its reconstruction
keeping the first K latent layers from the posterior mean (K = 0, 2, 4, ..., all) with the other
layers drawn from the prior at the recommended temperature and the pixels at the recommended output
temperature (``vdvae reconstruct --keep-layers K``): the coarse layers fix the garment, each layer
kept fixes finer detail, and all layers kept give the image back. Every draw is seeded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from vdvae_cli.engine import ops
from vdvae_cli.modelfiles.checkpoint import load_file_model
from vdvae_cli.engine.distributions import PerImageNoise
from vdvae_cli.engine.runtime import image_generators
from vdvae_cli.engine.temperature import parse_temperature_spec
from vdvae_cli.engine.companion import companion_path
from vdvae_cli.modelfiles.priors import read_prior

SCALE, GAP, LABEL = 3, 4, 14


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--data", type=Path, default=Path("/work/data/fashion-mnist-grey"), help="prepare_fashion_mnist.py's folder")
    ap.add_argument("--images", default="0,2,5", help="test image indices, comma-separated")
    ap.add_argument("--samples", type=int, default=10, help="samples in the top row")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)  # one thread: the same pixels whatever the machine's core count (rounding differs by split)
    model = load_file_model(args.model)
    cfg = model.cfg
    temps = parse_temperature_spec(model.default_temperature or "1.0", cfg)
    out_t = float(model.default_output_temperature or 1.0)
    test = np.load(args.data / "test.npz")["images"]
    picks = [int(i) for i in args.images.split(",")]
    keeps = sorted({*range(0, cfg.n_layers, 2), cfg.n_layers})

    # the top row as `vdvae sample` draws it: with the learned prior beside the model, when there is one
    prior_path = companion_path(args.model)
    top = read_prior(prior_path, model) if prior_path.is_file() else None
    samples = ops.sample(model, args.samples, temperatures=temps, output_temperature=out_t, prior=top,
                         noise=PerImageNoise(image_generators(args.seed, list(range(args.samples))))).numpy()
    rows = []
    for j, i in enumerate(picks):
        x = torch.from_numpy(test[i : i + 1])
        zs = ops.encode(model, x, posterior="mean")
        row = [test[i]]
        for keep in keeps:
            g = PerImageNoise(image_generators(args.seed, [1000 + j]))
            out = ops.decode(model, list(zs[:keep]) + [None] * (cfg.n_layers - keep), n=1, temperatures=temps,
                             output_temperature=out_t, noise=g)
            row.append(out[0].numpy())
        rows.append(row)

    side = cfg.image_size * SCALE
    cols = max(args.samples, len(keeps) + 1)
    width = cols * (side + GAP) + GAP
    height = LABEL + (side + GAP) + LABEL + len(rows) * (side + GAP) + GAP
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)

    def put(img: np.ndarray, col: int, top: int) -> None:
        if img.shape[-1] == 1:  # grey data as stored: shown as RGB like the model's output
            img = np.repeat(img, 3, axis=-1)
        tile = Image.fromarray(np.ascontiguousarray(img)).resize((side, side), Image.NEAREST)
        canvas.paste(tile, (GAP + col * (side + GAP), top))

    draw.text((GAP, 1), f"samples at the recommended temperatures (--temp {model.default_temperature or '1.0'})"
              + ("" if top is None else " with the exemplar prior" if top.prior.kind == "exemplar"
                 else " with the learned prior"), fill=(0, 0, 0))
    for c, img in enumerate(samples):
        put(img, c, LABEL)
    top = LABEL + side + GAP
    draw.text((GAP, top + 1), "test image | reconstructed keeping the first K latent layers, the rest from the prior",
              fill=(0, 0, 0))
    top += LABEL
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            put(img, c, top + r * (side + GAP))
    # column captions under the last row
    foot = Image.new("RGB", (width, LABEL), (255, 255, 255))
    fd = ImageDraw.Draw(foot)
    for c, label in enumerate(["image", *(f"K={k}" if k < cfg.n_layers else "all" for k in keeps)]):
        fd.text((GAP + c * (side + GAP) + 2, 1), label, fill=(0, 0, 0))
    final = Image.new("RGB", (width, height + LABEL), (255, 255, 255))
    final.paste(canvas, (0, 0))
    final.paste(foot, (0, height))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    final.save(args.output)
    print(f"wrote {args.output} ({final.size[0]}x{final.size[1]}; keep {keeps})")


if __name__ == "__main__":
    main()
