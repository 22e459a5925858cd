"""Device and dtype choice, and generators from seeds: decided once, at the edge."""

from __future__ import annotations

import torch

from .errors import DeviceError, UsageError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

_MASK64 = (1 << 64) - 1


def pick_device(spec: str = "auto") -> torch.device:
    """``auto`` -> cuda if present, else mps, else cpu; ``cuda:N`` / ``mps`` / ``cpu`` are checked."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UsageError(f"unknown device {spec!r}", hint="use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("CUDA was requested but is not available here", hint="use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"{spec}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise DeviceError("MPS was requested but is not available here", hint="use --device cpu")
    elif device.type != "cpu":
        raise UsageError(f"unsupported device {spec!r}", hint="use auto, cpu, cuda, cuda:N or mps")
    return device


def pick_dtype(spec: str = "fp32") -> torch.dtype:
    try:
        return DTYPES[spec.lower()]
    except KeyError:
        raise UsageError(f"unknown dtype {spec!r}", hint="use fp32, bf16 or fp16") from None


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def image_seed(seed: int, index: int) -> int:
    """The seed of image ``index`` in a run seeded with ``seed``: a hash of the pair (63-bit)."""
    return _splitmix64(_splitmix64(seed & _MASK64) ^ (index & _MASK64)) >> 1


def image_generators(seed: int, indices, device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per image index, so image ``i`` depends only on ``(seed, i)``, never on the batch."""
    device = torch.device(device)
    gens = []
    for i in indices:
        g = torch.Generator(device=device)
        g.manual_seed(image_seed(seed, int(i)))
        gens.append(g)
    return gens


def fresh_seed() -> int:
    """A random seed to report when the user gave none (so every run can be repeated)."""
    return int(torch.randint(0, 2**31 - 1, (1,)).item())


def prepare_for_inference(model, *, channels_last: bool = True, compile: bool = False):
    """Speed options that do not change the maths: channels-last memory layout (faster convolutions
    with oneDNN and cuDNN) and ``torch.compile`` of every residual block (fuses GELU and residual
    adds; blocks of equal shape share one compiled graph). Returns the same model."""
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        from torch import _dynamo

        from .model import Block

        # One graph per distinct block shape: a few per resolution, more than dynamo's default limit.
        _dynamo.config.recompile_limit = max(_dynamo.config.recompile_limit, 256)
        _dynamo.config.accumulated_recompile_limit = max(_dynamo.config.accumulated_recompile_limit, 4096)
        for module in model.modules():
            if isinstance(module, Block):
                module.forward = torch.compile(module.forward, dynamic=False)
    return model
