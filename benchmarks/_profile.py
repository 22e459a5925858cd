"""The operator tables both profile scripts print after their per-part timings."""

from __future__ import annotations

from typing import Callable

import torch


def print_operator_tables(run: Callable[[], object], *, ops: int, convs: int, conv_note: str = "") -> None:
    """Profile one more ``run()``: the top ``ops`` operators by self CPU time, then the ``convs``
    costliest convolutions grouped by input shape, each with its share of the whole pass."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        run()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=ops))
    print(f"convolutions by input shape{conv_note}:")
    found = [e for e in prof.key_averages(group_by_input_shape=True) if "conv" in e.key]
    total_us = sum(e.self_cpu_time_total for e in prof.key_averages())
    for e in sorted(found, key=lambda e: -e.self_cpu_time_total)[:convs]:
        shapes = ", ".join(str(s) for s in e.input_shapes[:2] if s)
        print(f"  {e.key:34} {e.count:4} calls  {e.self_cpu_time_total / 1e6:7.3f} s  "
              f"{100 * e.self_cpu_time_total / total_us:5.1f}%  {shapes}")
