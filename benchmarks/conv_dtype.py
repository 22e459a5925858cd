"""How much faster a convolution runs in bf16 than in fp32 on this CPU, one thread, for the shapes
that take VDVAE cifar10's time (batch 8, channels-last, oneDNN as PyTorch calls it).

    python benchmarks/conv_dtype.py

VDVAE's sampling is ~88% convolutions (README, *Where the time goes*), so the bf16 path's speed-up
over our fp32 path cannot exceed about the convolutions' own; this prints that ceiling. Each figure
is the lower-quartile time of 30 calls after 5 warm-up calls.
"""

from __future__ import annotations

import time

import torch

SHAPES = [  # (label, in channels, out channels, kernel, map size)
    ("3x3 96->96 at 32x32", 96, 96, 3, 32),
    ("1x1 384->96 at 32x32", 384, 96, 1, 32),
    ("1x1 96->384 at 32x32", 96, 384, 1, 32),
    ("3x3 96->96 at 16x16", 96, 96, 3, 16),
]


def time_conv(cin: int, cout: int, k: int, hw: int, dtype: torch.dtype, batch: int = 8) -> float:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cin, hw, hw, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(cin, cout, k, padding=k // 2).to(dtype).to(memory_format=torch.channels_last).eval()
    with torch.inference_mode():
        for _ in range(5):
            conv(x)
        times = []
        for _ in range(30):
            t = time.perf_counter()
            conv(x)
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 4]


def main() -> None:
    torch.set_num_threads(1)
    print(f"{'convolution':24s} {'fp32 ms':>8s} {'GMAC/s':>7s} {'bf16 ms':>8s} {'GMAC/s':>7s} {'bf16 speed-up':>14s}")
    for label, cin, cout, k, hw in SHAPES:
        gmac = 8 * cout * cin * k * k * hw * hw / 1e9
        t32, t16 = time_conv(cin, cout, k, hw, torch.float32), time_conv(cin, cout, k, hw, torch.bfloat16)
        print(f"{label:24s} {t32 * 1e3:8.2f} {gmac / t32:7.1f} {t16 * 1e3:8.2f} {gmac / t16:7.1f} {t32 / t16:13.2f}x")


if __name__ == "__main__":
    main()
