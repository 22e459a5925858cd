"""The VDVAE network: bottleneck blocks, bottom-up encoder, top-down decoder, DMoL output conv.

Architecture only: no I/O, no device moves, no printing. Submodule names equal the official
checkpoint keys (``encoder.enc_blocks.3.c2.weight``, ``decoder.dec_blocks.0.prior.c4.bias``, ...), so
an official state_dict loads with a straight ``load_state_dict``.

One decode path serves every use. For each latent layer ``i`` the decoder takes ``z`` from, in order:
a given latent ``latents[i]``; the posterior ``N(qm, e^qv)`` when encoder activations are given and
``i < n_posterior``; otherwise the prior ``N(pm, t_i * e^pv)``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence, cast

import torch
import torch.nn.functional as F
from torch import nn

from .config import DecoderLayer, VDVAEConfig
from ...engine.distributions import BatchNoise, Noise, dmol_param_count, gaussian_kl, temperature_std
from ...engine.interface import DecoderOutput, decode_options

Tensor = torch.Tensor


class Block(nn.Module):
    """Pre-activation bottleneck: four convs (1x1, kxk, kxk, 1x1), each after an exact GELU."""

    def __init__(self, in_width: int, middle: int, out_width: int, kernel: int, *, residual: bool,
                 down_rate: int | None = None):
        super().__init__()
        pad = kernel // 2
        self.c1 = nn.Conv2d(in_width, middle, 1)
        self.c2 = nn.Conv2d(middle, middle, kernel, padding=pad)
        self.c3 = nn.Conv2d(middle, middle, kernel, padding=pad)
        self.c4 = nn.Conv2d(middle, out_width, 1)
        self.residual = residual
        self.down_rate = down_rate

    def forward(self, x: Tensor) -> Tensor:  # (N, C_in, r, r)
        h = self.c1(F.gelu(x))
        h = self.c2(F.gelu(h))
        h = self.c3(F.gelu(h))
        h = self.c4(F.gelu(h))  # (N, C_out, r, r)
        out = x + h if self.residual else h
        if self.down_rate:
            out = F.avg_pool2d(out, kernel_size=self.down_rate, stride=self.down_rate)
        return out


class Encoder(nn.Module):
    def __init__(self, cfg: VDVAEConfig):
        super().__init__()
        self.widths = {layer.out_res: cfg.width_at(layer.out_res) for layer in cfg.encoder_layers}
        self.in_conv = nn.Conv2d(cfg.image_channels, cfg.width, 3, padding=1)
        blocks = [Block(l.width, l.middle, l.width, l.kernel, residual=True, down_rate=l.down_rate)
                  for l in cfg.encoder_layers]
        for block in blocks:
            block.c4.weight.data.mul_(math.sqrt(1 / len(blocks)))
        self.enc_blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        """``x`` (N, C, H, W) network input -> {resolution: last activation at that resolution}."""
        x = self.in_conv(x)  # (N, width, H, W)
        acts = {x.shape[-1]: x}
        for block in self.enc_blocks:
            x = block(x)
            r = x.shape[-1]
            missing = self.widths[r] - x.shape[1]
            if missing > 0:  # widths grow at lower resolution: append zero channels
                x = F.pad(x, (0, 0, 0, 0, 0, missing))
            acts[r] = x
        return acts


class DecBlock(nn.Module):
    """One latent layer: prior p(z | x), posterior q(z | x, a), latent projection and a resnet block."""

    def __init__(self, layer: DecoderLayer, n_blocks: int):
        super().__init__()
        w, mid, k, zd = layer.width, layer.middle, layer.kernel, layer.zdim
        self.res, self.mixin, self.zdim = layer.res, layer.mixin, zd
        self.enc = Block(2 * w, mid, 2 * zd, k, residual=False)
        self.prior = Block(w, mid, 2 * zd + w, k, residual=False)
        self.z_proj = nn.Conv2d(zd, w, 1)
        self.resnet = Block(w, mid, w, k, residual=True)
        self.z_proj.weight.data.mul_(math.sqrt(1 / n_blocks))
        self.resnet.c4.weight.data.mul_(math.sqrt(1 / n_blocks))
        self.prior.c4.weight.data.zero_()

    def input_state(self, xs: dict[int, Tensor], n: int, like: Tensor) -> Tensor:
        """The state entering this block: xs[res] (or zeros) plus the upsampled mixin state."""
        width = self.z_proj.out_channels
        x = xs.get(self.res)
        up = None
        if self.mixin is not None:
            up = F.interpolate(xs[self.mixin][:, :width], scale_factor=self.res // self.mixin, mode="nearest")
        if x is None:  # no state yet at this resolution (and no learned bias): zeros, plus the mixin
            if up is not None:
                return up  # 0 + up, without a pass over a tensor of zeros
            layout = torch.channels_last if like.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
            # (torch.zeros takes no memory_format: an empty tensor in the layout, zeroed)
            return torch.empty(n, width, self.res, self.res, dtype=like.dtype, device=like.device,
                               memory_format=layout).zero_()
        return x if up is None else x + up  # (N, W, r, r)

    def prior_params(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Prior mean and log-std of z, and the state ``x + xpp`` the prior's extra channels make."""
        feats = self.prior(x)  # (N, 2Z + W, r, r)
        z = self.zdim
        return feats[:, :z], feats[:, z : 2 * z], x + feats[:, 2 * z :]

    def posterior_params(self, x: Tensor, act: Tensor) -> tuple[Tensor, Tensor]:
        qm, qv = self.enc(torch.cat([x, act], dim=1)).chunk(2, dim=1)  # (N, Z, r, r) each
        return qm, qv

    def finish(self, x: Tensor, z: Tensor) -> Tensor:
        return self.resnet(x + self.z_proj(z.to(x.dtype)))


