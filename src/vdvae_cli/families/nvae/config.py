"""Typed, immutable NVAE hyperparameters, built from the ``args`` an official checkpoint stores.

:class:`NVAEConfig` keeps only the fields that shape the network or its likelihood (the official
``args`` Namespace also carries training and IO bookkeeping). It is validated and bounded once, in
``__post_init__``; the derived layout (groups per scale, one :class:`LatentGroup` per latent group in
decoder order) is computed there too, so nothing downstream re-derives it.

Notation as in the official code: ``C_e``/``C_d`` encoder/decoder channels, ``P``/``Q`` pre/post
blocks, ``S`` latent scales, ``L`` latent channels per group. Encoder scale ``s = 0`` is the finest;
the decoder walks the scales coarsest first, and its groups are the latent layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ...engine.configbase import LatentStackConfig
from ...base.errors import ConfigError

# Ops of every cell type per ``arch_instance`` (official ``get_arch_cells``), for the instances whose
# ops we implement: (normal_enc/down_enc, normal_dec/up_dec, normal_pre/down_pre, normal_post/up_post).
_BNSWISH2 = ("res_bnswish", "res_bnswish")
ARCH_INSTANCES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "res_bnswish": (_BNSWISH2, _BNSWISH2, _BNSWISH2, _BNSWISH2),
    "mbconv_sep": (("mconv_e6k5g0",), ("mconv_e6k5g0",), ("mconv_e3k5g0",), ("mconv_e3k5g0",)),
    "mbconv_sep11": (("mconv_e6k11g0",), ("mconv_e6k11g0",), ("mconv_e3k5g0",), ("mconv_e3k5g0",)),
    "res_mbconv": (_BNSWISH2, ("mconv_e6k5g0",), _BNSWISH2, ("mconv_e3k5g0",)),
    "res53_mbconv": (("res_bnswish5", "res_bnswish"), ("mconv_e6k5g0",), ("res_bnswish5", "res_bnswish"), ("mconv_e3k5g0",)),
    "res35_mbconv": (("res_bnswish", "res_bnswish5"), ("mconv_e6k5g0",), ("res_bnswish", "res_bnswish5"), ("mconv_e3k5g0",)),
    "res55_mbconv": (("res_bnswish5",) * 2, ("mconv_e6k5g0",), ("res_bnswish5",) * 2, ("mconv_e3k5g0",)),
    "mbconv_res": (("mconv_e6k5g0",), _BNSWISH2, ("mconv_e3k5g0",), _BNSWISH2),
    "mbconv_den": (("mconv_e6k5g0",), ("mconv_e6k5g0",), ("mconv_e3k5g8",), ("mconv_e3k5g8",)),
}
BINARY_DATASETS = ("mnist", "omniglot")

# Fields of the official ``args`` that the network or its likelihood depends on.
_ARG_FIELDS = (
    "dataset", "arch_instance", "num_channels_enc", "num_channels_dec", "num_latent_scales",
    "num_groups_per_scale", "num_latent_per_group", "ada_groups", "min_groups_per_scale",
    "num_preprocess_blocks", "num_preprocess_cells", "num_postprocess_blocks", "num_postprocess_cells",
    "num_cell_per_cond_enc", "num_cell_per_cond_dec", "num_nf", "use_se", "res_dist", "num_mixture_dec",
    "num_x_bits",
)
# What evaluate.py sets on ``args`` of old checkpoints that lack a field.
OLD_ARGS_PATCHES: dict[str, Any] = {"ada_groups": False, "min_groups_per_scale": 1, "num_mixture_dec": 10}

# Inclusive bounds of the integer fields (wide enough for every released model and then some).
_BOUNDS: dict[str, tuple[int, int]] = {
    # (a down cell's skip splits 2 C_e channels four ways: C_e = 1 gave it convs of no channels)
    "num_channels_enc": (2, 1024), "num_channels_dec": (1, 1024), "num_latent_scales": (1, 8),
    "num_groups_per_scale": (1, 256), "num_latent_per_group": (1, 512), "min_groups_per_scale": (1, 256),
    "num_preprocess_blocks": (1, 6), "num_preprocess_cells": (1, 16), "num_postprocess_blocks": (1, 6),
    "num_postprocess_cells": (1, 16), "num_cell_per_cond_enc": (1, 16), "num_cell_per_cond_dec": (1, 16),
    "num_nf": (0, 8), "num_mixture_dec": (1, 64), "num_x_bits": (1, 8),
}


def image_size_of(dataset: str) -> int:
    """Input size of the official dataset string (MNIST-style sets are padded 28 -> 32); ``custom_N``
    names a model trained here on one's own N x N RGB images."""
    if dataset in BINARY_DATASETS or dataset == "cifar10":
        return 32
    if dataset == "ffhq":
        return 256
    if dataset.startswith(("celeba", "imagenet", "lsun", "custom")):
        tail = dataset.rsplit("_", 1)[-1]
        if tail.isdigit() and 1 <= int(tail) <= 4096:
            return int(tail)
    raise ConfigError(
        f"dataset {dataset!r} has no input size NVAE can build",
        hint="one of mnist, omniglot, cifar10, ffhq, or celeba_N / imagenet_N / lsun_NAME_N / custom_N (own data)",
    )


