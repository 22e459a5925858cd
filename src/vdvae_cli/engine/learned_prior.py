"""A learned autoregressive prior over the flattened latents of a VAE's top layers.

The prior models ``z = concat(z_0, ..., z_{K-1})`` (each layer's latents flattened, in layer order)
as ``p(z) = prod_d p(z_d | z_<d)``, with a masked autoregressive network (MADE, Germain et al.
2015) giving a mixture of Gaussians for each dimension. Family-free: it sees only a (N, D) tensor.

:class:`LatentPrior` is the small interface the engine's ops call; :class:`MadePrior` implements
it for any leading layers (best for 1x1 ones), :class:`vdvae_cli.engine.spatial_prior.SpatialPrior`
(PixelCNN++ blocks over the map) for one spatial layer, and
:class:`vdvae_cli.engine.exemplar_prior.ExemplarPrior` (stored images drawn through the model's
posterior, no density) for any leading layers. A companion file names its ``kind``.

:class:`TopPrior` is a fitted prior in use (what ``engine.ops`` takes as ``prior=``); fitting lives
in :mod:`vdvae_cli.training.prior_fit`, the command in ``cli/prior.py``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from vdvae_cli.base.errors import CheckpointError, UsageError
from vdvae_cli.engine.distributions import Noise
from .companion import PRIOR_FORMAT
from .latent_prior import LatentPrior

Tensor = torch.Tensor


@dataclass(frozen=True)
class MadeConfig:
    """Shape of a MADE prior: input dimension, hidden widths, mixture components per dimension."""

    dim: int
    hidden: tuple[int, ...] = (512, 512)
    components: int = 4

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden widths must be positive, got {self.hidden}")
        if self.components < 1:
            raise ValueError(f"components must be >= 1, got {self.components}")

    def parameter_count(self) -> int:
        """How many numbers the network holds (checked against a file before it is built)."""
        widths = (self.dim, *self.hidden, 3 * self.components * self.dim)
        return sum(a * b + b for a, b in zip(widths, widths[1:]))

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "hidden": list(self.hidden)}

    @classmethod
    def from_dict(cls, d: dict) -> MadeConfig:
        return cls(dim=int(d["dim"]), hidden=tuple(int(h) for h in d["hidden"]),
                   components=int(d["components"]))


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (out, in)."""

    def __init__(self, n_in: int, n_out: int, mask: Tensor):
        super().__init__(n_in, n_out)
        self.mask: Tensor
        self.register_buffer("mask", mask.to(torch.float32), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.weight * self.mask, self.bias)


def made_degrees(cfg: MadeConfig) -> list[Tensor]:
    """Degrees of input, hidden and output units (natural input order, hidden degrees cycled).

    Hidden unit degrees run over 1..D-1 so every hidden unit can feed some output; with D == 1 the
    output depends on nothing (degree 0 hidden units feed only the bias path).
    """
    d = cfg.dim
    degrees = [torch.arange(1, d + 1)]
    for h in cfg.hidden:
        span = max(d - 1, 1)
        degrees.append(torch.arange(h) % span + (1 if d > 1 else 0))
    return degrees


