"""``toy.resonance``: the frequency response of a driven spring-damper, sharp near resonance."""

from __future__ import annotations

import math

import numpy as np

import dpx
from dpx.checks import float_range


class Resonance(dpx.Environment):
    """The steady-state amplitude of ``x'' + 2 zeta w0 x' + w0^2 x = w0^2 cos(w t)``.

    With the frequency ratio ``r = w / w0`` the amplitude is
    ``1 / sqrt((1 - r^2)^2 + (2 zeta r)^2)``: about 1 at low frequency,
    falling as ``1 / r^2`` above, and up to ``1 / (2 zeta)`` in a ridge near
    ``r = 1`` that narrows as the damping ratio ``zeta`` falls. A surrogate of it is hard exactly there,
    which is what active learning should find (and random sampling mostly
    misses): ``benchmarks/bench_active_learning.py`` measures that.

    Sample parameters: ``frequency_ratio`` in ``frequency_range`` and
    ``damping_ratio`` in ``damping_range`` (log scale). Fields: ``input``,
    ``float32 (2,)``, the two parameters; ``ground_truth``, ``float32 (1,)``,
    the amplitude.
    """

    def __init__(self, *, frequency_range: tuple[float, float] = (0.2, 3.0),
                 damping_range: tuple[float, float] = (0.02, 0.5)) -> None:
        frequency = float_range("frequency_range", frequency_range, minimum=0.0)
        damping = float_range("damping_range", damping_range, minimum=0.0, strict=True)
        self.define_parameters(dpx.Parameter("frequency_ratio", *frequency),
                               dpx.Parameter("damping_ratio", *damping, scale="log"))

    def init_database(self) -> None:
        self.define_training_fields(("input", np.float32, (2,)), ("ground_truth", np.float32, (1,)))

    def step(self) -> None:
        r, zeta = self.sample_parameters.array.tolist()
        self.set_training_data(input=np.array([r, zeta], dtype=np.float32),
                               ground_truth=np.array([self.amplitude(r, zeta)], dtype=np.float32))

    @staticmethod
    def amplitude(r: float, zeta: float) -> float:
        return 1.0 / math.sqrt((1.0 - r * r) ** 2 + (2.0 * zeta * r) ** 2)
