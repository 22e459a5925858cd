"""The toy network: an encoder to 4x4 and 1x1 features, a top-down pass through two Gaussian latent
layers, and a one-component discretized logistic head (the engine's DMoL)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vdvae_cli.engine.distributions import BatchNoise, Noise, gaussian_kl, temperature_std
from vdvae_cli.engine.interface import DecoderOutput, decode_options

from .config import ToyConfig

Tensor = torch.Tensor


class ToyEncoder(nn.Module):
    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.conv = nn.Conv2d(3, cfg.width, 3, padding=1)

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        h = F.gelu(self.conv(x))  # (N, W, 8, 8)
        h4 = F.avg_pool2d(h, 2)  # (N, W, 4, 4)
        return {4: h4, 1: h4.mean(dim=(2, 3), keepdim=True)}


class ToyDecoder(nn.Module):
    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.cfg = cfg
        w, z = cfg.width, cfg.zdim
        self.top_prior = nn.Parameter(torch.zeros(1, 2 * z, 1, 1))
        self.q0 = nn.Conv2d(w, 2 * z, 1)
        self.z0 = nn.Conv2d(z, w, 1)
        self.p1 = nn.Conv2d(w, 2 * z, 1)
        self.q1 = nn.Conv2d(2 * w, 2 * z, 1)
        self.z1 = nn.Conv2d(z, w, 1)

    def forward(self, n: int, activations: dict[int, Tensor] | None = None, *, n_posterior: int | None = None,
                latents: Sequence[Tensor | None] = (), temperatures: Sequence[float] | float = 1.0,
                posterior_mean: bool = False, noise: Noise | None = None, eps: Sequence[Tensor | None] | None = None,
                want_latents: bool = False, want_kl: bool | str = False, trace: bool = False,
                stop_after: int | None = None) -> DecoderOutput:
        cfg = self.cfg
        temps, n_post = decode_options(cfg.n_layers, temperatures, latents, activations is not None, n_posterior)
        noise = noise or BatchNoise()
        out = DecoderOutput(px_z=None, latents=[] if want_latents else None, kl=[] if want_kl else None,
                            kl_prior=[] if want_kl == "split" else None)
        h = self.top_prior.new_zeros(n, cfg.width, 1, 1)
        for i in range(cfg.n_layers):
            pm, pv = (self.top_prior.expand(n, -1, -1, -1) if i == 0 else self.p1(h)).chunk(2, dim=1)
            e = eps[i] if eps is not None and i < len(eps) and eps[i] is not None else None
            if e is None:
                e = noise.normal((n, *cfg.decoder_layers[i].latent_shape), device=pm.device)
            given = latents[i] if i < len(latents) else None
            rec: dict[str, Tensor] = {"pm": pm, "pv": pv, "eps": e} if trace else {}
            kl = None
            if given is not None:
                z = given.to(pm.device).expand(n, -1, -1, -1)
            elif i < n_post:
                assert activations is not None
                act = activations[1] if i == 0 else torch.cat([h, activations[4]], dim=1)
                qm, qv = (self.q0 if i == 0 else self.q1)(act).chunk(2, dim=1)
                z = qm if posterior_mean else qm + torch.exp(qv) * e
                if want_kl:
                    kl = gaussian_kl(qm.float(), qv.float(), pm.float(), pv.float())
                if trace:
                    rec.update(qm=qm, qv=qv)
            else:
                z = pm + temperature_std(pv, temps[i]) * e
            h = h + (self.z0 if i == 0 else self.z1)(z)
            if i == 0:
                h = F.interpolate(h, scale_factor=4)  # (N, W, 4, 4)
            if out.latents is not None:
                out.latents.append(z.detach())
            if out.kl is not None:
                out.kl.append(kl)
            if out.kl_prior is not None:
                out.kl_prior.append(kl)
            if trace:
                rec["z"] = z
                out.trace.append(rec)
            if stop_after is not None and i + 1 >= stop_after:
                return out
        out.px_z = F.interpolate(h, scale_factor=2)  # (N, W, 8, 8)
        return out


class ToyVAE(nn.Module):
    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.cfg = cfg
        self.weights_digest: str | None = None
        self.default_temperature: str | None = None
        self.default_output_temperature: str | None = None
        self.default_ood: dict[str, str] | None = None
        self.encoder = ToyEncoder(cfg)
        self.decoder = ToyDecoder(cfg)
        self.head = nn.Conv2d(cfg.width, 10, 1)

    def logits(self, px_z: Tensor) -> Tensor:
        return self.head(px_z).float().permute(0, 2, 3, 1)  # (N, 8, 8, 10): one logistic per pixel
