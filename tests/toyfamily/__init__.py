"""A third model family that no file under ``src/`` names: a two-level Gaussian hierarchical VAE of a
few hundred parameters on 8x8 RGB images. ``tests/test_plugin_family.py`` installs it as a plugin
package would (an entry point in the ``vdvae_cli.families`` group) and runs the real CLI on it.

It is also the worked example of ``docs/architecture.md``: a family is a frozen config, a network
with the decode-pass surface, a recipe, and one object that the registry hands out.
"""
