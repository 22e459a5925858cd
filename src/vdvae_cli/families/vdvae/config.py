"""Typed, immutable VDVAE hyperparameters.

A :class:`VDVAEConfig` holds everything needed to rebuild a network and to turn pixels into network
inputs and loss targets. Block strings are parsed and validated once, in ``__post_init__``, into
:class:`EncoderLayer` / :class:`DecoderLayer` specs, so nothing downstream re-parses strings.

The five official sets follow the reference ``hps.py`` (see docs in ``README.md``); their
preprocessing constants come from the reference ``data.py``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ...engine.configbase import LatentStackConfig
from ...base.errors import ConfigError

# --------------------------------------------------------------------------------------------------
# Bounds: a config comes from a file that may be hostile, so every field is bounded before anything
# is built from it. The official models are far inside these (ffhq1024: 1024 px, 80 encoder blocks).

MAX_IMAGE_SIZE = 4096
MAX_WIDTH = 16384
MAX_ZDIM = 4096
MAX_MIXTURES = 1024
MAX_BLOCKS = 2048  # per block string
MAX_TEXT = 10_000  # characters of a block or width string
MAX_NAME = 256  # characters of a name or dataset string

_INT_BOUNDS = {"image_size": MAX_IMAGE_SIZE, "width": MAX_WIDTH, "zdim": MAX_ZDIM, "image_channels": 16,
               "num_mixtures": MAX_MIXTURES, "no_bias_above": 1 << 20}
_FLOAT_FIELDS = ("bottleneck_multiple", "input_shift", "input_scale", "target_shift", "target_scale", "pixel_scale")

# --------------------------------------------------------------------------------------------------
# Block strings


@dataclass(frozen=True)
class EncoderLayer:
    """One encoder residual block. ``down_rate`` > 1 average-pools after the residual add."""

    index: int
    res: int
    width: int
    middle: int
    kernel: int  # 3 when res > 2, else 1 (the two middle convs)
    down_rate: int | None

    @property
    def out_res(self) -> int:
        return self.res // self.down_rate if self.down_rate else self.res


@dataclass(frozen=True)
class DecoderLayer:
    """One top-down block = one latent layer. ``mixin`` is the lower resolution it upsamples from."""

    index: int
    res: int
    width: int
    middle: int
    kernel: int
    mixin: int | None
    zdim: int

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.zdim, self.res, self.res)


def parse_block_string(text: str, *, kind: str) -> list[tuple[int, int | None]]:
    """Parse a reference block string into ``(resolution, extra)`` pairs.

    ``kind`` is ``"enc"`` (``d`` tokens: extra = down rate) or ``"dec"`` (``m`` tokens: extra = mixin
    resolution). Tokens: ``RxN`` (N plain blocks), ``RmS``, ``RdK``, or a bare ``R``.
    """
    if not isinstance(text, str):
        raise ConfigError(f"{kind}_blocks must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ConfigError(f"{kind}_blocks is empty", hint="give a comma-separated list like '32x4,32d2,16x2'")
    if len(text) > MAX_TEXT:
        raise ConfigError(f"{kind}_blocks is {len(text)} characters long (at most {MAX_TEXT})")
    out: list[tuple[int, int | None]] = []
    for raw in text.split(","):
        token = raw.strip()
        try:
            if "x" in token:
                res_s, count_s = token.split("x")
                res, count = _small_int(res_s), _small_int(count_s)
                if count < 1:
                    raise ValueError
                if len(out) + count > MAX_BLOCKS:
                    raise ConfigError(f"{kind}_blocks describes more than {MAX_BLOCKS} blocks",
                                      hint="no VDVAE has that many; the file or hyperparameters are damaged")
                out.extend((res, None) for _ in range(count))
            elif "m" in token:
                if kind != "dec":
                    raise ConfigError(f"{kind}_blocks token {token!r}: 'm' (mixin) only appears in dec_blocks")
                res_s, other_s = token.split("m")
                out.append((_small_int(res_s), _small_int(other_s)))
            elif "d" in token:
                if kind != "enc":
                    raise ConfigError(f"{kind}_blocks token {token!r}: 'd' (downsample) only appears in enc_blocks")
                res_s, other_s = token.split("d")
                out.append((_small_int(res_s), _small_int(other_s)))
            else:
                out.append((_small_int(token), None))
        except ConfigError:
            raise
        except ValueError:
            raise ConfigError(
                f"{kind}_blocks token {token!r} is not RxN, RmS, RdK or R (positive integers)"
            ) from None
        res, extra = out[-1]
        if res < 1 or (extra is not None and extra < 1):
            raise ConfigError(f"{kind}_blocks token {token!r}: resolutions and rates must be positive")
        if res > MAX_IMAGE_SIZE or (extra is not None and extra > MAX_IMAGE_SIZE):
            raise ConfigError(f"{kind}_blocks token {token!r}: resolutions are at most {MAX_IMAGE_SIZE}")
        if len(out) > MAX_BLOCKS:
            raise ConfigError(f"{kind}_blocks describes more than {MAX_BLOCKS} blocks",
                              hint="no VDVAE has that many; the file or hyperparameters are damaged")
    return out


def _small_int(text: str) -> int:
    """A decimal integer of at most 9 digits (``int()`` alone takes '1_000', ' 7' and 4300 digits)."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 9:
        raise ValueError(text)
    return int(text)


