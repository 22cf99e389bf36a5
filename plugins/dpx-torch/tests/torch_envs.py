"""Environments for the multiprocess torch tests: importable by path from worker processes."""

import numpy as np

import dpx


class Asking(dpx.Environment):
    """Asks the network from inside step(), as a DeepPhysX environment may."""

    def init_database(self):
        self.define_training_fields(("input", np.float32, (5, 3)), ("ground_truth", np.float32, (3,)))

    def step(self):
        cloud = self.rng.random((5, 3), dtype=np.float32)
        self.answer = self.get_prediction(input=cloud)["prediction"]
        self.set_training_data(input=cloud, ground_truth=cloud.mean(axis=0))

    def apply_prediction(self, prediction):
        assert prediction["prediction"].shape == (3,)
        np.testing.assert_allclose(prediction["prediction"], self.answer, rtol=1e-5)
