"""The run folder: what a run writes, and everything a resumed run reads back.

::

    run.json            model config, train config, data facts, world size
    state.pt            the latest resumable state (torch.save of plain tensors, loaded weights_only)
    model.safetensors   the EMA weights in the self-describing format ``vdvae sample`` loads
    log.jsonl           one JSON object per evaluation, warning and checkpoint
    samples/step-N.png  held-out originals, their reconstructions, then samples at t = 1.0 and 0.8
    curves.png          held-out bits/dim and training loss against steps (see :mod:`.curves`)

Every process checks the folder (so all fail alike, before any collective); only rank 0 writes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from ..checkpoint import save_checkpoint
from ..config import VDVAEConfig
from ..errors import OutputError, TrainingError
from ..model import VAE

STATE_FILE = "state.pt"
RUN_FILE = "run.json"
MODEL_FILE = "model.safetensors"
LOG_FILE = "log.jsonl"


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class RunDir:
    def __init__(self, path: str | Path, *, rank: int = 0):
        self.path = Path(path)
        self.writer = rank == 0
        self.state_path = self.path / STATE_FILE
        self.model_path = self.path / MODEL_FILE

    def open(self, *, resume: bool, force: bool, world: int) -> dict[str, Any] | None:
        """Check the folder for a new run (refusing to clobber one) or load the state to resume."""
        if resume:
            return self._load_state(world)
        if self.path.exists() and not self.path.is_dir():
            raise OutputError(f"{self.path} exists and is not a folder")
        if (self.state_path.exists() or (self.path / RUN_FILE).exists()) and not force:
            raise OutputError(
                f"{self.path} already holds a training run",
                hint=f"continue it with --resume {self.path}, choose another -o, or pass --force to start over",
            )
        return None

    def _load_state(self, world: int) -> dict[str, Any]:
        if not self.state_path.is_file():
            raise TrainingError(f"{self.path} has no checkpoint to resume ({STATE_FILE} is missing)")
        try:
            saved = torch.load(self.state_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file
            raise TrainingError(f"{self.state_path} cannot be read: {exc}") from None
        if saved.get("world_size", 1) != world:
            raise TrainingError(
                f"the run was saved with {saved.get('world_size', 1)} process(es) but now runs with {world}",
                hint="resume with the same number of processes so every rank sees the same data order",
            )
        return saved

    def create(self, info: Mapping[str, Any], *, fresh: bool) -> None:
        """Write run.json; a fresh start (``--force`` over an old run) removes the old run's files."""
        if not self.writer:
            return
        if fresh:
            self.path.mkdir(parents=True, exist_ok=True)
            for name in (LOG_FILE, STATE_FILE, MODEL_FILE):
                (self.path / name).unlink(missing_ok=True)
        tmp = self.path / f".{RUN_FILE}.tmp"
        tmp.write_text(json.dumps(dict(info), indent=2) + "\n")
        os.replace(tmp, self.path / RUN_FILE)

    def save(self, state: Mapping[str, Any], ema: VAE, cfg: VDVAEConfig, meta: Mapping[str, str], *,
             keep: bool) -> None:
        """The resumable state (and a step-N.pt copy when ``keep``) and the exported EMA model."""
        if not self.writer:
            return
        _atomic_torch_save(dict(state), self.state_path)
        if keep:
            _atomic_torch_save(dict(state), self.path / f"step-{state['step']:07d}.pt")
        save_checkpoint(ema, cfg, self.model_path, metadata=dict(meta), force=True)

    def log(self, record: Mapping[str, Any]) -> None:
        if self.writer:
            with open(self.path / LOG_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")


def read_run(run_dir: str | Path) -> tuple[VDVAEConfig, Any, dict[str, Any]]:
    """The model config, train config and run facts saved in ``run_dir/run.json``."""
    from ..train import TrainConfig

    run_dir = Path(run_dir)
    try:
        info = json.loads((run_dir / RUN_FILE).read_text())
        return VDVAEConfig.from_dict(info["model_config"]), TrainConfig.from_dict(info["train_config"]), info
    except FileNotFoundError:
        raise TrainingError(f"{run_dir} is not a training run (no {RUN_FILE})") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise TrainingError(f"{run_dir / RUN_FILE} is damaged: {exc}") from None