class Decoder(nn.Module):
    def __init__(self, cfg: VDVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.gain = nn.Parameter(torch.ones(1, cfg.width, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, cfg.width, 1, 1))
        n = cfg.n_layers
        self.dec_blocks = nn.ModuleList(DecBlock(layer, n) for layer in cfg.decoder_layers)
        self.bias_xs = nn.ParameterList(
            nn.Parameter(torch.zeros(1, cfg.width_at(r), r, r)) for r in cfg.bias_resolutions
        )
        self.out_net = DmolNet(cfg)
        # The last layer that reads each resolution's state (its own layers and the mixin of the next
        # resolution): after it, the state is dropped, so a pass holds only the states still to come.
        last: dict[int, int] = {}
        for i, layer in enumerate(cfg.decoder_layers):
            last[layer.res] = i
            if layer.mixin is not None:
                last[layer.mixin] = i
        self._drop_after: dict[int, list[int]] = {}
        for res, i in last.items():
            if res != cfg.image_size:
                self._drop_after.setdefault(i, []).append(res)

    def start_states(self, n: int) -> dict[int, Tensor]:
        return {r: b.expand(n, -1, -1, -1) for r, b in zip(self.cfg.bias_resolutions, self.bias_xs)}

    def forward(
        self,
        n: int,
        activations: dict[int, Tensor] | None = None,
        *,
        n_posterior: int | None = None,
        latents: Sequence[Tensor | None] = (),
        temperatures: Sequence[float] | float = 1.0,
        posterior_mean: bool = False,
        noise: Noise | None = None,
        eps: Sequence[Tensor | None] | None = None,
        want_latents: bool = False,
        want_kl: bool | str = False,
        trace: bool = False,
        stop_after: int | None = None,
        stage: tuple[int, int] | None = None,
    ) -> DecoderOutput:
        """Run the top-down pass for a batch of ``n``.

        ``n_posterior`` (default: all layers when ``activations`` is given) is how many leading
        layers draw from the posterior; later ones draw from the prior at ``temperatures`` (one value,
        or one per layer). ``latents[i]`` (if given and not None) fixes layer ``i``. ``eps[i]`` injects
        the standard-normal noise of layer ``i``; otherwise it comes from ``noise``, which is drawn
        once per layer whether the layer uses it or not, so one layer's settings never shift another
        layer's noise. ``stop_after`` ends the pass after that many layers (``px_z`` is then None).
        ``want_kl="split"`` also fills ``kl_prior`` (see :class:`DecoderOutput`), for an objective
        that treats the posterior's and the prior's side of each layer's KL differently.
        ``stage=(a, b)`` (the progressive recipe, :func:`vdvae_cli.engine.recipe.progressive_stage`):
        layers before ``a`` are not trained yet and take ``z = 0`` (no KL), layers ``a`` to ``b - 1``
        have the fixed prior N(0, I) instead of their learned one; later layers as usual.
        """
        cfg = self.cfg
        temps, n_posterior = decode_options(cfg.n_layers, temperatures, latents, activations is not None, n_posterior)
        noise = noise or BatchNoise()
        like = self.bias_xs[0]
        xs = self.start_states(n)
        split = want_kl == "split"
        bound = getattr(cfg, "prior_logstd_max", None)
        kept: list[Tensor] | None = [] if want_latents else None
        kls: list[Tensor | None] | None = [] if want_kl else None
        prior_kls: list[Tensor | None] | None = [] if split else None
        out = DecoderOutput(px_z=None, latents=kept, kl=kls, kl_prior=prior_kls)

        for i, block in enumerate(cast("Sequence[DecBlock]", self.dec_blocks)):  # nn.ModuleList is not generic
            x_in = block.input_state(xs, n, like)
            pm, pv, x = block.prior_params(x_in)  # x = x_in + the prior's state channels
            if bound is not None:
                pv = bound_logstd(pv, bound)
            if stage is not None and i < stage[1]:  # not trained yet (z = 0), or under a fixed N(0, I)
                pm, pv = torch.zeros_like(pm), torch.zeros_like(pv)
            given = latents[i] if i < len(latents) else None
            e = eps[i] if eps is not None and i < len(eps) and eps[i] is not None else None
            if e is None:
                e = noise.normal((n, *cfg.decoder_layers[i].latent_shape), device=x.device)
            rec: dict[str, Tensor] = {"pm": pm, "pv": pv, "eps": e} if trace else {}
            kl = kl_prior = None
            if given is not None:
                z = given.to(device=x.device).expand(n, -1, -1, -1)
            elif stage is not None and i < stage[0]:
                z = pm  # zeros: the fixed prior's mean
            elif i < n_posterior:
                # (decode_options gives posterior layers only when activations are given)
                qm, qv = block.posterior_params(x_in, activations[block.res])  # type: ignore[index]
                z = qm if posterior_mean else qm + torch.exp(qv) * e.to(qm.dtype)
                if split:
                    q32, p32 = (qm.float(), qv.float()), (pm.float(), pv.float())
                    kl = gaussian_kl(*q32, p32[0].detach(), p32[1].detach())
                    kl_prior = gaussian_kl(q32[0].detach(), q32[1].detach(), *p32)
                elif want_kl:
                    kl = gaussian_kl(qm.float(), qv.float(), pm.float(), pv.float())
                if trace:
                    rec.update(qm=qm, qv=qv)
            else:
                z = pm + temperature_std(pv, temps[i]) * e.to(pv.dtype)
            x = block.finish(x, z)
            xs[block.res] = x
            for res in self._drop_after.get(i, ()):
                xs.pop(res, None)
            if kept is not None:
                kept.append(z.detach())
            if kls is not None:
                kls.append(kl)
            if prior_kls is not None:
                prior_kls.append(kl_prior)
            if trace:
                rec["z"] = z
                out.trace.append(rec)
            if stop_after is not None and i + 1 >= stop_after:
                return out  # px_z stays None
        out.px_z = xs[cfg.image_size] * self.gain + self.bias
        return out


def bound_logstd(pv: Tensor, bound: float) -> Tensor:
    """A log-std kept below ``bound``: ``bound - softplus(bound - pv)`` (smooth; ~pv well below it)."""
    return bound - F.softplus(bound - pv)


class DmolNet(nn.Module):
    """The output head: a 1x1 conv to the DMoL parameters per pixel (10 * num_mixtures for RGB,
    3 * num_mixtures for grey)."""

    def __init__(self, cfg: VDVAEConfig):
        super().__init__()
        self.out_conv = nn.Conv2d(cfg.width, dmol_param_count(cfg.image_channels, cfg.num_mixtures), 1)

    def forward(self, px_z: Tensor) -> Tensor:
        return self.out_conv(px_z).permute(0, 2, 3, 1)  # (N, H, W, 10M)


class VAE(nn.Module):
    """Encoder + decoder. ``cfg`` travels with the module (and into every checkpoint we write)."""

    def __init__(self, cfg: VDVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.weights_digest: str | None = None  # set by the checkpoint loader: which weights these are
        self.digest_source: Callable[[], str] | None = None  # (engine.statedict.digest_of)
        self.default_temperature: str | None = None  # set by the checkpoint loader: the --temp its file recommends
        self.default_output_temperature: str | None = None  # and the --output-temp
        self.default_ood: dict[str, str] | None = None  # and vdvae ood's k / prior temperature (header.default_ood)
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.data.zero_()

    def logits(self, px_z: Tensor) -> Tensor:
        """DMoL parameters (N, H, W, 10M), computed in float32."""
        conv = self.decoder.out_net.out_conv
        bias = None if conv.bias is None else conv.bias.float()
        return F.conv2d(px_z.float(), conv.weight.float(), bias).permute(0, 2, 3, 1)