class MadePrior(LatentPrior):
    """MADE with a mixture of ``components`` Gaussians per dimension."""

    kind = "made"

    def __init__(self, cfg: MadeConfig):
        super().__init__()
        self.cfg = cfg
        deg = made_degrees(cfg)
        layers: list[nn.Module] = []
        for i, h in enumerate(cfg.hidden):
            n_in = cfg.dim if i == 0 else cfg.hidden[i - 1]
            mask = (deg[i + 1][:, None] >= deg[i][None, :])  # (h, n_in)
            layers += [MaskedLinear(n_in, h, mask), nn.ELU()]
        self.trunk = nn.Sequential(*layers)
        k = cfg.components
        out_mask = (deg[0][:, None] > deg[-1][None, :])  # (D, h_last): output d sees degrees < d
        out_mask = out_mask.repeat(3 * k, 1)  # (3kD, h_last), blocks of D rows
        self.head = MaskedLinear(cfg.hidden[-1], 3 * k * cfg.dim, out_mask)
        # Start near N(0, 1) in every dimension (the model's prior of a collapsed unit): zero biases,
        # small output weights (not zero: the components must differ to learn apart).
        nn.init.zeros_(self.head.bias)
        nn.init.normal_(self.head.weight, 0.0, 1e-3)

    @torch.no_grad()
    def init_from(self, z: Tensor) -> None:
        """Data-dependent start: every component of dimension d at the marginal mean and standard
        deviation of ``z[:, d]`` (the best factorised Gaussian), so a fit begins where the model's
        own prior roughly is rather than at N(0, 1) (a narrow posterior is hundreds of bits away)."""
        d, k = self.cfg.dim, self.cfg.components
        bias = self.head.bias.view(3, k, d)
        bias[1] = z.float().mean(0).to(bias)
        bias[2] = z.float().std(0).clamp(min=1e-3).log().clamp(-7.0, 5.0).to(bias)

    def params(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mixture (logits, means, log stds), each (N, D, K), of p(z_d | z_<d)."""
        n, d, k = z.shape[0], self.cfg.dim, self.cfg.components
        out = self.head(self.trunk(z)).view(n, 3, k, d).permute(1, 0, 3, 2)  # (3, N, D, K)
        logits, means, logstd = out[0], out[1], out[2].clamp(-7.0, 5.0)
        return logits, means, logstd

    def log_prob_dims(self, z: Tensor) -> Tensor:
        logits, means, logstd = self.params(z)
        comp = (-0.5 * math.log(2 * math.pi) - logstd
                - 0.5 * ((z[..., None] - means) * torch.exp(-logstd)) ** 2)  # (N, D, K)
        return torch.logsumexp(comp + torch.log_softmax(logits, -1), -1)  # (N, D)

    @torch.no_grad()
    def sample(self, n: int, noise: Noise, *, temp: float | Tensor = 1.0,
               device: torch.device | None = None, given: Tensor | None = None) -> Tensor:
        """Draw n latents, one dimension at a time; ``temp`` (a number, or one per dimension)
        scales each component's std. ``given`` (n, d0) fixes the first d0 dimensions: the rest are
        drawn conditionally on them.

        The component choice is not tempered (temperature scales the Gaussian noise, as for the
        model's own prior). Every draw comes from ``noise``, the same draws whatever ``given`` is.
        """
        dev = device if device is not None else self.head.weight.device
        d = self.cfg.dim
        z = torch.zeros(n, d, device=dev)
        u = noise.uniform((n, d), device=dev)  # component choice
        eps = noise.normal((n, d), device=dev)
        start = 0
        if given is not None:
            start = given.shape[1]
            z[:, :start] = given.to(device=dev, dtype=z.dtype).reshape(n, start)
        temps = torch.as_tensor(temp, dtype=torch.float32, device=dev).expand(d)
        for i in range(start, d):
            logits, means, logstd = self.params(z)
            probs = torch.softmax(logits[:, i], -1)  # (n, K)
            cdf = probs.cumsum(-1)
            j = (u[:, i:i + 1] > cdf).sum(-1).clamp(max=self.cfg.components - 1)  # (n,)
            m = means[:, i].gather(1, j[:, None])[:, 0]
            s = torch.exp(logstd[:, i].gather(1, j[:, None])[:, 0])
            z[:, i] = m + temps[i] * s * eps[:, i]
        return z


# --------------------------------------------------------------------------------------------------
# Which layers, and the companion file



def max_flat_layers(latent_shapes: Sequence[Sequence[int]]) -> int:
    """How many leading layers are 1x1 (the MADE prior's reach): shapes are (Z, r, r) per layer."""
    k = 0
    for shape in latent_shapes:
        if tuple(shape[1:]) != (1, 1):
            break
        k += 1
    return k


MAX_PRIOR_DIMS = 2048  # a MADE draws one dimension per pass: beyond this, sampling crawls


def reachable_layers(latent_shapes: Sequence[Sequence[int]]) -> int:
    """How many leading layers a MADE can cover: their flattened dimensions total at most
    :data:`MAX_PRIOR_DIMS` (a spatial layer is flattened in raster order, channel by channel)."""
    k, total = 0, 0
    for shape in latent_shapes:
        total += math.prod(int(v) for v in shape)
        if total > MAX_PRIOR_DIMS:
            break
        k += 1
    return k


def default_layers(latent_shapes: Sequence[Sequence[int]]) -> int:
    """What ``vdvae prior fit`` covers without ``--layers``: every leading 1x1 layer (VDVAE's top),
    else the top layer alone (NVAE's top group, e.g. 8x8x8: the spatial prior's reach)."""
    return max_flat_layers(latent_shapes) or (1 if latent_shapes else 0)


def default_kind(k: int, latent_shapes: Sequence[Sequence[int]]) -> str:
    """Which prior ``vdvae prior fit`` fits over the first ``k`` layers without ``--kind``: the MADE
    over 1x1 layers (or several layers), the spatial one (PixelCNN++ blocks) over one spatial layer."""
    spatial = k == 1 and tuple(latent_shapes[0][1:]) != (1, 1)
    return "spatial" if spatial else "made"


def check_layers(k: int, latent_shapes: Sequence[Sequence[int]], kind: str = "made") -> int:
    """The flattened dimension of the first ``k`` layers; refuses a k the prior ``kind`` cannot reach
    (a MADE: leading layers of at most MAX_PRIOR_DIMS dims; the spatial prior: the top layer alone)."""
    if kind == "spatial":
        if k != 1 or tuple(latent_shapes[0][1:]) == (1, 1):
            raise UsageError("the spatial prior covers one spatial layer: the top one (--layers 1)",
                             hint="--kind made covers 1x1 layers, or several layers flattened")
        return math.prod(int(v) for v in latent_shapes[0])
    if kind == "exemplar":  # drawn through the model: any leading run of layers, however large
        if not 1 <= k <= len(latent_shapes):
            raise UsageError(f"--layers {k} is out of range: this model has {len(latent_shapes)} latent layers")
        return sum(math.prod(int(v) for v in s) for s in latent_shapes[:k])
    top = reachable_layers(latent_shapes)
    if k < 1 or k > top:
        if top == 0:
            raise UsageError(f"this model's top latent layer has {math.prod(latent_shapes[0])} dimensions: more than "
                             f"a learned prior covers ({MAX_PRIOR_DIMS})")
        raise UsageError(f"--layers {k} is out of range: this model's learned prior covers 1 to {top} "
                         f"(the leading layers with at most {MAX_PRIOR_DIMS} dimensions in all)")
    return sum(math.prod(int(v) for v in s) for s in latent_shapes[:k])


def posterior_log_densities(rec: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """``(log q(z | x), log p_model(z))`` per image (N,) of one traced posterior layer: from the
    family's own densities when its trace has them (NVAE: with its flows), else from the Gaussian
    parameters (VDVAE: ``qm``/``qv``, ``pm``/``pv`` as mean and log-std)."""
    if "log_q" in rec and "log_p" in rec:
        return rec["log_q"].float().sum(dim=(1, 2, 3)), rec["log_p"].float().sum(dim=(1, 2, 3))
    if {"z", "qm", "qv", "pm", "pv"} <= set(rec):
        from .distributions import gaussian_log_prob

        z = rec["z"].float()
        return (gaussian_log_prob(z, rec["qm"].float(), rec["qv"].float()).sum(dim=(1, 2, 3)),
                gaussian_log_prob(z, rec["pm"].float(), rec["pv"].float()).sum(dim=(1, 2, 3)))
    raise UsageError("this model's decoder does not report the posterior densities a learned prior needs",
                     hint="use --prior model")


def prior_bytes(prior: LatentPrior, *, layers: int, fingerprint: str, model_name: str,
                extra: Mapping[str, str] | None = None) -> bytes:
    """Serialise ``prior`` as a companion safetensors file naming its model's fingerprint."""
    from safetensors.torch import save

    meta = {"format": PRIOR_FORMAT, "kind": prior.kind, "layers": str(layers),
            "model_fingerprint": fingerprint, "model_name": model_name,
            "prior_config": json.dumps(prior.cfg.to_dict()), **(extra or {})}
    tensors = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
               for k, v in prior.state_dict().items()}  # (an exemplar prior's images stay uint8)
    return save(tensors, metadata=meta)


def _prior_kinds() -> dict[str, tuple[Any, Any]]:
    """kind -> (config class, network class)."""
    from .exemplar_prior import ExemplarConfig, ExemplarPrior
    from .spatial_prior import SpatialConfig, SpatialPrior

    return {"made": (MadeConfig, MadePrior), "spatial": (SpatialConfig, SpatialPrior),
            "exemplar": (ExemplarConfig, ExemplarPrior)}


def load_prior(data: bytes, *, fingerprint: str, label: str = "prior") -> tuple[LatentPrior, int, dict[str, str]]:
    """Parse a companion file; refuses one made for another model (fingerprint mismatch).

    The header goes through the same checks as every safetensors file the tool reads
    (:func:`vdvae_cli.base.tensorfile.parse_header`), and every metadata field is checked before use."""
    from safetensors.torch import load

    from vdvae_cli.base.safety import first_line, loads
    from vdvae_cli.base.tensorfile import FLOAT_DTYPES, parse_header

    header = parse_header(lambda offset, n: data[offset:offset + n], len(data), label,
                          kind="learned-prior file", dtypes=(*FLOAT_DTYPES, "U8"))
    meta = header.get("__metadata__") or {}
    if meta.get("format") != PRIOR_FORMAT:
        raise CheckpointError(f"{label} is not a learned-prior file (no format={PRIOR_FORMAT!r} metadata)")
    if meta.get("model_fingerprint") != fingerprint:
        raise CheckpointError(f"{label} was fitted to model {meta.get('model_name', '?')!r} "
                              f"({meta.get('model_fingerprint')}), not to this one ({fingerprint})")
    kinds = _prior_kinds()
    kind = meta.get("kind", "made")
    if kind not in kinds:
        raise CheckpointError(f"{label} is a learned prior of kind {kind[:40]!r}, which this version does not know",
                              hint=f"known kinds: {', '.join(kinds)}")
    config_cls, prior_cls = kinds[kind]
    try:
        layers = int(meta.get("layers", ""))
        cfg = config_cls.from_dict(loads(meta.get("prior_config", "")))
    except (ValueError, TypeError, KeyError) as exc:  # JSON (limits included), int() and MadeConfig checks
        raise CheckpointError(f"{label} has unreadable prior metadata: {first_line(exc)}") from None
    if layers < 1:
        raise CheckpointError(f"{label} covers {layers} layers; a learned prior covers at least one")
    stored = sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    if stored != cfg.parameter_count():  # before building: a config that lies cannot allocate more than the file holds
        raise CheckpointError(f"{label} holds {stored} numbers but its prior_config needs {cfg.parameter_count()}")
    prior = prior_cls(cfg)
    for key, want in prior.state_dict().items():  # pixels (an exemplar prior's images) as U8, numbers as floats
        got = header.get(key, {}).get("dtype")
        if got is not None and (got == "U8") != (want.dtype == torch.uint8):
            raise CheckpointError(f"{label} stores {key[:40]!r} as {got}, not as "
                                  + ("8-bit pixels (U8)" if want.dtype == torch.uint8 else "floating-point numbers"))
    try:
        prior.load_state_dict(load(bytes(data)), strict=True)
    except Exception as exc:  # safetensors' own errors, or tensors that do not fit the config
        raise CheckpointError(f"{label} cannot be read: {first_line(exc)}") from None
    return prior, layers, dict(meta)


# --------------------------------------------------------------------------------------------------
# A learned prior in use: which layers it covers, and the operations on a model's latents


@dataclass(frozen=True)
class TopPrior:
    """A learned prior over the first ``layers`` latent layers of a model whose latent shapes are
    ``shapes`` (decoder order): what the engine's ops take as ``prior=``."""

    prior: LatentPrior
    layers: int
    shapes: tuple[tuple[int, int, int], ...]
    source: str = ""

    def completes(self, lead: int) -> bool:
        """Whether this prior draws layers after ``lead`` given leading ones: some of its layers are
        left, and it can draw them given that many (an exemplar prior only from none)."""
        return lead < self.layers and (lead == 0 or self.prior.conditional)

    @property
    def dims(self) -> list[int]:
        """Flattened dimensions per covered layer."""
        return [math.prod(s) for s in self.shapes[: self.layers]]

    def flatten(self, latents: Sequence[Tensor]) -> Tensor:
        """(N, Z, r, r) per covered layer (as many as given, leading) -> (N, sum of their dims)."""
        return torch.cat([z.float().reshape(z.shape[0], -1) for z in latents], dim=1)

    def split(self, flat: Tensor) -> list[Tensor]:
        """(N, D) -> one (N, Z, r, r) tensor per covered layer."""
        return [part.reshape(flat.shape[0], *shape) for shape, part in zip(self.shapes, flat.split(self.dims, dim=1))]

    def complete(self, n: int, given: Sequence[Tensor], temperatures: Sequence[float], noise: Noise,
                 device: torch.device) -> list[Tensor]:
        """The covered layers' latents: ``given`` (a leading run of layers, possibly empty) kept, the
        rest drawn from the learned prior conditionally on them, each at its layer's temperature."""
        temps = torch.cat([torch.full((d,), float(t)) for d, t in zip(self.dims, temperatures[: self.layers])])
        prefix = self.flatten([z.expand(n, -1, -1, -1) for z in given]).to(device) if given else None
        flat = self.prior.sample(n, noise, temp=temps.to(device), device=device, given=prefix)
        return self.split(flat)

    def log_prob_layers(self, latents: Sequence[Tensor]) -> Tensor:
        """log p(z) of the covered layers' latents, grouped per layer: (N, layers) nats."""
        per_dim = self.prior.log_prob_dims(self.flatten(latents[: self.layers]).to(_device_of(self.prior)))
        return torch.stack([part.sum(-1) for part in per_dim.split(self.dims, dim=1)], dim=1)


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device

