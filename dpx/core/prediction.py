"""The Prediction pipeline: a trained network running inside live simulations.

Each step, the environments produce their input (and, when they compute it,
the ground truth); the network predicts; the prediction goes back through the
backend's transformations and inverse normalisation to ``apply_prediction``.
When the environments set the ground truth, the summary reports the
network's error against the simulator. ``record=True`` stores inputs,
ground truths and predictions in the session's ``prediction`` mode, and
:func:`replay` runs the network again on stored samples.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dpx.core.config import MODE_STREAMS, ConfigError, DatabaseConfig, EnvironmentConfig, NetworkConfig, as_record
from dpx.core.database import Database, dataset_path
from dpx.core.network import find_checkpoint, load_backend
from dpx.core.producer import resolve_seed
from dpx.core.progress import Progress
from dpx.core.session import Session


@dataclass
class ErrorStats:
    """Streaming error of predictions against the simulator's ground truth.

    The relative error is ``sqrt(sum of squared errors / sum of squared
    truths)`` over every step: it stays meaningful when a trajectory passes
    through zero, where a per-step ratio would blow up.
    """

    count: int = 0
    squared: float = 0.0
    truth_squared: float = 0.0

    def add(self, prediction: np.ndarray, truth: np.ndarray) -> None:
        rows = np.isfinite(truth.reshape(len(truth), -1)).all(axis=1)
        if not rows.any():
            return
        error = (prediction[rows] - truth[rows]).reshape(rows.sum(), -1).astype(np.float64)
        self.count += int(rows.sum())
        self.squared += float((error**2).mean(axis=1).sum())
        self.truth_squared += float((truth[rows].reshape(rows.sum(), -1).astype(np.float64) ** 2).mean(axis=1).sum())

    @property
    def mse(self) -> float:
        return self.squared / self.count if self.count else math.nan

    @property
    def relative_error(self) -> float:
        return math.sqrt(self.squared / self.truth_squared) if self.truth_squared > 0 else math.nan


@dataclass
class PredictionSummary:
    session_path: Path
    steps: int
    error: ErrorStats
    network_seconds: float
    environment_seconds: float
    recorded: int = 0

    def __str__(self) -> str:
        text = f"{self.steps} prediction steps"
        if self.error.count:
            text += (
                f"; error against the simulator: MSE {self.error.mse:.4g}, "
                f"relative RMS error {100 * self.error.relative_error:.2f} %"
            )
        if self.steps:
            text += (
                f"\nper step: network {1e3 * self.network_seconds / self.steps:.3f} ms, "
                f"environment {1e3 * self.environment_seconds / self.steps:.3f} ms"
            )
        if self.recorded:
            text += f"\n{self.recorded} samples recorded in the 'prediction' mode"
        return f"{text}\nsession: {self.session_path}"


def _load_network(network_config: NetworkConfig, session: Session):
    """Build the backend and load the saved network (the config's network_dir, else the session's)."""
    location = network_config.network_dir if network_config.network_dir is not None else session.path
    path = find_checkpoint(location, network_config.network_name, network_config.which_network)
    backend_class = load_backend(network_config)
    extra = backend_class.read_extra(path)
    specs = {name: (np.dtype(f["dtype"]), tuple(f["shape"])) for name, f in extra["fields"].items()}
    normalization = {n: (np.asarray(v["mean"]), np.asarray(v["std"])) for n, v in extra["normalization"].items()}
    config = NetworkConfig(**{**vars(network_config), "require_training_stuff": False})
    backend = backend_class(config, specs, normalization)
    backend.load(path, training=False)
    return backend, path


class Prediction:
    """Run the network of a session inside its environment for ``step_nb`` steps (-1: until Ctrl-C)."""

    def __init__(
        self,
        network_config: NetworkConfig,
        environment_config: EnvironmentConfig,
        database_config: DatabaseConfig | None = None,
        session_dir: str = "sessions",
        session_name: str = "training",
        new_session: bool = False,
        step_nb: int = -1,
        record: bool = False,
        progress: bool | None = None,
    ) -> None:
        if not isinstance(step_nb, int) or (step_nb < 1 and step_nb != -1):
            raise ConfigError(f"Prediction: step_nb={step_nb!r} must be a positive integer or -1 (until interrupted)")
        self.network_config, self.environment_config = network_config, environment_config
        self.database_config = database_config or DatabaseConfig(mode="prediction")
        self.session_dir, self.session_name, self.new_session = session_dir, session_name, new_session
        self.step_nb, self.record, self.progress = step_nb, record, progress
        self.session_path: Path | None = None

    def execute(self) -> PredictionSummary:
        from dpx.plugins import get_plugins

        runner_class = get_plugins().load("runners", self.environment_config.runner)
        runner_class.check_options(self.environment_config)
        self.environment_config.resolve_environment()
        session = Session.start(self.session_dir, self.session_name, self.new_session)
        self.session_path = session.path
        backend, checkpoint = _load_network(self.network_config, session)
        seed, key = resolve_seed(self.environment_config.seed)
        session.record_run(
            "Prediction",
            {"network": as_record(self.network_config), "environment": as_record(self.environment_config)},
            seed=seed, checkpoint=str(checkpoint), step_nb=self.step_nb, record=self.record,
        )
        inputs, targets = self.network_config.input_fields, self.network_config.target_fields
        target = targets[0]
        runner = runner_class(self.environment_config, key, optional_fields=frozenset(targets))
        database = Database(session.dataset_dir, self.database_config) if self.record else None
        error, network_time, environment_time, steps, recorded = ErrorStats(), 0.0, 0.0, 0, 0
        progress = Progress(self.step_nb if self.step_nb > 0 else 0, desc="predict", unit="step", enabled=self.progress)
        try:
            runner.start()
            runner.connect(lambda request: _single(backend.predict({k: v[None] for k, v in request.items()})))
            stream = MODE_STREAMS["prediction"]
            instances = runner.instance_nb  # each step, every environment makes one sample
            for step in itertools.count() if self.step_nb == -1 else range(self.step_nb):
                started = time.perf_counter()
                batch = runner.produce(np.arange(step * instances, (step + 1) * instances), stream, pinned=True)
                environment_time += time.perf_counter() - started
                started = time.perf_counter()
                prediction = backend.predict({name: batch[name] for name in inputs})[target]
                network_time += time.perf_counter() - started
                error.add(prediction, batch[target])
                if database is not None:
                    record = {**{name: batch[name] for name in inputs}, target: batch[target], "prediction": prediction}
                    if step == 0:
                        database.prepare("prediction", {n: (a.dtype, a.shape[1:]) for n, a in record.items()})
                    database.append("prediction", record)
                    recorded += instances
                started = time.perf_counter()
                runner.apply(prediction)
                environment_time += time.perf_counter() - started
                steps += 1
                progress.update(1, mse=f"{error.mse:.3g}")
        except KeyboardInterrupt:
            if self.step_nb != -1:
                raise
        finally:
            progress.close()
            runner.close()
            if database is not None:
                database.close()
        return PredictionSummary(session.path, steps, error, network_time, environment_time, recorded)


def _single(prediction: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``get_prediction`` answers for one sample, under the key ``prediction``."""
    (value,) = prediction.values()
    return {"prediction": value[0]}


def replay(session: str | Path, network_config: NetworkConfig, mode: str = "prediction", batch_size: int = 256):
    """Run a session's network again on its stored samples of ``mode``.

    Returns the predictions and the error against the stored ground truth:
    for comparing networks on recorded trajectories without a simulator.
    """
    session_obj = Session(Path(session))
    backend, _ = _load_network(network_config, session_obj)
    with Database(dataset_path(session), DatabaseConfig(), readonly=True) as database:
        inputs, target = network_config.input_fields, network_config.target_fields[0]
        error, outputs = ErrorStats(), []
        for batch in database.batches(mode, batch_size, shuffle=False):
            prediction = backend.predict({name: batch[name] for name in inputs})[target]
            error.add(prediction, batch[target])
            outputs.append(prediction)
    return (np.concatenate(outputs) if outputs else np.empty(0)), error
