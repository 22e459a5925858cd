"""``vdvae`` command line. Each command lives in its own module and registers itself on ``app``."""

from __future__ import annotations

import sys

from ._app import app, run

# Commands are listed in --help in the order they are registered: the everyday ones first.
from . import generate  # noqa: F401,E402  (registers commands)
from . import latent_tools  # noqa: F401,E402
from . import evaluate  # noqa: F401,E402
from . import models  # noqa: F401,E402
from . import cache  # noqa: F401,E402
from . import convert  # noqa: F401,E402
from . import train  # noqa: F401,E402
from . import restore  # noqa: F401,E402
from . import prior  # noqa: F401,E402


def main() -> None:
    from ._app import guard_std_streams

    guard_std_streams()
    sys.exit(run())


__all__ = ["app", "main"]
