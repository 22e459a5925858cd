"""Pixels in and out of a PixelCNN++, and drawing images pixel by pixel.

A PixelCNN++ draws an image in raster order, one pixel (all its channels) at a time: the network
gives that pixel's mixture given the pixels already drawn, the pixel is drawn and written into the
canvas, and the next pass sees it. That is H x W network passes per batch.

**What is recomputed.** The network is causal in rows: an output row depends only on input rows at
or above it, and every layer's top rows are computed from the top rows below it alone (each
halving keeps an even number of rows). So a pass for a pixel on row ``i`` runs on the canvas's top
``rows(i)`` rows only (``i + 1`` rounded up to a multiple of 4, the two halvings): about half the
work of full passes over a square image, with the same numbers for the rows it keeps. ``cached=False``
runs every pass on the whole canvas; the tests hold both to the same pixels bit for bit.

**Pixels.** A draw is rounded to the nearest 8-bit level (:func:`to_pixels`), the level whose
bin holds it; the canvas holds those levels, as the training images do.

**Noise.** Every uniform a batch needs (the component's Gumbel and each channel's logistic, for
every pixel) is drawn up front from the batch's :class:`~vdvae_cli.engine.distributions.Noise`
in one call each, so image ``i`` depends only on its own generator whatever the pass order.
"""

from __future__ import annotations

import torch

import torch.nn.functional as F

from ...engine.distributions import Noise, dmol_sample, open_uniform
from .config import PixelCNNConfig

Tensor = torch.Tensor


def dmol_target(cfg: PixelCNNConfig, images: Tensor) -> Tensor:
    """uint8 NHWC -> DMoL target NHWC in [-1, 1] (grey for a one-channel model), float32."""
    from ...engine.ops import as_channels

    return as_channels(images, cfg.channels).float() / 127.5 - 1.0


def network_input(cfg: PixelCNNConfig, images: Tensor) -> Tensor:
    """uint8 NHWC -> network input: the same values as :func:`dmol_target`, NCHW."""
    return dmol_target(cfg, images).permute(0, 3, 1, 2).contiguous()


