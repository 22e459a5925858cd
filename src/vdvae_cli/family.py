"""Model families behind one interface: what operations, files and commands may rely on.

A *model* (VDVAE's :class:`~vdvae_cli.model.VAE`, NVAE's :class:`~vdvae_cli.nvae.network.NVAE`) is a
stack of latent layers with a resolution and a shape per image (``cfg.decoder_layers``), an encoder,
one top-down decode pass whose per-layer ``z`` comes from a given latent, the posterior or the prior
at a temperature, and an output distribution. :class:`LatentModel` is that surface.

What differs between families (pixels -> network input, the likelihood, turning output parameters
into pixels, the importance weight of a posterior pass, the config and network classes) belongs to
the family's object, a :class:`Family`; :func:`family_of` finds it from a model or a config. The
family's name is ``cfg.family``; configs without one (every VDVAE file written before NVAE came)
are VDVAE.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:  # torch is imported where a network is built or run, not to read a file's header
    import torch
    from torch import Tensor

    from .distributions import Noise
    from .model import DecoderOutput
    from .train import TrainConfig
    from .training.recipe import Recipe, TrainDefaults


class LatentLayer(Protocol):
    """One latent layer, in decoder order."""

    index: int
    res: int
    width: int

    @property
    def latent_shape(self) -> tuple[int, int, int]: ...


class FamilyConfig(Protocol):
    """What every family's frozen config offers."""

    name: str
    dataset: str
    decoder_layers: Sequence[Any]  # LatentLayer

    @property
    def image_size(self) -> int: ...
    @property
    def image_channels(self) -> int: ...
    @property
    def n_layers(self) -> int: ...
    @property
    def resolutions(self) -> tuple[int, ...]: ...
    @property
    def latent_dims(self) -> int: ...
    @property
    def n_dims(self) -> int: ...
    def layers_up_to_res(self, res: int) -> int: ...
    def to_dict(self) -> dict[str, Any]: ...
    def to_json(self) -> str: ...


@runtime_checkable
class LatentModel(Protocol):
    """The network surface ops and commands use (both families' modules satisfy it)."""

    cfg: Any  # FamilyConfig
    weights_digest: str | None

    def encoder(self, x: Tensor) -> Any: ...
    def decoder(self, n: int, activations: Any = None, **options: Any) -> "DecoderOutput": ...
    def logits(self, px_z: Tensor) -> Tensor: ...


class Family(Protocol):
    """Behaviour that differs between families, over (model, tensors)."""

    name: str
    config_key: str  # the safetensors metadata entry holding the config JSON

    def config_from_dict(self, data: Mapping[str, Any]) -> Any: ...
    def network(self, cfg: Any) -> torch.nn.Module: ...
    def state_shapes(self, cfg: Any) -> "OrderedDict[str, tuple[int, ...]]":
        """Every state_dict key of ``cfg``'s network and its shape, without allocating tensors."""
        ...
    def activation_bytes(self, cfg: Any, itemsize: int = 4, *, encoder: bool = True) -> int:
        """A generous estimate of one image's working memory in a forward pass (bytes)."""
        ...
    def model_input(self, model: Any, images: Tensor, dtype: torch.dtype) -> Tensor:
        """uint8 NHWC images -> the encoder's input."""
        ...
    def nll(self, model: Any, logits: Tensor, images: Tensor) -> Tensor:
        """Negative log-likelihood of uint8 NHWC ``images`` in nats per dimension, (N,)."""
        ...
    def pixels(self, model: Any, logits: Tensor, noise: "Noise", output_temperature: float) -> Tensor:
        """Output parameters -> uint8 NHWC RGB images, drawn at ``output_temperature`` (0: noise-free)."""
        ...
    def log_ratio(self, model: Any, out: "DecoderOutput") -> Tensor:
        """Sum over posterior layers of ``log p(z) - log q(z | x)`` of a traced pass, (N,)."""
        ...
    def readjust_bn(self, model: Any, temperatures: Sequence[float], cache_dir: Path, *, iters: int) -> str:
        """Fit normalisation statistics to sampling at ``temperatures`` (kept in ``cache_dir``);
        returns a line saying what was done."""
        ...
    def train_defaults(self, name: str | None) -> "TrainDefaults":
        """The recipe's run settings for a named architecture (official or CPU preset), or for
        ``None`` (fine-tuning a file, an architecture from JSON)."""
        ...
    def training_recipe(self, cfg: Any, tc: "TrainConfig", total: int) -> "Recipe":
        """The optimizer, objective and recipe state of a ``total``-step run; refuses ``tc`` settings
        the family's recipe cannot honour (a UsageError)."""
        ...


