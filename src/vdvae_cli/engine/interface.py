"""The seam between the engine and the model families: what operations, files, the trainer and the
commands may rely on, and nothing of any one family.

A *model* (VDVAE's ``VAE``, NVAE's ``NVAE``, or a plugin's network) is a stack of latent layers with
a resolution and a shape per image (``cfg.decoder_layers``), an encoder, one top-down decode pass
whose per-layer ``z`` comes from a given latent, the posterior or the prior at a temperature
(:class:`DecoderOutput`), and an output distribution. :class:`LatentModel` is that surface.

What differs between families (pixels -> network input, the likelihood, turning output parameters
into pixels, the importance weight of a posterior pass, the config and network classes, official
checkpoints, presets, the training recipe) belongs to the family's object, a :class:`Family`;
:func:`vdvae_cli.engine.registry.family_of` finds it from a model or a config by ``cfg.family``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:  # torch is imported where a network is built or run, not to read a file's header
    import torch
    from torch import Tensor

    from .distributions import Noise
    from .recipe import Recipe, TrainConfig, TrainDefaults
    from .keys import KeyReport


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
    def replace(self, **changes: Any) -> Any: ...


@runtime_checkable
class LatentModel(Protocol):
    """The network surface ops, tools, the trainer and commands use: every family's module (an
    ``nn.Module``) satisfies it."""

    cfg: Any  # FamilyConfig
    weights_digest: str | None  # which weights these are (engine.statedict.digest_of computes it on first use)
    digest_source: "Callable[[], str] | None"  # set by the loader: hashes the file's tensors
    default_temperature: str | None  # the file's recommended --temp / --output-temp, if any
    default_output_temperature: str | None
    default_ood: dict[str, str] | None  # the file's recorded `vdvae ood` k / prior temperature, if any
    encoder: Any  # callable: network input (N, C, H, W) -> what the decoder's posterior layers read
    decoder: Any  # callable: (n, activations=None, **options) -> DecoderOutput

    def logits(self, px_z: Tensor) -> Tensor: ...

    # The nn.Module surface the engine relies on
    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]: ...
    def modules(self) -> Iterator[torch.nn.Module]: ...
    def eval(self) -> Any: ...
    def train(self, mode: bool = True) -> Any: ...
    def to(self, *args: Any, **kwargs: Any) -> Any: ...
    def state_dict(self, *args: Any, **kwargs: Any) -> Any: ...
    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any: ...
    def requires_grad_(self, requires_grad: bool = True) -> Any: ...


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
    def draw_pixels(self, model: Any, n: int, noise: "Noise", output_temperature: float) -> Tensor:
        """``n`` uint8 NHWC RGB images drawn by the family itself; only families whose models have
        no latent layers (``cfg.n_layers == 0``: autoregressive ones) are asked (``ops.sample``)."""
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
    def prepare_for_inference(self, model: Any, *, fuse: bool, compile: bool) -> None:
        """Speed options that do not change the maths, applied in place after the layout is chosen:
        fused CPU kernels (``fuse``), ``torch.compile`` of the repeated blocks (``compile``)."""
        ...

    # Architectures a run can start from, by name
    def official_names(self) -> tuple[str, ...]:
        """The official architectures a run can start from (``vdvae train --config NAME``)."""
        ...
    def official_config(self, name: str) -> Any: ...
    def preset_names(self) -> tuple[str, ...]:
        """Architectures sized for a CPU (``--config small32``)."""
        ...
    def preset_image_size(self, name: str) -> int: ...
    def preset_config(self, name: str, images: Tensor, *, run_name: str | None = None) -> Any:
        """A preset's config; ``images`` (uint8 NHWC at its size) may set its input normalisation."""
        ...

    def hparams_config(self, path: Path, images_at: Any, *, size_hint: int | None = None) -> "tuple[Any, Tensor]":
        """An architecture from a hyperparameters file (``vdvae train --hparams FILE``) and the
        training images, read by ``images_at(size)`` at the size the file sets (or ``size_hint``);
        a family without such files raises a UsageError."""
        ...

    # Official checkpoints (torch pickles as the reference code saves them)
    def stores_layout(self, path: Path) -> bool:
        """Whether ``path`` is this family's official checkpoint that carries its own layout (no
        ``--config`` needed); reads at most the file's pickle directory, runs no pickled code."""
        ...
    def official_layout(self, config: Any = None, hparams: Path | None = None, *, name: str | None = None) -> Any:
        """The layout an official checkpoint is read with: a config (or its official name) or a
        hyperparameters file; ``None`` when the file itself (or its weights) will tell."""
        ...
    def load_official(self, path: Path, layout: Any = None, *, state: Any = None) -> "OfficialCheckpoint":
        """An official checkpoint read safely (``weights_only``), with how its keys and shapes differ
        from ``layout``'s network (``None``: the layout the file stores, or one read off its weights).
        Raises a CheckpointError only when the file cannot be read as this family's checkpoint;
        ``state`` is the file's state_dict already loaded by an earlier call."""
        ...


@dataclass(frozen=True)
class OfficialCheckpoint:
    """An official checkpoint as read by its family: the config, the state_dict in our key names,
    how its keys differ from the config's network, and metadata worth keeping in the converted file."""

    cfg: Any
    state: "OrderedDict[str, Tensor]"
    report: "KeyReport"
    metadata: Mapping[str, str] = field(default_factory=dict)


def first_parameter(model: Any) -> Tensor:
    """A parameter that tells the model's device and dtype."""
    return next(model.parameters())


def decode_options(n_layers: int, temperatures: Sequence[float] | float, latents: Sequence[object],
                   posterior: bool, n_posterior: int | None) -> tuple[list[float], int]:
    """A decode pass's per-layer temperatures and its number of posterior layers (all when encoder
    activations are given and ``n_posterior`` is None, none without activations), checked."""
    if isinstance(temperatures, (int, float)):
        temps = [float(temperatures)] * n_layers
    else:
        temps = [float(t) for t in temperatures]
        if len(temps) != n_layers:
            raise ValueError(f"{len(temps)} temperatures for {n_layers} latent layers")
    if len(latents) > n_layers:
        raise ValueError(f"{len(latents)} latents for {n_layers} latent layers")
    if not posterior:
        return temps, 0
    return temps, n_layers if n_posterior is None else n_posterior


@dataclass
class DecoderOutput:
    """What a decoder pass returns. Lists are per latent layer (decoder order); optional parts are
    filled only when asked for, so plain sampling keeps nothing but ``px_z``."""

    px_z: Tensor | None  # (N, width, H, W): after the final gain/bias; None when stop_after cut the pass short
    latents: list[Tensor] | None = None  # z used at each layer (N, Z, r, r)
    kl: list[Tensor | None] | None = None  # per-element KL for posterior layers, None elsewhere
    # With want_kl="split": kl carries gradients to the posterior only (the prior detached) and
    # kl_prior the same values with gradients to the prior only (the posterior detached).
    kl_prior: list[Tensor | None] | None = None
    trace: list[dict[str, Tensor]] = field(default_factory=list)  # pm, pv, qm, qv, eps, z per layer
