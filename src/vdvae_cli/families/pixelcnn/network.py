"""The PixelCNN++ network (Salimans et al. 2017) over the causal blocks of Gated PixelCNN.

Two streams run side by side so that no pixel above or to the left is missed (no blind spot, van den
Oord et al. 2016): the *vertical* stream ``u`` sees only the rows above the current one (its
convolutions are shifted down), the *horizontal* stream ``ul`` also sees the pixels to the left on
the current row (shifted down and right). Going down (``up pass`` in the paper's code) three
resolutions with ``nr_resnet`` gated ResNet blocks each, halving with stride-2 shifted convolutions;
coming back with one block per activation kept on the way down (``nr_resnet`` at the coarsest
resolution, ``nr_resnet + 1`` at the others), doubling with stride-2 shifted transposed
convolutions, every block reading the matching activation of the way down (the shortcut
connections). Each output pixel's DMoL parameters therefore depend on earlier pixels only; the
colour channels inside a pixel are chained by the mixture itself (R, then G given R, then B given
R and G: :func:`vdvae_cli.engine.distributions.dmol_log_prob`).

Convolutions are weight-normalised (``weight = g * v / |v|`` per output channel) as in the paper;
:func:`fold_weight_norm` turns them into plain weights once at load for inference.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, cast

import torch
import torch.nn.functional as F
from torch import nn

from ...engine.causal import (
    DownRightShiftedConv,
    DownShiftedConv,
    GatedResnet,
    NiN,
    ShiftedDeconv,
    WNConv,
    start_streams,
    stream_stem,
)
from ...engine.interface import DecoderOutput
from .config import PixelCNNConfig

Tensor = torch.Tensor


class PixelCNNPP(nn.Module):
    """PixelCNN++: network input (N, C, H, W) in [-1, 1] -> DMoL parameters per pixel (N, H, W, K)."""

    def __init__(self, cfg: PixelCNNConfig):
        super().__init__()
        self.cfg = cfg
        nf, n, p = cfg.nr_filters, cfg.nr_resnet, cfg.dropout
        self.u_init, self.ul_init_v, self.ul_init_h = stream_stem(cfg.channels, nf)

        def u_block(count: int, aux: int) -> nn.ModuleList:
            return nn.ModuleList(GatedResnet(nf, DownShiftedConv, aux, p) for _ in range(count))

        def ul_block(count: int, aux: int) -> nn.ModuleList:
            return nn.ModuleList(GatedResnet(nf, DownRightShiftedConv, aux, p) for _ in range(count))

        # the way down: three resolutions; ul's blocks read u
        self.down_u = nn.ModuleList(u_block(n, 0) for _ in range(3))
        self.down_ul = nn.ModuleList(ul_block(n, nf) for _ in range(3))
        self.halve_u = nn.ModuleList(DownShiftedConv(nf, nf, (2, 3), stride=2) for _ in range(2))
        self.halve_ul = nn.ModuleList(DownRightShiftedConv(nf, nf, (2, 2), stride=2) for _ in range(2))
        # the way up: n blocks at the coarsest resolution, n + 1 at the others (one per activation
        # kept on the way down); u reads the shortcut u, ul reads [u; shortcut ul]
        self.up_u = nn.ModuleList(u_block(n if level == 0 else n + 1, nf) for level in range(3))
        self.up_ul = nn.ModuleList(ul_block(n if level == 0 else n + 1, 2 * nf) for level in range(3))
        self.double_u = nn.ModuleList(ShiftedDeconv(nf, nf, (2, 3), centred=True) for _ in range(2))
        self.double_ul = nn.ModuleList(ShiftedDeconv(nf, nf, (2, 2), centred=False) for _ in range(2))
        self.head = NiN(nf, cfg.output_channels)
        # the engine's model surface (engine.interface.LatentModel), set by the checkpoint loader
        self.weights_digest: str | None = None
        self.digest_source: Callable[[], str] | None = None
        self.default_temperature: str | None = None
        self.default_output_temperature: str | None = None
        self.default_ood: dict[str, str] | None = None

    # -- as a model with no latent layers (engine.interface.LatentModel) ---------------------------

    def encoder(self, x: Tensor) -> Tensor:
        """What the decoder's "posterior" pass reads: the network input itself."""
        return x

    def decoder(self, n: int, activations: Tensor | None = None, **options: Any) -> DecoderOutput:
        """The causal pass over the image ``activations`` (the likelihood of every pixel given the
        pixels before it); there are no latents, so no KL and no trace."""
        if activations is None:
            from ...base.errors import UsageError

            raise UsageError("a PixelCNN++ has no latent layers to decode: its images are drawn pixel by pixel",
                             hint="use sample")
        want_kl = options.get("want_kl")
        return DecoderOutput(self(activations), latents=[] if options.get("want_latents") else None,
                             kl=[] if want_kl else None, kl_prior=[] if want_kl == "split" else None)

    def logits(self, px_z: Tensor) -> Tensor:
        return px_z

    def forward(self, x: Tensor) -> Tensor:
        u, ul = start_streams(x, self.u_init, self.ul_init_v, self.ul_init_h)
        us, uls = [u], [ul]
        for level in range(3):
            for bu, bul in zip(_level(self.down_u, level), _level(self.down_ul, level)):
                u = bu(u)
                ul = bul(ul, u)
                us.append(u)
                uls.append(ul)
            if level < 2:
                u = self.halve_u[level](u)
                ul = self.halve_ul[level](ul)
                us.append(u)
                uls.append(ul)
        u, ul = us.pop(), uls.pop()
        for level in range(3):
            for bu, bul in zip(_level(self.up_u, level), _level(self.up_ul, level)):
                u = bu(u, us.pop())
                ul = bul(ul, torch.cat([u, uls.pop()], dim=1))
            if level < 2:
                u = self.double_u[level](u)
                ul = self.double_ul[level](ul)
        assert not us and not uls
        return self.head(F.elu(ul)).permute(0, 2, 3, 1)

    def fold_weight_norm(self) -> None:
        """Fix every convolution's weight once (inference: the same maths without renormalising)."""
        for m in self.modules():
            if isinstance(m, WNConv):
                m.fold()


def _level(blocks: nn.ModuleList, level: int) -> nn.ModuleList:
    return cast(nn.ModuleList, blocks[level])


def network_shapes(cfg: PixelCNNConfig) -> "OrderedDict[str, tuple[int, ...]]":
    """Every state_dict key of ``cfg``'s network and its shape (built on the meta device: no memory)."""
    with torch.device("meta"):
        net = PixelCNNPP(cfg)
    return OrderedDict((k, tuple(v.shape)) for k, v in net.state_dict().items())
