"""``vdvae convert``: official torch pickle -> self-describing safetensors."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._app import command, emit_json, out, say
from .options import ForceOpt, JsonOpt
from ..base.errors import UsageError


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
    from ..base.errors import ConfigError
    from ..modelfiles.checkpoint import DTYPES
    from ..modelfiles.convert import convert_official, official_family

    if dtype is not None and dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    from ..base.filekind import require_regular_file

    if src.exists():
        require_regular_file(src, "checkpoint")
    if hparams is not None:
        require_regular_file(hparams, "hyperparameters")
    family = official_family(src)
    layout = family.official_layout(config, hparams)
    if layout is None and config is None and hparams is None and not (src.is_file() and family.stores_layout(src)):
        raise ConfigError("give exactly one of --config NAME or --hparams FILE.json")
    if check:
        ck = family.load_official(src, layout)
        report, shapes = ck.report, {k: tuple(v.shape) for k, v in ck.state.items()}
        result = {"ok": report.ok, "missing": report.missing, "unexpected": report.unexpected,
                  "mismatched": [{"key": k, "shape": list(got), "expected": list(exp)} for k, got, exp in report.mismatched]}
        try:
            if json_out:
                emit_json(result)
            else:
                for k in report.missing:
                    out(f"missing     {k}")
                for k in report.unexpected:
                    out(f"unexpected  {k}  {tuple(shapes[k])}")
                for k, got, exp in report.mismatched:
                    out(f"mismatched  {k}  {got} != expected {exp}")
        except BrokenPipeError as exc:  # `--check | head -1`: the reader has seen enough, but the
            from ..base.safety import stdout_failed  # check's result still decides the exit status

            stdout_failed(exc)
        if not json_out:
            say("ok: every key and shape matches" if report.ok else f"differences: {report.summary(limit=0)}")
        raise typer.Exit(0 if report.ok else 1)
    if output is None:
        raise UsageError("missing -o FILE.safetensors (where to write the converted model)",
                         hint="or pass --check to only compare the keys")
    path, written = convert_official(src, output, checkpoint=family.load_official(src, layout), dtype=dtype, force=force)
    size = path.stat().st_size
    info = {"output": str(path), "config": written.name, "family": family.name,
            "layers": written.n_layers, "bytes": size}
    if json_out:
        emit_json(info)
    else:
        say(f"wrote {path} ({written.name}, {written.n_layers} latent layers, {size / 1e6:.1f} MB)")
