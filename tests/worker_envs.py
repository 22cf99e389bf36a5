"""Environments for the multiprocess tests: a module worker processes can import by path."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np

import dpx


class Noise(dpx.Environment):
    def __init__(self, size: int = 3, shape: list | None = None):
        self.size = size

    def step(self):
        x = self.rng.normal(size=(self.size,)).astype(np.float32)
        self.set_training_data(input=x, ground_truth=x.sum(keepdims=True))


class Faulty(Noise):
    """Fails by ``how`` ('raise', 'kill' or 'hang') on samples whose first value exceeds
    ``threshold``: once (while ``marker`` does not exist), or ``always``."""

    def __init__(self, how: str, marker: str = "", always: bool = False, threshold: float = 2.0):
        super().__init__()
        self.how, self.marker, self.always, self.threshold = how, Path(marker), always, threshold

    def step(self):
        x = self.rng.normal(size=(3,)).astype(np.float32)
        if float(x[0]) > self.threshold and (self.always or not self.marker.exists()):
            if not self.always:
                self.marker.touch()
            if self.how == "raise":
                self.break_down()
            elif self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            else:
                time.sleep(3600)
        self.set_training_data(input=x, ground_truth=x.sum(keepdims=True))

    def break_down(self):
        raise FloatingPointError("the solver diverged")


class Slow(Noise):
    def step(self):
        time.sleep(0.01)
        super().step()


class Moving(dpx.Environment):
    """Shows a point cloud and moves it every step."""

    def init_visualization(self):
        self.cloud = self.factory.add_points(np.zeros((2, 3)))

    def step(self):
        x = self.rng.random((2, 3))
        self.factory.update(self.cloud, positions=x)
        self.update_visualisation()
        self.set_training_data(input=x, ground_truth=x.sum(keepdims=True))


class Picky(Noise):
    """Refuses samples whose first value is negative."""

    def check_sample(self):
        return float(self.sample["input"][0]) > 0
