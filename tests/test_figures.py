"""Every README and model-card figure is what the command in its caption makes today:
scripts/make_figures.py makes the sample grids and interpolations from their captions' commands, and
scripts/make_hierarchy_figure.py the README's top figure (its caption names that command)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import make_figures  # noqa: E402


def test_the_fashion32_grid_is_what_its_caption_command_draws(tmp_path):
    fig = next(f for f in make_figures.FIGURES if f.name == "fashion32-samples")
    card = (ROOT / "weights" / "README.md").read_text()
    assert f"`vdvae {' '.join(fig.command)}`" in card  # the caption names exactly this command
    made = tmp_path / "made.png"
    assert make_figures.make(fig, made)
    assert make_figures.same_pixels(made, ROOT / fig.target), "rerun: python scripts/make_figures.py"


def test_every_caption_names_its_figure_command():
    card = (ROOT / "weights" / "README.md").read_text()
    readme = (ROOT / "README.md").read_text()
    for fig in make_figures.FIGURES:
        text = card if fig.target.startswith("weights/") else readme
        shown = " ".join("keys/" if a == "KEYS" else a for a in fig.command)
        assert shown in " ".join(text.split()), (fig.name, shown)


@pytest.mark.slow
@pytest.mark.skipif(not (Path("/work/data/fashion-mnist-grey") / "test.npz").is_file(),
                    reason="the Fashion-MNIST arrays of scripts/prepare_fashion_mnist.py are not here")
def test_the_readme_top_figure_is_what_its_caption_command_draws(tmp_path):
    readme = (ROOT / "README.md").read_text()
    command = "python scripts/make_hierarchy_figure.py weights/fashion.safetensors -o docs/hierarchy-fashion.png"
    assert "](docs/hierarchy-fashion.png)" in readme and command in " ".join(readme.split())
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    subprocess.run([sys.executable, "scripts/make_hierarchy_figure.py", "weights/fashion.safetensors",
                    "-o", str(tmp_path / "h.png")], cwd=ROOT, env=env, check=True, timeout=600)
    assert make_figures.same_pixels(tmp_path / "h.png", ROOT / "docs/hierarchy-fashion.png")
