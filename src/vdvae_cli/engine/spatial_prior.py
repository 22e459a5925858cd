"""A learned autoregressive prior over one spatial latent layer, from PixelCNN++'s causal blocks.

The layer's latents ``z`` (Z channels on an r x r map) are modelled position by position in raster
order and, inside a position, channel by channel:
``p(z) = prod_(i, j) prod_c p(z[c, i, j] | z at earlier positions, z[<c, i, j])``.

* **Across positions**: the two streams of Gated PixelCNN / PixelCNN++ (:mod:`.causal`): a vertical
  stream that sees the rows above, a horizontal one that also sees the positions to the left on the
  row, gated ResNet blocks with weight normalisation, so there is no blind spot. Their output at a
  position is a context vector that depends on earlier positions only.
* **Inside a position**: a MADE over the Z channels (Germain et al. 2015), every unit also fed the
  context, giving a mixture of Gaussians per channel (the same conditional as the MADE prior over
  1x1 layers, :class:`vdvae_cli.engine.learned_prior.MadePrior`).

Drawing takes r x r passes of the streams (one per position) and Z cheap passes of the channel
MADE per position. Scoring is one pass. Family-free like the MADE prior: it sees a (N, D) tensor,
flattened as the layer's (Z, r, r) latents are (channel-major).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .causal import DownRightShiftedConv, DownShiftedConv, GatedResnet, concat_elu, start_streams, stream_stem
from .distributions import Noise
from .latent_prior import LatentPrior

Tensor = torch.Tensor

_BOUNDS = {"channels": 512, "size": 128, "filters": 512, "blocks": 16, "components": 32, "hidden": 4096}


@dataclass(frozen=True)
class SpatialConfig:
    """Shape of a spatial prior: the layer (``channels`` x ``size`` x ``size``), the streams' width
    (``filters``) and depth (``blocks`` gated ResNet pairs), the channel MADE's ``hidden`` width and
    the Gaussians per channel (``components``)."""

    channels: int
    size: int
    filters: int = 64
    blocks: int = 4
    hidden: int = 128
    components: int = 4

    def __post_init__(self) -> None:
        for name, top in _BOUNDS.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
                raise ValueError(f"{name} must be a whole number from 1 to {top}, got {value!r}")

    @property
    def dim(self) -> int:
        return self.channels * self.size * self.size

    def parameter_count(self) -> int:
        """How many numbers the network holds (checked against a file before it is built)."""
        with torch.device("meta"):
            return sum(p.numel() for p in SpatialPrior(self).parameters())

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SpatialConfig:
        return cls(**{k: int(d[k]) for k in ("channels", "size", "filters", "blocks", "hidden", "components")})


def _channel_masks(z: int, hidden: int) -> tuple[Tensor, Tensor]:
    """MADE masks over ``z`` channels: (hidden, z) into the hidden units, (z, hidden) out of them;
    channel c's output sees the hidden units of degree < c + 1, which see channels < their degree."""
    deg_in = torch.arange(1, z + 1)
    deg_hidden = torch.arange(hidden) % max(z - 1, 1) + (1 if z > 1 else 0)
    return (deg_hidden[:, None] >= deg_in[None, :]).float(), (deg_in[:, None] > deg_hidden[None, :]).float()


