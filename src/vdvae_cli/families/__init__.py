"""Model families, side by side: each folder holds everything that is that family's. Nothing outside
a family's folder imports it; :mod:`vdvae_cli.engine.registry` finds it by name."""