def parse_width_string(text: str) -> dict[int, int]:
    """``'512:32,256:64'`` -> ``{512: 32, 256: 64}``; empty string -> ``{}``."""
    widths: dict[int, int] = {}
    if not isinstance(text, str):
        raise ConfigError(f"custom_width_str must be a string like '512:32,256:64', got {type(text).__name__}")
    if not text:
        return widths
    if len(text) > MAX_TEXT:
        raise ConfigError(f"custom_width_str is {len(text)} characters long (at most {MAX_TEXT})")
    for raw in text.split(","):
        try:
            res_s, width_s = raw.strip().split(":")
            res, width = _small_int(res_s), _small_int(width_s)
        except ValueError:
            raise ConfigError(f"custom_width_str entry {raw.strip()!r} is not 'resolution:width'") from None
        if not (1 <= width <= MAX_WIDTH):
            raise ConfigError(f"custom_width_str entry {raw.strip()!r}: widths are 1 to {MAX_WIDTH}")
        widths[res] = width
    return widths


# --------------------------------------------------------------------------------------------------
# The config


@dataclass(frozen=True)
class VDVAEConfig(LatentStackConfig):
    """Architecture and data constants of one VDVAE.

    ``input_shift``/``input_scale`` map pixels to network inputs: ``x_in = (x * pixel_scale + shift) * scale``
    where ``x`` is uint8-valued. ``target_*`` do the same for the DMoL loss target in [-1, 1]. ``low_bit``
    reduces the target to 5 bits first (``floor(x / 8) * 8``), as the reference does for ffhq_256.
    """

    image_size: int
    width: int
    zdim: int
    enc_blocks: str
    dec_blocks: str
    image_channels: int = 3
    bottleneck_multiple: float = 0.25
    custom_width_str: str = ""
    no_bias_above: int = 64
    num_mixtures: int = 10
    input_shift: float = -127.5
    input_scale: float = 1 / 127.5
    target_shift: float = -127.5
    target_scale: float = 1 / 127.5
    pixel_scale: float = 1.0
    low_bit: bool = False
    dataset: str = "custom"
    name: str = "custom"
    # A bounded prior scale: when set, every prior log-std is b - softplus(b - raw) < b (smooth, the
    # identity far below b), so no state can make a prior draw explode. None: unbounded (the reference).
    prior_logstd_max: float | None = None

    encoder_layers: tuple[EncoderLayer, ...] = field(init=False, repr=False, compare=False)
    decoder_layers: tuple[DecoderLayer, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, bound in _INT_BOUNDS.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {_show(value)}")
            if value > bound:
                raise ConfigError(f"{name} is {value}, at most {bound} is supported")
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {_show(value)}")
        for name in ("input_scale", "target_scale", "pixel_scale"):
            if getattr(self, name) == 0:
                raise ConfigError(f"{name} must not be 0")
        if not 1 / 256 <= self.pixel_scale <= 1:  # pixels are divided by round(1 / pixel_scale)
            raise ConfigError(f"pixel_scale must be 1/256 to 1 (pixels are divided by its inverse), got {self.pixel_scale}")
        if not isinstance(self.low_bit, bool):
            raise ConfigError(f"low_bit must be true or false, got {_show(self.low_bit)}")
        for name in ("name", "dataset"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ConfigError(f"{name} must be a string, got {_show(value)}")
            if len(value) > MAX_NAME:
                raise ConfigError(f"{name} is {len(value)} characters long (at most {MAX_NAME})")
        for name in ("enc_blocks", "dec_blocks", "custom_width_str"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name} must be a string, got {_show(getattr(self, name))}")
        if self.image_channels not in (1, 3):
            raise ConfigError(
                f"image_channels={self.image_channels}: the DMoL output head models grey (1) or RGB (3) channels"
            )
        if self.prior_logstd_max is not None:
            b = self.prior_logstd_max
            if not isinstance(b, (int, float)) or isinstance(b, bool) or not math.isfinite(b) or not -5 <= b <= 5:
                raise ConfigError(f"prior_logstd_max must be a number from -5 to 5 (or null), got {_show(b)}")
        if not 0 < self.bottleneck_multiple <= 4:
            raise ConfigError(f"bottleneck_multiple must be in (0, 4], got {self.bottleneck_multiple}")
        widths = parse_width_string(self.custom_width_str)
        width_of = lambda r: widths.get(r, self.width)  # noqa: E731  (local helper, not stored)

        def middle_of(r: int) -> int:
            mid = int(width_of(r) * self.bottleneck_multiple)
            if mid < 1:
                raise ConfigError(f"bottleneck width at resolution {r} is 0 (width {width_of(r)})")
            return mid

        if width_of(self.image_size) != self.width:
            raise ConfigError(
                f"width at the image resolution ({width_of(self.image_size)}) must equal width ({self.width})"
            )

        enc: list[EncoderLayer] = []
        res = self.image_size
        for i, (r, down) in enumerate(parse_block_string(self.enc_blocks, kind="enc")):
            if r != res:
                raise ConfigError(
                    f"enc_blocks: block {i} is at resolution {r} but the encoder is at {res} there",
                    hint="encoder blocks must start at image_size and follow each 'd' downsampling",
                )
            if down is not None and (down < 2 or r % down):
                raise ConfigError(f"enc_blocks: '{r}d{down}' must downsample by a factor > 1 that divides {r}")
            enc.append(EncoderLayer(i, r, width_of(r), middle_of(r), 3 if r > 2 else 1, down))
            res = enc[-1].out_res
        enc_out = {layer.out_res for layer in enc} | {self.image_size}

        dec: list[DecoderLayer] = []
        seen: set[int] = set()
        for i, (r, mixin) in enumerate(parse_block_string(self.dec_blocks, kind="dec")):
            if r not in enc_out:
                raise ConfigError(f"dec_blocks: resolution {r} (block {i}) is not produced by the encoder")
            if mixin is not None:
                if mixin >= r or r % mixin:
                    raise ConfigError(f"dec_blocks: '{r}m{mixin}' must mix in a lower resolution dividing {r}")
                if mixin not in seen and mixin > self.no_bias_above:
                    raise ConfigError(f"dec_blocks: '{r}m{mixin}' mixes in resolution {mixin} before any block there")
            seen.add(r)
            dec.append(DecoderLayer(i, r, width_of(r), middle_of(r), 3 if r > 2 else 1, mixin, self.zdim))
        if self.image_size not in seen:
            raise ConfigError(f"dec_blocks never reach the image resolution {self.image_size}")
        if min(seen) > self.no_bias_above:
            raise ConfigError(
                f"no_bias_above={self.no_bias_above} is below every decoder resolution",
                hint="the lowest decoder resolution needs a learned start tensor",
            )
        all_res = sorted(enc_out | seen)
        for lo, hi in zip(all_res, all_res[1:]):
            if width_of(hi) > width_of(lo):
                raise ConfigError(
                    f"width grows from {width_of(lo)} at resolution {lo} to {width_of(hi)} at {hi}",
                    hint="widths must not increase with resolution",
                )
        object.__setattr__(self, "encoder_layers", tuple(enc))
        object.__setattr__(self, "decoder_layers", tuple(dec))

    # -- derived facts -----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if out.get("prior_logstd_max") is None:  # files without the option read (and hash) as before
            out.pop("prior_logstd_max", None)
        return out

    def width_at(self, res: int) -> int:
        return parse_width_string(self.custom_width_str).get(res, self.width)

    @property
    def bias_resolutions(self) -> tuple[int, ...]:
        """Resolutions with a learned start tensor ``decoder.bias_xs.j`` (ascending)."""
        return tuple(r for r in self.resolutions if r <= self.no_bias_above)

    @property
    def n_dims(self) -> int:
        """Data dimensions per image (H * W * C): the divisor of nats/dim."""
        return self.image_size * self.image_size * self.image_channels


# --------------------------------------------------------------------------------------------------
# Reference datasets and the official sets

# dataset string -> (image_size, shift, scale, shift_loss, scale_loss, pixel_scale, low_bit)
_DATASETS: dict[str, tuple[int, float, float, float, float, float, bool]] = {
    "cifar10": (32, -120.63838, 1 / 64.16736, -127.5, 1 / 127.5, 1.0, False),
    "imagenet32": (32, -116.2373, 1 / 69.37404, -127.5, 1 / 127.5, 1.0, False),
    "imagenet64": (64, -115.92961967, 1 / 69.37404, -127.5, 1 / 127.5, 1.0, False),
    "ffhq_256": (256, -112.8666757481, 1 / 69.84780273, -127.5, 1 / 127.5, 1.0, True),
    "ffhq_1024": (1024, -0.4387, 1 / 0.2743, -0.5, 2.0, 1 / 255, False),
}

_CIFAR10 = dict(
    width=384, zdim=16, enc_blocks="32x11,32d2,16x6,16d2,8x6,8d2,4x3,4d4,1x3",
    dec_blocks="1x1,4m1,4x2,8m4,8x5,16m8,16x10,32m16,32x21", dataset="cifar10",
)
_IMAGENET32 = dict(
    width=512, zdim=16, enc_blocks="32x15,32d2,16x9,16d2,8x8,8d2,4x6,4d4,1x6",
    dec_blocks="1x2,4m1,4x4,8m4,8x9,16m8,16x19,32m16,32x40", dataset="imagenet32",
)
_IMAGENET64 = dict(
    width=512, zdim=16, enc_blocks="64x11,64d2,32x20,32d2,16x9,16d2,8x8,8d2,4x7,4d4,1x5",
    dec_blocks="1x2,4m1,4x3,8m4,8x7,16m8,16x15,32m16,32x31,64m32,64x12", dataset="imagenet64",
)
_FFHQ256 = dict(
    width=512, zdim=16,
    enc_blocks="256x3,256d2,128x8,128d2,64x12,64d2,32x17,32d2,16x7,16d2,8x5,8d2,4x5,4d4,1x4",
    dec_blocks="1x2,4m1,4x3,8m4,8x4,16m8,16x9,32m16,32x21,64m32,64x13,128m64,128x7,256m128",
    dataset="ffhq_256",
)
_FFHQ1024 = dict(
    width=16, zdim=16, num_mixtures=2,
    custom_width_str="512:32,256:64,128:512,64:512,32:512,16:512,8:512,4:512,1:512",
    enc_blocks="1024x1,1024d2,512x3,512d2,256x5,256d2,128x7,128d2,64x10,64d2,32x14,32d2,16x7,16d2,8x5,8d2,4x5,4d4,1x4",
    dec_blocks="1x2,4m1,4x3,8m4,8x4,16m8,16x9,32m16,32x20,64m32,64x14,128m64,128x7,256m128,256x2,512m256,1024m512",
    dataset="ffhq_1024",
)
_OFFICIAL_HPS: dict[str, dict[str, Any]] = {
    "cifar10": _CIFAR10, "imagenet32": _IMAGENET32, "imagenet64": _IMAGENET64,
    "ffhq256": _FFHQ256, "ffhq1024": _FFHQ1024,
}
OFFICIAL_NAMES: tuple[str, ...] = tuple(_OFFICIAL_HPS)

# Field names of the reference hps.py that describe the network.
_REFERENCE_KEYS = (
    "width", "zdim", "enc_blocks", "dec_blocks", "custom_width_str", "bottleneck_multiple",
    "no_bias_above", "num_mixtures", "image_size", "image_channels", "prior_logstd_max",
)


def official_config(name: str) -> VDVAEConfig:
    """The hyperparameters of an official model, as in the reference ``hps.py``."""
    if name not in _OFFICIAL_HPS:
        raise ConfigError(f"unknown official config {name!r}", hint=f"choose one of {', '.join(OFFICIAL_NAMES)}")
    return config_from_reference({**_OFFICIAL_HPS[name]}, name=name)


def config_from_reference(hps: Mapping[str, Any], *, name: str | None = None) -> VDVAEConfig:
    """Build a config from reference-style hyperparameters (``hps.py`` field names).

    Keys the network does not need are ignored. The ``dataset`` string selects image size and
    preprocessing for the five reference datasets; any other dataset needs a ``preprocessing`` object
    with ``shift``, ``scale``, ``shift_loss``, ``scale_loss`` (and optionally ``pixel_scale``,
    ``low_bit``), plus ``image_size``.
    """
    if not isinstance(hps, Mapping):
        raise ConfigError(f"hyperparameters must be a JSON object, got {type(hps).__name__}")
    dataset = hps.get("dataset") or "custom"
    if not isinstance(dataset, str):
        raise ConfigError(f"dataset must be a string, got {_show(dataset)}")
    kwargs: dict[str, Any] = {k: hps[k] for k in _REFERENCE_KEYS if hps.get(k) is not None}
    if dataset in _DATASETS:
        size, shift, scale, shift_loss, scale_loss, pixel_scale, low_bit = _DATASETS[dataset]
        kwargs.setdefault("image_size", size)
        if kwargs["image_size"] != size:
            raise ConfigError(f"image_size {kwargs['image_size']} does not match dataset {dataset!r} ({size})")
    else:
        pre = hps.get("preprocessing")
        if not isinstance(pre, Mapping) or not {"shift", "scale"} <= set(pre):
            raise ConfigError(
                f"dataset {dataset!r} is not a reference dataset, so its input shift/scale must be given",
                hint='add "preprocessing": {"shift": ..., "scale": ..., "shift_loss": ..., "scale_loss": ...}',
            )
        if "image_size" not in kwargs:
            raise ConfigError(f"dataset {dataset!r} is not a reference dataset, so image_size must be given")
        shift, scale = _number(pre["shift"], "shift"), _number(pre["scale"], "scale")
        shift_loss = _number(pre.get("shift_loss", -127.5), "shift_loss")
        scale_loss = _number(pre.get("scale_loss", 1 / 127.5), "scale_loss")
        pixel_scale = _number(pre.get("pixel_scale", 1.0), "pixel_scale")
        low_bit = pre.get("low_bit", hps.get("low_bit", False))
        if not isinstance(low_bit, bool):
            raise ConfigError(f"preprocessing low_bit must be true or false, got {_show(low_bit)}")
    for key in ("enc_blocks", "dec_blocks"):
        if key not in kwargs:
            raise ConfigError(f"hyperparameters lack {key!r}")
    if kwargs.get("custom_width_str") is None:
        kwargs["custom_width_str"] = ""
    return VDVAEConfig(
        **kwargs,
        input_shift=shift, input_scale=scale, target_shift=shift_loss, target_scale=scale_loss,
        pixel_scale=pixel_scale, low_bit=low_bit, dataset=dataset, name=name or dataset,
    )


MAX_HPARAMS_BYTES = 1 << 30  # an official run's log holds every training report, so it may be large
MAX_LINE = 1 << 20


def read_hparams_file(path: str | Path) -> dict[str, Any]:
    """Read reference hyperparameters from a JSON object or an official run's ``-log.jsonl``.

    In a log, every ``{"type": "hparam", "key": k, "value": v}`` line contributes ``k: v``; a log with
    several dumps (a restarted run) keeps the last value of each key. The file is untrusted: it is
    read line by line, every line must be JSON nested at most a few levels deep, and a line or a
    file that is absurdly long is refused.
    """
    from ...base.safety import JSONLimitError, loads

    path = Path(path)
    label = _label(path)
    try:
        size = path.stat().st_size
        if size > MAX_HPARAMS_BYTES:
            raise ConfigError(f"{label} is {size} bytes; a hyperparameters file is at most {MAX_HPARAMS_BYTES}")
        with open(path, "rb") as f:
            head = f.read(MAX_LINE + 1)
            if size <= MAX_LINE:  # small enough to be one JSON object (pretty-printed or not)
                try:
                    data = loads(head)
                except ValueError:
                    data = None
                if isinstance(data, dict) and data.get("type") != "hparam":
                    return data
            f.seek(0)
            hps: dict[str, Any] = {}
            for n, raw in enumerate(f, 1):
                if len(raw) > MAX_LINE:
                    raise ConfigError(f"{label}:{n} is a line of more than {MAX_LINE} bytes",
                                      hint="this is not a hyperparameters file")
                if not raw.strip() or (n > 1 and b"hparam" not in raw):
                    continue
                try:
                    record = loads(raw)
                except JSONLimitError as exc:
                    raise ConfigError(f"{label}:{n}: {exc}", hint="this is not a hyperparameters file") from None
                except ValueError:
                    raise ConfigError(f"{label}:{n} is neither a JSON object nor a JSON-lines log") from None
                if isinstance(record, dict) and record.get("type") == "hparam" and isinstance(record.get("key"), str):
                    hps[record["key"]] = record.get("value")
    except OSError as exc:
        raise ConfigError(f"cannot read hyperparameters file {label}: {exc.strerror or exc}") from None
    if not hps:
        raise ConfigError(f"{label} holds no hyperparameters (no JSON object, no 'hparam' lines)")
    return hps


def _label(path: Path) -> str:
    from ...base.safety import clean

    return clean(str(path))


def _number(value: Any, what: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigError(f"preprocessing {what} must be a finite number, got {_show(value)}")
    return float(value)


def load_config_arg(config: str | None, hparams: str | Path | None) -> VDVAEConfig:
    """Resolve the ``--config NAME`` / ``--hparams FILE`` pair that several commands take."""
    if config is not None and hparams is None:
        return official_config(config)
    if hparams is not None and config is None:
        hps = read_hparams_file(hparams)
        return config_from_reference(hps, name=hps.get("name") or Path(str(hparams)).stem[:MAX_NAME])
    raise ConfigError("give exactly one of --config NAME or --hparams FILE.json")


def _show(value: Any) -> str:
    """A short, safe rendering of an untrusted value for a message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def describe(cfg: VDVAEConfig) -> dict[str, Any]:
    """A compact, JSON-friendly summary (used by ``vdvae info``)."""
    d = asdict(cfg)
    d.pop("encoder_layers", None)
    d.pop("decoder_layers", None)
    if d.get("prior_logstd_max") is None:
        d.pop("prior_logstd_max", None)
    d["n_layers"] = cfg.n_layers
    d["resolutions"] = list(cfg.resolutions)
    d["latent_dims"] = cfg.latent_dims
    return d


