"""What every family's frozen config shares: the stack of latent layers and (de)serialisation.

A family's config is a frozen dataclass that sets ``decoder_layers`` (one spec per latent layer,
decoder order, each with ``res`` and ``latent_shape``) in ``__post_init__`` and inherits the rest
from :class:`LatentStackConfig`. Torch-free, so ``--help`` and the registry stay fast.
"""

from __future__ import annotations

import json
import math
from dataclasses import Field, fields, replace
from typing import Any, ClassVar, Mapping, TypeVar

from ..base.errors import ConfigError

C = TypeVar("C", bound="LatentStackConfig")


class LatentStackConfig:
    # Set by @dataclass on every family's config; declared here so that dataclasses.fields and
    # replace accept this base (it is what their type hints look for).
    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    decoder_layers: tuple[Any, ...]

    @property
    def n_layers(self) -> int:
        """Number of latent layers (decoder order)."""
        return len(self.decoder_layers)

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Latent resolutions, ascending."""
        return tuple(sorted({layer.res for layer in self.decoder_layers}))

    @property
    def latent_shapes(self) -> tuple[tuple[int, int, int], ...]:
        return tuple(layer.latent_shape for layer in self.decoder_layers)

    @property
    def latent_dims(self) -> int:
        return sum(math.prod(s) for s in self.latent_shapes)

    def layers_up_to_res(self, res: int) -> int:
        """How many leading latent layers have resolution <= ``res`` (a decoder resolution)."""
        if res not in self.resolutions:
            raise ConfigError(
                f"resolution {res} is not a decoder resolution of this model",
                hint=f"choose one of {', '.join(map(str, self.resolutions))}",
            )
        return sum(1 for layer in self.decoder_layers if layer.res <= res)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        if not isinstance(data, Mapping):
            raise ConfigError(f"a config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls) if f.init}
        unknown = set(data) - known
        if unknown:  # names from a file: shown escaped, and only a few
            shown = ", ".join(sorted(repr(str(k))[1:-1] for k in unknown)[:8])
            raise ConfigError(f"unknown config field(s): {shown}")
        try:
            return cls(**dict(data))
        except TypeError as exc:  # missing required field
            raise ConfigError(f"incomplete config: {exc}") from None

    def replace(self: C, **changes: Any) -> C:
        return replace(self, **changes)


def config_from_json_file(cls: type[C], path: Any) -> C:
    """A family's config from a JSON object of its fields (``vdvae train --hparams FILE``): a
    ``"family"`` entry is the registry's, not a field; the name defaults to the file's stem."""
    from pathlib import Path

    from ..base.safety import loads

    data = loads(Path(path).read_bytes())
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a JSON object")
    fields = {k: v for k, v in data.items() if k != "family"}
    fields.setdefault("name", Path(path).stem)
    return cls.from_dict(fields)
