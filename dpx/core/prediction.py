"""The Prediction pipeline: a trained network running inside live simulations.

Each step, the environments produce their input (and, when they compute it,
the ground truth); the network predicts; the prediction goes back through the
backend's transformations and inverse normalisation to ``apply_prediction``.
When the environments set the ground truth, the summary reports the
network's error against the simulator. ``record=True`` stores inputs,
ground truths and predictions in the session's ``prediction`` mode, and
:func:`replay` runs the network again on stored samples.

Recording is idempotent, as generation is: step ``k`` of environment ``i``
is sample ``k * workers + i`` of the ``prediction`` mode, and a run records
only the samples the mode does not hold yet. Running the same prediction
again therefore adds nothing, and a longer one adds only the later steps
(the simulation still runs through the recorded steps, to reach them). The
session keeps what a recording depends on (the network file's SHA-256, the
seed, the environment and its parameters); a run that would record other
samples after them (a retrained network, another seed or environment) is
refused before it starts: record it in another session. Without a seed, a
run reuses the seed of the recording it continues.

With ``EnvironmentConfig(load_samples=True)`` the environments do not draw
their own samples: each step replays the next stored samples of
``DatabaseConfig(existing_dir=..., mode=...)`` through them (see
:mod:`dpx.core.feeding`), so the error is measured on a fixed set.

The network comes from ``network_dir`` when given, else from the session
itself; ``network_kwargs`` default to the ones saved with it. The
environment's fields are checked against the shapes the network was trained
on before the first step, and a run refused there is not recorded in the
session.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dpx.core import feeding, parameters
from dpx.core.config import MODE_STREAMS, ConfigError, DatabaseConfig, EnvironmentConfig, NetworkConfig, as_record
from dpx.core.database import Database, dataset_path
from dpx.core.lifecycle import Lifecycle, check_disabled
from dpx.core.network import FieldSpecs, NoNetworkError, find_trained_network
from dpx.core.predictor import Predictor, check_network_shapes, load_network
from dpx.core.preflight import SetUp, check_environment, check_partitions, check_session_location, check_storage
from dpx.core.producer import resolve_seed
from dpx.core.progress import Progress
from dpx.core.session import Session, existing_dataset, outcome_of


class ErrorStats:
    """Streaming error of predictions against the simulator's ground truth.

    The relative error is ``sqrt(sum of squared errors / sum of squared
    truths)`` over every step: it stays meaningful when a trajectory passes
    through zero, where a per-step ratio would blow up. Every row's values
    count equally (per-row means over the same width).

    Running sums, fed by blocks: one-sample steps (the prediction loop's) are
    copied into a block of :data:`BLOCK` rows and summed a block at a time, as
    NumPy's per-call cost would otherwise exceed the sums' own.
    """

    BLOCK = 1024

    def __init__(self) -> None:
        self._count, self._squared, self._truth_squared = 0, 0.0, 0.0
        self._predictions: np.ndarray | None = None
        self._truths: np.ndarray | None = None
        self._held = 0

    def add(self, prediction: np.ndarray, truth: np.ndarray) -> None:
        """Add a batch's squared errors; rows without a (finite) ground truth are left out."""
        if len(truth) == 1 and prediction.shape == truth.shape:
            if self._truths is None or self._truths.shape[1:] != truth.shape[1:]:
                self._flush()
                self._truths = np.empty((self.BLOCK, *truth.shape[1:]))
                self._predictions = np.empty_like(self._truths)
            held = self._held
            self._truths[held] = truth[0]
            self._predictions[held] = prediction[0]
            self._held = held + 1
            if self._held == self.BLOCK:
                self._flush()
            return
        self._flush()
        self._sum(prediction, truth)

    def _flush(self) -> None:
        if self._held:
            held, self._held = self._held, 0
            self._sum(self._predictions[:held], self._truths[:held])

    def _sum(self, prediction: np.ndarray, truth: np.ndarray) -> None:
        if not len(truth):
            return
        width = truth[0].size
        truth_flat = truth.reshape(-1).astype(np.float64)
        truth_squared = float(np.dot(truth_flat, truth_flat))
        if math.isfinite(truth_squared):  # the usual case: two dot products
            error = prediction.reshape(-1) - truth_flat
            self._count += len(truth)
            self._squared += float(np.dot(error, error)) / width
            self._truth_squared += truth_squared / width
            return
        rows = np.isfinite(truth.reshape(len(truth), -1)).all(axis=1)
        if not rows.any():
            return
        error = (prediction[rows] - truth[rows]).reshape(rows.sum(), -1).astype(np.float64)
        self._count += int(rows.sum())
        self._squared += float((error**2).mean(axis=1).sum())
        self._truth_squared += float((truth[rows].reshape(rows.sum(), -1).astype(np.float64) ** 2).mean(axis=1).sum())

    @property
    def count(self) -> int:
        """Rows with a ground truth so far."""
        self._flush()
        return self._count

    @property
    def squared(self) -> float:
        """Sum over rows of the mean squared error."""
        self._flush()
        return self._squared

    @property
    def truth_squared(self) -> float:
        """Sum over rows of the mean squared ground truth."""
        self._flush()
        return self._truth_squared

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


#: The environment settings a recording's samples depend on.
RECORDING_SETTINGS = ("environment_class", "env_kwargs", "workers", "simulations_per_step", "max_wrong_samples_per_step", "non_finite")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Prediction:
    """Run the network of a session inside its environment for ``step_nb`` steps (-1: until Ctrl-C).

    ``record=True`` stores every step's samples in the session's
    ``prediction`` mode, once: see the module's notes on recording.
    """

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
        disable_plugins: tuple[str, ...] | list[str] = (),
    ) -> None:
        if not isinstance(step_nb, int) or (step_nb < 1 and step_nb != -1):
            raise ConfigError(f"Prediction: step_nb={step_nb!r} must be a positive integer or -1 (until interrupted)")
        self.network_config, self.environment_config = network_config, environment_config
        self.database_config = database_config or DatabaseConfig(mode="prediction")
        self.session_dir, self.session_name, self.new_session = session_dir, session_name, new_session
        self.step_nb, self.record, self.progress = step_nb, record, progress
        self.disable_plugins = list(disable_plugins)
        self.session_path: Path | None = None

    def network_checkpoint(self) -> Path:
        """The checkpoint this prediction loads; creates nothing, raises :class:`NoNetworkError` when there is none."""
        if self.new_session and self.network_config.network_dir is None:
            raise NoNetworkError(
                "Prediction: new_session=True starts an empty session, which holds no network; "
                "set network_dir to the session of the trained network, or predict in it (new_session=False)"
            )
        return find_trained_network(self.network_config, Path(self.session_dir) / self.session_name)

    def prepare(self) -> SetUp:
        """Check the environment, load the trained network; nothing is written (see dpx.core.preflight)."""
        setup = SetUp()
        check_session_location("Prediction", self.session_dir, self.session_name)
        check_disabled("Prediction", self.disable_plugins)
        check_environment(self.environment_config, setup)
        setup.checkpoint = self.network_checkpoint()
        setup.network = load_network(self.network_config, setup.checkpoint)
        check_network_shapes(self.network_config, setup.network[1], setup.checkpoint,
                             self.environment_config.environment_name,
                             {name: shape for name, (_, shape) in setup.fields.items()}, setup.fields_complete)
        setup.checked.append(f"network {setup.checkpoint}")
        setup.read("the network", setup.checkpoint)
        if self.record:
            check_storage(self.database_config)
            check_partitions(self.database_config, setup.fields)
        if self.environment_config.load_samples:
            self._check_replay(setup)
        return setup

    def _check_replay(self, setup: SetUp) -> None:
        """The stored samples ``load_samples`` replays: ``DatabaseConfig(existing_dir=..., mode=...)``."""
        existing = self.database_config.existing_dir
        if existing is None:
            raise ConfigError("DatabaseConfig: existing_dir is not set, and load_samples=True replays stored samples "
                              "through the environments: set existing_dir to a session or dataset (and mode to the "
                              "mode to replay, training by default)")
        dataset = existing_dataset(existing)
        mode = self.replayed_mode
        with Database(dataset, DatabaseConfig(storage=self.database_config.storage), readonly=True) as stored:
            count = stored.count(mode) if mode in stored.modes else 0
            feeding.check_fields(self.environment_config, setup.fields, stored.fields(mode) if count else {}, dataset,
                                 mode)
        instances = self.environment_config.workers
        feeding.check_replay(self.step_nb, instances, count, dataset, mode)
        setup.dataset = dataset
        setup.checked.append(f"replaying the {count} {mode!r} samples of {dataset}")
        setup.read("the replayed dataset", dataset)

    @property
    def replayed_mode(self) -> str:
        """The mode ``load_samples`` replays: the database config's, training by default."""
        return self.database_config.mode or "training"

    def execute(self, setup: SetUp | None = None) -> PredictionSummary:
        """Run the network in the environments; ``setup`` is what :meth:`prepare` returned (prepared here when None)."""
        setup = setup or self.prepare()
        backend, specs = setup.network
        session = Session.start(self.session_dir, self.session_name, self.new_session)
        self.session_path = session.path
        run = _Steps(self, session, backend, specs, setup.checkpoint, Lifecycle("Prediction", self.disable_plugins))
        run.replayed = setup.dataset if self.environment_config.load_samples else None
        try:
            return run.predict(setup.runner_class)
        finally:
            run.close()


