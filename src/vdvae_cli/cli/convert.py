"""``vdvae convert``: official torch pickle -> self-describing safetensors."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ._app import command, emit_json, out, say
from .options import ForceOpt, JsonOpt
from ..errors import UsageError

if TYPE_CHECKING:
    from ..config import VDVAEConfig
    from ..nvae.config import NVAEConfig


@command(
    "convert",
    epilog="Examples:\n\n"
    "  vdvae convert ffhq256-iter-1700000-model-ema.th --config ffhq256 -o ffhq256.safetensors\n\n"
    "  vdvae convert ffhq1024-iter-1700000-model-ema.th --hparams ffhq1024-iter-1700000-log.jsonl -o ffhq1024.safetensors\n\n"
    "  vdvae convert run/latest-model.th --config infer -o mine.safetensors --dtype bf16\n\n"
    "  vdvae convert nvae-cifar10/checkpoint.pt -o nvae-cifar10.safetensors   (NVAE: its args say the layout)",
)
def convert(
    src: Annotated[Path, typer.Argument(help="Official *-model-ema.th or *-model.th (module.-prefixed keys are fine).")],
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Destination .safetensors file (not needed with --check).", show_default=False)] = None,
    config: Annotated[Optional[str], typer.Option("--config", "-c", help="Official config name, or 'infer' to read the layout from the weights.")] = None,
    hparams: Annotated[Optional[Path], typer.Option("--hparams", help="Reference hyperparameters: a JSON object or an official run's -log.jsonl.")] = None,
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="Store as fp32 (default), fp16 or bf16.")] = None,
    check: Annotated[bool, typer.Option("--check", help="Write nothing; list every missing, unexpected and mis-shaped key (all of them) and exit 1 if any.")] = False,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Convert an official openai/vdvae or NVlabs/NVAE checkpoint to a safetensors file that describes itself.

    The pickle is loaded with weights_only=True (no pickled code runs; NVAE files may also hold
    argparse.Namespace, nothing else). An NVAE checkpoint.pt is recognised by its stored args, which
    give the layout. Every missing, unexpected or mis-shaped key is reported by name. The output is
    written atomically.
    """
    from ..checkpoint import DTYPES, compare_keys, convert_reference, infer_config, load_reference_state
    from ..config import load_config_arg

    from ..nvae.official import check_official, convert_official, looks_official

    if dtype is not None and dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    nvae = src.is_file() and looks_official(src)
    if nvae and (config is not None or hparams is not None):
        raise UsageError(f"{src} is an NVAE checkpoint: its stored args give the layout",
                         hint="drop --config/--hparams")
    cfg = None if nvae or (config == "infer" and hparams is None) else load_config_arg(config, hparams)
    if check:
        if nvae:
            _, report, shapes = check_official(src)
        else:
            shapes = {k: tuple(v.shape) for k, v in load_reference_state(src).items()}
            report = compare_keys(shapes, cfg or infer_config(shapes))
        result = {"ok": report.ok, "missing": report.missing, "unexpected": report.unexpected,
                  "mismatched": [{"key": k, "shape": list(got), "expected": list(exp)} for k, got, exp in report.mismatched]}
        if json_out:
            emit_json(result)
        else:
            for k in report.missing:
                out(f"missing     {k}")
            for k in report.unexpected:
                out(f"unexpected  {k}  {tuple(shapes[k])}")
            for k, got, exp in report.mismatched:
                out(f"mismatched  {k}  {got} != expected {exp}")
            say("ok: every key and shape matches" if report.ok else f"differences: {report.summary(limit=0)}")
        raise typer.Exit(0 if report.ok else 1)
    if output is None:
        raise UsageError("missing -o FILE.safetensors (where to write the converted model)",
                         hint="or pass --check to only compare the keys")
    written: VDVAEConfig | NVAEConfig
    if nvae:
        path, written = convert_official(src, output, dtype=dtype, force=force)
    else:
        path, written = convert_reference(src, output, cfg, dtype=dtype, force=force)
    size = path.stat().st_size
    info = {"output": str(path), "config": written.name, "family": getattr(written, "family", "vdvae"),
            "layers": written.n_layers, "bytes": size}
    if json_out:
        emit_json(info)
    else:
        say(f"wrote {path} ({written.name}, {written.n_layers} latent layers, {size / 1e6:.1f} MB)")
