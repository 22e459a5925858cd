"""PixelCNN++ architectures by name: the paper's CIFAR-10 network and sizes for a CPU.

``pixelcnn-cifar10`` is the paper's (Salimans et al. 2017: 5 blocks per resolution, 160 filters,
10 logistics, dropout 0.5; about 54M parameters). ``pixelcnn-small32`` (RGB) and ``pixelcnn-grey32``
(one channel, e.g. Fashion-MNIST) keep its shape at a size a 2-core CPU can train in hours.
"""

from __future__ import annotations

from typing import Any

OFFICIAL: dict[str, dict[str, Any]] = {
    "pixelcnn-cifar10": dict(image_size=32, channels=3, nr_resnet=5, nr_filters=160, nr_logistic_mix=10, dropout=0.5,
                             dataset="cifar10"),
}

PRESETS: dict[str, dict[str, Any]] = {
    "pixelcnn-small32": dict(image_size=32, channels=3, nr_resnet=2, nr_filters=48, nr_logistic_mix=5, dropout=0.5),
    "pixelcnn-grey32": dict(image_size=32, channels=1, nr_resnet=2, nr_filters=48, nr_logistic_mix=5, dropout=0.5),
}

# The paper's optimisation (section 3 and its code): Adam at 1e-3 without weight decay, no gradient
# clipping, Polyak averaging of the weights at 0.9995. The CPU presets average faster (short runs).
PAPER_RECIPE: dict[str, Any] = dict(lr=1e-3, wd=0.0, betas=(0.95, 0.9995), grad_clip=0.0, skip_threshold=-1.0,
                                    ema_rate=0.9995)
PRESET_RECIPE: dict[str, Any] = dict(PAPER_RECIPE, ema_rate=0.999, ema_warmup=True)
