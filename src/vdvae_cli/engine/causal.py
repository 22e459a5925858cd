"""Causal convolution blocks of PixelCNN++ (Salimans et al. 2017) over Gated PixelCNN's two streams
(van den Oord et al. 2016): shifted convolutions whose output at a position sees only the rows
above it (the vertical stream) or also the columns to its left on its row (the horizontal stream),
weight normalisation, and the gated ResNet block. Shared by the PixelCNN++ family's network
(``families/pixelcnn``) and the spatial learned prior over latent maps (:mod:`.learned_prior`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


def concat_elu(x: Tensor) -> Tensor:
    """ELU of ``x`` and of ``-x``, stacked on channels (both signs pass: twice the channels)."""
    return F.elu(torch.cat([x, -x], dim=1))


def down_shift(x: Tensor) -> Tensor:
    """Move every row one down (a zero row enters at the top)."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


def right_shift(x: Tensor) -> Tensor:
    """Move every column one right (a zero column enters at the left)."""
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


class WNConv(nn.Module):
    """A weight-normalised 2-d convolution, optionally transposed: ``v`` (direction), ``g`` (length per
    output channel), ``bias``. After :meth:`fold`, ``weight`` holds ``g * v / |v|`` and is used as is."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int], *, stride: int = 1, transposed: bool = False):
        super().__init__()
        self.kernel, self.stride, self.transposed = kernel, stride, transposed
        shape = (cin, cout, *kernel) if transposed else (cout, cin, *kernel)
        self.v = nn.Parameter(torch.empty(shape))
        self.g = nn.Parameter(torch.ones(cout))
        self.bias = nn.Parameter(torch.zeros(cout))
        nn.init.normal_(self.v, 0.0, 0.05)
        self.folded: Tensor | None = None

    def weight(self) -> Tensor:
        if self.folded is not None:
            return self.folded
        dims = (0, 2, 3) if self.transposed else (1, 2, 3)
        norm = self.v.square().sum(dim=dims, keepdim=True).sqrt()
        g = self.g.view(1, -1, 1, 1) if self.transposed else self.g.view(-1, 1, 1, 1)
        return self.v * (g / norm)

    @torch.no_grad()
    def fold(self) -> None:
        self.folded = self.weight().detach().clone()

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight()
        if self.transposed:
            return F.conv_transpose2d(x, w, self.bias, stride=self.stride, output_padding=self.stride - 1)
        return F.conv2d(x, w, self.bias, stride=self.stride)


class DownShiftedConv(nn.Module):
    """A convolution whose output pixel sees only rows above it and itself... shifted so that, with
    :func:`down_shift` after it, a pixel sees only the rows strictly above. Kernel (kh, kw) padded
    kh - 1 rows at the top and (kw - 1) / 2 columns either side."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int] = (2, 3), stride: int = 1):
        super().__init__()
        kh, kw = kernel
        self.pad = ((kw - 1) // 2, (kw - 1) // 2, kh - 1, 0)
        self.conv = WNConv(cin, cout, kernel, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, self.pad))


class DownRightShiftedConv(nn.Module):
    """A convolution whose output pixel sees rows above and, on its own row, columns to its left and
    itself: padded kh - 1 rows at the top and kw - 1 columns at the left."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int] = (2, 2), stride: int = 1):
        super().__init__()
        kh, kw = kernel
        self.pad = (kw - 1, 0, kh - 1, 0)
        self.conv = WNConv(cin, cout, kernel, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, self.pad))


class ShiftedDeconv(nn.Module):
    """Stride-2 transposed convolution that doubles the size and keeps its stream causal: the extra
    rows at the bottom are cropped, and the columns either side (``centred``, the vertical stream's
    (2, 3) kernel) or on the right (the horizontal stream's (2, 2) kernel)."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int], *, centred: bool):
        super().__init__()
        self.kernel, self.centred = kernel, centred
        self.conv = WNConv(cin, cout, kernel, stride=2, transposed=True)

    def crop(self, y: Tensor) -> Tensor:
        """The causal part of a transposed convolution's output (rows and columns)."""
        kh, kw = self.kernel
        if self.centred:
            return y[:, :, : y.shape[2] - kh + 1, (kw - 1) // 2 : y.shape[3] - (kw - 1) // 2]
        return y[:, :, : y.shape[2] - kh + 1, : y.shape[3] - kw + 1]

    def forward(self, x: Tensor) -> Tensor:
        return self.crop(self.conv(x))


class NiN(nn.Module):
    """A weight-normalised 1x1 convolution (network in network)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = WNConv(cin, cout, (1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class GatedResnet(nn.Module):
    """``x + a * sigmoid(b)`` where ``[a; b]`` come from two convolutions of ``concat_elu(x)``, the
    first also fed ``aux`` (the other stream, or the shortcut from the way down) through a 1x1."""

    def __init__(self, filters: int, conv: type[nn.Module], aux_channels: int, dropout: float):
        super().__init__()
        self.conv_in = conv(2 * filters, filters)
        self.aux = NiN(2 * aux_channels, filters) if aux_channels else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv_out = conv(2 * filters, 2 * filters)

    def forward(self, x: Tensor, aux: Tensor | None = None) -> Tensor:
        c = self.conv_in(concat_elu(x))
        if self.aux is not None:
            assert aux is not None
            c = c + self.aux(concat_elu(aux))
        c = self.conv_out(self.dropout(concat_elu(c)))
        a, b = c.chunk(2, dim=1)
        return x + a * torch.sigmoid(b)


def stream_stem(channels: int, filters: int) -> tuple[DownShiftedConv, DownShiftedConv, DownRightShiftedConv]:
    """The first convolutions of the two streams over ``channels`` input maps and a channel of ones
    (which tells the zero padding from a zero input): the vertical stream's (2, 3), the horizontal
    stream's (1, 3) from the rows above and (2, 1) from the column itself (PixelCNN++'s start)."""
    cin = channels + 1
    return DownShiftedConv(cin, filters, (2, 3)), DownShiftedConv(cin, filters, (1, 3)), DownRightShiftedConv(cin, filters, (2, 1))


def start_streams(x: Tensor, u_init: nn.Module, ul_init_v: nn.Module, ul_init_h: nn.Module) -> tuple[Tensor, Tensor]:
    """The two streams' first maps from input maps ``x`` (N, C, H, W) through :func:`stream_stem`'s
    convolutions, shifted so that every position sees only earlier ones: ``(u, ul)``."""
    x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
    return down_shift(u_init(x)), down_shift(ul_init_v(x)) + right_shift(ul_init_h(x))
