"""Official checkpoints (torch pickles) into self-describing safetensors files, through the family
that reads them: the family decides what the pickle holds and how its keys map to ours; this module
checks the result and writes it atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..base.errors import CheckpointError
from ..engine.interface import Family, OfficialCheckpoint
from ..engine.registry import DEFAULT_FAMILY, families, family_named
from .checkpoint import save_checkpoint


def official_family(path: str | Path) -> Family:
    """The family whose official checkpoint ``path`` is: one whose files carry their own layout
    and recognise it, else the default family (openai/vdvae's bare state_dicts)."""
    path = Path(path)
    if path.is_file():
        for family in families():
            if family.name != DEFAULT_FAMILY and family.stores_layout(path):
                return family
    return family_named(DEFAULT_FAMILY)


def read_official(src: str | Path, *, config: Any = None, hparams: Path | None = None) -> OfficialCheckpoint:
    """An official checkpoint, its config (from the file, ``config``/``hparams``, or inferred from
    the weights) and its key report; nothing is written."""
    family = official_family(src)
    return family.load_official(Path(src), family.official_layout(config, hparams))


def convert_official(
    src: str | Path,
    dst: str | Path,
    *,
    config: Any = None,
    hparams: Path | None = None,
    dtype: str | None = None,
    force: bool = False,
    metadata: Mapping[str, str] | None = None,
    checkpoint: OfficialCheckpoint | None = None,
) -> tuple[Path, Any]:
    """Convert an official pickle to our safetensors format (``checkpoint``: ``src`` already read by
    :func:`read_official`). Every missing, unexpected or mis-shaped key is refused by name."""
    ck = read_official(src, config=config, hparams=hparams) if checkpoint is None else checkpoint
    if not ck.report.ok:
        raise CheckpointError(
            f"{src} does not match config {ck.cfg.name!r}: {ck.report.summary()}",
            hint=f"see every difference with: vdvae convert {src} --check; pick the right --config, pass the "
                 "run's --hparams log.jsonl, or try --config infer",
        )
    meta = {"source_file": Path(src).name, **ck.metadata, **(metadata or {})}
    return save_checkpoint(ck.state, ck.cfg, dst, dtype=dtype, metadata=meta, force=force), ck.cfg
