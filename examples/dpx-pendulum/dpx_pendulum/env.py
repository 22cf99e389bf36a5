"""A damped pendulum, integrated with small explicit steps."""

import numpy as np

import dpx

GRAVITY = 9.81


class DampedPendulum(dpx.Environment):
    """Input: angle, angular velocity and length; ground truth: the angle ``dt`` later."""

    def __init__(self, dt: float = 0.05, damping: float = 0.1, substeps: int = 20):
        # parameters come from env_kwargs, often typed in a TOML file: errors name them
        self.dt = dpx.checks.positive_float("dt", dt)
        self.damping = dpx.checks.number("damping", damping, minimum=0.0)
        self.substeps = dpx.checks.positive_int("substeps", substeps)

    def init_database(self):
        self.define_training_fields(("input", np.float32, (3,)), ("ground_truth", np.float32, (1,)))

    def step(self):
        angle, velocity = self.rng.uniform(-np.pi / 2, np.pi / 2), self.rng.uniform(-1.0, 1.0)
        length = self.rng.uniform(0.5, 2.0)
        start = np.array([angle, velocity, length], dtype=np.float32)
        h = self.dt / self.substeps
        for _ in range(self.substeps):  # semi-implicit Euler
            velocity += h * (-GRAVITY / length * np.sin(angle) - self.damping * velocity)
            angle += h * velocity
        self.set_training_data(input=start, ground_truth=np.array([angle], dtype=np.float32))
