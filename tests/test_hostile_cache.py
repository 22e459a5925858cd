"""Hostile cache folders (issue 18, class 1): `vdvae cache` and its --remove/--remove-all never follow
a link out of the cache's own folder, never list or delete anything but regular files there, and
say what they skipped."""

from __future__ import annotations

import os
from pathlib import Path

from typer.testing import CliRunner

from vdvae_cli.cli import app
from vdvae_cli.modelfiles import cache

runner = CliRunner()


def vdvae(*args: str, code: int = 0):
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, f"exit {result.exit_code}: {result.stderr}"
    assert "Traceback" not in result.stderr
    return result


def _precious(tmp_path: Path) -> Path:
    folder = tmp_path / "precious"
    folder.mkdir()
    for name in ("precious1.txt", "precious2.txt", "model.safetensors"):
        (folder / name).write_bytes(b"keep me")
    return folder


def test_a_linked_downloads_folder_is_never_emptied(tmp_path):
    root = Path(os.environ["VDVAE_CACHE"])
    root.mkdir(parents=True, exist_ok=True)
    precious = _precious(tmp_path)
    (root / "downloads").symlink_to(precious, target_is_directory=True)
    (root / "bn").symlink_to(precious, target_is_directory=True)
    (root / "mine.safetensors").write_bytes(b"x" * 10)
    listing = vdvae("cache")
    assert "precious" not in listing.stdout and "mine" in listing.stdout
    assert "skipped" in listing.stderr and "symbolic link" in listing.stderr
    gone = vdvae("cache", "--remove-all")
    assert "removed mine" in gone.stderr and "precious" not in gone.stderr.replace(str(precious), "")
    assert sorted(p.name for p in precious.iterdir()) == ["model.safetensors", "precious1.txt", "precious2.txt"]
    assert not (root / "mine.safetensors").exists()
    assert (root / "downloads").is_symlink()  # the link itself is the user's: left as it is


def test_linked_and_odd_entries_are_neither_listed_nor_removed(tmp_path):
    root = Path(os.environ["VDVAE_CACHE"])
    (root / "downloads").mkdir(parents=True, exist_ok=True)
    precious = _precious(tmp_path)
    (root / "linked.safetensors").symlink_to(precious / "model.safetensors")
    (root / "downloads" / "precious1.txt").symlink_to(precious / "precious1.txt")
    os.mkfifo(root / "downloads" / "fifo.part")
    (root / "folder.safetensors").mkdir()
    listing = vdvae("cache", "--json")
    assert listing.stdout == ""  # nothing regular: nothing listed
    assert listing.stderr.count("skipped") == 4
    assert "not a regular file" in listing.stderr
    refused = vdvae("cache", "--remove", "linked", code=1)
    assert refused.stderr.count("error:") == 1 and "nothing named 'linked'" in refused.stderr
    vdvae("cache", "--remove-all")
    assert (precious / "model.safetensors").read_bytes() == b"keep me"
    assert (precious / "precious1.txt").read_bytes() == b"keep me"


def test_an_entry_swapped_for_a_link_after_listing_is_not_deleted(tmp_path, monkeypatch):
    root = Path(os.environ["VDVAE_CACHE"])
    root.mkdir(parents=True, exist_ok=True)
    precious = _precious(tmp_path)
    entry = root / "swap.safetensors"
    entry.write_bytes(b"x")
    listed = cache.cached_models

    def listed_then_swapped(skipped=None):
        found = listed(skipped)
        entry.unlink()
        entry.symlink_to(precious / "model.safetensors")  # a race: the entry becomes a link
        return found

    monkeypatch.setattr(cache, "cached_models", listed_then_swapped)
    try:
        cache.remove(["swap"])
    except Exception as exc:  # OutputError: one line, nothing deleted
        assert "no longer a regular file" in str(exc)
    else:
        raise AssertionError("removed through a link")
    assert (precious / "model.safetensors").read_bytes() == b"keep me"
