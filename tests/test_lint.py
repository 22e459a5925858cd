"""The lint and the type check configured in pyproject.toml ([tool.ruff], [tool.mypy]) hold over the
repository."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (it comes with the test extra: pip install -e '.[test]')")
    result = subprocess.run([ruff, "check", "--no-cache", "src", "tests", "scripts", "benchmarks"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]


def test_mypy_finds_nothing():
    """The package ships py.typed: its annotations must hold. Settings and the checked files come from
    [tool.mypy]; the cache (.mypy_cache) makes a second run take seconds instead of ~20."""
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (it comes with the test extra: pip install -e '.[test]')")
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]


def test_import_contracts_hold():
    """The architecture in [tool.importlinter]: layers (command line > tools | trainer > model files >
    families > engine > base), families independent of each other and reached only through the
    registry, model files never importing the trainer, and no import cycle (lazy imports counted)."""
    if importlib.util.find_spec("importlinter") is None:
        pytest.skip("import-linter is not installed (it comes with the test extra: pip install -e '.[test]')")
    result = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
                             "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-1000:]
    assert "0 broken" in result.stdout


def test_contracts_catch_a_family_import_from_the_engine(tmp_path):
    """The contracts can fail: a copy of the package whose engine imports a family is refused."""
    if importlib.util.find_spec("importlinter") is None:
        pytest.skip("import-linter is not installed")
    copy = tmp_path / "src"
    shutil.copytree(ROOT / "src", copy, ignore=shutil.ignore_patterns("__pycache__"))
    ops = copy / "vdvae_cli" / "engine" / "ops.py"
    ops.write_text(ops.read_text() + "\n\ndef _leak():\n    from ..families.vdvae import model  # noqa: F401\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    env = {"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
                             "--no-cache"], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode != 0
    assert "vdvae_cli.engine.ops -> vdvae_cli.families.vdvae.model" in result.stdout