def to_pixels(x: Tensor) -> Tensor:
    """Drawn values in [-1, 1] -> uint8 pixels, *rounded* to the nearest level: the bin whose
    probability the likelihood gives (level k covers ``(x + 1) * 127.5`` in [k - 1/2, k + 1/2]),
    so the next pass conditions on the pixel the model's mixture put the draw in."""
    return torch.round((x.float() + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)


def rows_needed(row: int, size: int) -> int:
    """How many top rows of the canvas a pass for a pixel on ``row`` must see: ``row + 1`` rounded
    up to a multiple of 4 (so both halvings keep whole row pairs)."""
    return min(size, (row // 4 + 1) * 4)


METHODS = ("rows", "crop", "full")


@torch.inference_mode()
def draw(model, n: int, noise: Noise, output_temperature: float, *, method: str = "rows") -> Tensor:
    """``n`` images (uint8 NHWC, RGB even for a grey model) drawn pixel by pixel. ``method``: ``rows``
    (the row caches, :class:`RowCache`), ``crop`` (full passes on the top rows a pixel needs) or
    ``full`` (full passes on the whole canvas); the tests hold them to the same pixels."""
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not one of {METHODS}")
    cfg: PixelCNNConfig = model.cfg
    p = next(model.parameters())
    size, c, m = cfg.image_size, cfg.channels, cfg.nr_logistic_mix
    u_mix = open_uniform(noise.uniform((n, size, size, m), device=p.device))
    u_logistic = open_uniform(noise.uniform((n, size, size, c), device=p.device))
    canvas = torch.zeros(n, c, size, size, dtype=p.dtype, device=p.device)
    pixels = torch.zeros(n, size, size, c, dtype=torch.uint8, device=p.device)
    was_folded = all(getattr(mod, "folded", None) is not None for mod in _weight_normed(model))
    was_training = model.training
    model.eval()  # no dropout while drawing (the row caches never apply it)
    if not was_folded:
        model.fold_weight_norm()
    cache = RowCache(model, n, p.dtype, p.device) if method == "rows" else None
    try:
        for i in range(size):
            rows = rows_needed(i, size) if method == "crop" else size
            for j in range(size):
                if cache is not None:
                    first = i - 1 if j == 0 and i > 0 else i  # a new row: refresh the one just finished
                    cache.run(canvas, tuple((first >> level, i >> level) for level in range(3)), vertical=j == 0)
                    logits = cache.logits(i, j)
                else:
                    logits = model(canvas[:, :, :rows])[:, i : i + 1, j : j + 1]  # (n, 1, 1, K)
                x = dmol_sample(logits, m, temperature=output_temperature,
                                u_mix=u_mix[:, i : i + 1, j : j + 1], u_logistic=u_logistic[:, i : i + 1, j : j + 1])
                drawn = to_pixels(x)[:, 0, 0]  # (n, c)
                pixels[:, i, j] = drawn
                canvas[:, :, i, j] = (drawn.float() / 127.5 - 1.0).to(p.dtype)
    finally:
        model.train(was_training)
        if not was_folded:
            for mod in _weight_normed(model):
                mod.folded = None
    return pixels.expand(n, size, size, 3) if c == 1 else pixels


def _weight_normed(model) -> list:
    from ...engine.causal import WNConv

    return [mod for mod in model.modules() if isinstance(mod, WNConv)]


# --------------------------------------------------------------------------------------------------
# Row caches (Fast PixelCNN++, Ramachandran et al. 2017, adapted to this network)
#
# Every convolution here is at most two rows high and shifted down, so a layer's output row r reads
# its input rows r - 1 and r only (a stride-2 one reads rows 2r - 1 and 2r; a stride-2 transposed one
# row r // 2). So the whole network can be run one row at a time, each layer's row computed from its
# input's rows kept from before: :class:`RowCache` holds every intermediate map, and a pass for pixel
# (i, j) recomputes row i at the full resolution, row i // 2 at half and row i // 4 at a quarter, in
# the order of the full forward pass (when a new image row starts, the previous rows are refreshed
# first: they were last computed while that row was still being drawn). The rows it computes are
# those of the full pass; only the summation order inside a convolution can differ.


class RowCache:
    """Every activation of a :class:`~.network.PixelCNNPP` pass over a canvas, recomputed row by row."""

    def __init__(self, net, n: int, dtype: torch.dtype, device: torch.device):
        cfg = net.cfg
        self.net, self.size, self.nf = net, cfg.image_size, cfg.nr_filters
        self.n, self.dtype, self.device = n, dtype, device
        self.maps: dict[str, Tensor] = {}

    def map(self, name: str, level: int) -> Tensor:
        """The kept map ``name`` at ``level`` (0: full size, 1: half, 2: a quarter), zeros at first."""
        found = self.maps.get(name)
        if found is None:
            side = self.size >> level
            found = self.maps[name] = torch.zeros(self.n, self.nf, side, side, dtype=self.dtype, device=self.device)
        return found

    # -- one layer's rows --------------------------------------------------------------------------

    @staticmethod
    def conv_rows(module, src: Tensor, lo: int, hi: int, pre=None) -> Tensor:
        """Rows lo..hi of a shifted convolution (DownShifted/DownRightShifted, stride 1 or 2) of ``src``;
        ``pre`` (e.g. concat_elu) is applied to the input rows before the zero padding, as in the full pass."""
        conv = module.conv
        kh = conv.kernel[0]
        left, right = module.pad[0], module.pad[1]
        if conv.stride == 1:
            a, b = lo - (kh - 1), hi + 1
        else:  # output row k reads input rows 2k - 1 and 2k
            a, b = 2 * lo - 1, 2 * hi + 1
        slab = src[:, :, max(a, 0) : b]
        if pre is not None:
            slab = pre(slab)
        slab = F.pad(slab, (left, right, max(-a, 0), 0))
        return F.conv2d(slab, conv.weight(), conv.bias, stride=conv.stride)

    @staticmethod
    def deconv_rows(module, src: Tensor, lo: int, hi: int) -> Tensor:
        """Rows lo..hi (at the doubled size) of a stride-2 shifted transposed convolution of ``src``."""
        conv = module.conv
        k_lo, k_hi = lo // 2, hi // 2
        y = module.crop(F.conv_transpose2d(src[:, :, k_lo : k_hi + 1], conv.weight(), conv.bias, stride=2,
                                           output_padding=1))  # input row k gives output rows 2k, 2k + 1
        return y[:, :, lo - 2 * k_lo : hi - 2 * k_lo + 1]

    def gated_rows(self, block, name: str, level: int, x: Tensor, aux: tuple[Tensor, ...], lo: int, hi: int) -> Tensor:
        """Rows lo..hi of a gated ResNet block (its inner map kept as ``name``.c); ``aux``: the maps
        whose rows, stacked on channels, are its auxiliary input."""
        from ...engine.causal import concat_elu

        mid = self.map(f"{name}.c", level)
        c = self.conv_rows(block.conv_in, x, lo, hi, pre=concat_elu)
        if block.aux is not None:
            rows = torch.cat([a[:, :, lo : hi + 1] for a in aux], dim=1)
            c = c + block.aux.conv(concat_elu(rows))
        mid[:, :, lo : hi + 1] = c
        c = self.conv_rows(block.conv_out, mid, lo, hi, pre=concat_elu)
        a, b = c.chunk(2, dim=1)
        return x[:, :, lo : hi + 1] + a * torch.sigmoid(b)

    # -- the whole pass, on row windows ------------------------------------------------------------

    def run(self, canvas: Tensor, rows: tuple[tuple[int, int], ...], *, vertical: bool = True) -> None:
        """Recompute rows ``rows[level] = (lo, hi)`` of every map at each of the three levels from
        the network input ``canvas`` (N, C, H, W) (the ones channel is added here). ``vertical=False``
        keeps the vertical stream's maps as they are: they read only the rows above, so within an
        image row they do not change once computed at its first pixel."""
        net = self.net
        x = torch.cat([canvas, torch.ones_like(canvas[:, :1])], dim=1)
        lo, hi = rows[0]
        # u = down_shift(u_init(x)); ul = down_shift(ul_init_v(x)) + right_shift(ul_init_h(x))
        u0, ul0 = self.map("u0", 0), self.map("ul0", 0)
        s_lo = max(lo - 1, 0)  # the down shift: row r is the convolution's row r - 1
        if hi >= 1:
            if vertical:
                u0[:, :, max(lo, 1) : hi + 1] = self.conv_rows(net.u_init, x, s_lo, hi - 1)
            v = self.conv_rows(net.ul_init_v, x, s_lo, hi - 1)
        h = F.pad(self.conv_rows(net.ul_init_h, x, lo, hi), (1, 0, 0, 0))[:, :, :, :-1]
        vs = torch.zeros_like(h)
        if hi >= 1:
            vs[:, :, max(lo, 1) - lo :] = v
        ul0[:, :, lo : hi + 1] = vs + h
        us, uls = [("u0", 0)], [("ul0", 0)]
        n = net.cfg.nr_resnet
        for level in range(3):
            lo, hi = rows[level]
            for b in range(n):
                bu, bul = net.down_u[level][b], net.down_ul[level][b]
                un, uln = f"d{level}.{b}.u", f"d{level}.{b}.ul"
                u_prev, ul_prev = self.maps[us[-1][0]], self.maps[uls[-1][0]]
                if vertical:
                    self.map(un, level)[:, :, lo : hi + 1] = self.gated_rows(bu, un, level, u_prev, (), lo, hi)
                self.map(uln, level)[:, :, lo : hi + 1] = self.gated_rows(bul, uln, level, ul_prev, (self.maps[un],), lo, hi)
                us.append((un, level))
                uls.append((uln, level))
            if level < 2:
                nlo, nhi = rows[level + 1]
                un, uln = f"h{level}.u", f"h{level}.ul"
                if vertical:
                    self.map(un, level + 1)[:, :, nlo : nhi + 1] = self.conv_rows(net.halve_u[level], self.maps[us[-1][0]], nlo, nhi)
                self.map(uln, level + 1)[:, :, nlo : nhi + 1] = self.conv_rows(net.halve_ul[level], self.maps[uls[-1][0]], nlo, nhi)
                us.append((un, level + 1))
                uls.append((uln, level + 1))
        u_name, ul_name = us.pop()[0], uls.pop()[0]
        for up in range(3):
            level = 2 - up
            lo, hi = rows[level]
            count = n if up == 0 else n + 1
            for b in range(count):
                bu, bul = net.up_u[up][b], net.up_ul[up][b]
                un, uln = f"p{up}.{b}.u", f"p{up}.{b}.ul"
                short_u, short_ul = us.pop()[0], uls.pop()[0]
                if vertical:
                    self.map(un, level)[:, :, lo : hi + 1] = self.gated_rows(
                        bu, un, level, self.maps[u_name], (self.maps[short_u],), lo, hi)
                self.map(uln, level)[:, :, lo : hi + 1] = self.gated_rows(
                    bul, uln, level, self.maps[ul_name], (self.maps[un], self.maps[short_ul]), lo, hi)
                u_name, ul_name = un, uln
            if up < 2:
                nlo, nhi = rows[level - 1]
                un, uln = f"x{up}.u", f"x{up}.ul"
                if vertical:
                    self.map(un, level - 1)[:, :, nlo : nhi + 1] = self.deconv_rows(net.double_u[up], self.maps[u_name], nlo, nhi)
                self.map(uln, level - 1)[:, :, nlo : nhi + 1] = self.deconv_rows(net.double_ul[up], self.maps[ul_name], nlo, nhi)
                u_name, ul_name = un, uln
        self.out_name = ul_name

    def logits(self, i: int, j: int) -> Tensor:
        """The DMoL parameters of pixel (i, j) from the last :meth:`run` (N, 1, 1, K)."""
        ul = self.maps[self.out_name][:, :, i : i + 1, j : j + 1]
        return self.net.head(F.elu(ul)).permute(0, 2, 3, 1)
