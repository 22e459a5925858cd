"""``--temp`` specifications: one prior temperature per latent layer, from a short string.

A spec is a comma-separated list of entries, applied left to right (later entries override
earlier ones; two entries that name the same layers the same way, e.g. ``12=0.5,12=0.7`` or
``r32=0.5,r32=0.7``, are refused: one of them would be ignored)::

    0.6              a bare number: every layer (the default; only as the first entry)
    12=0.5           layer 12
    0-20=0.9         layers 0 to 20, inclusive
    21-=0.4          layer 21 to the last layer
    r32=0.5          every layer at resolution 32
    0-65=1.0:0.5     a linear ramp: 1.0 at layer 0 down to 0.5 at layer 65 (any selector works,
                     e.g. r32=1.0:0.6 ramps across the resolution-32 layers)

Layers are numbered in decoder order from 0 (lowest resolution first), as ``vdvae info`` lists
them. Layers no entry names keep temperature 1.0 (the model's own prior). Temperature scales the
prior's standard deviation; 0 gives its mean. Temperatures range from 0 to 10 (beyond a few the
prior's tails give nothing but noise, and far beyond, numbers that overflow). Nothing here imports
torch.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..base.errors import TemperatureSpecError
from ..base.safety import MAX_TEMPERATURE

MAX_SPEC = 10_000  # characters

if TYPE_CHECKING:
    from .interface import FamilyConfig

SYNTAX_HINT = "entries look like 0.6, 12=0.5, 0-20=0.9, 21-=0.4, r32=0.5, or a ramp 0-65=1.0:0.5"


def parse_temperature_spec(spec: str | float, cfg: "FamilyConfig") -> list[float]:
    """Per-layer temperatures (``cfg.n_layers`` floats) for ``spec``; see the module docstring.

    Raises :class:`TemperatureSpecError` naming the offending entry and why it is wrong.
    """
    n_layers = cfg.n_layers
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        spec = repr(float(spec))
    if not isinstance(spec, str) or not spec.strip():
        raise TemperatureSpecError("--temp is empty", hint=SYNTAX_HINT)
    if len(spec) > MAX_SPEC:
        raise TemperatureSpecError(f"--temp is {len(spec)} characters long (at most {MAX_SPEC})", hint=SYNTAX_HINT)
    temps = [1.0] * n_layers
    named: dict[tuple[bool, tuple[int, ...]], str] = {}  # (by resolution?, layers) -> the entry naming them
    for position, raw in enumerate(spec.split(",")):
        entry = raw.strip()
        if not entry:
            raise TemperatureSpecError(f"--temp {spec!r}: entry {position + 1} is empty", hint=SYNTAX_HINT)
        if "=" not in entry:
            value = _number(entry, entry)
            if position:
                raise TemperatureSpecError(
                    f"--temp entry {entry!r}: a bare temperature sets every layer, so it must come first",
                    hint=f"write it first ({entry},...), or name the layers it is for (e.g. 21-={entry})",
                )
            temps = [value] * n_layers
            continue
        selector, _, value_text = entry.partition("=")
        layers = _select(selector.strip(), entry, cfg)
        key = (selector.strip()[:1] in ("r", "R"), tuple(layers))
        if key in named:
            what = _describe(layers, selector.strip(), cfg)
            raise TemperatureSpecError(
                f"--temp entries {named[key]!r} and {entry!r} both set {what}: which temperature is meant?",
                hint="name each layer or resolution once (a later entry may override part of an earlier one, "
                     "e.g. 0-20=0.9,5=0.3)",
            )
        named[key] = entry
        if ":" in value_text:
            start_text, _, end_text = value_text.partition(":")
            start, end = _number(start_text, entry), _number(end_text, entry)
            span = len(layers) - 1
            for k, layer in enumerate(layers):
                temps[layer] = start + (end - start) * (k / span if span else 0.0)
        else:
            value = _number(value_text, entry)
            for layer in layers:
                temps[layer] = value
    return temps


def parse_layer_spec(spec: str, cfg: "FamilyConfig", option: str = "--layers") -> list[int]:
    """The latent layers (ascending, each once) that a comma-separated list of selectors names:
    ``12``, ``0-20``, ``21-`` (to the last layer) or ``r32`` (every layer at that resolution), the
    selectors of a ``--temp`` spec without ``=value``."""
    if not isinstance(spec, str) or not spec.strip():
        raise TemperatureSpecError(f"{option} is empty", hint="e.g. 0-5, r8, 12")
    chosen: set[int] = set()
    for position, raw in enumerate(spec.split(",")):
        if not raw.strip():
            raise TemperatureSpecError(f"{option} {spec!r}: entry {position + 1} is empty", hint="e.g. 0-5, r8, 12")
        chosen.update(_select(raw.strip(), raw.strip(), cfg, option))
    return sorted(chosen)


def _describe(layers: list[int], selector: str, cfg: "FamilyConfig") -> str:
    if selector[:1] in ("r", "R"):
        return f"resolution {cfg.decoder_layers[layers[0]].res} ({_describe(layers, '', cfg)})"
    if len(layers) == 1:
        return f"layer {layers[0]}"
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"layers {layers[0]}-{layers[-1]}"
    return f"the same {len(layers)} layers"


def _number(text: str, entry: str) -> float:
    text = text.strip()
    try:
        if not text.isascii() or "_" in text or len(text) > 40:
            raise ValueError(text)
        value = float(text)
    except ValueError:
        raise TemperatureSpecError(
            f"--temp entry {entry!r}: {text!r} is not a number", hint=SYNTAX_HINT
        ) from None
    if not math.isfinite(value):
        raise TemperatureSpecError(f"--temp entry {entry!r}: temperature must be finite, got {text!r}")
    if value < 0:
        raise TemperatureSpecError(
            f"--temp entry {entry!r}: temperature {text} is negative",
            hint="temperatures scale a standard deviation: use 0 for the prior mean, or more",
        )
    if value > MAX_TEMPERATURE:
        raise TemperatureSpecError(
            f"--temp entry {entry!r}: temperature {text} is above {MAX_TEMPERATURE:g}",
            hint=f"temperatures range from 0 (the prior mean) to {MAX_TEMPERATURE:g}; 1 is the model's own prior",
        )
    return value


def check_temperatures(temps: "list[float]") -> "list[float]":
    """Per-layer temperatures given as numbers (the Python API): each finite, from 0 to 10."""
    for i, t in enumerate(temps):
        if not (isinstance(t, (int, float)) and 0 <= t <= MAX_TEMPERATURE):
            raise TemperatureSpecError(f"temperature {t!r} of layer {i} is not a number from 0 to {MAX_TEMPERATURE:g}")
    return temps


def _index(text: str, entry: str, n_layers: int, option: str = "--temp") -> int:
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 9:
        raise TemperatureSpecError(
            f"{option} entry {entry!r}: {text!r} is not a layer index (a whole number from 0)", hint=SYNTAX_HINT
        )
    index = int(text)
    if index >= n_layers:
        raise TemperatureSpecError(
            f"{option} entry {entry!r}: layer {index} does not exist; the model has {n_layers} latent layers "
            f"(0-{n_layers - 1})",
            hint="see the layer table with: vdvae info",
        )
    return index


def _select(selector: str, entry: str, cfg: "FamilyConfig", option: str = "--temp") -> list[int]:
    """The layer indices (ascending) that ``selector`` names."""
    n_layers = cfg.n_layers
    if not selector:
        raise TemperatureSpecError(f"{option} entry {entry!r}: nothing before '='", hint=SYNTAX_HINT)
    if selector[0] in "rR":
        text = selector[1:].strip()
        if not (text.isascii() and text.isdigit()) or len(text) > 9:
            raise TemperatureSpecError(f"{option} entry {entry!r}: {selector!r} is not r<resolution>", hint=SYNTAX_HINT)
        res = int(text)
        layers = [layer.index for layer in cfg.decoder_layers if layer.res == res]
        if not layers:
            raise TemperatureSpecError(
                f"{option} entry {entry!r}: the model has no latent layers at resolution {res}",
                hint=f"its resolutions are {', '.join(map(str, cfg.resolutions))}",
            )
        return layers
    if "-" in selector:
        first_text, _, last_text = selector.partition("-")
        if not first_text.strip():
            raise TemperatureSpecError(
                f"{option} entry {entry!r}: a range needs its first layer (write 0-{last_text.strip()})",
                hint=SYNTAX_HINT,
            )
        first = _index(first_text, entry, n_layers, option)
        last = n_layers - 1 if not last_text.strip() else _index(last_text, entry, n_layers, option)
        if last < first:
            raise TemperatureSpecError(f"{option} entry {entry!r}: the range runs backwards ({first} > {last})")
        return list(range(first, last + 1))
    return [_index(selector, entry, n_layers, option)]
