"""NVAE inference with the normalisations folded into the convolutions (exact up to float rounding).

In eval mode a BatchNorm is a per-channel affine map and weight normalisation a per-output-channel
scale of the weight, so both can be folded into the convolution next to them. A cell of
:mod:`~vdvae_cli.families.nvae.network` then becomes a short chain of plain convolutions, each followed by
at most a Swish:

* ``mconv`` (inverted residual): ``BN, 1x1 + BN + Swish, kxk depthwise + BN + Swish, 1x1 + BN`` ->
  ``1x1 + Swish, kxk + Swish, 1x1`` (the leading BN folds into the 1x1 conv's input side, which is
  exact for a 1x1 conv without padding; the others into the weights and a bias);
* ``res_bnswish`` pairs: ``BN + Swish, conv, BN + Swish, conv`` -> ``BN + Swish, conv + Swish, conv``
  (the second BN folds into the first conv's output; the first stays, it acts on the cell input);
* the up cell's skip ``bilinear x2, 1x1 conv (no bias)`` runs the conv first, at a quarter of the
  pixels (both maps are linear, so they commute);
* the squeeze-and-excitation gate and the residual ``s + 0.1 * gate * y`` are one ``addcmul``;
* the decoder combiner's ``1x1 conv of [s, z]`` is two convs, the second adding the first's output
  in the same kernel, instead of a concatenation;

On CPUs with oneDNN each conv + Swish (or conv + add) is one oneDNN kernel, as for VDVAE
(``torch.ops.mkldnn._convolution_pointwise``); elsewhere the same folded convs run as ``F.conv2d``
and ``F.silu``. The folded weights are computed in float64 from the module's own parameters and
buffers, cached, and recomputed whenever one of them changes (``--readjust-bn`` runs train-mode
passes that move the BatchNorm statistics); nothing is added to the ``state_dict``. With gradients
on, in train mode, or when a kernel raises, the cell's plain forward runs instead (same maths).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Sequence, cast

import torch
import torch.nn.functional as F
from torch import nn

from .network import (
    BN,
    BNSwishConv,
    Cell,
    ConvBNSwish,
    DecCombinerCell,
    EncCombinerCell,
    InvertedResidual,
    Upsample,
    WNConv2d,
)

Tensor = torch.Tensor
Geometry = tuple[list[int], list[int], list[int], int]  # padding, stride, dilation, groups
ONE_BY_ONE: Geometry = ([0, 0], [1, 1], [1, 1], 1)


# --------------------------------------------------------------------------------------------------
# Kernels


@functools.lru_cache(maxsize=None)
def onednn(dtype: torch.dtype) -> bool:
    """Whether this build runs oneDNN's fused conv + Swish / conv + add kernels for ``dtype``."""
    if dtype not in (torch.float32, torch.bfloat16) or not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    try:
        g = torch.Generator().manual_seed(0)  # private: the probe draws nothing from the global generator
        x = torch.randn(1, 4, 5, 5, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
        w = (0.1 * torch.randn(4, 4, 3, 3, generator=g)).to(dtype).contiguous(memory_format=torch.channels_last)
        b = (0.1 * torch.randn(4, generator=g)).to(dtype)
        same: Geometry = ([1, 1], [1, 1], [1, 1], 1)
        with torch.inference_mode():
            plain = F.conv2d(x, w, b, padding=1)
            y = _onednn_conv(x, w, b, same, "swish")
            z = _onednn_conv_add(x, x, w, b, same)
        return bool(torch.allclose(y.float(), F.silu(plain).float(), atol=0.05)
                    and torch.allclose(z.float(), (x + plain).float(), atol=0.05))
    except (RuntimeError, AttributeError):
        return False


def _onednn_conv(x: Tensor, w: Tensor, b: Tensor | None, geometry: Geometry, act: str) -> Tensor:
    return torch.ops.mkldnn._convolution_pointwise(x, w, b, *geometry, act, [], "")


def _onednn_conv_add(x: Tensor, other: Tensor, w: Tensor, b: Tensor | None, geometry: Geometry) -> Tensor:
    other = other.contiguous(memory_format=torch.channels_last)
    return torch.ops.mkldnn._convolution_pointwise.binary(x, other, w, b, *geometry, "add", None, None, [], None)


class Conv(NamedTuple):
    """A folded convolution: weight, bias, geometry, and the activation after it ("swish"/"none").
    ``packed`` holds, once the oneDNN path has run it, the weight reordered into oneDNN's blocked
    layout (made once, for the first input's shape, so that no call reorders it again)."""

    weight: Tensor
    bias: Tensor | None
    geometry: Geometry
    act: str
    packed: list[Tensor]  # empty until the first oneDNN call (see _conv)

    def _onednn_weight(self, x: Tensor) -> Tensor:
        if not self.packed:
            pad, stride, dil, groups = self.geometry
            try:
                self.packed.append(torch.ops.mkldnn._reorder_convolution_weight(
                    self.weight, pad, stride, dil, groups, list(x.shape)))
            except RuntimeError:  # a build without the reorder: the plain weight (oneDNN reorders per call)
                self.packed.append(self.weight)
        return self.packed[0]

    def __call__(self, x: Tensor, fast: bool) -> Tensor:
        if fast:
            x = x.contiguous(memory_format=torch.channels_last)
            w = self._onednn_weight(x)
            if self.act == "swish" and self.geometry[3] > 1 and x.dtype == torch.float32:
                # fp32 depthwise: oneDNN's kernel applies a Swish post-op more slowly (2.9 ms for a
                # cifar10 cell's 5x5 at batch 4, one thread) than the conv alone plus a separate
                # in-place Swish (1.3 + 0.7 ms); bf16 and the dense convs gain from the fusion
                return F.silu(_onednn_conv(x, w, self.bias, self.geometry, "none"), inplace=True)
            return _onednn_conv(x, w, self.bias, self.geometry, "swish" if self.act == "swish" else "none")
        pad, stride, dil, groups = self.geometry
        y = F.conv2d(x, self.weight, self.bias, stride, pad, dil, groups)
        return F.silu(y) if self.act == "swish" else y

    def add(self, x: Tensor, other: Tensor, fast: bool) -> Tensor:
        """``other + conv(x)`` (no activation)."""
        if fast:
            x = x.contiguous(memory_format=torch.channels_last)
            return _onednn_conv_add(x, other, self._onednn_weight(x), self.bias, self.geometry)
        pad, stride, dil, groups = self.geometry
        return other + F.conv2d(x, self.weight, self.bias, stride, pad, dil, groups)


def _conv(weight: Tensor, bias: Tensor | None, geometry: Geometry, act: str) -> Conv:
    return Conv(weight, bias, geometry, act, [])


# --------------------------------------------------------------------------------------------------
# Folding (float64, from the modules' current parameters and buffers)


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Eval-mode BatchNorm as ``y = a * x + b`` per channel (float64)."""
    var, mean = bn.running_var.double(), bn.running_mean.double()  # type: ignore[union-attr]
    a = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        a = a * bn.weight.double()
    b = -mean * a
    if bn.bias is not None:
        b = b + bn.bias.double()
    return a, b


def _weight(conv: nn.Conv2d) -> Tensor:
    """The conv's effective weight in float64 (weight normalisation applied, as ``effective_weight``)."""
    if isinstance(conv, WNConv2d):
        w = conv.raw_weight().double()
        norm = torch.sqrt(torch.sum(w * w, dim=(1, 2, 3), keepdim=True))
        return torch.exp(conv.log_weight_norm.double()) * w / (norm + 1e-5)
    return conv.weight.double()


def _geometry(conv: nn.Conv2d) -> Geometry:
    return list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups  # type: ignore[arg-type]


class _Stage:
    """A conv being assembled in float64: ``act(W x + b)``."""

    def __init__(self, conv: nn.Conv2d, act: str = "none"):
        self.w = _weight(conv)
        self.b = conv.bias.double() if conv.bias is not None else None
        self.geometry = _geometry(conv)
        self.act = act

    def then_affine(self, a: Tensor, b: Tensor) -> None:
        """Apply ``a * y + b`` after this conv (before its activation)."""
        self.w = self.w * a[:, None, None, None]
        self.b = b + (a * self.b if self.b is not None else 0.0)

    def before_affine(self, a: Tensor, b: Tensor) -> None:
        """Apply ``a * x + b`` to this conv's input (1x1, no padding, no groups: exact)."""
        assert self.w.shape[2:] == (1, 1) and self.geometry[0] == [0, 0] and self.geometry[3] == 1
        shift = self.w[:, :, 0, 0] @ b
        self.w = self.w * a[None, :, None, None]
        self.b = shift if self.b is None else self.b + shift

    def done(self, like: Tensor, memory_format: torch.memory_format) -> Conv:
        w = self.w.to(like.dtype).contiguous(memory_format=memory_format)
        b = None if self.b is None else self.b.to(like.dtype)
        return _conv(w, b, self.geometry, self.act)


def _conv_bn(op: ConvBNSwish) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    conv, bn = op.conv[0], op.conv[1]
    assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
    return conv, bn


class CellPlan(NamedTuple):
    """A cell's ops after folding: an optional BN + Swish on the input (``pre``, as (scale, shift)),
    an optional nearest x2 before the first conv, the convs, and the SE gate's layers."""

    pre: tuple[Tensor, Tensor] | None
    upsample: bool
    convs: list[Conv]


def _plan_ops(ops: Sequence[nn.Module], like: Tensor, memory_format: torch.memory_format, *,
              scale_last: float | None = None) -> CellPlan | None:
    """The folded plan of a cell's ops, or None for an op this module does not know. ``scale_last``
    multiplies the last conv's output (the cell's 0.1 when no SE gate sits in between)."""
    stages: list[_Stage] = []
    pre: tuple[Tensor, Tensor] | None = None
    upsample = False
    for j, op in enumerate(ops):
        if isinstance(op, BNSwishConv):
            a, b = _bn_affine(op.bn_act)
            if stages:
                stages[-1].then_affine(a, b)
                stages[-1].act = "swish"
            else:
                pre = (a, b)
            if op.upsample:
                if stages:  # never built (only a cell's first op upsamples), kept exact anyway
                    return None
                upsample = True
            stages.append(_Stage(op.conv_0))
        elif isinstance(op, InvertedResidual):
            layers = list(op.conv)
            if isinstance(layers[0], Upsample):
                if j or layers[0].mode != "nearest":
                    return None
                upsample = True
                layers = layers[1:]
            if len(layers) != 5:
                return None
            bn0, cbs1, cbs2, conv3, bn3 = layers
            if not (isinstance(bn0, BN) and isinstance(cbs1, ConvBNSwish) and isinstance(cbs2, ConvBNSwish)
                    and isinstance(conv3, nn.Conv2d) and isinstance(bn3, BN)):
                return None
            (c1, n1), (c2, n2) = _conv_bn(cbs1), _conv_bn(cbs2)
            first, second = _Stage(c1, "swish"), _Stage(c2, "swish")
            a0, b0 = _bn_affine(bn0.bn)
            if stages:
                stages[-1].then_affine(a0, b0)
            else:
                first.before_affine(a0, b0)
            first.then_affine(*_bn_affine(n1))
            second.then_affine(*_bn_affine(n2))
            last = _Stage(conv3)
            last.then_affine(*_bn_affine(bn3.bn))
            stages += [first, second]
            stages.append(last)
        else:
            return None
    if scale_last is not None:
        stages[-1].then_affine(torch.full_like(stages[-1].w[:, 0, 0, 0], scale_last), torch.zeros(()))
    if pre is not None:
        pre = (pre[0].to(like.dtype).view(1, -1, 1, 1), pre[1].to(like.dtype).view(1, -1, 1, 1))
    return CellPlan(pre, upsample, [s.done(like, memory_format) for s in stages])


def _versions(tensors: Sequence[Tensor]) -> tuple:
    return tuple((t.data_ptr(), t._version) for t in tensors)


class _Cache:
    """A value computed from some tensors, recomputed when one of them changes (in place or replaced)."""

    def __init__(self, tensors: Callable[[], list[Tensor]], make: Callable[[], object]):
        self.tensors, self.make = tensors, make
        self.key: tuple | None = None
        self.value: object = None

    def get(self) -> object:
        ts = self.tensors()
        key = (_versions(ts), ts[0].dtype, ts[0].device, torch.is_inference_mode_enabled())
        if key != self.key:
            self.value = self.make()
            self.key = key
        return self.value


def _state(module: nn.Module) -> Callable[[], list[Tensor]]:
    return lambda: [*module.parameters(), *(b for b in module.buffers() if b.is_floating_point())]


# --------------------------------------------------------------------------------------------------
# The forwards


_failed = False  # set once a oneDNN kernel has raised: the F.conv2d path from then on


def _mode(module: nn.Module, x: Tensor, weight: Tensor) -> str | None:
    """"onednn", "plain-folded", or None (the module's own forward): gradients, train mode, or a
    dtype other than the weights' take the module's own forward."""
    if module.training or torch.is_grad_enabled() or x.dtype != weight.dtype:
        return None
    if x.device.type == "cpu" and not _failed and onednn(x.dtype):
        return "onednn"
    return "plain-folded"


def _run(fast_fn: Callable[[bool], Tensor], plain: Callable[[], Tensor], mode: str) -> Tensor:
    global _failed
    if mode != "onednn":
        return fast_fn(False)
    try:
        return fast_fn(True)
    except RuntimeError:  # the kernels are PyTorch internals: their support varies by build and CPU
        _failed = True
        return fast_fn(False)


def _se_gate(se: nn.Module, y: Tensor) -> Tensor:
    """The SE gate (N, C, 1, 1) of ``y``."""
    return se.se(y.mean(dim=(2, 3)))[:, :, None, None]  # type: ignore[operator]


def _cell_forward(cell: Cell, plain: Callable[[Tensor], Tensor], memory_format: torch.memory_format
                  ) -> Callable[[Tensor], Tensor]:
    weight = next(cell._ops.parameters())
    scale_last = 0.1 if cell.se is None else None  # without a gate, the 0.1 folds into the last conv
    plan_cache = _Cache(_state(cell._ops), lambda: _plan_ops(list(cell._ops), next(cell._ops.parameters()),
                                                             memory_format, scale_last=scale_last))
    skip = cell.skip
    up_skip = isinstance(skip, nn.Sequential) and isinstance(skip[0], Upsample) and skip[0].mode == "bilinear"
    skip_conv = skip[1] if up_skip else None  # type: ignore[index]
    assert skip_conv is None or isinstance(skip_conv, WNConv2d)

    def skip_of(x: Tensor) -> Tensor:
        if skip_conv is not None and skip_conv.bias is None:  # 1x1 conv first, then bilinear x2
            w = skip_conv.inference_weight()
            y = F.conv2d(x, w, None, skip_conv.stride, skip_conv.padding, skip_conv.dilation, skip_conv.groups)
            return F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=True)
        return skip(x)

    def forward(x: Tensor) -> Tensor:
        mode = _mode(cell, x, weight)
        if mode is None:
            return plain(x)
        plan = plan_cache.get()
        if plan is None:
            return plain(x)
        assert isinstance(plan, CellPlan)

        def run(fast: bool) -> Tensor:
            s = skip_of(x)
            h = x
            if plan.pre is not None:
                h = F.silu(torch.addcmul(plan.pre[1], h, plan.pre[0]))
            if plan.upsample:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
            convs = plan.convs
            for conv in convs[:-1]:
                h = conv(h, fast)
            if cell.se is None:
                return convs[-1].add(h, s, fast)
            y = convs[-1](h, fast)
            return torch.addcmul(s, y, _se_gate(cell.se, y), value=0.1)

        return _run(run, lambda: plain(x), mode)

    return forward


