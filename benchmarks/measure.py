"""Side-by-side measurement shared by the benchmarks.

The machine's speed drifts from one minute to the next, so each repetition
runs dpx and its bare baseline back to back, and the ratio is taken per
repetition: :func:`compare` reports min/median/max of both rates and of the
ratio.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch

torch.set_num_threads(1)  # one thread everywhere: the benchmarks compare dpx's own costs


@dataclass
class Comparison:
    bare: list[float]
    dpx: list[float]

    @property
    def ratios(self) -> list[float]:
        return [d / b for d, b in zip(self.dpx, self.bare)]

    def row(self, case: str) -> str:
        return f"{case:44s} {_spread(self.bare):>26s} {_spread(self.dpx):>26s} {_spread(self.ratios, '.2f'):>17s}"


HEADER = f"{'case':44s} {'bare /s (min/med/max)':>26s} {'dpx /s (min/med/max)':>26s} {'ratio (min/med/max)':>17s}"


def _spread(values: list[float], fmt: str = ",.0f") -> str:
    return "/".join(format(v, fmt) for v in (min(values), statistics.median(values), max(values)))


def compare(repeats: int, bare: Callable[[], float], through_dpx: Callable[[], float]) -> Comparison:
    """Rates of ``bare`` and ``through_dpx`` measured side by side ``repeats`` times."""
    result = Comparison([], [])
    for _ in range(repeats):
        result.bare.append(bare())
        result.dpx.append(through_dpx())
    return result
