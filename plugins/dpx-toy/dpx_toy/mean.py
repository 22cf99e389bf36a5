"""``toy.mean``: the smallest useful environment, and dpx's step-overhead benchmark."""

from __future__ import annotations

import numpy as np

import dpx
from dpx.checks import positive_int


class Mean(dpx.Environment):
    """A random point cloud and its mean point (DeepPhysX's "mean" demo).

    Fields:

    ``input``
        ``float32 (n_points, dim)``: points drawn uniformly in ``[0, 1)^dim``.
    ``ground_truth``
        ``float32 (dim,)``: the mean of those points.

    Parameters: ``n_points`` (points per cloud, >= 1) and ``dim`` (coordinates
    per point, >= 1).
    """

    def __init__(self, n_points: int = 30, dim: int = 3) -> None:
        self.n_points = positive_int("n_points", n_points)
        self.dim = positive_int("dim", dim)
        self._shape = (self.n_points, self.dim)
        # The mean as a dot product with uniform weights: ~1 us instead of the
        # ~7 us of ndarray.mean, which matters because step() is what dpx's
        # overhead benchmark measures.
        self._weights = np.full(self.n_points, 1.0 / self.n_points, dtype=np.float32)

    def init_database(self) -> None:
        self.define_training_fields(
            ("input", np.float32, self._shape),
            ("ground_truth", np.float32, (self.dim,)),
        )

    def step(self) -> None:
        cloud = self.rng.random(self._shape, dtype=np.float32)
        self.set_training_data(input=cloud, ground_truth=np.dot(self._weights, cloud))
