"""CPU inference with oneDNN fused kernels: each convolution of a block applies the GELU that follows
it (or adds the residual) in the same pass over memory, instead of separate elementwise passes.

The maths is the model's: exact (erf) GELU, the same weights; only the rounding differs, as with
any other convolution algorithm. Used for inference only (no autograd through these kernels):
:func:`fuse_blocks` swaps the forward of every :class:`~vdvae_cli.families.vdvae.model.Block`, and the swapped
forward falls back to the plain one whenever gradients are on, the input is not on the CPU, or a
fused kernel raises on this build/CPU (then for the rest of the process).
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .model import Block, DecBlock

Tensor = torch.Tensor


Geometry = tuple[list[int], list[int], list[int], int]  # padding, stride, dilation, groups
ONE_BY_ONE: Geometry = ([0, 0], [1, 1], [1, 1], 1)


@functools.lru_cache(maxsize=None)
def available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this PyTorch build runs oneDNN's fused convolutions for ``dtype`` on this CPU."""
    if dtype not in (torch.float32, torch.bfloat16) or not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    try:
        g = torch.Generator().manual_seed(0)  # a private generator: the check draws nothing from the global one
        x = torch.randn(1, 4, 5, 5, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
        # weights of a default-initialised conv's size (std ~0.1), so bf16 rounding stays far below atol
        w = (0.1 * torch.randn(4, 4, 3, 3, generator=g)).to(dtype).contiguous(memory_format=torch.channels_last)
        b = (0.1 * torch.randn(4, generator=g)).to(dtype)
        same: Geometry = ([1, 1], [1, 1], [1, 1], 1)
        with torch.inference_mode():
            plain = F.conv2d(x, w, b, padding=1)
            y = _pointwise(x, w, b, same, "gelu")
            z = _pointwise_add(x, x, w, b, same)
            ok = torch.allclose(y.float(), F.gelu(plain).float(), atol=0.05) and torch.allclose(
                z.float(), (x + plain).float(), atol=0.05)
        return bool(ok)
    except (RuntimeError, AttributeError):
        return False


def _pointwise(x: Tensor, weight: Tensor, bias: Tensor | None, geometry: Geometry, unary: str = "none") -> Tensor:
    """``unary(conv(x))`` in one oneDNN kernel (``unary``: "gelu", exact, or "none")."""
    algorithm = "none" if unary == "gelu" else ""
    return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *geometry, unary, [], algorithm)


def _pointwise_add(x: Tensor, other: Tensor, weight: Tensor, bias: Tensor | None, geometry: Geometry) -> Tensor:
    """``other + conv(x)`` in one oneDNN kernel (``other`` in the output's channels-last layout: some
    builds cannot make a oneDNN memory for an NCHW addend)."""
    other = other.contiguous(memory_format=torch.channels_last)
    return torch.ops.mkldnn._convolution_pointwise.binary(x, other, weight, bias, *geometry, "add", None, None, [],
                                                          None)


def _geometry(conv: nn.Conv2d) -> Geometry:
    # padding is typed str | tuple: the string forms ("same", "valid") are never used by this package's convs
    return list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups  # type: ignore[arg-type]


def _conv(conv: nn.Conv2d, x: Tensor, unary: str = "none") -> Tensor:
    return _pointwise(x, conv.weight, conv.bias, _geometry(conv), unary)


def _conv_add(conv: nn.Conv2d, x: Tensor, other: Tensor) -> Tensor:
    return _pointwise_add(x, other, conv.weight, conv.bias, _geometry(conv))


_failed = False  # set once a fused kernel has raised: every later call takes the plain path


def _dispatch(weight: Tensor, fused: Callable, plain: Callable, x: Tensor, *rest: Tensor):
    """``fused(x, *rest)`` where it applies (CPU, no gradients, matching dtype), else ``plain``. The
    kernels are internal to PyTorch and their support differs by build and CPU beyond what
    :func:`available` can probe, so a kernel that raises switches the process to the plain path
    (same maths) instead of failing the run."""
    global _failed
    if _failed or x.device.type != "cpu" or torch.is_grad_enabled() or x.dtype != weight.dtype:
        return plain(x, *rest)
    try:
        return fused(x, *rest)
    except RuntimeError:
        _failed = True
        return plain(x, *rest)


_ONES: dict[tuple[int, torch.dtype], Tensor] = {}