class SpatialPrior(LatentPrior):
    kind = "spatial"

    def __init__(self, cfg: SpatialConfig):
        super().__init__()
        self.cfg = cfg
        z, f, k, h = cfg.channels, cfg.filters, cfg.components, cfg.hidden
        self.u_init, self.ul_init_v, self.ul_init_h = stream_stem(z, f)
        self.u_blocks = nn.ModuleList(GatedResnet(f, DownShiftedConv, 0, 0.0) for _ in range(cfg.blocks))
        self.ul_blocks = nn.ModuleList(GatedResnet(f, DownRightShiftedConv, f, 0.0) for _ in range(cfg.blocks))
        # the channel MADE, every unit fed the context (2f: concat_elu of the horizontal stream)
        mask_in, mask_out = _channel_masks(z, h)
        self.mask_in: Tensor
        self.mask_out: Tensor
        self.register_buffer("mask_in", mask_in, persistent=False)
        self.register_buffer("mask_out", mask_out.repeat(3 * k, 1), persistent=False)  # blocks of z rows
        self.z_in = nn.Linear(z, h)
        self.ctx_in = nn.Linear(2 * f, h, bias=False)
        self.z_out = nn.Linear(h, 3 * k * z)
        self.ctx_out = nn.Linear(2 * f, 3 * k * z, bias=False)
        # Start near N(0, 1) per channel: small output weights, zero biases (init_from moves the biases
        # to the data's marginal per channel).
        for layer in (self.z_out, self.ctx_out):
            nn.init.normal_(layer.weight, 0.0, 1e-3)
        nn.init.zeros_(self.z_out.bias)

    def context(self, z: Tensor) -> Tensor:
        """(N, Z, r, r) -> (N, r, r, 2F): at each position, a summary of the earlier positions only."""
        u, ul = start_streams(z, self.u_init, self.ul_init_v, self.ul_init_h)
        for bu, bul in zip(self.u_blocks, self.ul_blocks):
            u = bu(u)
            ul = bul(ul, u)
        return concat_elu(ul).permute(0, 2, 3, 1)

    def head(self, z_pos: Tensor, ctx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Channel-wise mixture (logits, means, log stds), each (..., Z, K), from the latents at a
        position (..., Z) and its context (..., 2F); channel c reads only channels < c."""
        k, zc = self.cfg.components, self.cfg.channels
        hidden = F.elu(F.linear(z_pos, self.z_in.weight * self.mask_in, self.z_in.bias) + self.ctx_in(ctx))
        out = F.linear(hidden, self.z_out.weight * self.mask_out, self.z_out.bias) + self.ctx_out(ctx)
        out = out.unflatten(-1, (3, k, zc)).movedim(-3, 0).transpose(-1, -2)  # (3, ..., Z, K)
        return out[0], out[1], out[2].clamp(-7.0, 5.0)

    def _maps(self, flat: Tensor) -> Tensor:
        c, r = self.cfg.channels, self.cfg.size
        return flat.reshape(flat.shape[0], c, r, r)

    def log_prob_dims(self, z: Tensor) -> Tensor:
        maps = self._maps(z.float())
        logits, means, logstd = self.head(maps.permute(0, 2, 3, 1), self.context(maps))  # (N, r, r, Z, K)
        x = maps.permute(0, 2, 3, 1)[..., None]
        comp = -0.5 * math.log(2 * math.pi) - logstd - 0.5 * ((x - means) * torch.exp(-logstd)) ** 2
        per = torch.logsumexp(comp + torch.log_softmax(logits, -1), -1)  # (N, r, r, Z)
        return per.permute(0, 3, 1, 2).reshape(z.shape[0], -1)  # the flattened layer's order

    @torch.no_grad()
    def init_from(self, z: Tensor) -> None:
        """Data-dependent start: every component of channel c at the mean and standard deviation of
        channel c over the data and the positions."""
        maps = self._maps(z.float())
        k, c = self.cfg.components, self.cfg.channels
        bias = self.z_out.bias.view(3, k, c)
        bias[1] = maps.mean(dim=(0, 2, 3)).to(bias)
        bias[2] = maps.std(dim=(0, 2, 3)).clamp(min=1e-3).log().clamp(-7.0, 5.0).to(bias)

    @torch.no_grad()
    def sample(self, n: int, noise: Noise, *, temp: float | Tensor = 1.0,
               device: torch.device | None = None, given: Tensor | None = None) -> Tensor:
        """Draw ``n`` layers, position by position, channel by channel; ``temp`` (a number, or one per
        dimension in the flattened order) scales each component's std; the component choice is not
        tempered. The uniform and normal draws are taken once for all dimensions, so a draw depends
        only on ``noise``. A prior over one layer has no partial ``given``: all of it, or none."""
        dev = device if device is not None else self.z_in.weight.device
        cfg = self.cfg
        d, c, r = cfg.dim, cfg.channels, cfg.size
        u = self._maps(noise.uniform((n, d), device=dev))
        eps = self._maps(noise.normal((n, d), device=dev))
        if given is not None and given.shape[1] not in (0, d):
            raise ValueError(f"a spatial prior over one layer cannot complete {given.shape[1]} of its {d} dims")
        if given is not None and given.shape[1] == d:
            return given.to(device=dev, dtype=torch.float32).reshape(n, d)
        temps = self._maps(torch.as_tensor(temp, dtype=torch.float32, device=dev).expand(d)[None])[0]  # (Z, r, r)
        maps = torch.zeros(n, c, r, r, device=dev)
        for i in range(r):
            for j in range(r):
                ctx = self.context(maps)[:, i, j]  # (n, 2F): depends on earlier positions only
                for ch in range(c):
                    logits, means, logstd = self.head(maps[:, :, i, j], ctx)  # (n, Z, K)
                    cdf = torch.softmax(logits[:, ch], -1).cumsum(-1)
                    pick = (u[:, ch, i, j, None] > cdf).sum(-1).clamp(max=cfg.components - 1)[:, None]
                    m = means[:, ch].gather(1, pick)[:, 0]
                    s = torch.exp(logstd[:, ch].gather(1, pick)[:, 0])
                    maps[:, ch, i, j] = m + temps[ch, i, j] * s * eps[:, ch, i, j]
        return maps.reshape(n, d)
