"""The timing both official-code timers share: two warm-up calls, then the median of the rest,
printed as the one JSON line ``bench_cli.py`` reads."""

from __future__ import annotations

import json
import statistics
import time
from typing import Any, Callable

import torch

WARMUP = 2


def print_median_time(run: Callable[[], object], *, repeats: int, **facts: Any) -> None:
    """Time ``run()`` ``WARMUP + repeats`` times without gradients and print ``facts`` with the
    median and every timed call's seconds (the warm-up calls left out)."""
    times = []
    with torch.no_grad():
        for _ in range(WARMUP + repeats):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
    timed = times[WARMUP:]
    print(json.dumps({**facts, "threads": torch.get_num_threads(),
                      "seconds_per_batch": round(statistics.median(timed), 4),
                      "seconds_all": [round(t, 4) for t in timed]}))
