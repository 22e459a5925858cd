"""The toy family's object: what the engine, the model files, the trainer and the CLI ask of it."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from vdvae_cli.base.errors import UsageError
from vdvae_cli.engine.distributions import dmol_nll, dmol_sample, gaussian_log_prob, to_uint8
from vdvae_cli.engine.recipe import LossTerms, TrainDefaults

from .config import ToyConfig

Tensor = torch.Tensor


def _unit(images: Tensor) -> Tensor:
    return images.float() / 127.5 - 1.0  # uint8 NHWC -> [-1, 1]


class ToyRecipe:
    """Adam on the negative ELBO: the smallest recipe there is."""

    split_kl = False
    find_unused_parameters = False

    def __init__(self, cfg: ToyConfig, tc: Any, total: int):
        if tc.family_options:
            raise UsageError("the toy family's recipe has no options")
        self.tc = tc

    def optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=self.tc.lr)

    def objective(self, model: torch.nn.Module, step: int, terms: LossTerms) -> Tensor:
        return terms.elbo

    def log_values(self, step: int) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        pass


class ToyFamily:
    name = "toy"
    config_key = "toy_config"

    def config_from_dict(self, data: Mapping[str, Any]) -> ToyConfig:
        return ToyConfig.from_dict(data)

    def network(self, cfg: ToyConfig) -> torch.nn.Module:
        from .network import ToyVAE

        return ToyVAE(cfg)

    def state_shapes(self, cfg: ToyConfig) -> "OrderedDict[str, tuple[int, ...]]":
        with torch.device("meta"):
            model = self.network(cfg)
        return OrderedDict((k, tuple(v.shape)) for k, v in model.state_dict().items())

    def activation_bytes(self, cfg: ToyConfig, itemsize: int = 4, *, encoder: bool = True) -> int:
        return 64 * cfg.width * 8 * 8 * itemsize

    def model_input(self, model: Any, images: Tensor, dtype: torch.dtype) -> Tensor:
        return _unit(images).permute(0, 3, 1, 2).to(dtype)

    def nll(self, model: Any, logits: Tensor, images: Tensor) -> Tensor:
        return dmol_nll(logits, _unit(images.to(logits.device)), 1)

    def pixels(self, model: Any, logits: Tensor, noise: Any, output_temperature: float) -> Tensor:
        return to_uint8(dmol_sample(logits, 1, noise=noise, temperature=output_temperature))

    def log_ratio(self, model: Any, out: Any) -> Tensor:
        return sum(  # type: ignore[return-value]
            (gaussian_log_prob(t["z"].float(), t["pm"].float(), t["pv"].float())
             - gaussian_log_prob(t["z"].float(), t["qm"].float(), t["qv"].float())).sum(dim=(1, 2, 3))
            for t in out.trace if "qm" in t
        )

    def readjust_bn(self, model: Any, temperatures: Sequence[float], cache_dir: Path, *, iters: int) -> str:
        raise UsageError("the toy family has no BatchNorm")

    def prepare_for_inference(self, model: Any, *, fuse: bool, compile: bool) -> None:
        return None

    def train_defaults(self, name: str | None) -> TrainDefaults:
        return TrainDefaults({"lr": 3e-3, "grad_clip": 100.0, "skip_threshold": -1.0, "ema_rate": 0.9}, decay=True)

    def training_recipe(self, cfg: ToyConfig, tc: Any, total: int) -> ToyRecipe:
        return ToyRecipe(cfg, tc, total)

    def official_names(self) -> tuple[str, ...]:
        return ()

    def official_config(self, name: str) -> ToyConfig:
        raise UsageError(f"the toy family has no official architecture {name!r}")

    def preset_names(self) -> tuple[str, ...]:
        return ("toy8",)

    def preset_image_size(self, name: str) -> int:
        return 8

    def preset_config(self, name: str, images: Tensor, *, run_name: str | None = None) -> ToyConfig:
        return ToyConfig(name=run_name or name)

    def hparams_config(self, path: Path, images_at: Any, *, size_hint: int | None = None) -> Any:
        raise UsageError("the toy family has no hyperparameter files")

    def stores_layout(self, path: Path) -> bool:
        return False

    def official_layout(self, config: Any = None, hparams: Path | None = None, *, name: str | None = None) -> Any:
        raise UsageError("the toy family has no official checkpoints")

    def load_official(self, path: Path, layout: Any = None, *, state: Any = None) -> Any:
        raise UsageError("the toy family has no official checkpoints")


FAMILY = ToyFamily()
