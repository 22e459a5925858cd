"""Training curves a person can look at: ``curves.png`` (held-out bits/dim and the training loss
against steps, drawn with Pillow and refreshed at each evaluation) and, when the ``tensorboard``
package is installed, TensorBoard event files in ``RUN/tensorboard/``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..base.atomic import atomic_write_with

PLOT_FILE = "curves.png"
TENSORBOARD_DIR = "tensorboard"
_SIZE = (720, 420)
_MARGIN = (64, 24, 24, 48)  # left, top, right, bottom
_HELDOUT, _TRAIN = (200, 60, 40), (40, 100, 200)


class Curves:
    """Receives the run's steps and evaluations; writes nothing when ``enabled`` is false (rank > 0)."""

    def __init__(self, folder: Path, *, enabled: bool, start_step: int = 0, tensorboard: bool = True):
        self.folder, self.enabled = Path(folder), enabled
        self._tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is not installed: the PNG is enough
                pass
            else:
                # purge_step: a resumed run replaces whatever an interrupted one logged after its checkpoint
                self._tb = SummaryWriter(str(self.folder / TENSORBOARD_DIR), purge_step=start_step or None)

    def step(self, step: int, loss_bpd: float, grad_norm: float) -> None:
        if self._tb is not None and math.isfinite(loss_bpd):
            self._tb.add_scalar("train/loss_bpd", loss_bpd, step)
            self._tb.add_scalar("train/grad_norm", grad_norm, step)

    def evaluation(self, record: Mapping[str, Any], history: Sequence[Mapping[str, Any]]) -> None:
        if not self.enabled:
            return
        if self._tb is not None:
            for key in ("heldout_bpd", "distortion_bpd", "rate_bpd", "lr"):
                if record.get(key) is not None:
                    self._tb.add_scalar(f"eval/{key}", record[key], record["step"])
            self._tb.flush()
        plot_curves(history, self.folder / PLOT_FILE)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _label(v: float) -> str:
    return f"{v:g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"


def plot_curves(history: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Draw held-out bits/dim and the training loss (bits/dim, mean over each evaluation window)
    against steps, and write the PNG atomically. Returns None when there is nothing to draw yet."""
    from PIL import Image, ImageDraw, ImageFont

    series = {
        "held-out bits/dim": ([(h["step"], h["heldout_bpd"]) for h in history if h.get("heldout_bpd") is not None], _HELDOUT),
        "training loss (bits/dim)": ([(h["step"], h["train_bpd"]) for h in history if h.get("train_bpd") is not None], _TRAIN),
    }
    points = [p for pts, _ in series.values() for p in pts if math.isfinite(p[1])]
    if not points:
        return None
    x_hi = max(1, max(s for s, _ in points))
    ys = sorted(v for _, v in points)
    y_lo, y_hi = ys[0], ys[-1]
    if y_hi - y_lo < 1e-6:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
    pad = 0.05 * (y_hi - y_lo)
    y_lo, y_hi = y_lo - pad, y_hi + pad

    w, h = _SIZE
    left, top, right, bottom = _MARGIN
    img = Image.new("RGB", _SIZE, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()

    def xy(step: float, value: float) -> tuple[float, float]:
        return (left + (w - left - right) * step / x_hi, top + (h - top - bottom) * (y_hi - value) / (y_hi - y_lo))

    for v in _nice_ticks(y_lo, y_hi):
        _, y = xy(0, v)
        draw.line([(left, y), (w - right, y)], fill=(230, 230, 230))
        draw.text((4, y - 6), _label(v), fill="black", font=font)
    for s in _nice_ticks(0, x_hi):
        x, _ = xy(s, y_lo)
        draw.line([(x, top), (x, h - bottom)], fill=(230, 230, 230))
        draw.text((x - 10, h - bottom + 6), _label(s), fill="black", font=font)
    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    draw.text(((w - left) // 2, h - 18), "step", fill="black", font=font)
    for k, (name, (pts, colour)) in enumerate(series.items()):
        line = [xy(s, v) for s, v in pts if math.isfinite(v)]
        if len(line) > 1:
            draw.line(line, fill=colour, width=2)
        for x, y in line:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        lx, ly = w - right - 190, top + 8 + 16 * k
        draw.line([(lx, ly + 6), (lx + 20, ly + 6)], fill=colour, width=2)
        draw.text((lx + 26, ly), name, fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_with(path, lambda f: img.save(f, format="PNG"))  # a registered temporary file: a signal leaves none
    return path