@dataclass(frozen=True)
class LatentGroup:
    """One latent group = one latent layer, in decoder order (``index`` 0 = the top group)."""

    index: int
    scale: int  # decoder scale j (0 = coarsest)
    res: int
    zdim: int
    width: int  # decoder channels at this scale
    enc_width: int  # encoder channels at this scale
    mixin: int | None  # the first group of a finer scale: the resolution its up cell doubles

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.zdim, self.res, self.res)


@dataclass(frozen=True)
class NVAEConfig(LatentStackConfig):
    """Architecture and likelihood of one NVAE (official ``args`` field names)."""

    dataset: str
    num_channels_enc: int
    num_channels_dec: int
    num_latent_scales: int
    num_groups_per_scale: int
    num_latent_per_group: int
    num_preprocess_blocks: int
    num_preprocess_cells: int
    num_postprocess_blocks: int
    num_postprocess_cells: int
    num_cell_per_cond_enc: int
    num_cell_per_cond_dec: int
    arch_instance: str = "res_mbconv"
    ada_groups: bool = False
    min_groups_per_scale: int = 1
    num_nf: int = 0
    use_se: bool = True
    res_dist: bool = True
    num_mixture_dec: int = 10
    num_x_bits: int = 8
    name: str = "nvae"
    # Not an official field: grey (one-channel) images on an RGB-style dataset (a DMoL of 3M
    # parameters per pixel, or a one-channel normal); left out of files that do not set it.
    grey: bool = False

    family: str = field(default="nvae", init=False, repr=False, compare=False)
    groups_per_scale: tuple[int, ...] = field(init=False, repr=False, compare=False)
    decoder_layers: tuple[LatentGroup, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, (lo, hi) in _BOUNDS.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                raise ConfigError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
        for name in ("ada_groups", "use_se", "res_dist", "grey"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.dataset, str) or not isinstance(self.name, str) or not self.name:
            raise ConfigError("dataset and name must be non-empty strings")
        if self.arch_instance not in ARCH_INSTANCES:
            raise ConfigError(
                f"arch_instance {self.arch_instance!r} is not supported",
                hint=f"supported: {', '.join(ARCH_INSTANCES)}",
            )
        size = self.input_size
        P, S = self.num_preprocess_blocks, self.num_latent_scales
        if size % 2 ** (P + S - 1) or size < 2 ** (P + S - 1):
            raise ConfigError(f"{size}x{size} images cannot be halved {P + S - 1} times (pre-processing blocks + scales - 1)")
        if self.num_postprocess_blocks != P:
            raise ConfigError(
                f"num_postprocess_blocks ({self.num_postprocess_blocks}) must equal num_preprocess_blocks ({P}): "
                "otherwise the output is not at the input resolution"
            )
        if S == 1 and self.num_groups_per_scale == 1:
            raise ConfigError("one scale with one group is NVAE's 'vanilla VAE' path, which no released model uses")
        if self.grey and self.binary:
            raise ConfigError(f"dataset {self.dataset!r} is already one-channel (binary): grey applies to RGB-style datasets")
        if self.num_mixture_dec == 1 and self.binary:
            raise ConfigError("num_mixture_dec applies to RGB datasets only")
        object.__setattr__(self, "groups_per_scale", self._groups_per_scale())
        object.__setattr__(self, "decoder_layers", self._groups())
        self._check_grouped_convs()

    def _cells(self) -> list[tuple[str, int, int]]:
        """(cell type, input width, output width) of every kind of cell the network builds."""
        Ce, Cd, P, S = self.num_channels_enc, self.num_channels_dec, self.num_preprocess_blocks, self.num_latent_scales
        cells = [("down_pre", Ce * 2**b, Ce * 2 ** (b + 1)) for b in range(P)]
        cells += [("normal_pre", Ce * 2**b, Ce * 2**b) for b in range(P) if self.num_preprocess_cells > 1]
        cells += [("normal_enc", Ce * 2 ** (P + s), Ce * 2 ** (P + s)) for s in range(S)]
        cells += [("down_enc", Ce * 2 ** (P + s), Ce * 2 ** (P + s + 1)) for s in range(S - 1)]
        # the decoder's top group has no cells before it
        cells += [("normal_dec", Cd * 2 ** (P + s), Cd * 2 ** (P + s)) for s in range(S)
                  if s < S - 1 or self.groups_per_scale[S - 1] > 1]
        cells += [("up_dec", Cd * 2 ** (P + s + 1), Cd * 2 ** (P + s)) for s in range(S - 1)]
        cells += [("up_post", Cd * 2 ** (b + 1), Cd * 2**b) for b in range(P)]
        cells += [("normal_post", Cd * 2**b, Cd * 2**b) for b in range(P) if self.num_postprocess_cells > 1]
        return cells

    def _check_grouped_convs(self) -> None:
        """An mconv op with g groups (``mconv_e{e}k{k}g{g}``, g > 0) convolves e x its input width in g
        groups: that width must divide by g (make_op's first op sees the cell's input, later ones its output)."""
        for kind, cin, cout in self._cells():
            for j, op in enumerate(self.ops[kind]):
                if not op.startswith("mconv_e"):
                    continue
                expand, _, rest = op[len("mconv_e"):].partition("k")
                groups = int(rest.partition("g")[2])
                hidden = (cin if j == 0 else cout) * int(expand)
                if groups and hidden % groups:
                    raise ConfigError(
                        f"arch_instance {self.arch_instance!r} convolves {hidden} channels in {groups} groups "
                        f"({kind} cells), which does not divide: num_channels_enc and num_channels_dec must suit it",
                        hint=f"with {self.arch_instance}, use channel counts that are multiples of {groups}")

    def _groups_per_scale(self) -> tuple[int, ...]:
        counts = [self.num_groups_per_scale]
        for _ in range(1, self.num_latent_scales):
            prev = counts[-1]
            counts.append(max(self.min_groups_per_scale, prev // 2) if self.ada_groups else prev)
        return tuple(counts)

    def _groups(self) -> tuple[LatentGroup, ...]:
        out: list[LatentGroup] = []
        S, P = self.num_latent_scales, self.num_preprocess_blocks
        for j in range(S):  # decoder scales, coarsest first
            s = S - 1 - j
            mult = 2 ** (P + s)
            res = self.input_size // mult
            for g in range(self.groups_per_scale[s]):
                out.append(LatentGroup(len(out), j, res, self.num_latent_per_group, self.num_channels_dec * mult,
                                       self.num_channels_enc * mult, res // 2 if g == 0 and j > 0 else None))
        return tuple(out)

    # -- derived facts ------------------------------------------------------------------------------

    @property
    def binary(self) -> bool:
        """Bernoulli output (MNIST-style data) rather than a mixture of logistics."""
        return self.dataset in BINARY_DATASETS

    @property
    def input_size(self) -> int:
        """Side of the network's input (MNIST-style data: the 28x28 image padded to 32)."""
        return image_size_of(self.dataset)

    @property
    def image_size(self) -> int:
        """Side of the images read and written (28 for MNIST-style data, else the input size)."""
        return self.input_size - 4 if self.binary else self.input_size

    @property
    def image_channels(self) -> int:
        return 1 if self.binary or self.grey else 3

    @property
    def likelihood(self) -> str:
        """``bernoulli``, ``normal`` (num_mixture_dec 1) or ``dmol``."""
        if self.binary:
            return "bernoulli"
        return "normal" if self.num_mixture_dec == 1 else "dmol"

    @property
    def output_channels(self) -> int:
        c = self.image_channels
        return {"bernoulli": 1, "normal": 2 * c, "dmol": (10 if c == 3 else 3) * self.num_mixture_dec}[self.likelihood]

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if not out.get("grey"):  # RGB and official files read (and hash) as before the field
            out.pop("grey", None)
        return out

    @property
    def num_mixtures(self) -> int:
        return self.num_mixture_dec

    @property
    def ops(self) -> dict[str, tuple[str, ...]]:
        """Op names per cell type (official ``get_arch_cells``)."""
        enc, dec, pre, post = ARCH_INSTANCES[self.arch_instance]
        return {"normal_enc": enc, "down_enc": enc, "normal_dec": dec, "up_dec": dec,
                "normal_pre": pre, "down_pre": pre, "normal_post": post, "up_post": post}

    @property
    def n_dims(self) -> int:
        """Data dimensions per image for bits/dim: 28*28 for MNIST-style data (the likelihood is
        cropped to the digit), else C*H*W."""
        if self.binary:
            return self.image_size**2
        return self.image_channels * self.image_size**2



def config_from_args(args: Any, *, name: str | None = None) -> NVAEConfig:
    """The config of an official checkpoint's ``args`` (an ``argparse.Namespace`` or a mapping).

    Fields missing from old checkpoints get the values evaluate.py patches in
    (:data:`OLD_ARGS_PATCHES`); every other field the network needs must be present.
    """
    data = dict(vars(args)) if not isinstance(args, Mapping) else dict(args)
    for key, value in OLD_ARGS_PATCHES.items():
        data.setdefault(key, value)
    missing = [k for k in _ARG_FIELDS if k not in data]
    if missing:
        raise ConfigError(f"the checkpoint's args lack {', '.join(missing)}")
    kwargs = {k: data[k] for k in _ARG_FIELDS}
    dataset = kwargs["dataset"]
    return NVAEConfig(**kwargs, name=name or (f"nvae-{dataset}" if isinstance(dataset, str) else "nvae"))


# The README training commands of the released models (spec §2.1): what their files' ``args`` say,
# for display and for key checks before a file is at hand. A file's own ``args`` always win.
_COMMON = dict(arch_instance="res_mbconv", use_se=True, res_dist=True, num_mixture_dec=10,
               num_latent_per_group=20, num_preprocess_cells=2, num_postprocess_cells=2,
               num_cell_per_cond_enc=2, num_cell_per_cond_dec=2, num_preprocess_blocks=1,
               num_postprocess_blocks=1)
README_ARGS: dict[str, dict[str, Any]] = {
    "mnist": {**_COMMON, "dataset": "mnist", "num_channels_enc": 32, "num_channels_dec": 32, "num_latent_scales": 2,
              "num_groups_per_scale": 10, "ada_groups": True, "num_preprocess_blocks": 2, "num_preprocess_cells": 3,
              "num_postprocess_blocks": 2, "num_postprocess_cells": 3, "num_nf": 0},
    "cifar10": {**_COMMON, "dataset": "cifar10", "num_channels_enc": 128, "num_channels_dec": 128,
                "num_latent_scales": 1, "num_groups_per_scale": 30, "num_nf": 1},
    "celeba64": {**_COMMON, "dataset": "celeba_64", "num_channels_enc": 64, "num_channels_dec": 64,
                 "num_latent_scales": 3, "num_groups_per_scale": 20, "ada_groups": True, "num_nf": 1},
    "imagenet32": {**_COMMON, "dataset": "imagenet_32", "num_channels_enc": 192, "num_channels_dec": 192,
                   "num_latent_scales": 1, "num_groups_per_scale": 28, "num_nf": 1},
    "celebahq256": {**_COMMON, "dataset": "celeba_256", "num_channels_enc": 30, "num_channels_dec": 30,
                    "num_latent_scales": 5, "num_groups_per_scale": 16, "ada_groups": True, "min_groups_per_scale": 4,
                    "num_nf": 2, "num_x_bits": 5},
    "ffhq256": {**_COMMON, "dataset": "ffhq", "num_channels_enc": 30, "num_channels_dec": 30, "num_latent_scales": 5,
                "num_groups_per_scale": 16, "ada_groups": True, "min_groups_per_scale": 4, "num_nf": 2, "num_x_bits": 5},
}


def readme_config(name: str) -> NVAEConfig:
    """The config the official README command for ``name`` builds (see :data:`README_ARGS`)."""
    if name not in README_ARGS:
        raise ConfigError(f"unknown NVAE model {name!r}", hint=f"choose one of {', '.join(README_ARGS)}")
    return NVAEConfig(**README_ARGS[name], name=f"nvae-{name}")