class VDVAEFamily:
    """Very Deep VAEs (Child 2021): :mod:`vdvae_cli.config`, :mod:`vdvae_cli.model`."""

    name = "vdvae"
    config_key = "vdvae_config"

    def config_from_dict(self, data: Mapping[str, Any]) -> Any:
        from .config import VDVAEConfig

        return VDVAEConfig.from_dict(data)

    def network(self, cfg: Any) -> torch.nn.Module:
        from .model import VAE

        return VAE(cfg)

    def state_shapes(self, cfg: Any) -> "OrderedDict[str, tuple[int, ...]]":
        from .header import vdvae_state_shapes

        return vdvae_state_shapes(cfg)  # from the config alone: not even a meta-device module

    def activation_bytes(self, cfg: Any, itemsize: int = 4, *, encoder: bool = True) -> int:
        from .header import vdvae_activation_bytes

        return vdvae_activation_bytes(cfg, itemsize, encoder=encoder)

    def model_input(self, model: Any, images: Tensor, dtype: torch.dtype) -> Tensor:
        from .ops import model_input

        return model_input(model.cfg, images, dtype)

    def nll(self, model: Any, logits: Tensor, images: Tensor) -> Tensor:
        from .distributions import dmol_nll
        from .ops import loss_target

        cfg = model.cfg
        return dmol_nll(logits, loss_target(cfg, images), cfg.num_mixtures, low_bit=cfg.low_bit)

    def pixels(self, model: Any, logits: Tensor, noise: "Noise", output_temperature: float) -> Tensor:
        from .distributions import dmol_sample, to_uint8

        return to_uint8(dmol_sample(logits, model.cfg.num_mixtures, noise=noise, temperature=output_temperature))

    def log_ratio(self, model: Any, out: "DecoderOutput") -> Tensor:
        from .distributions import gaussian_log_prob

        return sum(  # type: ignore[return-value]
            (gaussian_log_prob(t["z"].float(), t["pm"].float(), t["pv"].float())
             - gaussian_log_prob(t["z"].float(), t["qm"].float(), t["qv"].float())).sum(dim=(1, 2, 3))
            for t in out.trace
            if "qm" in t  # layers drawn from the prior have q = p: ratio 1
        )

    def readjust_bn(self, model: Any, temperatures: Sequence[float], cache_dir: Path, *, iters: int) -> str:
        from .errors import UsageError

        raise UsageError("--readjust-bn re-estimates BatchNorm statistics, and a VDVAE has no BatchNorm",
                         hint="it is for NVAE models")

    def train_defaults(self, name: str | None) -> "TrainDefaults":
        from .presets import PRESET_RECIPE, is_preset
        from .train import reference_recipe
        from .training.recipe import TrainDefaults

        if is_preset(name):
            return TrainDefaults(dict(PRESET_RECIPE), decay=True)
        return TrainDefaults(reference_recipe(name) if name else {})

    def training_recipe(self, cfg: Any, tc: "TrainConfig", total: int) -> "Recipe":
        from .training.recipe import VDVAERecipe

        return VDVAERecipe(cfg, tc, total)


FAMILY_NAMES = ("vdvae", "nvae")


def family_named(name: str) -> Family:
    """The family object for a name (as a checkpoint's metadata spells it)."""
    from .errors import CheckpointError

    if name == "vdvae":
        return VDVAEFamily()
    if name == "nvae":
        from .nvae.family import NVAEFamily  # imports torch: only for NVAE files

        return NVAEFamily()
    raise CheckpointError(f"unknown model family {name!r}", hint=f"this version knows {', '.join(FAMILY_NAMES)}")


def family_of(obj: Any) -> Family:
    """The family of a model or a config (``cfg.family``; VDVAE when absent)."""
    cfg = getattr(obj, "cfg", obj)
    return family_named(getattr(cfg, "family", "vdvae"))


def first_parameter(model: torch.nn.Module) -> Tensor:
    """A parameter that tells the model's device and dtype."""
    return next(model.parameters())