def _gelu(x: Tensor) -> Tensor:
    """GELU of a block's input (the residual stream needs ``x`` itself too, so no conv can apply it).
    In bf16 it runs as oneDNN's GELU after a depthwise 1x1 conv of weight 1 (exact: ``1 * x``,
    accumulated in fp32): 31% faster than PyTorch's bf16 GELU on cifar10's (4, 384, 32, 32), and
    equal to it bit for bit; in fp32 PyTorch's own kernel is the faster (1.38 against 1.94 ms)."""
    if x.dtype != torch.bfloat16 or not x.is_contiguous(memory_format=torch.channels_last):
        return F.gelu(x)
    c = x.shape[1]
    ones = _ONES.get((c, x.dtype))
    if ones is None:
        ones = _ONES.setdefault((c, x.dtype), torch.ones(c, 1, 1, 1, dtype=x.dtype))
    return _pointwise(x, ones, None, ([0, 0], [1, 1], [1, 1], c), "gelu")


def _trunk(block: Block, x: Tensor) -> Tensor:
    """The first three convs of a block, each with the GELU before the next conv fused in."""
    h = _conv(block.c1, _gelu(x), "gelu")
    h = _conv(block.c2, h, "gelu")
    return _conv(block.c3, h, "gelu")


def _block_forward(block: Block, plain: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    def fused(x: Tensor) -> Tensor:
        h = _trunk(block, x)
        out = _conv_add(block.c4, h, x) if block.residual else _conv(block.c4, h)
        if block.down_rate:
            out = F.avg_pool2d(out, kernel_size=block.down_rate, stride=block.down_rate)
        return out

    def forward(x: Tensor) -> Tensor:
        return _dispatch(block.c1.weight, fused, plain, x)

    return forward


def _finish(block: DecBlock, plain: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    def fused(x: Tensor, z: Tensor) -> Tensor:
        return block.resnet(_conv_add(block.z_proj, z.contiguous(memory_format=torch.channels_last), x))

    def finish(x: Tensor, z: Tensor) -> Tensor:
        return _dispatch(block.z_proj.weight, fused, plain, x, z.to(x.dtype))

    return finish


def _prior_params(block: DecBlock, plain: Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]
                  ) -> Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]:
    """The prior with its last (1x1) conv split in two: (pm, pv) alone, and the state channels added
    to ``x`` in the same kernel (``x + xpp`` without a separate pass over the state)."""
    c4, z = block.prior.c4, block.zdim
    with torch.no_grad():  # copies, made once; the module's own weights stay as they are
        w_stats = c4.weight[: 2 * z].clone(memory_format=torch.channels_last)
        w_state = c4.weight[2 * z :].clone(memory_format=torch.channels_last)
        b_stats = None if c4.bias is None else c4.bias[: 2 * z].clone()
        b_state = None if c4.bias is None else c4.bias[2 * z :].clone()

    def fused(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h = _trunk(block.prior, x)
        pm, pv = _pointwise(h, w_stats, b_stats, ONE_BY_ONE).chunk(2, dim=1)
        return pm, pv, _pointwise_add(h, x, w_state, b_state, ONE_BY_ONE)

    def prior_params(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return _dispatch(c4.weight, fused, plain, x)

    return prior_params


def fuse_blocks(model: nn.Module) -> bool:
    """Route every block of ``model`` through the fused kernels (CPU inference). Returns whether it
    did: False when this build or CPU lacks them for the model's dtype (nothing is changed then)."""
    params = list(model.parameters())
    if not params or params[0].device.type != "cpu" or not available(params[0].dtype):
        return False
    # Each block's methods are replaced on the instance, on purpose; mypy objects to any assignment
    # to a method and compares the new callable with the unbound one (self included).
    for module in model.modules():
        if isinstance(module, Block):
            module.forward = _block_forward(module, module.forward)  # type: ignore[method-assign,assignment]
        elif isinstance(module, DecBlock):
            module.finish = _finish(module, module.finish)  # type: ignore[method-assign,assignment]
            module.prior_params = _prior_params(module, module.prior_params)  # type: ignore[method-assign,assignment]
    return True


def compile_blocks(model: nn.Module) -> None:
    """``torch.compile`` of every residual block (fuses GELU and residual adds; blocks of equal shape
    share one compiled graph)."""
    from torch import _dynamo

    # One graph per distinct block shape: a few per resolution, more than dynamo's default limit.
    _dynamo.config.recompile_limit = max(_dynamo.config.recompile_limit, 256)
    _dynamo.config.accumulated_recompile_limit = max(_dynamo.config.accumulated_recompile_limit, 4096)
    for module in model.modules():
        if isinstance(module, Block):
            # dynamic=None: a second batch size (--batch-size auto grows it) recompiles once with
            # a symbolic batch dimension instead of once per size.
            module.forward = torch.compile(module.forward)  # type: ignore[method-assign]  # on purpose, per instance
