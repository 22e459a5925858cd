"""Where NVAE sampling spends its time: wall time per cell type (module hooks) and per operator
(``torch.profiler``), one batch through ``ops.sample`` after a warm-up batch.

    python benchmarks/profile_nvae.py --model cifar10 --batch 4                 # as the CLI runs it
    python benchmarks/profile_nvae.py --model cifar10 --batch 4 --plain         # the plain eager fp32 path
    python benchmarks/profile_nvae.py --model cifar10 --batch 4 --dtype bf16

Weights are random (``NVAE(cfg)`` initialisation); speed does not depend on their values.
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
from vdvae_cli.engine.runtime import configure_backends, prepare_for_inference  # noqa: E402
from vdvae_cli.families.nvae.config import readme_config  # noqa: E402
from vdvae_cli.families.nvae.network import NVAE, Cell, DecCombinerCell, WNConv2d  # noqa: E402


def cell_label(name: str, module: torch.nn.Module) -> str | None:
    if isinstance(module, Cell):
        return f"cell {module.kind}"
    if isinstance(module, DecCombinerCell):
        return "dec combiner (1x1 conv of [s, z])"
    if name.startswith("dec_sampler."):
        return "prior (ELU + 1x1 conv)" if name.count(".") == 1 else None
    if name == "image_conditional":
        return "image head (ELU + 3x3 conv)"
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cifar10")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--plain", action="store_true", help="eager NCHW fp32, weight norm per call (the baseline)")
    ap.add_argument("--ops", type=int, default=15, help="operators to list")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    model = NVAE(readme_config(args.model)).to(dtype).eval().requires_grad_(False)
    if args.plain:
        for m in model.modules():
            if isinstance(m, WNConv2d):
                m.fold = False
    else:
        model = prepare_for_inference(model)
    configure_backends(torch.device("cpu"), dtype)

    def run() -> float:
        g = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        ops.sample(model, args.batch, temperatures=0.7, noise=g)
        return time.perf_counter() - t0

    run()  # warm-up: oneDNN primitive creation, weight folding
    spent: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    started: dict[int, float] = {}
    handles = []
    for name, m in model.named_modules():
        label = cell_label(name, m)
        if label is None:
            continue
        handles.append(m.register_forward_pre_hook(lambda mod, inp: started.__setitem__(id(mod), time.perf_counter())))

        def done(mod, inp, out, label=label):
            spent[label] += time.perf_counter() - started[id(mod)]
            calls[label] += 1

        handles.append(m.register_forward_hook(done))
    total = run()
    for h in handles:
        h.remove()
    print(f"nvae-{args.model} batch {args.batch} {args.dtype}{' plain' if args.plain else ''}: {total:.3f} s "
          f"(with hooks), {torch.get_num_threads()} threads")
    for label, s in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {label:40} {calls[label]:4} calls  {s:7.3f} s  {100 * s / total:5.1f}%")
    print(f"  {'rest (noise, prior maths, pixels)':40}             {total - sum(spent.values()):7.3f} s")
    print_operator_tables(run, ops=args.ops, convs=8, conv_note=" (the mbconv cell's 1x1 expand, depthwise kxk and 1x1 project, ...)")


if __name__ == "__main__":
    main()
