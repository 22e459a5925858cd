"""``vdvae`` command line. Each command lives in its own module and registers itself on ``app``."""

from __future__ import annotations

from ._app import app
from . import convert  # noqa: F401  (registers commands)
from . import train  # noqa: F401
from . import models  # noqa: F401
from . import generate  # noqa: F401
from . import evaluate  # noqa: F401
from . import latent_tools  # noqa: F401


def main() -> None:
    app()


__all__ = ["app", "main"]