class _Steps:
    """One execution of a Prediction: the checks before the first step, the steps, the recording."""

    def __init__(self, pipeline: Prediction, session: Session, backend: Any, specs: FieldSpecs, checkpoint: Path,
                 lifecycle: Lifecycle):
        self.p, self.session, self.backend, self.specs, self.checkpoint = pipeline, session, backend, specs, checkpoint
        self.lifecycle = lifecycle
        self.inputs, self.targets = pipeline.network_config.input_fields, pipeline.network_config.target_fields
        self.runner: Any = None
        self.database: Database | None = None
        self.progress: Progress | None = None
        self.recording: dict[str, Any] | None = None
        self.recorded_before = 0
        #: The dataset whose samples ``load_samples`` replays (None: the environments produce their own).
        self.replayed: Path | None = None
        self.source: Database | None = None

    def predict(self, runner_class: type) -> PredictionSummary:
        seed = self._open_recording()
        _, key = resolve_seed(seed)
        environment = self.p.environment_config
        self.runner = runner_class(environment, key, optional_fields=frozenset(self.targets))
        existing = self.p.database_config.existing_dir
        source = self.replayed or (existing_dataset(existing) if existing else self.session.dataset_dir)
        parameters.give(self.runner, source)
        backend, target = self.backend, self.targets[0]
        self._check_shapes({name: f.shape for name, f in (self.runner.start() or {}).items()})
        parameters.keep(self.runner, self.session.dataset_dir if self.database is not None else None)
        self.runner.connect(Predictor(backend, self.specs, self.checkpoint, self.p.network_config))
        instances = self.runner.instance_nb  # each step, every environment makes one sample
        stream = MODE_STREAMS["prediction"]
        error, network_time, environment_time, steps, recorded = ErrorStats(), 0.0, 0.0, 0, 0
        step_nb = self.p.step_nb
        outcome, run_recorded, failure, summary = "completed", False, None, None
        lifecycle = self.lifecycle
        on_step = lifecycle.hook("dpx_prediction_step_end")
        produce, apply, add_error, inputs = self.runner.produce, self.runner.apply, error.add, self.inputs
        if self.replayed is not None:
            produce, step_nb = self._replay(instances)
        clock = time.perf_counter
        try:
            for step in itertools.count() if step_nb == -1 else range(step_nb):
                started = clock()
                batch = produce(np.arange(step * instances, (step + 1) * instances), stream, pinned=True)
                produced = clock()
                environment_time += produced - started
                if step == 0:
                    self._check_shapes({name: array.shape[1:] for name, array in batch.items()})
                    configs = {"network": as_record(self.p.network_config), "environment": as_record(environment)}
                    self.session.record_run(
                        "Prediction", configs, seed=seed, checkpoint=str(self.checkpoint), step_nb=step_nb,
                        record=self.p.record, **({"recording": self.recording} if self.recording else {}),
                        run_id=lifecycle.run_id, joined_plugins=lifecycle.joined, outcome="started",
                    )
                    run_recorded = True
                    lifecycle.start(self.session.path, configs, seed)
                    self.progress = Progress(max(step_nb, 0), desc="predict", unit="step", enabled=self.p.progress,
                                             postfix=lambda: {"mse": f"{error.mse:.3g}"})
                    produced = clock()  # the first step's bookkeeping is neither network nor environment time
                prediction = backend.predict({name: batch[name] for name in inputs})[target]
                predicted = clock()
                add_error(prediction, batch[target])
                if on_step is not None:
                    on_step(run=lifecycle.run, step=step, inputs={name: batch[name] for name in inputs}, prediction=prediction)
                if self.database is not None:
                    recorded += self._record(step * instances, batch, prediction, target)
                applying = clock()
                apply(prediction)
                environment_time += clock() - applying
                network_time += predicted - produced
                steps += 1
                self.progress.update(1)
        except KeyboardInterrupt:
            if step_nb != -1:
                outcome = "interrupted"
                raise
        except BaseException as exc:
            outcome, failure = outcome_of(exc), exc
            raise
        finally:
            if run_recorded:  # a run refused before its first step is not recorded at all
                self.session.finish_run(outcome, steps=steps, samples=recorded)
            if failure is not None:
                lifecycle.end(outcome, None, failure)
        summary = PredictionSummary(self.session.path, steps, error, network_time, environment_time, recorded)
        lifecycle.end(outcome, summary)
        return summary

    def _replay(self, instances: int) -> tuple[Any, int]:
        """What replaces ``runner.produce`` with ``load_samples``: stored samples fed to the environments in
        order, and the number of steps that replays (``step_nb=-1``: every stored sample once)."""
        mode = self.p.replayed_mode
        source = self.source = Database(self.replayed, DatabaseConfig(storage=self.p.database_config.storage),
                                        readonly=True)
        count = source.count(mode) if mode in source.modes else 0
        step_nb = feeding.check_replay(self.p.step_nb, instances, count, self.replayed, mode)
        batches = feeding.fed_batches(self.runner, source, mode, instances, self.inputs + self.targets,
                                      np.arange(count), pinned=True)

        def replayed(ids: np.ndarray, stream: int, pinned: bool) -> dict[str, np.ndarray]:
            return next(batches)

        return replayed, step_nb

    def _open_recording(self) -> int:
        """Open the recording (when asked) and return the run's root seed.

        A run continuing a recording must make the samples already recorded:
        its settings are checked against the recording's, and without a seed
        it takes the recording's.
        """
        environment = self.p.environment_config
        if not self.p.record:
            return resolve_seed(environment.seed)[0]
        self.database = Database(self.session.dataset_dir, self.p.database_config)
        self.recorded_before = self.database.count("prediction") if "prediction" in self.database.modes else 0
        previous = None
        if self.recorded_before:
            runs = [run for run in self.session.read_record().get("runs", []) if run.get("recording")]
            previous = runs[-1]["recording"] if runs else None
        seed = environment.seed if environment.seed is not None else (previous or {}).get("seed")
        self.recording = {
            "network_sha256": _sha256(self.checkpoint),
            "seed": resolve_seed(seed)[0],
            "environment": _as_json({name: as_record(environment)[name] for name in RECORDING_SETTINGS}),
        }
        if self.replayed is not None:  # the steps replay stored samples: which ones is part of the recording
            self.recording["replayed"] = {"dataset": str(self.replayed.resolve()), "mode": self.p.replayed_mode}
        if self.recorded_before and previous != self.recording:
            what = "its settings are unknown" if previous is None else "they were made " + ", ".join(
                _difference(name, previous.get(name), value) for name, value in self.recording.items()
                if previous.get(name) != value
            )
            raise ConfigError(
                f"Prediction: record=True: {self.session.path} already records {self.recorded_before} prediction samples "
                f"and {what}; recording this run after them would mix two runs. Record it in another session "
                "(session_name=..., network_dir= the trained session) or run without record"
            )
        return self.recording["seed"]

    def _record(self, first_id: int, batch: Mapping[str, np.ndarray], prediction: np.ndarray, target: str) -> int:
        """Append the step's samples the recording does not hold yet; return how many."""
        skip = max(0, self.recorded_before - first_id)
        if skip >= len(prediction):
            return 0
        record = {**{name: batch[name][skip:] for name in self.inputs}, target: batch[target][skip:], "prediction": prediction[skip:]}
        self.database.prepare("prediction", {n: (a.dtype, a.shape[1:]) for n, a in record.items()})
        self.database.append("prediction", record)
        return len(prediction) - skip

    def _check_shapes(self, shapes: Mapping[str, tuple[int, ...] | None]) -> None:
        check_network_shapes(self.p.network_config, self.specs, self.checkpoint,
                             self.p.environment_config.environment_name, shapes)

    def close(self) -> None:
        try:
            if self.progress is not None:
                self.progress.close()
            if self.runner is not None:
                self.runner.close()
        finally:
            if self.database is not None:
                self.database.close()
            if self.source is not None:
                self.source.close()


def _difference(name: str, before: Any, now: Any) -> str:
    if name == "network_sha256":
        return "by another network file"
    return f"with {name} {before!r} (now {now!r})"


def _as_json(value: Any) -> Any:
    """``value`` as it reads back from session.json (tuples become lists), so records compare equal."""
    return json.loads(json.dumps(value, default=str))


def replay(session: str | Path, network_config: NetworkConfig, mode: str = "prediction", batch_size: int = 256):
    """Run a session's network again on its stored samples of ``mode``.

    Returns the predictions and the error against the stored ground truth:
    for comparing networks on recorded trajectories without a simulator.
    """
    backend, _ = load_network(network_config, find_trained_network(network_config, session))
    with Database(dataset_path(session), DatabaseConfig(), readonly=True) as database:
        inputs, target = network_config.input_fields, network_config.target_fields[0]
        error, outputs = ErrorStats(), []
        for batch in database.batches(mode, batch_size, shuffle=False):
            prediction = backend.predict({name: batch[name] for name in inputs})[target]
            error.add(prediction, batch[target])
            outputs.append(prediction)
    return (np.concatenate(outputs) if outputs else np.empty(0)), error
