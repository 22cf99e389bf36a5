"""``toy.spring``: a mass-spring-damper advanced by one time step."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

import dpx
from dpx.checks import float_range, positive_float

#: Order of the values in the ``input`` field (and in :attr:`Spring.state`).
INPUT_ORDER = ("displacement", "velocity", "stiffness", "mass", "damping")


class Spring(dpx.Environment):
    """A mass-spring-damper ``m x'' = -k x - c x'``, advanced exactly by ``dt``.

    Fields:

    ``input``
        ``float32 (5,)``: ``[x, v, k, m, c]`` (see :data:`INPUT_ORDER`), the
        displacement and velocity now, the stiffness, mass and damping.
    ``ground_truth``
        ``float32 (1,)``: the displacement ``dt`` later.
    ``next_velocity`` (additional)
        ``float32 (1,)``: the velocity ``dt`` later.

    Parameters (each ``*_range`` is the ``(low, high)`` bounds of a declared
    sample parameter, see :meth:`dpx.Environment.define_parameters`; the run's
    sampler draws them): ``stiffness_range`` (> 0), ``mass_range`` (> 0),
    ``damping_range`` (>= 0), ``displacement_range``, ``velocity_range``, and
    the time step ``dt`` (> 0). The sample parameters are named as in
    :data:`INPUT_ORDER`.

    Rollouts: normally every sample draws a fresh state. After
    :meth:`apply_prediction` the next :meth:`step` continues from the predicted
    displacement instead (with the true velocity and the same ``k, m, c``), so
    a prediction pipeline that applies each prediction rolls out a trajectory
    driven by the network, while ``ground_truth`` stays the simulator's answer
    from the current state.
    """

    def __init__(
        self,
        *,
        stiffness_range: tuple[float, float] = (1.0, 10.0),
        mass_range: tuple[float, float] = (0.5, 2.0),
        damping_range: tuple[float, float] = (0.0, 1.0),
        displacement_range: tuple[float, float] = (-1.0, 1.0),
        velocity_range: tuple[float, float] = (-1.0, 1.0),
        dt: float = 0.01,
    ) -> None:
        ranges = [
            float_range("displacement_range", displacement_range),
            float_range("velocity_range", velocity_range),
            float_range("stiffness_range", stiffness_range, minimum=0.0, strict=True),
            float_range("mass_range", mass_range, minimum=0.0, strict=True),
            float_range("damping_range", damping_range, minimum=0.0),
        ]
        self.define_parameters(*(dpx.Parameter(name, *bounds) for name, bounds in zip(INPUT_ORDER, ranges)))
        self.dt = positive_float("dt", dt)
        #: The current ``[x, v, k, m, c]`` (float64), set by :meth:`step`.
        self.state: np.ndarray | None = None
        self._next_velocity = 0.0
        self._continue = False

    def init_database(self) -> None:
        self.define_training_fields(
            ("input", np.float32, (len(INPUT_ORDER),)),
            ("ground_truth", np.float32, (1,)),
        )
        self.define_additional_fields(("next_velocity", np.float32, (1,)))

    def step(self) -> None:
        if self._continue:
            self._continue = False
        else:
            self.state = self.sample_parameters.array.copy()
        x_next, v_next = self.simulate(*self.state.tolist())
        self._next_velocity = v_next
        self.set_training_data(
            input=self.state.astype(np.float32),
            ground_truth=np.array([x_next], dtype=np.float32),
        )
        self.set_additional_data(next_velocity=np.array([v_next], dtype=np.float32))

    def apply_prediction(self, prediction: Mapping[str, np.ndarray]) -> None:
        """Continue the next step from the predicted displacement (see the class docstring)."""
        if self.state is None:
            raise RuntimeError("Spring.apply_prediction() was called before any step()")
        predicted = np.asarray(prediction["prediction"], dtype=np.float64)
        if predicted.size != 1:
            raise ValueError(f"Spring expects a prediction of one value (shape (1,)), got shape {predicted.shape}")
        self.state[0], self.state[1] = predicted.item(), self._next_velocity
        self._continue = True

    def simulate(self, x: float, v: float, k: float, m: float, c: float) -> tuple[float, float]:
        """The simulator's answer: ``(x, v)`` after ``dt`` from ``(x, v)``.

        Exact, through the exponential of the system's 2x2 matrix
        ``A = [[0, 1], [-k/m, -c/m]]``: with ``s = -c/(2m)`` (half its trace)
        and ``q^2 = s^2 - k/m``, ``exp(A dt) = e^(s dt) (C I + S (A - s I))``
        where ``C, S`` are ``cosh(q dt), sinh(q dt)/q`` (overdamped),
        ``cos(w dt), sin(w dt)/w`` with ``w^2 = -q^2`` (underdamped), or
        ``1, dt`` (critically damped).
        """
        h = self.dt
        s = -c / (2.0 * m)
        omega2 = k / m
        q2 = s * s - omega2
        if q2 > 0.0:
            q = math.sqrt(q2)
            cos_part, sin_part = math.cosh(q * h), math.sinh(q * h) / q
        elif q2 < 0.0:
            w = math.sqrt(-q2)
            cos_part, sin_part = math.cos(w * h), math.sin(w * h) / w
        else:
            cos_part, sin_part = 1.0, h
        decay = math.exp(s * h)
        x_next = decay * (cos_part * x + sin_part * (v - s * x))
        v_next = decay * (cos_part * v + sin_part * (s * v - omega2 * x))
        return float(x_next), float(v_next)
