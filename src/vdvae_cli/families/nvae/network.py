"""The NVAE network (Vahdat & Kautz 2020): cells, encoder tower, top-down decoder, flows, image head.

Architecture only: no I/O, no device moves, no printing. Submodule names equal the official
``state_dict`` keys (``dec_tower.3._ops.0.conv.1.conv.0.weight``, ``nf_cells.2.cell1.mu.conv_0.bias``),
so an official state_dict loads with a straight ``load_state_dict``. The one exception is NVAE's
``<conv>.weight_normalized`` alias of plain convs (the same tensor as ``<conv>.weight``): we do not
register it (see :func:`official_aliases`).

One decode pass serves every use. For each latent group ``k`` (decoder order) the decoder takes
``z`` from, in order: a given latent ``latents[k]``; the residual-normal posterior followed by the
flows, when encoder features are given and ``k < n_posterior``; otherwise the prior at temperature
``t_k``. Latents are the post-flow ``z`` the decoder combines.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...engine.distributions import BatchNoise, Noise
from ...engine.interface import DecoderOutput, decode_options
from .config import NVAEConfig
from .distributions import normal_kl, normal_log_p, normal_params

Tensor = torch.Tensor

BN_MOMENTUM = 0.05
BN_EPS = 1e-5
WN_EPS = 1e-5


# --------------------------------------------------------------------------------------------------
# Convolutions


class WNConv2d(nn.Conv2d):
    """Weight-normalised conv: ``W_eff = exp(log_weight_norm) * W / (||W|| + 1e-5)`` per output
    channel. With gradients on (training) it is recomputed on every call; without, it is computed
    once and kept until the weights change (same arithmetic, no per-pass cost; ``fold = False``
    recomputes always, as the official code does)."""

    fold = True

    def __init__(self, cin: int, cout: int, kernel: int, *, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, bias: bool = True):
        super().__init__(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias)
        self.log_weight_norm = nn.Parameter(torch.zeros(cout, 1, 1, 1))
        if not self.weight.is_meta:  # on the meta device (shapes only) there is nothing to compute, and
            with torch.no_grad():  # meta arithmetic would import torch's decompositions (seconds)
                self.log_weight_norm.copy_(torch.log(self._norm(self.weight) + 1e-2))
        self._folded: tuple[tuple, Tensor] | None = None

    @staticmethod
    def _norm(w: Tensor) -> Tensor:
        return torch.sqrt(torch.sum(w * w, dim=(1, 2, 3), keepdim=True))  # (C_out, 1, 1, 1)

    def raw_weight(self) -> Tensor:
        return self.weight

    def effective_weight(self) -> Tensor:
        w = self.raw_weight()
        return torch.exp(self.log_weight_norm) * w / (self._norm(w) + WN_EPS)

    def inference_weight(self) -> Tensor:
        if torch.is_grad_enabled() or not self.fold:
            return self.effective_weight()
        w, g = self.weight, self.log_weight_norm
        key = (w.data_ptr(), w._version, g.data_ptr(), g._version, w.dtype, w.device, w.stride(),
               torch.is_inference_mode_enabled())
        if self._folded is None or self._folded[0] != key:
            self._folded = (key, self.effective_weight())
        return self._folded[1]

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.inference_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)


def ar_mask(cout: int, cin_per_group: int, kernel: int, *, zero_diag: bool, mirror: bool, depthwise: bool) -> Tensor:
    """Autoregressive mask (C_out, C_in/groups, k, k): earlier raster positions are visible, the centre
    tap sees only earlier channels (strictly earlier with ``zero_diag``); ``mirror`` reverses the
    raster order (flips both spatial axes, not the channels)."""
    c = (kernel - 1) // 2
    m = torch.ones(cout, cin_per_group, kernel, kernel, device="cpu")
    m[:, :, c, c:] = 0
    m[:, :, c + 1 :, :] = 0
    if depthwise:
        centre = torch.full((cout, cin_per_group), 0.0 if zero_diag else 1.0, device="cpu")
    else:
        o = torch.arange(cout, device="cpu")[:, None]
        i = torch.arange(cin_per_group, device="cpu")[None, :]
        if cout >= cin_per_group:
            r = cout // cin_per_group
            centre = (i < o // r) if zero_diag else (i <= o // r)
        else:
            r = cin_per_group // cout
            centre = (i < o * r) if zero_diag else (i < (o + 1) * r)
        centre = centre.float()
    m[:, :, c, c] = centre
    if mirror:
        m = torch.flip(m, dims=(2, 3))
    return m


class ARConv2d(WNConv2d):
    """Masked weight-normalised conv of the flow cells (the mask is applied before normalising)."""

    def __init__(self, cin: int, cout: int, kernel: int, *, zero_diag: bool, mirror: bool, groups: int = 1,
                 bias: bool = False):
        super().__init__(cin, cout, kernel, padding=(kernel - 1) // 2, groups=groups, bias=bias)
        self._mask_spec = dict(cout=cout, cin_per_group=cin // groups, kernel=kernel, zero_diag=zero_diag,
                               mirror=mirror, depthwise=groups == cin > 1)
        self._mask: Tensor | None = None  # not state: made on first use, on the weight's device and dtype

    @property
    def mask(self) -> Tensor:
        w = self.weight
        if self._mask is None or self._mask.device != w.device or self._mask.dtype != w.dtype:
            self._mask = ar_mask(**self._mask_spec).to(device=w.device, dtype=w.dtype)  # type: ignore[arg-type]
        return self._mask

    def raw_weight(self) -> Tensor:
        return self.weight * self.mask


# --------------------------------------------------------------------------------------------------
# Normalisation, activation, squeeze-and-excitation


class BNSwish(nn.BatchNorm2d):
    """BatchNorm (eps 1e-5, momentum 0.05) followed by Swish ``y * sigmoid(y)``."""

    def __init__(self, c: int):
        super().__init__(c, eps=BN_EPS, momentum=BN_MOMENTUM)

    def forward(self, x: Tensor) -> Tensor:
        return F.silu(super().forward(x))


class BN(nn.Module):
    """Plain BatchNorm under an extra ``.bn`` name, as the official SyncBatchNorm wrapper stores it."""

    def __init__(self, c: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(x)


class SE(nn.Module):
    """Squeeze-and-excitation: a per-channel sigmoid gate from the spatial mean."""

    def __init__(self, c: int):
        super().__init__()
        hidden = max(c // 16, 4)
        self.se = nn.Sequential(nn.Linear(c, hidden), nn.ReLU(), nn.Linear(hidden, c), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        gate = self.se(x.mean(dim=(2, 3)))  # (N, C)
        return x * gate[:, :, None, None]


class Upsample(nn.Module):
    """Parameter-free x2 upsampling (nearest, or bilinear with aligned corners)."""

    def __init__(self, mode: str = "nearest"):
        super().__init__()
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "nearest":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


# --------------------------------------------------------------------------------------------------
# Ops and cells


class BNSwishConv(nn.Module):
    """``res_bnswish`` (3x3) / ``res_bnswish5`` (3x3, dilation 2): BN+Swish, [nearest x2], WN conv."""

    def __init__(self, cin: int, cout: int, stride: int, dilation: int):
        super().__init__()
        self.upsample = stride == -1
        self.bn_act = BNSwish(cin)
        self.conv_0 = WNConv2d(cin, cout, 3, stride=abs(stride) if stride != -1 else 1, padding=dilation,
                               dilation=dilation)

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn_act(x)
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv_0(x)


class ConvBNSwish(nn.Module):
    """Plain conv (no bias, no weight norm) then BN+Swish; keys ``conv.0`` and ``conv.1``."""

    def __init__(self, cin: int, cout: int, kernel: int, *, stride: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=(kernel - 1) // 2, groups=groups, bias=False),
            BNSwish(cout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class InvertedResidual(nn.Module):
    """``mconv_e{ex}k{k}g{g}``: [nearest x2], BN, 1x1 expand + BN+Swish, kxk grouped conv + BN+Swish,
    1x1 project, BN. The hidden width uses the input width (before an up cell halves it)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, kernel: int, groups: int):
        super().__init__()
        hidden = int(round(cin * expand))
        layers: list[nn.Module] = [Upsample("nearest")] if stride == -1 else []
        layers += [
            BN(cin),
            ConvBNSwish(cin, hidden, 1),
            ConvBNSwish(hidden, hidden, kernel, stride=2 if stride == 2 else 1, groups=groups or hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            BN(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


def make_op(name: str, cin: int, cout: int, stride: int) -> nn.Module:
    if name == "res_bnswish":
        return BNSwishConv(cin, cout, stride, dilation=1)
    if name == "res_bnswish5":
        return BNSwishConv(cin, cout, stride, dilation=2)
    if name.startswith("mconv_e"):  # mconv_e{expand}k{kernel}g{groups}
        e, rest = name[len("mconv_e"):].split("k")
        k, g = rest.split("g")
        return InvertedResidual(cin, cout, stride, int(e), int(k), int(g))
    raise ValueError(f"unknown NVAE op {name!r}")


class FactorizedReduce(nn.Module):
    """Skip of a down cell: Swish, then four stride-2 1x1 convs on shifted copies, concatenated."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        quarter = cout // 4
        self.conv_1 = WNConv2d(cin, quarter, 1, stride=2)
        self.conv_2 = WNConv2d(cin, quarter, 1, stride=2)
        self.conv_3 = WNConv2d(cin, quarter, 1, stride=2)
        self.conv_4 = WNConv2d(cin, cout - 3 * quarter, 1, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        a = F.silu(x)
        return torch.cat([self.conv_1(a), self.conv_2(a[:, :, 1:, 1:]), self.conv_3(a[:, :, :, 1:]),
                          self.conv_4(a[:, :, 1:, :])], dim=1)


class Cell(nn.Module):
    """``skip(x) + 0.1 * SE(ops(x))``. ``kind`` starts with normal (C -> C), down (C -> 2C, /2) or
    up (C -> C/2, x2)."""

    def __init__(self, cin: int, kind: str, ops: Sequence[str], use_se: bool):
        super().__init__()
        stride = 2 if kind.startswith("down") else -1 if kind.startswith("up") else 1
        cout = cin * 2 if stride == 2 else cin // 2 if stride == -1 else cin
        self.kind = kind
        if stride == 2:
            self.skip: nn.Module = FactorizedReduce(cin, cout)
        elif stride == -1:
            self.skip = nn.Sequential(Upsample("bilinear"), WNConv2d(cin, cout, 1, bias=False))
        else:
            self.skip = nn.Identity()
        self._ops = nn.ModuleList(
            make_op(op, cin if j == 0 else cout, cout, stride if j == 0 else 1) for j, op in enumerate(ops)
        )
        self.se = SE(cout) if use_se else None

    def forward(self, x: Tensor) -> Tensor:
        s = self.skip(x)
        for op in self._ops:
            x = op(x)
        if self.se is not None:
            x = self.se(x)
        return s + 0.1 * x


class EncCombinerCell(nn.Module):
    """Encoder feature + 1x1 WN conv of the decoder state (decoder width -> encoder width)."""

    def __init__(self, c_enc: int, c_dec: int):
        super().__init__()
        self.conv = WNConv2d(c_dec, c_enc, 1)

    def forward(self, enc: Tensor, dec: Tensor) -> Tensor:
        return enc + self.conv(dec)


class DecCombinerCell(nn.Module):
    """1x1 WN conv of ``[state, z]`` back to the decoder width."""

    def __init__(self, c: int, zdim: int):
        super().__init__()
        self.conv = WNConv2d(c + zdim, c, 1)

    def forward(self, s: Tensor, z: Tensor) -> Tensor:
        return self.conv(torch.cat([s, z], dim=1))


# --------------------------------------------------------------------------------------------------
# Flows


class CellAR(nn.Module):
    """One autoregressive flow cell: ``z - mu(z)`` with masked convs (log-determinant 0)."""

    def __init__(self, zdim: int, *, mirror: bool):
        super().__init__()
        hidden = 6 * zdim
        # ModuleDicts give the official key names (conv.convz.*, mu.conv_0.*) with typed lookups.
        self.conv = nn.ModuleDict({"convz": nn.Sequential(
            ARConv2d(zdim, hidden, 3, zero_diag=True, mirror=mirror),
            nn.ELU(),
            ARConv2d(hidden, hidden, 5, zero_diag=False, mirror=mirror, groups=hidden),
            nn.ELU(),
        )})
        self.mu = nn.ModuleDict({"conv_0": ARConv2d(hidden, zdim, 1, zero_diag=False, mirror=mirror, bias=True)})

    def forward(self, z: Tensor) -> Tensor:
        h = self.conv["convz"](z)
        return z - self.mu["conv_0"](F.elu(h))


class PairedCellAR(nn.Module):
    """A flow cell in raster order followed by one in reversed raster order."""

    def __init__(self, zdim: int):
        super().__init__()
        self.cell1 = CellAR(zdim, mirror=False)
        self.cell2 = CellAR(zdim, mirror=True)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        half = self.cell1(z)
        return half, self.cell2(half)


# --------------------------------------------------------------------------------------------------
# The model


class NVAE(nn.Module):
    """Encoder tower, top-down decoder and image head of one NVAE (official module names)."""

    def __init__(self, cfg: NVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.weights_digest: str | None = None  # set by the checkpoint loader
        self.digest_source: Callable[[], str] | None = None  # (engine.statedict.digest_of)
        self.default_temperature: str | None = None  # set by the checkpoint loader: the file's recommended --temp
        self.default_output_temperature: str | None = None  # and --output-temp
        self.default_ood: dict[str, str] | None = None  # and vdvae ood's k / prior temperature
        ops, se, L = cfg.ops, cfg.use_se, cfg.num_latent_per_group
        Ce, Cd, P, S = cfg.num_channels_enc, cfg.num_channels_dec, cfg.num_preprocess_blocks, cfg.num_latent_scales
        top = cfg.decoder_layers[0]
        self.prior_ftr0 = nn.Parameter(torch.rand(top.width, top.res, top.res))
        self.stem = WNConv2d(cfg.image_channels, Ce, 3, padding=1)

        pre: list[nn.Module] = []
        c = Ce
        for _ in range(P):
            for i in range(cfg.num_preprocess_cells):
                kind = "down_pre" if i == cfg.num_preprocess_cells - 1 else "normal_pre"
                pre.append(Cell(c, kind, ops[kind], se))
                c = c * 2 if kind == "down_pre" else c
        self.pre_process = nn.ModuleList(pre)

        enc: list[nn.Module] = []
        self._combiner_index: list[int] = []  # enc_tower positions of the combiners, construction order
        for s in range(S):
            mult = 2 ** (P + s)
            for g in range(cfg.groups_per_scale[s]):
                enc += [Cell(Ce * mult, "normal_enc", ops["normal_enc"], se) for _ in range(cfg.num_cell_per_cond_enc)]
                if not (s == S - 1 and g == cfg.groups_per_scale[s] - 1):
                    self._combiner_index.append(len(enc))
                    enc.append(EncCombinerCell(Ce * mult, Cd * mult))
            if s < S - 1:
                enc.append(Cell(Ce * mult, "down_enc", ops["down_enc"], se))
        self.enc_tower = nn.ModuleList(enc)
        c_top = top.enc_width
        self.enc0 = nn.Sequential(nn.ELU(), WNConv2d(c_top, c_top, 1), nn.ELU())

        groups = cfg.decoder_layers
        self.enc_sampler = nn.ModuleList(WNConv2d(g.enc_width, 2 * L, 3, padding=1) for g in groups)
        self.dec_sampler = nn.ModuleList(nn.Sequential(nn.ELU(), WNConv2d(g.width, 2 * L, 1)) for g in groups[1:])
        self.nf_cells = nn.ModuleList(PairedCellAR(L) for _ in groups for _ in range(cfg.num_nf))

        dec: list[nn.Module] = []
        for group in groups:
            if group.index > 0:
                before = groups[group.index - 1]
                if before.scale != group.scale:
                    dec.append(Cell(before.width, "up_dec", ops["up_dec"], se))
                dec += [Cell(group.width, "normal_dec", ops["normal_dec"], se)
                        for _ in range(cfg.num_cell_per_cond_dec)]
            dec.append(DecCombinerCell(group.width, L))
        self.dec_tower = nn.ModuleList(dec)

        post: list[nn.Module] = []
        c = groups[-1].width
        for _ in range(cfg.num_postprocess_blocks):
            for i in range(cfg.num_postprocess_cells):
                kind = "up_post" if i == 0 else "normal_post"
                post.append(Cell(c, kind, ops[kind], se))
                c = c // 2 if kind == "up_post" else c
        self.post_process = nn.ModuleList(post)
        self.image_conditional = nn.Sequential(nn.ELU(), WNConv2d(c, cfg.output_channels, 3, padding=1))

    # -- encoder --------------------------------------------------------------------------------

    def encoder(self, x: Tensor, trace: dict[str, Tensor] | None = None) -> list[Tensor]:
        """``x`` (N, C, H, W) in [0, 1] -> one encoder feature per group, decoder order: the final
        encoder state for group 0, then the state saved at each combiner, last combiner first."""
        s = self.stem(2 * x - 1)  # (N, C_e, H, W)
        if trace is not None:
            trace["enc.stem"] = s
        for cell in self.pre_process:
            s = cell(s)
        if trace is not None:
            trace["enc.pre"] = s
        saved: list[Tensor] = []
        for cell in self.enc_tower:
            if isinstance(cell, EncCombinerCell):
                saved.append(s)
            else:
                s = cell(s)
        return [s, *reversed(saved)]

    # -- decoder --------------------------------------------------------------------------------

    def _flows(self, k: int) -> list[PairedCellAR]:
        F_ = self.cfg.num_nf
        return list(self.nf_cells[k * F_ : (k + 1) * F_])  # type: ignore[arg-type]

    def decoder(
        self,
        n: int,
        activations: Sequence[Tensor] | None = None,
        *,
        n_posterior: int | None = None,
        latents: Sequence[Tensor | None] = (),
        temperatures: Sequence[float] | float = 1.0,
        posterior_mean: bool = False,
        noise: Noise | None = None,
        eps: Sequence[Tensor | None] | None = None,
        want_latents: bool = False,
        want_kl: bool = False,
        trace: bool = False,
        stop_after: int | None = None,
        stage: tuple[int, int] | None = None,
    ) -> DecoderOutput:
        """The top-down pass for a batch of ``n`` (same contract as the VDVAE decoder).

        ``activations`` are :meth:`encoder` features; the first ``n_posterior`` groups (default all
        when features are given) draw from the posterior, the rest from the prior at
        ``temperatures``. ``eps[k]`` injects group ``k``'s standard-normal noise; otherwise ``noise``
        draws it, once per group whether used or not. ``kl[k]`` is elementwise: ``log q - log p`` at
        the sample with flows (NVAE's estimate), the analytic KL without. ``trace`` records every
        intermediate, ``log_q`` and ``log_p`` included. ``px_z`` is the post-processed feature map.
        ``stage=(a, b)`` (the progressive recipe): groups before ``a`` take ``z = 0`` (not trained
        yet, no KL); groups ``a`` to ``b - 1`` have the fixed N(0, I) prior of NVAE's top group.
        """
        cfg = self.cfg
        G = cfg.n_layers
        temps, n_posterior = decode_options(G, temperatures, latents, activations is not None, n_posterior)
        noise = noise or BatchNoise()
        ref = self.prior_ftr0
        out = DecoderOutput(px_z=ref, latents=[] if want_latents else None, kl=[] if want_kl else None)
        s = ref.unsqueeze(0).expand(n, -1, -1, -1)  # (N, C_top, r0, r0)
        k = 0
        for cell in self.dec_tower:
            if not isinstance(cell, DecCombinerCell):
                s = cell(s)
                continue
            group = cfg.decoder_layers[k]
            rec: dict[str, Tensor] = {}
            e = eps[k] if eps is not None and k < len(eps) and eps[k] is not None else None
            if e is None:
                e = noise.normal((n, *group.latent_shape), device=s.device)
            e = e.to(s.dtype)
            if k == 0 or (stage is not None and k < stage[1]):  # the top group's (or a stage's) fixed prior
                p_raw = torch.zeros(n, 2 * group.zdim, group.res, group.res, dtype=s.dtype, device=s.device)
            else:
                p_raw = self.dec_sampler[k - 1](s)  # (N, 2Z, r, r)
            mu_p_raw, ls_p_raw = p_raw.chunk(2, dim=1)
            given = latents[k] if k < len(latents) else None
            kl = None
            if given is not None:
                z = given.to(device=s.device, dtype=s.dtype).expand(n, -1, -1, -1)
            elif stage is not None and k < stage[0]:
                z = torch.zeros_like(e)  # not trained yet: the fixed prior's mean
            elif k < n_posterior:
                enc = activations[k]  # type: ignore[index]
                if k == 0:
                    ftr = self.enc0(enc)
                else:
                    combiner = self.enc_tower[self._combiner_index[G - 1 - k]]
                    ftr = combiner(enc, s)
                mu_q_raw, ls_q_raw = self.enc_sampler[k](ftr).chunk(2, dim=1)
                if cfg.res_dist and k > 0:
                    q_mu, q_sigma = normal_params(mu_p_raw + mu_q_raw, ls_p_raw + ls_q_raw)
                else:
                    q_mu, q_sigma = normal_params(mu_q_raw, ls_q_raw)
                z_pre = q_mu if posterior_mean else q_mu + q_sigma * e
                z = z_pre
                for n_f, flow in enumerate(self._flows(k)):
                    half, z = flow(z)
                    if trace:
                        rec[f"z_flow.{n_f}.half"], rec[f"z_flow.{n_f}"] = half, z
                p_mu, p_sigma = normal_params(mu_p_raw, ls_p_raw)
                if want_kl or trace:  # densities in float32 whatever the network dtype
                    qm, qs, pm, ps = q_mu.float(), q_sigma.float(), p_mu.float(), p_sigma.float()
                    log_q = normal_log_p(z_pre.float(), qm, qs)
                    log_p = normal_log_p(z.float(), pm, ps)
                    kl = log_q - log_p if cfg.num_nf > 0 else normal_kl(qm, qs, pm, ps)
                    if trace:
                        rec.update(enc_feat=enc, ftr=ftr, mu_q_raw=mu_q_raw, log_sig_q_raw=ls_q_raw, q_mu=q_mu,
                                   q_sigma=q_sigma, p_mu=p_mu, p_sigma=p_sigma, z_pre=z_pre, log_q=log_q,
                                   log_p=log_p, kl=kl)
            else:
                mu, sigma = normal_params(mu_p_raw, ls_p_raw, temps[k])
                z = mu + sigma * e
                if trace:
                    rec.update(mu=mu, sigma=sigma)
            if trace:
                rec.update(eps=e, z=z, s_in=s, mu_p_raw=mu_p_raw, log_sig_p_raw=ls_p_raw)
                out.trace.append(rec)
            if want_latents:
                out.latents.append(z.detach())  # type: ignore[union-attr]
            if want_kl:
                out.kl.append(kl)  # type: ignore[union-attr]
            s = cell(s, z)
            k += 1
            if stop_after is not None and k >= stop_after:
                out.px_z = None
                return out
        for cell in self.post_process:
            s = cell(s)
        out.px_z = s  # (N, C_post, H, W)
        return out

    def logits(self, px_z: Tensor) -> Tensor:
        """Output-distribution parameters, NCHW: (N, 10M, H, W) DMoL, (N, 6, H, W) Normal or
        (N, 1, H, W) Bernoulli logits."""
        return self.image_conditional(px_z)


def official_aliases(model: NVAE) -> dict[str, str]:
    """``<conv>.weight_normalized`` -> ``<conv>.weight`` for every plain conv (no weight norm): the
    duplicate keys NVAE's state_dict holds (one tensor under two names)."""
    return {f"{name}.weight_normalized": f"{name}.weight" for name, m in model.named_modules()
            if type(m) is nn.Conv2d}


def official_state_keys(model: NVAE) -> list[tuple[str, tuple[int, ...]]]:
    """The official state_dict keys and shapes, in order: ours with each alias after its weight."""
    aliases = {v: k for k, v in official_aliases(model).items()}
    out: list[tuple[str, tuple[int, ...]]] = []
    for key, value in model.state_dict().items():
        out.append((key, tuple(value.shape)))
        if key in aliases:
            out.append((aliases[key], tuple(value.shape)))
    return out


def count_parameters(model: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in model.parameters())


def network_shapes(cfg: NVAEConfig) -> "OrderedDict[str, tuple[int, ...]]":
    """Every state_dict key of ``cfg``'s network and its shape: the config is bounded field by field
    (NVAEConfig.__post_init__), so a module on the meta device (shapes, no storage) is cheap and
    exactly the network's."""
    with torch.device("meta"):
        model = NVAE(cfg)
    return OrderedDict((k, tuple(v.shape)) for k, v in model.state_dict().items())
