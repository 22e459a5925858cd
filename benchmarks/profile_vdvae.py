"""Where VDVAE sampling spends its time: wall time per part of a decoder layer (module hooks) and
per operator (``torch.profiler``), one batch through ``ops.sample`` as ``vdvae sample`` runs it
(one generator per image, temperature 1, the pixel draw), after a warm-up batch.

    python benchmarks/profile_vdvae.py --model cifar10 --batch 8 --threads 1          # as the CLI runs it
    python benchmarks/profile_vdvae.py --model cifar10 --batch 8 --threads 1 --plain  # eager NCHW, no fusion
    python benchmarks/profile_vdvae.py --model cifar10 --batch 8 --dtype bf16

Weights are random (normal, std 0.02, as ``bench.py``); speed does not depend on their values.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _profile import print_operator_tables  # noqa: E402  (benchmarks/, the script's own folder)
from vdvae_cli.engine import ops  # noqa: E402
from vdvae_cli.engine.distributions import PerImageNoise  # noqa: E402
from vdvae_cli.engine.runtime import configure_backends, image_generators, prepare_for_inference  # noqa: E402
from vdvae_cli.families.vdvae.config import official_config  # noqa: E402
from vdvae_cli.families.vdvae.model import VAE, DecBlock  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cifar10")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--plain", action="store_true", help="eager NCHW fp32, no fused kernels")
    ap.add_argument("--ops", type=int, default=15, help="operators to list")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    model = VAE(official_config(args.model))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    model = model.to(dtype).eval().requires_grad_(False)
    if not args.plain:
        model = prepare_for_inference(model)
    configure_backends(torch.device("cpu"), dtype)

    def run() -> float:
        noise = PerImageNoise(image_generators(0, range(args.batch)))
        t0 = time.perf_counter()
        ops.sample(model, args.batch, temperatures=1.0, noise=noise)
        return time.perf_counter() - t0

    run()  # warm-up: oneDNN primitive creation
    spent: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)

    def timer(label: str, fn):
        def wrapped(*a, **k):
            t0 = time.perf_counter()
            out = fn(*a, **k)
            spent[label] += time.perf_counter() - t0
            calls[label] += 1
            return out
        return wrapped

    saved = []
    for m in model.decoder.dec_blocks:
        assert isinstance(m, DecBlock)
        for attr, label in (("input_state", "input state (upsample, add)"),
                            ("prior_params", "prior block (4 convs, split)"),
                            ("finish", "z_proj + resnet block")):
            saved.append((m, attr, getattr(m, attr)))
            setattr(m, attr, timer(label, getattr(m, attr)))
    saved.append((model.decoder, "forward", model.decoder.forward))
    model.decoder.forward = timer("decoder (all layers)", model.decoder.forward)
    total = run()
    for m, attr, fn in saved:
        if attr == "forward":
            del m.forward
        else:
            setattr(m, attr, fn)
    spent["rest of the decoder (noise, z = pm + std * e)"] = spent["decoder (all layers)"] - sum(
        v for k, v in spent.items() if k != "decoder (all layers)")
    spent["after the decoder (logits, pixel draw)"] = total - spent["decoder (all layers)"]
    print(f"vdvae-{args.model} batch {args.batch} {args.dtype}{' plain' if args.plain else ''}: {total:.3f} s "
          f"(with timers), {torch.get_num_threads()} threads")
    for label, s in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {label:48} {calls.get(label, 0):4} calls  {s:7.3f} s  {100 * s / total:5.1f}%")
    print_operator_tables(run, ops=args.ops, convs=10)


if __name__ == "__main__":
    main()
