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
from pathlib import Path
from typing import Any, Mapping

import torch

from ..modelfiles.checkpoint import save_checkpoint
from ..base.errors import OutputError, TrainingError

STATE_FILE = "state.pt"
RUN_FILE = "run.json"
MODEL_FILE = "model.safetensors"
LOG_FILE = "log.jsonl"


def _atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file and a rename; a full disk is one OutputError and
    leaves no temporary file (torch reports it as a RuntimeError from its zip writer)."""
    from ..base.atomic import atomic_write_with

    atomic_write_with(path, lambda f: torch.save(obj, f))


_STATE_KEYS = {"model": dict, "ema": dict, "optimizer": dict, "step": int, "skipped": int, "rng": list}


def read_state(state_path: Path) -> dict[str, Any]:
    """A run's ``state.pt``, loaded without running code (``weights_only``) and checked to be what
    the trainer wrote before anything is taken from it."""
    from ..base.errors import activity
    from ..base.safety import first_line

    try:
        with activity(f"loading {state_path}"):
            saved = torch.load(state_path, map_location="cpu", weights_only=True)
    except TrainingError:
        raise
    except Exception as exc:  # a truncated or foreign file
        raise TrainingError(f"{state_path} cannot be read: {first_line(exc)}",
                            hint="resume from an intact run, or start a new one") from None
    if not isinstance(saved, dict):
        raise TrainingError(f"{state_path} is not a training state (it holds a {type(saved).__name__})")
    for key, kind in _STATE_KEYS.items():
        if not isinstance(saved.get(key), kind) or isinstance(saved.get(key), bool):
            raise TrainingError(f"{state_path} is not a training state: {key!r} is missing or not a {kind.__name__}")
    if saved["step"] < 0 or saved["skipped"] < 0 or not all(isinstance(r, torch.Tensor) for r in saved["rng"]):
        raise TrainingError(f"{state_path} is damaged: step, skipped or rng states are out of range")
    if not isinstance(saved.setdefault("recipe", {}), dict):  # the family recipe's own state (NVAE: spectral norms)
        raise TrainingError(f"{state_path} is damaged: its recipe state is not a map of names to tensors")
    for key in ("model", "ema", "recipe"):
        if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in saved[key].items()):
            raise TrainingError(f"{state_path} is damaged: {key!r} is not a map of names to tensors")
        for name, t in saved[key].items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise TrainingError(f"{state_path}: {key} tensor {name!r} holds values that are not finite")
    history = saved.get("history", [])
    if not isinstance(history, list) or not all(isinstance(h, str) for h in history):
        raise TrainingError(f"{state_path} is damaged: its history is not a list of JSON strings")
    return saved


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
        saved = read_state(self.state_path)
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
        from ..base.atomic import _write_error, atomic_write_with

        if fresh:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                for name in (LOG_FILE, STATE_FILE, MODEL_FILE):
                    (self.path / name).unlink(missing_ok=True)
            except OSError as exc:
                raise _write_error(self.path, exc) from None
        text = json.dumps(dict(info), indent=2) + "\n"
        atomic_write_with(self.path / RUN_FILE, lambda f: f.write(text.encode()))

    def save(self, state: Mapping[str, Any], ema: torch.nn.Module, cfg: Any, meta: Mapping[str, str], *,
             keep: bool) -> None:
        """The resumable state (and a step-N.pt copy when ``keep``) and the exported EMA model."""
        if not self.writer:
            return
        _atomic_torch_save(dict(state), self.state_path)
        if keep:
            _atomic_torch_save(dict(state), self.path / f"step-{state['step']:07d}.pt")
        save_checkpoint(ema, cfg, self.model_path, metadata=dict(meta), force=True)

    def log(self, record: Mapping[str, Any]) -> None:
        """One strict JSON line in log.jsonl (a failed write is one OutputError)."""
        if not self.writer:
            return
        from ..base.atomic import _write_error
        from ..base.safety import dumps

        path = self.path / LOG_FILE
        try:
            with open(path, "a") as f:
                f.write(dumps(record) + "\n")
        except OSError as exc:
            raise _write_error(path, exc) from None


def read_run(run_dir: str | Path) -> tuple[Any, Any, dict[str, Any]]:
    """The model config (of the run's family; VDVAE for runs saved before NVAE could train), train
    config and run facts saved in ``run_dir/run.json``."""
    from ..base.errors import CheckpointError, ConfigError
    from ..engine.registry import DEFAULT_FAMILY, family_named
    from ..engine.recipe import TrainConfig

    from ..base.safety import first_line, loads

    run_dir = Path(run_dir)
    try:
        with open(run_dir / RUN_FILE, "rb") as f:
            info = loads(f.read(16 << 20))
        if not isinstance(info, dict) or not isinstance(info.get("data", {}), dict):
            raise TypeError("not a JSON object")
        family = family_named(str(info.get("family", DEFAULT_FAMILY)))
        return family.config_from_dict(info["model_config"]), TrainConfig.from_dict(info["train_config"]), info
    except (CheckpointError, ConfigError) as exc:  # an unknown family, a config that does not hold
        raise TrainingError(f"{run_dir / RUN_FILE} is damaged: {exc}") from None
    except FileNotFoundError:
        raise TrainingError(f"{run_dir} is not a training run (no {RUN_FILE})") from None
    except OSError as exc:
        raise TrainingError(f"cannot read {run_dir / RUN_FILE}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TrainingError(f"{run_dir / RUN_FILE} is damaged: {first_line(exc)}") from None
