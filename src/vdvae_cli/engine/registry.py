"""The family registry: one place that maps a family name (as a model file's metadata spells it) to
its :class:`~vdvae_cli.engine.interface.Family` object.

Families are found lazily, by name: the built-in ones (:data:`BUILTIN`) and any that another
package declares in the ``vdvae_cli.families`` entry-point group (``name = "package.module:OBJECT"``),
as pytest or llm plugins are declared. Nothing is imported until a family is asked for, so reading a
file's header imports only that file's family (and no torch, where the family's object needs none).
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from ..base.errors import CheckpointError

if TYPE_CHECKING:
    from .interface import Family

ENTRY_POINT_GROUP = "vdvae_cli.families"
# The families that ship with the package, as entry points would name them (pyproject.toml declares
# the same in the entry-point group, so an installed package and a source tree agree).
BUILTIN: dict[str, str] = {
    "vdvae": "vdvae_cli.families.vdvae.family:FAMILY",
    "nvae": "vdvae_cli.families.nvae.family:FAMILY",
    "pixelcnn": "vdvae_cli.families.pixelcnn.family:FAMILY",
}
# A config without a ``family`` field is a VDVAE's: every file written before NVAE came.
DEFAULT_FAMILY = "vdvae"


_RUNTIME: dict[str, str] = {}  # register_family(): declared by a test or an embedding program


@lru_cache(maxsize=1)
def _plugins() -> tuple[tuple[str, str], ...]:
    """The entry-point group's declarations (read once per process)."""
    from importlib.metadata import entry_points

    return tuple((ep.name, ep.value) for ep in entry_points(group=ENTRY_POINT_GROUP))


def _declared() -> dict[str, str]:
    """Family name -> "module:attribute": built-in first, then plugins, then run-time declarations."""
    found = dict(BUILTIN)
    for name, where in _plugins():
        found.setdefault(name, where)
    found.update(_RUNTIME)
    return found


def family_names() -> tuple[str, ...]:
    """Every family this installation knows (built-in and plugins), without importing any."""
    return tuple(_declared())


def family_named(name: str) -> "Family":
    """The family object for a name (as a model file's metadata spells it), imported on first use."""
    where = _declared().get(name)
    if where is None:
        raise CheckpointError(f"unknown model family {name!r}",
                              hint=f"this installation knows {', '.join(family_names())}")
    return _load(where, name)


@lru_cache(maxsize=None)
def _load(where: str, name: str) -> "Family":
    module, _, attr = where.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise CheckpointError(f"model family {name!r} cannot be loaded from {where}: {exc}",
                              hint="reinstall the package that provides it") from None
    return obj() if isinstance(obj, type) else obj


def family_of(obj: Any) -> "Family":
    """The family of a model or a config (``cfg.family``; VDVAE when absent)."""
    cfg = getattr(obj, "cfg", obj)
    return family_named(getattr(cfg, "family", None) or DEFAULT_FAMILY)


def families() -> list["Family"]:
    """Every known family's object (imports each)."""
    return [family_named(name) for name in family_names()]


def register_family(name: str, where: str) -> None:
    """Declare a family at run time (``where`` = "module:attribute"), as an entry point would; for
    tests and programs that embed vdvae-cli. A name already declared is replaced."""
    _RUNTIME[name] = where


def unregister_family(name: str) -> None:
    _RUNTIME.pop(name, None)


def architecture_family(name: str) -> "Family":
    """The family whose preset or official architecture is called ``name`` (``vdvae train
    --config NAME``); an unknown name is one UsageError that lists the known ones."""
    presets: list[str] = []
    official: list[str] = []
    for family in families():
        if name in family.preset_names() or name in family.official_names():
            return family
        presets += family.preset_names()
        official += family.official_names()
    from ..base.errors import UsageError

    raise UsageError(f"unknown --config {name!r}",
                     hint=f"choose {', '.join(presets)} (sized for a CPU), or an official architecture: "
                          f"{', '.join(official)}")
