"""Torch-free facts about a model's state and identity: how a state's keys and shapes differ from what
a config expects (read from a file's header before any tensor is), and a model's fingerprint."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass
class KeyReport:
    """Differences between a state_dict and the keys/shapes a config expects."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 6) -> str:
        parts = []
        for label, items in (("missing", self.missing), ("unexpected", self.unexpected)):
            if items:
                shown = ", ".join(items[:limit]) + (f" (+{len(items) - limit} more)" if len(items) > limit else "")
                parts.append(f"{len(items)} {label} key(s)" + (f": {shown}" if limit else ""))
        if self.mismatched:
            shown = ", ".join(f"{k} {tuple(got)} != expected {tuple(exp)}" for k, got, exp in self.mismatched[:limit])
            more = f" (+{len(self.mismatched) - limit} more)" if len(self.mismatched) > limit else ""
            parts.append(f"{len(self.mismatched)} shape mismatch(es)" + (f": {shown}{more}" if limit else ""))
        return "; ".join(parts)


def compare_shapes(shapes: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]]) -> KeyReport:
    """How a state's keys and shapes differ from those a network expects."""
    return KeyReport(
        missing=[k for k in expected if k not in shapes],
        unexpected=[k for k in shapes if k not in expected],
        mismatched=[(k, tuple(shapes[k]), tuple(v)) for k, v in expected.items()
                    if k in shapes and tuple(shapes[k]) != tuple(v)],
    )


def model_fingerprint(cfg: Any, weights: str | None = None) -> str:
    """A short identity of a model: sha256 of its config JSON, its name and (when known) the digest
    of its weights (:func:`vdvae_cli.engine.statedict.weights_digest`), so two trainings of the same
    architecture do not take each other's latents."""
    text = f"{cfg.to_json()}\n{cfg.name}" + (f"\n{weights}" if weights else "")
    return hashlib.sha256(text.encode()).hexdigest()[:16]