def _dec_combiner_forward(cell: DecCombinerCell, plain: Callable[[Tensor, Tensor], Tensor],
                          memory_format: torch.memory_format) -> Callable[[Tensor, Tensor], Tensor]:
    conv = cell.conv
    cache: dict[int, _Cache] = {}  # by the state's channel count (the first input channels)

    def make_split(cs: int) -> tuple[Conv, Conv]:
        w, like = _weight(conv), conv.weight
        ws = w[:, :cs].to(like.dtype).contiguous(memory_format=memory_format)
        wz = w[:, cs:].to(like.dtype).contiguous(memory_format=memory_format)
        b = None if conv.bias is None else conv.bias.to(like.dtype)
        return _conv(ws, b, ONE_BY_ONE, "none"), _conv(wz, None, ONE_BY_ONE, "none")


    def forward(s: Tensor, z: Tensor) -> Tensor:
        mode = _mode(cell, s, conv.weight)
        if mode is None or z.dtype != s.dtype:
            return plain(s, z)
        cs = s.shape[1]
        if cs not in cache:
            cache[cs] = _Cache(_state(conv), functools.partial(make_split, cs))
        conv_s, conv_z = cast("tuple[Conv, Conv]", cache[cs].get())
        return _run(lambda fast: conv_z.add(z, conv_s(s, fast), fast), lambda: plain(s, z), mode)

    return forward


