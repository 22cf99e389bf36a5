"""Small environments and a viewer for testing runners, pipelines and viewers.

They live in the installed package, so worker processes and Ray actors import
them by path like any plugin's environment. Plugin authors testing a runner or
a visualizer can use them too.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np

import dpx


class Noise(dpx.Environment):
    """Three normal values and their sum; ``shape`` is accepted and ignored (to send a tuple)."""

    def __init__(self, size: int = 3, shape: list | None = None):
        self.size = size

    def step(self):
        x = self.rng.normal(size=(self.size,)).astype(np.float32)
        self.set_training_data(input=x, ground_truth=x.sum(keepdims=True))


class Picky(Noise):
    """Refuses samples whose first value is positive (about half of the tries)."""

    def check_sample(self):
        return bool(self.sample["input"][0] <= 0)


class Faulty(Noise):
    """Fails by ``how`` ('raise', 'exit', 'kill' or 'hang') on samples whose first value
    exceeds ``threshold``: once (while ``marker`` does not exist), or ``always``."""

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
            elif self.how == "exit":
                os._exit(1)
            elif self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            else:
                time.sleep(3600)
        self.set_training_data(input=x, ground_truth=x.sum(keepdims=True))

    def break_down(self):
        raise FloatingPointError("the solver diverged")


class Stuck(Noise):
    """Never finishes building its simulation, as a solver waiting on a licence or a lock would."""

    def create(self):
        time.sleep(3600)


class Slow(Noise):
    """Takes 10 ms a sample: long enough to interrupt a run in the middle."""

    def step(self):
        time.sleep(0.01)
        super().step()


class Verbose(Noise):
    """Raises an error whose message is ``size`` characters long."""

    def __init__(self, size: int = 2_000_000):
        super().__init__()
        self.message_size = size

    def step(self):
        raise RuntimeError("x" * self.message_size)


class Misshapen(Noise):
    """Breaks its contract once, at its ``at``-th step: a field of the wrong shape. A restarted
    worker counts from zero again and would not repeat it."""

    def __init__(self, at: int = 50):
        super().__init__()
        self.at, self.steps = at, 0

    def step(self):
        self.steps += 1
        super().step()
        if self.steps == self.at:
            self.set_training_data(input=np.zeros(self.size + 1, np.float32))


class Asking(dpx.Environment):
    """Asks the network from inside step(), then checks it is handed the same prediction back."""

    def init_database(self):
        self.define_training_fields(("input", np.float32, (5, 3)), ("ground_truth", np.float32, (3,)))

    def step(self):
        cloud = self.rng.random((5, 3), dtype=np.float32)
        self.answer = self.get_prediction(input=cloud)["prediction"]
        self.set_training_data(input=cloud, ground_truth=cloud.mean(axis=0))

    def apply_prediction(self, prediction):
        np.testing.assert_allclose(prediction["prediction"], self.answer, rtol=1e-5)


class Consulting(dpx.Environment):
    """Stores with each sample what the network answered for its input while the sample was made
    (``asked``; zeros without ``ask``). ``declare=False`` leaves dtypes and shapes to the first sample."""

    def __init__(self, ask: bool = True, declare: bool = True):
        self.ask, self.declare = ask, declare

    def init_database(self):
        if self.declare:
            self.define_training_fields(("input", np.float32, (4,)), ("ground_truth", np.float32, (2,)))
            self.define_additional_fields(("asked", np.float32, (2,)))
        else:
            self.define_training_fields("input", "ground_truth")
            self.define_additional_fields("asked")

    def step(self):
        x = self.rng.normal(size=(4,)).astype(np.float32)
        self.set_training_data(input=x, ground_truth=np.array([x.sum(), x[0] - x[1]], np.float32))
        asked = self.get_prediction(input=x)["prediction"] if self.ask else np.zeros(2, np.float32)
        self.set_additional_data(asked=asked)


class Replaying(dpx.Environment):
    """Produces ``input`` and ``ground_truth = 2 * input``, or, fed a stored sample (``load_samples``),
    steps on its input: ``ground_truth = 3 * input`` and ``fed`` = 1. ``loaded`` shows the
    ``scale`` parameter it loaded (-1: none); it saves ``scale`` and ``name`` itself when ``save``.
    With ``log``, each fed step appends the stored input's first value to that file."""

    def __init__(self, save: bool = True, scale: float = 2.0, log: str = ""):
        self.save, self.scale, self.log = save, scale, log

    def init(self):
        if self.save:
            self.save_parameters(scale=np.full(3, self.scale, np.float32), name=f"replaying {self.instance_id}")

    def init_database(self):
        self.define_training_fields(("input", np.float32, (3,)), ("ground_truth", np.float32, (3,)))
        self.define_additional_fields(("fed", np.float32, (1,)), ("loaded", np.float32, (1,)))

    def step(self):
        loaded = self.load_parameters().get("scale")
        self.set_additional_data(loaded=np.array([loaded[0] if loaded is not None else -1.0], np.float32))
        if self.sample_training is None:
            x = self.rng.normal(size=3).astype(np.float32)
            self.set_training_data(input=x, ground_truth=2 * x)
            self.set_additional_data(fed=np.zeros(1, np.float32))
            return
        x = self.sample_training["input"]
        if self.log:
            with open(self.log, "a") as file:
                file.write(f"{float(x[0])!r}\n")
        self.set_training_data(ground_truth=3 * x)
        self.set_additional_data(fed=np.ones(1, np.float32))

    def apply_prediction(self, prediction):
        self.applied = prediction["prediction"]


class Moving(dpx.Environment):
    """Moves a point cloud in the viewer at every step."""

    def init_visualization(self):
        self.cloud = self.factory.add_points(np.zeros((2, 3)))

    def step(self):
        x = self.rng.random((2, 3))
        self.factory.update(self.cloud, positions=x)
        self.update_visualisation()
        self.set_training_data(input=x, ground_truth=x.sum(keepdims=True))


class Recorder:
    """A visualizer that keeps what it receives."""

    instances: list = []

    def __init__(self, **options):
        self.options, self.scenes, self.updates, self.closed = options, {}, [], False
        Recorder.instances.append(self)

    def add_scene(self, instance_id, objects):
        self.scenes[instance_id] = objects

    def update(self, instance_id, updates):
        self.updates.append((instance_id, updates))

    def close(self):
        self.closed = True
