"""``toy.heat``: 2D heat diffusion on a square grid, for image-to-image networks."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

import dpx
from dpx.checks import float_range, int_at_least, positive_float, positive_int

#: Largest ``diffusivity * dt / dx**2`` for which the explicit 5-point scheme is stable in 2D.
CFL_LIMIT = 0.25


class Heat(dpx.Environment):
    """Heat diffusion ``u_t = alpha (u_xx + u_yy)`` on a ``grid_size`` x ``grid_size``
    grid, explicit finite differences, boundary held at zero (Dirichlet).

    Fields (channel first, as a 2D UNet expects):

    ``input``
        ``float32 (1, grid_size, grid_size)``: the temperature field now.
    ``ground_truth``
        ``float32 (1, grid_size, grid_size)``: the field ``steps_per_sample``
        time steps later.

    Each sample starts from a sum of 1 to ``max_blobs`` Gaussian blobs (centres
    anywhere on the grid, widths from ``blob_width_range`` in grid cells,
    amplitudes from ``amplitude_range``), diffused a random number of steps
    in ``0..max_warmup_steps`` so that inputs are not all sharp blobs. These
    are the declared sample parameters (drawn by the run's sampler):
    ``warmup_steps`` and ``blobs`` (integers), then ``blob{i}_row``,
    ``blob{i}_col``, ``blob{i}_width`` and ``blob{i}_amplitude`` for each of
    the ``max_blobs`` blobs (those past ``blobs`` are unused).

    Parameters: ``grid_size`` (>= 3), ``diffusivity`` (alpha, > 0), ``dx``
    (grid spacing, > 0), ``dt`` (> 0; ``diffusivity * dt / dx**2`` must not
    exceed :data:`CFL_LIMIT`), ``steps_per_sample`` (>= 1),
    ``max_warmup_steps`` (>= 0), ``max_blobs`` (>= 1), ``blob_width_range``
    (> 0), ``amplitude_range``.

    Rollouts: after :meth:`apply_prediction` the next :meth:`step` starts from
    the predicted field instead of a fresh one, so applying every prediction
    rolls the network out autoregressively; ``ground_truth`` stays the
    simulator's answer from the current field.
    """

    def __init__(
        self,
        *,
        grid_size: int = 32,
        diffusivity: float = 1.0,
        dx: float = 1.0,
        dt: float = 0.2,
        steps_per_sample: int = 5,
        max_warmup_steps: int = 20,
        max_blobs: int = 4,
        blob_width_range: tuple[float, float] = (1.5, 5.0),
        amplitude_range: tuple[float, float] = (0.5, 1.0),
    ) -> None:
        self.grid_size = int_at_least("grid_size", grid_size, 3)
        self.diffusivity = positive_float("diffusivity", diffusivity)
        self.dx = positive_float("dx", dx)
        self.dt = positive_float("dt", dt)
        #: The CFL number ``diffusivity * dt / dx**2``, the weight of the Laplacian in one step.
        self.cfl = self.diffusivity * self.dt / self.dx**2
        if self.cfl > CFL_LIMIT:
            raise ValueError(
                f"unstable time step: diffusivity * dt / dx**2 = {diffusivity!r} * {dt!r} / {dx!r}**2 "
                f"= {self.cfl:g} exceeds {CFL_LIMIT}; lower dt (at most {CFL_LIMIT * self.dx**2 / self.diffusivity:g})"
            )
        self.steps_per_sample = positive_int("steps_per_sample", steps_per_sample)
        self.max_warmup_steps = int_at_least("max_warmup_steps", max_warmup_steps, 0)
        self.max_blobs = positive_int("max_blobs", max_blobs)
        self.blob_width_range = float_range("blob_width_range", blob_width_range, minimum=0.0, strict=True)
        self.amplitude_range = float_range("amplitude_range", amplitude_range)
        self._shape = (1, self.grid_size, self.grid_size)
        edge = self.grid_size - 1.0
        self.define_parameters(
            dpx.Parameter("warmup_steps", 0, self.max_warmup_steps, integer=True),
            dpx.Parameter("blobs", 1, self.max_blobs, integer=True),
            *(parameter for blob in range(self.max_blobs) for parameter in (
                dpx.Parameter(f"blob{blob}_row", 0.0, edge),
                dpx.Parameter(f"blob{blob}_col", 0.0, edge),
                dpx.Parameter(f"blob{blob}_width", *self.blob_width_range),
                dpx.Parameter(f"blob{blob}_amplitude", *self.amplitude_range),
            )),
        )
        self._cells = np.arange(self.grid_size, dtype=np.float64)
        #: The current field (float64, ``grid_size`` x ``grid_size``), set by :meth:`step`.
        self.field: np.ndarray | None = None
        self._continue = False

    def init_database(self) -> None:
        self.define_training_fields(("input", np.float32, self._shape), ("ground_truth", np.float32, self._shape))

    def step(self) -> None:
        if self._continue:
            self._continue = False
        else:
            parameters = self.sample_parameters.array
            self.field = self.simulate(self.initial_field(parameters), int(parameters[0]))
        later = self.simulate(self.field, self.steps_per_sample)
        self.set_training_data(
            input=self.field.astype(np.float32).reshape(self._shape),
            ground_truth=later.astype(np.float32).reshape(self._shape),
        )

    def apply_prediction(self, prediction: Mapping[str, np.ndarray]) -> None:
        """Continue the next step from the predicted field (see the class docstring).

        The boundary of the prediction is set back to zero: it is fixed by the
        boundary condition, not the network's to choose.
        """
        predicted = np.asarray(prediction["prediction"], dtype=np.float64)
        if predicted.size != self.grid_size**2:
            raise ValueError(f"Heat expects a prediction of shape {self._shape}, got shape {predicted.shape}")
        field = predicted.reshape(self.grid_size, self.grid_size).copy()
        _zero_boundary(field)
        self.field = field
        self._continue = True

    def simulate(self, field: np.ndarray, steps: int) -> np.ndarray:
        """The simulator's answer: ``field`` after ``steps`` time steps (a new
        float64 array; the boundary values of ``field`` are kept as given)."""
        u = np.array(field, dtype=np.float64).reshape(self.grid_size, self.grid_size)
        r = self.cfl
        for _ in range(steps):
            # The right-hand side is evaluated into a temporary before the
            # in-place add, so every cell is updated from the old field.
            u[1:-1, 1:-1] += r * (u[2:, 1:-1] + u[:-2, 1:-1] + u[1:-1, 2:] + u[1:-1, :-2] - 4.0 * u[1:-1, 1:-1])
        return u

    def initial_field(self, parameters: np.ndarray) -> np.ndarray:
        """The sum of Gaussian blobs a sample's parameters describe (before warm-up), zero on the
        boundary; separable, so built as an outer product instead of evaluating every blob on every cell."""
        blobs = parameters[2:].reshape(self.max_blobs, 4)[: int(parameters[1])]
        centres = blobs[:, :2].T[:, :, None]
        widths, amplitudes = blobs[:, 2:3], blobs[:, 3:4]
        rows, cols = np.exp(-((self._cells - centres) ** 2) / (2.0 * widths**2))
        field = (amplitudes * rows).T @ cols
        _zero_boundary(field)
        return field


def _zero_boundary(field: np.ndarray) -> None:
    field[0, :] = field[-1, :] = field[:, 0] = field[:, -1] = 0.0