def _enc_combiner_forward(cell: EncCombinerCell, plain: Callable[[Tensor, Tensor], Tensor],
                          memory_format: torch.memory_format) -> Callable[[Tensor, Tensor], Tensor]:
    conv = cell.conv
    cache = _Cache(_state(conv), lambda: _Stage(conv).done(conv.weight, memory_format))

    def forward(enc: Tensor, dec: Tensor) -> Tensor:
        mode = _mode(cell, dec, conv.weight)
        if mode is None or enc.dtype != dec.dtype:
            return plain(enc, dec)
        folded = cache.get()
        assert isinstance(folded, Conv)
        return _run(lambda fast: folded.add(dec, enc, fast), lambda: plain(enc, dec), mode)

    return forward


def fuse_cells(model: nn.Module, *, channels_last: bool = True) -> int:
    """Route every cell and combiner of an NVAE through the folded forwards (inference; called by
    the family's ``prepare_for_inference``, so by every command that loads a model). Returns
    how many modules it rerouted. The module's own forward stays reachable: it runs whenever
    gradients are on or the module is in train mode."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    count = 0
    # Each forward is replaced on the instance, on purpose (mypy objects to assigning to a method).
    for module in model.modules():
        if getattr(module, "_nvae_fused", False):
            continue
        if isinstance(module, Cell):
            module.forward = _cell_forward(module, module.forward, memory_format)  # type: ignore[method-assign,assignment]
        elif isinstance(module, DecCombinerCell):
            module.forward = _dec_combiner_forward(module, module.forward, memory_format)  # type: ignore[method-assign,assignment]
        elif isinstance(module, EncCombinerCell):
            module.forward = _enc_combiner_forward(module, module.forward, memory_format)  # type: ignore[method-assign,assignment]
        else:
            continue
        module._nvae_fused = True  # type: ignore[assignment]
        count += 1
    return count
