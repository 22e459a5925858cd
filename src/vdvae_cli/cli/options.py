"""Option types shared by every command (``Annotated`` aliases), so each flag means one thing."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

ModelOpt = Annotated[
    Optional[str],
    typer.Option(
        "--model", "-m", metavar="MODEL",
        help="Registry name (see `vdvae models`), a .safetensors file, or hf://owner/repo (optionally /path/file.safetensors and @revision). "
        "Default: $VDVAE_MODEL, else the model shipped in weights/.",
        show_default=False,
    ),
]
OfflineOpt = Annotated[bool, typer.Option(
    "--offline",
    help="Never download: use only models already on this machine (also VDVAE_OFFLINE=1 or HF_HUB_OFFLINE=1). "
    "Without it a named model is downloaded on first use.",
)]
DeviceOpt = Annotated[str, typer.Option("--device", metavar="DEVICE", envvar="VDVAE_DEVICE",
                                        help="auto, cpu, cuda, cuda:N or mps [$VDVAE_DEVICE].")]
CompileOpt = Annotated[bool, typer.Option(
    "--compile", help="torch.compile the network's blocks: slower start, faster batches on GPUs (same maths).",
)]
DtypeOpt = Annotated[str, typer.Option("--dtype", metavar="fp32|bf16|fp16", help="fp32, bf16 or fp16 for the network (DMoL and loss maths stay fp32).")]
SeedOpt = Annotated[
    Optional[int],
    typer.Option("--seed", metavar="N", help="Seed; image i of a run depends only on (seed, i), whatever the batch size.", show_default=False),
]
PriorOpt = Annotated[str, typer.Option(
    "--prior", metavar="auto|learned|model|PATH",
    help="Which prior draws the top latent layers: the learned prior fitted by `vdvae prior fit` (learned; "
    "auto uses it when MODEL.prior.safetensors sits beside the model), the model's own (model), or a prior file.",
)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object per result on stdout, nothing else there.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or log messages on stderr.")]
ForceOpt = Annotated[bool, typer.Option("--force", "-f", help="Overwrite existing output files.")]


def default_model(model: str | None) -> str | None:
    """The ``--model`` value, falling back to ``$VDVAE_MODEL`` (None means the shipped model)."""
    return model or os.environ.get("VDVAE_MODEL") or None
