"""The environment every feature example uses: DeepPhysX's own, a point cloud and its mean.

Each sample: ``input`` is a random cloud of ``n_points`` points in 3D,
``ground_truth`` its mean point. Options switch on one feature each, so every
example shows its feature on the same small environment:

* ``ask``: ``step`` asks the network for its prediction of the cloud's mean
  (``get_prediction``), available in Prediction and Training;
* ``interrupt_at``: sample that many raises a Ctrl-C (for the resume example);
* a viewer shows the cloud and the predicted mean (``init_visualization``);
* fed a stored sample (``load_samples``), ``step`` moves the stored cloud
  instead of drawing a new one;
* it saves its constants with the dataset (``save_parameters``).
"""

from __future__ import annotations

import numpy as np

import dpx


class MeanEnvironment(dpx.Environment):
    def __init__(self, n_points: int = 30, ask: bool = False, interrupt_at: int = -1):
        self.n_points, self.ask, self.interrupt_at = n_points, ask, interrupt_at
        self.steps = 0

    def init(self):
        self.save_parameters(n_points=self.n_points, origin=np.zeros(3, np.float32))

    def init_database(self):
        self.define_training_fields(("input", np.float32, (self.n_points, 3)), ("ground_truth", np.float32, (3,)))
        self.define_additional_fields(("asked", np.float32, (3,)))

    def init_visualization(self):
        self.cloud = self.factory.add_points(np.zeros((self.n_points, 3)), color="steelblue")
        self.mean = self.factory.add_glyphs(np.zeros((1, 3)), radii=0.05, color="orange")

    def step(self):
        self.steps += 1
        if self.steps == self.interrupt_at:
            raise KeyboardInterrupt  # what Python raises when the user presses Ctrl-C
        if self.sample_training is not None:  # load_samples: move the stored cloud
            cloud = self.sample_training["input"] + self.rng.normal(0, 0.01, (self.n_points, 3)).astype(np.float32)
        else:
            cloud = self.rng.random((self.n_points, 3), dtype=np.float32) + self.load_parameters().get("origin", 0)
        self.set_training_data(input=cloud, ground_truth=cloud.mean(axis=0))
        asked = self.get_prediction(input=cloud)["prediction"] if self.ask else np.zeros(3, np.float32)
        self.set_additional_data(asked=asked)
        if hasattr(self, "cloud"):
            self.factory.update(self.cloud, positions=cloud)
            self.update_visualisation()

    def apply_prediction(self, prediction):
        if hasattr(self, "mean"):
            self.factory.update(self.mean, positions=prediction["prediction"][None])
            self.update_visualisation()
