"""Time NVIDIA's own NVAE sampler on this machine, in-process, as ``bench_cli.py --official-nvae``
runs it beside ours in every round (same moment, same machine state).

    python benchmarks/official_nvae_time.py --official-dir ~/src/NVAE --weights random-nvae-cifar10.safetensors --batch 4

``--official-dir`` is a checkout of https://github.com/NVlabs/NVAE (not shipped with this project:
its licence is non-commercial). Its model code imports on a CPU-only machine once two things are
stood in for, here and not in its files: ``tensorboardX`` (a logging import; an empty module) and
``Tensor.cuda`` (its sampler moves the top group's prior to the GPU; here, to where it already is).
The network is built from our model file's config (its fields are the official ``args``), in eval
mode, with our weights loaded (our keys are the official ones). Timed: ``model.sample(n, t=1)``,
which returns the output distribution's parameters (logits only; no pixel draw, no PNGs, which
favours it), after two warm-up batches, median of ``--repeats``. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

from _official import print_median_time  # benchmarks/, the script's own folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official-dir", type=Path, required=True)
    ap.add_argument("--weights", type=Path, required=True, help="our model file of the same architecture")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=12)
    args = ap.parse_args()
    sys.path.insert(0, str(args.official_dir))
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    logging_stub = types.ModuleType("tensorboardX")
    logging_stub.SummaryWriter = object  # type: ignore[attr-defined]
    sys.modules.setdefault("tensorboardX", logging_stub)
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    # its BatchNorm + Swish refuses a tensor that is not on a GPU before taking the framework path
    # that it takes anyway in eval mode on one process (F.batch_norm, then Swish): claim a GPU there
    import thirdparty.inplaced_sync_batchnorm as bn  # type: ignore[import-not-found]

    checked = bn.SyncBatchNormSwish.forward

    def forward(self, x):  # the same call, its input wrapped so that is_cuda reads True
        return checked(self, _OnGpu(x))

    class _OnGpu(torch.Tensor):
        @property
        def is_cuda(self):  # noqa: D401
            return True

        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            args = tuple(a.as_subclass(torch.Tensor) if isinstance(a, _OnGpu) else a for a in args)
            return func(*args, **(kwargs or {}))

    _OnGpu.__new__ = lambda cls, x: x.as_subclass(cls)  # type: ignore[method-assign]
    bn.SyncBatchNormSwish.forward = forward

    import utils  # type: ignore[import-not-found]
    from model import AutoEncoder  # type: ignore[import-not-found]

    with safe_open(str(args.weights), "pt") as f:
        meta = f.metadata() or {}
    config = json.loads(next(v for k, v in meta.items() if k.endswith("config") and v.startswith("{")))
    official_args = argparse.Namespace(**config)
    model = AutoEncoder(official_args, None, utils.get_arch_cells(config["arch_instance"])).eval()
    missing, unexpected = model.load_state_dict(load_file(str(args.weights)), strict=False)
    missing = [k for k in missing if not k.endswith("weight_normalized")]  # an alias NVAE's state_dict holds
    if missing or unexpected:
        raise SystemExit(f"weights do not fit the official network: {missing[:3]} missing, {unexpected[:3]} unexpected")
    print_median_time(lambda: model.sample(args.batch, 1.0), repeats=args.repeats, dataset=config["dataset"],
                      batch=args.batch)


if __name__ == "__main__":
    main()
