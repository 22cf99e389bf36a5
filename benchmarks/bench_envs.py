"""Environments used by the benchmarks; a module so worker processes can import them."""

import time

import numpy as np

import dpx


class Burn(dpx.Environment):
    """Burns ``milliseconds`` of CPU per sample, like a small simulation step."""

    def __init__(self, milliseconds: float = 5.0):
        self.seconds = milliseconds / 1000

    def step(self):
        end = time.perf_counter() + self.seconds
        while time.perf_counter() < end:
            pass
        x = self.rng.random(3, dtype=np.float32)
        self.set_training_data(input=x, ground_truth=x[:1])


class Asking(dpx.Environment):
    """Times one get_prediction round trip per sample and stores it."""

    def init_database(self):
        self.define_training_fields(("input", np.float32, (30, 3)), ("ground_truth", np.float32, (3,)))
        self.define_additional_fields(("latency", np.float64, ()))

    def step(self):
        x = self.rng.random((30, 3), dtype=np.float32)
        start = time.perf_counter()
        self.get_prediction(input=x)
        self.set_training_data(input=x, ground_truth=x.mean(axis=0))
        self.set_additional_data(latency=time.perf_counter() - start)
