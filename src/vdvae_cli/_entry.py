"""The ``vdvae`` program: signal handlers first (:mod:`vdvae_cli.base.signals`), then the command line."""

from __future__ import annotations


def main() -> None:
    from .base.signals import install_exit_handlers

    install_exit_handlers()
    from .cli import main as cli_main

    cli_main()
