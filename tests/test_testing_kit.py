"""The plugin authors' kits catch the bugs they are there to catch, and the core's own components pass them."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import dpx
from dpx.core.runners import InProcessRunner
from dpx.core.stats import CsvStatsWriter, read_csv_curves
from dpx.core.storage import MemmapStorage
from dpx.testing import (
    NetworkBackendChecks,
    RunnerChecks,
    StorageChecks,
    check_loss,
    check_stats_writer,
    check_transform,
    check_visualizer,
)
from dpx.testing_envs import Recorder


class OffByOneRunner(InProcessRunner):
    """Makes sample ``i + 1`` when asked for sample ``i``: a chunking bug."""

    def produce(self, sample_ids, stream=0, pinned=False):
        return super().produce(np.asarray(sample_ids) + 1, stream, pinned)


class ForgetfulViewerRunner(InProcessRunner):
    """Never passes the viewer on to the environment."""

    def start(self):
        fields = super().start()
        self.producer.env._connect(viewer=None)
        return fields


class ProducingRunner(InProcessRunner):
    """Produces new samples when asked to feed stored ones, and hands the environments no stored parameters."""

    def feed(self, stored, sample_ids, stream=0, pinned=False):
        return self.produce(sample_ids, stream, pinned)

    def start(self):
        self.stored_parameters = {}
        return super().start()


@pytest.fixture
def register_runner(dpx_plugin, monkeypatch):
    module = types.ModuleType("dpx_kit_runners")
    module.OffByOneRunner, module.ForgetfulViewerRunner = OffByOneRunner, ForgetfulViewerRunner
    module.ProducingRunner = ProducingRunner
    monkeypatch.setitem(sys.modules, module.__name__, module)

    def register(name: str, class_name: str) -> None:
        plugin = types.ModuleType(f"plugin_{name}")
        plugin.dpx_runners = dpx.hookimpl(lambda: {name: f"dpx_kit_runners:{class_name}"})
        dpx_plugin(plugin, name=f"plugin-{name}")

    return register


def test_same_dataset_catches_a_runner_producing_the_wrong_samples(tmp_path, register_runner):
    register_runner("offbyone", "OffByOneRunner")
    with pytest.raises(AssertionError, match=r"field 'input' differs from the in-process dataset"):
        RunnerChecks("offbyone", tmp_path, workers=1).same_dataset()


def test_visuals_catch_a_runner_that_drops_the_viewer(tmp_path, register_runner):
    register_runner("forgetful", "ForgetfulViewerRunner")
    with pytest.raises(AssertionError, match=r"forgetful: updates reached the viewer from environments set\(\)"):
        RunnerChecks("forgetful", tmp_path, workers=1).visuals()


def test_feeds_and_parameters_catch_a_runner_that_ignores_stored_samples_and_parameters(tmp_path, register_runner):
    register_runner("producing", "ProducingRunner")
    checks = RunnerChecks("producing", tmp_path, workers=1)
    with pytest.raises(AssertionError, match=r"producing: fed field 'input' differs from in-process"):
        checks.feeds()
    with pytest.raises(AssertionError, match=r"producing: produced rows loaded scales \[-1.0\], expected \[5.0\]"):
        checks.parameters()


def test_the_in_process_runner_passes_its_own_checks(tmp_path):
    checks = RunnerChecks("inprocess", tmp_path, workers=1)
    checks.same_dataset()
    checks.refused_samples()
    checks.visuals()


# -- the conformance kits of the other hooks ----------------------------------------------


class ShiftedReads(MemmapStorage):
    """Reads sample ``i + 1`` for ``i``: an indexing bug."""

    def read(self, mode, name, indices, out=None):
        return super().read(mode, name, np.minimum(np.asarray(indices) + 1, self.count(mode) - 1), out)


class EagerCommits(MemmapStorage):
    """Publishes every append at once: readers see samples nobody committed."""

    def append(self, mode, arrays):
        super().append(mode, arrays)
        super().commit(force=True)


class OverwritingCsv(CsvStatsWriter):
    """Starts a new file each run: a resumed training loses its curves."""

    def __init__(self, stats_dir):
        (stats_dir / "curves.csv").unlink(missing_ok=True)
        super().__init__(stats_dir)


class NumpyBackend:
    """A linear model trained by gradient descent: the network backend contract without any AI framework."""

    def __init__(self, config, fields, normalization, seed=None):
        (_, (inputs,)), (_, (outputs,)) = fields["input"], fields["ground_truth"]
        self.weights = np.random.default_rng(seed).normal(size=(inputs, outputs))
        self.normalization, self.learning_rate = normalization, float(config.lr)
        self.nb_parameters = self.weights.size

    def _target(self, values):
        mean, std = self.normalization.get("ground_truth", (0.0, 1.0))
        return (values - mean) / std

    def train_batch(self, batch):
        error = batch["input"] @ self.weights - self._target(batch["ground_truth"])
        self.weights -= self.learning_rate * batch["input"].T @ error / len(error)
        return {"loss": float((error ** 2).mean())}

    def validation_loss(self, batch):
        return float(((batch["input"] @ self.weights - self._target(batch["ground_truth"])) ** 2).mean())

    def predict(self, inputs):
        mean, std = self.normalization.get("ground_truth", (0.0, 1.0))
        return {"ground_truth": inputs["input"] @ self.weights * std + mean}

    def save(self, path, extra):
        np.save(Path(path).with_suffix(".npy"), self.weights)
        Path(path).with_suffix(".json").write_text(json.dumps(extra))

    @classmethod
    def read_extra(cls, path):
        return json.loads(Path(path).with_suffix(".json").read_text())

    def load(self, path, training):
        self.weights = np.load(Path(path).with_suffix(".npy"))
        return self.read_extra(path)

    def parameter_histograms(self):
        return {"weights": self.weights.ravel()}


class ForgetsNormalization(NumpyBackend):
    def predict(self, inputs):
        return {"ground_truth": inputs["input"] @ self.weights}


class Unseeded(NumpyBackend):
    def __init__(self, config, fields, normalization, seed=None):
        super().__init__(config, fields, normalization, None)


class SquaredError:
    def __call__(self, prediction, target):
        return ((prediction - target) ** 2).mean()


class PerSampleError:
    """Forgets to reduce over the batch."""

    def __call__(self, prediction, target):
        return ((prediction - target) ** 2).mean(axis=1)


class Identity:
    def __init__(self, config):
        pass

    def transform_before_prediction(self, input):
        return input

    def transform_before_loss(self, prediction, ground_truth=None):
        return prediction, ground_truth

    def transform_before_apply(self, prediction):
        return prediction


class LossWithoutTruth(Identity):
    def transform_before_loss(self, prediction, ground_truth=None):
        return prediction


class StrictViewer(Recorder):
    """Raises on an update of an object it was never shown."""

    def update(self, instance_id, updates):
        unknown = set(updates) - set(self.scenes[instance_id])
        if unknown:
            raise KeyError(unknown)
        super().update(instance_id, updates)


@pytest.fixture
def register(dpx_plugin, monkeypatch):
    """Register classes of this file under names of a registry: register("losses", mse="SquaredError")."""
    module = types.ModuleType("dpx_kit_components")
    for name, value in globals().items():
        if isinstance(value, type):
            setattr(module, name, value)
    monkeypatch.setitem(sys.modules, module.__name__, module)

    def register(registry: str, **names: str) -> None:
        plugin = types.ModuleType(f"plugin_{registry}")
        setattr(plugin, f"dpx_{registry}", dpx.hookimpl(lambda: {n: f"dpx_kit_components:{c}" for n, c in names.items()}))
        dpx_plugin(plugin, name=f"kit-{registry}-{'-'.join(names)}")

    return register


def test_the_core_memmap_storage_passes_the_storage_kit(tmp_path):
    StorageChecks("memmap", tmp_path).all()


def test_storage_kit_catches_wrong_reads_and_early_visibility(tmp_path, register):
    register("storage_backends", shifted="ShiftedReads", eager="EagerCommits")
    with pytest.raises(AssertionError, match=r"shifted: read\('training', 'position', \[97, 0, 13, 13, 50\]\) returned other samples"):
        StorageChecks("shifted", tmp_path).round_trip()
    with pytest.raises(AssertionError, match="eager: a reader saw samples that were not committed"):
        StorageChecks("eager", tmp_path).commits()


def test_network_backend_kit_on_a_numpy_backend(tmp_path, register):
    register("network_backends", numpy="NumpyBackend", forgetful="ForgetsNormalization", unseeded="Unseeded")
    config = dpx.NetworkConfig(lr=0.1)
    NetworkBackendChecks("numpy", tmp_path, config).all()
    with pytest.raises(AssertionError, match="forgetful: predictions are not de-normalised"):
        NetworkBackendChecks("forgetful", tmp_path, config).normalizes()
    with pytest.raises(AssertionError, match="unseeded: two networks built with seed=7 predict differently"):
        NetworkBackendChecks("unseeded", tmp_path, config).is_seeded()


def test_loss_and_transform_kits(register):
    register("losses", squared="SquaredError", per_sample="PerSampleError")
    register("transforms", same="Identity", pairless="LossWithoutTruth")
    check_loss("squared", np.asarray)
    with pytest.raises(AssertionError, match=r"loss 'per_sample' must return a scalar, got shape \(8,\)"):
        check_loss("per_sample", np.asarray)
    check_transform("same", np.asarray)
    with pytest.raises(AssertionError, match=r"transform 'pairless': transform_before_loss must return \(prediction, ground_truth\)"):
        check_transform("pairless", np.asarray)


def test_the_core_csv_writer_passes_the_stats_writer_kit_and_the_kit_catches_overwriting(tmp_path, register):
    stats = check_stats_writer("csv", tmp_path / "csv", read_csv_curves)
    assert (stats / "curves.csv").exists()
    register("stats_writers", overwriting="OverwritingCsv")
    with pytest.raises(AssertionError, match=r"'overwriting': tag 'loss/batch' has steps \[5, 6, 7, 8, 9\] after two runs"):
        check_stats_writer("overwriting", tmp_path / "overwriting", read_csv_curves)


def test_visualizer_kit(register):
    register("visualizers", recorder="Recorder", strict="StrictViewer")
    viewer = check_visualizer("recorder")
    assert viewer.closed and set(viewer.scenes) == {0, 1} and len(viewer.updates) == 11
    with pytest.raises(AssertionError, match=r"visualizer 'strict' raised KeyError\(\{999\}\) on an update of an object"):
        check_visualizer("strict")
