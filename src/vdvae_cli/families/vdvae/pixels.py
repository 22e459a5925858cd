"""VDVAE's pixels: uint8 images to the network's input and to the DMoL target, with each official
data set's shift and scale (``cfg.input_shift``/``input_scale``, ``target_shift``/``target_scale``)."""

from __future__ import annotations

import torch

from ...engine.ops import as_channels
from .config import VDVAEConfig

Tensor = torch.Tensor


def model_input(cfg: VDVAEConfig, images: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 NHWC -> network input NCHW: ``(x * pixel_scale + shift) * scale`` in float32 (grey
    for a one-channel model)."""
    x = as_channels(images, cfg.image_channels).float()
    if cfg.pixel_scale != 1.0:
        x = x / round(1 / cfg.pixel_scale)
    x = (x + torch.tensor(cfg.input_shift, dtype=torch.float32)) * torch.tensor(cfg.input_scale, dtype=torch.float32)
    return x.permute(0, 3, 1, 2).to(dtype)


def loss_target(cfg: VDVAEConfig, images: Tensor) -> Tensor:
    """uint8 NHWC -> DMoL target NHWC in [-1, 1] (5-bit first when ``cfg.low_bit``; grey for a
    one-channel model)."""
    x = as_channels(images, cfg.image_channels).float()
    if cfg.low_bit:
        x = torch.floor(x / 8) * 8
    if cfg.pixel_scale != 1.0:
        x = x / round(1 / cfg.pixel_scale)
    return (x + torch.tensor(cfg.target_shift, dtype=torch.float32)) * torch.tensor(cfg.target_scale, dtype=torch.float32)
