"""How parameters read in ``--help``: the conventional Unix notation instead of Typer's own.

Typer 0.2x writes a required argument as ``{IMG}...`` in the usage line and labels parameters with
Python types (``IMG <list[str]>``, ``--steps <int>``). Help text is read by people who know ``man``
pages, so arguments are written ``IMG...`` (required) or ``[IMG]...`` (optional) with no type label,
and an option without its own metavar gets Click's (``INTEGER``, ``FLOAT``, ``PATH``, ``TEXT``).
The overrides are installed once, on the classes Typer builds commands from, and only where the
methods exist (a later Typer that drops them keeps its own notation rather than breaking).
"""

from __future__ import annotations

from typing import Any

import typer.core


def _argument_usage(self: typer.core.TyperArgument) -> str:
    name = self.metavar or self.name.upper()
    if not self.required:
        name = f"[{name}]"
    return name + ("..." if self.nargs != 1 else "")


def _argument_label(self: typer.core.TyperArgument) -> str:
    return (self.metavar or self.name.upper()) + ("..." if self.metavar is None and self.nargs != 1 else "")


def _no_type(self: typer.core.TyperArgument, ctx: Any) -> str | None:
    return None


_NAMES = {"int": "INTEGER", "float": "FLOAT", "str": "TEXT", "path": "PATH", "bool": "BOOLEAN"}


def _conventional(label: str) -> str:
    """Typer's ``<list[int]>``, ``<int range>``, ``<a|b>`` as ``INTEGER``, ``INTEGER``, ``[a|b]``."""
    label = label.strip("<>")
    if label.startswith("list[") and label.endswith("]"):
        label = label[5:-1]
    label = label.removesuffix(" range")
    if "|" in label:
        return f"[{label}]"
    return _NAMES.get(label, label.upper())


def _option_metavar(self: typer.core.TyperOption, ctx: Any) -> str | None:
    if self.metavar is not None:
        return self.metavar
    shown = self.display_type(ctx)
    return _conventional(shown) + ("..." if self.nargs != 1 else "") if shown else shown


def install() -> None:
    arg, opt = typer.core.TyperArgument, typer.core.TyperOption
    for cls, attr, fn in ((arg, "_usage_display_name", _argument_usage), (arg, "_rich_display_name", _argument_label),
                          (arg, "display_type_rich", _no_type), (opt, "display_type_rich", _option_metavar)):
        if hasattr(cls, attr):
            setattr(cls, attr, fn)
