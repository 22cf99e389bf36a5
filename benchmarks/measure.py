"""Side-by-side measurement shared by the benchmarks.

The machine's speed drifts from one minute to the next, so each repetition
runs dpx and its bare baseline back to back, and a ratio is taken within each
repetition: rows report min/median/max of both rates and of the ratio.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable

import torch

torch.set_num_threads(1)  # one thread everywhere: the benchmarks compare dpx's own costs
# and dpx's own costs only: a lifecycle plugin installed here (dpx-mlflow records every run, ~20 ms
# a run) would be measured with them; bench_training measures what a no-op one costs
os.environ.setdefault("DPX_DISABLE_PLUGINS", "mlflow")

HEADER = f"{'case':52s} {'baseline (min/med/max)':>26s} {'dpx (min/med/max)':>26s} {'ratio (min/med/max)':>20s}"


def side_by_side(repeats: int, runs: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    """Each run's result (a rate), ``repeats`` times, the runs one after the other in each repetition."""
    results: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            results[name].append(run())
    return results


def spread(values: list[float], fmt: str = ",.0f") -> str:
    return "/".join(format(v, fmt) for v in (min(values), statistics.median(values), max(values)))


def row(case: str, bare: list[float], through_dpx: list[float], unit: str = "/s") -> str:
    """One result line: both rates and their ratio per repetition (above 1: dpx is faster)."""
    ratios = [d / b for d, b in zip(through_dpx, bare)]
    return (f"{case:52s} {spread(bare) + unit:>26s} {spread(through_dpx) + unit:>26s} "
            f"{spread(ratios, '.2f'):>20s}")
