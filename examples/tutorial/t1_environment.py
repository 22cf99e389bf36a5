"""Step 1: the environment, the simulation dpx runs for you.

A mass on a damped spring. Each sample starts from a random position and
velocity (``input``); the simulation integrates ``dt`` seconds and gives the
position reached (``ground_truth``). The network will learn that step.

Write ``__init__`` (parameters, from ``env_kwargs``), ``init_database`` (the
fields, with dtype and shape) and ``step`` (one sample); draw every random
number from ``self.rng``, which dpx seeds per sample. Running this file checks
the environment as dpx will use it:

    python examples/tutorial/t1_environment.py
"""

import sys

import numpy as np

import dpx
from dpx.testing import check_environment


class Spring(dpx.Environment):
    def __init__(self, stiffness: float = 4.0, damping: float = 0.3, dt: float = 0.1, substeps: int = 20):
        self.stiffness, self.damping, self.dt, self.substeps = stiffness, damping, dt, substeps

    def init_database(self):
        self.define_training_fields(("input", np.float32, (2,)), ("ground_truth", np.float32, (1,)))

    def step(self):
        position, velocity = self.rng.uniform(-1.0, 1.0, size=2)
        reached = self.integrate(position, velocity)
        self.set_training_data(input=np.array([position, velocity], np.float32),
                               ground_truth=np.array([reached], np.float32))

    def integrate(self, position: float, velocity: float) -> float:
        """Semi-implicit Euler over ``dt``: the solver the network replaces."""
        h = self.dt / self.substeps
        for _ in range(self.substeps):
            velocity += h * (-self.stiffness * position - self.damping * velocity)
            position += h * velocity
        return position

    def apply_prediction(self, prediction):
        """In a prediction run, dpx hands back the network's answer to the last sample."""
        self.predicted = float(prediction["prediction"][0])


def main(out: str = "sessions/tutorial", quick: bool = False) -> dict:
    samples = check_environment(Spring, samples=4)  # two runs from one seed: valid and reproducible
    for name, values in samples.items():
        print(f"{name}: {values.dtype} {values.shape[1:]}, first sample {values[0]}")
    return samples


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
