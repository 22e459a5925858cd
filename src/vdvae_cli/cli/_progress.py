"""Progress bars on stderr that never touch stdout.

rich's ``Progress`` (its ``Live`` display) by default captures ``sys.stdout`` while it runs at a
terminal and prints what was written there *through its console*, which here is stderr: with
stderr on a terminal, ``--json > out.jsonl`` lost every record written while a bar was up. Every
bar of the command line is made here, with stdout left alone (stderr is still routed above the
bar, so message lines stay readable).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.progress import Progress


def isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def bar_wanted(*, json_out: bool = False) -> bool:
    """A live bar only when stderr is a terminal, and not when --json lines go to that same screen
    (a bar redrawn between them would garble them)."""
    return isatty(sys.stderr) and not (json_out and isatty(sys.stdout))


def stderr_progress(*columns: Any, transient: bool = True) -> "Progress":
    """A rich progress bar on stderr; stdout is never redirected (data written there stays there)."""
    from rich.console import Console
    from rich.progress import Progress

    return Progress(*columns, console=Console(stderr=True), transient=transient,
                    redirect_stdout=False, redirect_stderr=True)
