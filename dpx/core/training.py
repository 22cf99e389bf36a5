"""The Training pipeline: framework-agnostic, talking to a network backend.

Three ways in, as in DeepPhysX:

* **with an environment**: the first epoch trains on batches as the
  environments produce them (and stores them); later epochs re-read the
  stored samples, unless ``always_produce`` keeps producing (online training);
* **from an existing dataset** (``DatabaseConfig(existing_dir=...)``, no
  environment): every epoch reads the stored samples;
* **from a saved network** (``NetworkConfig(network_dir=...)``), in a new
  session or the same one.

Production runs in a thread beside the optimisation, so they overlap. When the
optimiser is faster than the simulations it does not wait: it replays a random
batch of stored samples (``replay_when_starved``), and the summary counts
those steps.

Environments may ask the network being trained for predictions from their
``step`` (``get_prediction``): a :class:`~dpx.core.predictor.TrainingPredictor`
answers them between two optimisation steps (the steps hold its lock). The
network is therefore built before production starts whenever nothing has to
be learnt from the first batch (the fields' dtypes and shapes are declared or
stored, the normalisation is stored or off); otherwise a request during that
first batch raises a ConfigError saying what to change.

After every epoch the last network is saved as a checkpoint holding what an
exact resume needs: weights, optimiser state, the epoch and step reached, the
RNG states, the normalisation and the first sample id the next producing
epoch makes. Online training also saves one before its first step. Running
the same pipeline again with ``new_session=False`` continues from the last
checkpoint, as if never interrupted:

* the steps taken since the checkpoint are lost with the process, so the
  samples an interrupted epoch had already stored are *replayed*: the epoch
  trains on them again, in their order, then produces only the samples still
  missing (each sample has its own seed, so they are the ones the
  uninterrupted run makes). The dataset ends with exactly ``batch_nb *
  batch_size`` samples per producing epoch, and, with
  ``replay_when_starved=False``, the weights equal those of an uninterrupted
  run (with it, which steps replay depends on timing, in both runs);
* the training curves drop what was written after the checkpoint, so each
  step appears once;
* the root seed is the one the session's previous training recorded, unless
  the pipeline is given another.

Around the loop, the run's lifecycle hooks (:mod:`dpx.hookspecs`) let installed
plugins take part: one call per optimisation step (only when a plugin
implements it), per epoch (where a plugin may stop the training), per saved
checkpoint, and at the start and end. The training features users set by name
ride on the same points: early stopping (``patience``, ``min_delta``) on the
validation loss, the best network kept as ``network_best.pt``
(``which_network="best"``), a seeded ``validation_split`` of the stored
training samples, and the backend's learning-rate schedule stepped at every
epoch's end.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dpx.core import feeding, parameters
from dpx.core.config import (
    MODE_STREAMS,
    ConfigError,
    DatabaseConfig,
    EnvironmentConfig,
    NetworkConfig,
    as_record,
)
from dpx.core.database import Database
from dpx.core.lifecycle import Lifecycle, check_disabled
from dpx.core.network import (
    CheckpointError,
    check_network,
    checkpoint_path,
    find_checkpoint,
    load_backend,
    normalization_from,
    saved_normalization,
    with_saved_kwargs,
)
from dpx.core.predictor import Predictor, TrainingPredictor
from dpx.core.preflight import (
    SetUp,
    check_batch_memory,
    check_environment,
    check_extension,
    check_network_fields,
    check_partitions,
    check_same_network,
    check_session_location,
    check_stats_writers,
    check_storage,
    stored_fields,
)
from dpx.core.producer import resolve_seed
from dpx.core.progress import Progress
from dpx.core.session import Session, existing_dataset, outcome_of
from dpx.core.stats import Stats

log = logging.getLogger("dpx.training")
#: The seed stream of the validation split (a stream of its own: the shuffles stay those of a run without it).
SPLIT_STREAM = 7


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what was kept."""


class NonFiniteLossError(TrainingError):
    """Raised by a backend before stepping on a NaN or infinite loss."""


@dataclass
class TrainingSummary:
    session_path: Path
    epochs: int
    steps: int
    loss: float
    validation_loss: float | None
    seconds: float
    samples: int
    starved_steps: int = 0
    replayed_steps: int = 0
    #: Why the training stopped before ``epoch_nb`` (early stopping or a plugin), else None.
    stopped: str | None = None

    def __str__(self) -> str:
        text = (
            f"{self.epochs} epochs, {self.steps} steps in {self.seconds:.1f}s "
            f"({self.samples / max(self.seconds, 1e-9):,.0f} samples/s); last epoch loss {self.loss:.4g}"
        )
        if self.validation_loss is not None:
            text += f", validation loss {self.validation_loss:.4g}"
        if self.replayed_steps or self.starved_steps:
            text += f"; {self.replayed_steps} steps replayed stored samples, {self.starved_steps} waited for data"
        if self.stopped:
            text += f"; stopped early: {self.stopped}"
        return f"{text}\nsession: {self.session_path}"


class Training:
    """Train the network of ``network_config`` for ``epoch_nb`` epochs of ``batch_nb`` batches.

    ``batch_nb=None`` means one full pass over the stored samples per epoch
    (it is required when an environment produces the data).

    ``validation_split`` holds out that fraction of the stored training samples
    (drawn with the run's seed, recorded in ``session.json``) as validation data
    when the dataset has none. ``patience`` stops the training once the
    validation loss (the training loss without validation data) has not
    improved by more than ``min_delta`` for that many epochs. The best network
    so far is kept as ``network_best.pt`` (``which_network="best"``).
    ``disable_plugins`` names installed plugins that stay out of this run.
    """

    def __init__(
        self,
        network_config: NetworkConfig,
        database_config: DatabaseConfig | None = None,
        environment_config: EnvironmentConfig | None = None,
        session_dir: str = "sessions",
        session_name: str = "training",
        new_session: bool = True,
        epoch_nb: int = 1,
        batch_nb: int | None = None,
        batch_size: int = 32,
        stats: tuple[str, ...] | list[str] = ("csv",),
        histograms: bool = False,
        replay_when_starved: bool = True,
        seed: int | None = None,
        progress: bool | None = None,
        allow_changes: bool = False,
        validation_split: float = 0.0,
        patience: int | None = None,
        min_delta: float = 0.0,
        disable_plugins: tuple[str, ...] | list[str] = (),
    ) -> None:
        for name, value, minimum in (("epoch_nb", epoch_nb, 1), ("batch_size", batch_size, 1)):
            if not isinstance(value, int) or value < minimum:
                raise ConfigError(f"Training: {name}={value!r} must be an integer >= {minimum}")
        if batch_nb is not None and (not isinstance(batch_nb, int) or batch_nb < 1):
            raise ConfigError(f"Training: batch_nb={batch_nb!r} must be a positive integer or None")
        existing_dir = (database_config or DatabaseConfig()).existing_dir
        feeding.check_training(environment_config, existing_dir)
        if environment_config is not None and batch_nb is None and not feeding.feeds_only(environment_config,
                                                                                           existing_dir):
            raise ConfigError("Training: batch_nb is required when an environment produces the data")
        if isinstance(validation_split, bool) or not isinstance(validation_split, (int, float)) or not 0 <= validation_split < 1:
            raise ConfigError(f"Training: validation_split={validation_split!r} must be a fraction in [0, 1)")
        if validation_split and environment_config is not None:
            raise ConfigError("Training: validation_split splits a stored dataset; with an [environment], generate "
                              "validation samples instead (DatabaseConfig(mode='validation'))")
        if patience is not None and (not isinstance(patience, int) or isinstance(patience, bool) or patience < 1):
            raise ConfigError(f"Training: patience={patience!r} must be a positive number of epochs or None")
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or min_delta < 0:
            raise ConfigError(f"Training: min_delta={min_delta!r} must be a non-negative number")
        self.network_config = network_config
        self.database_config = database_config or DatabaseConfig()
        self.environment_config = environment_config
        self.session_dir, self.session_name, self.new_session = session_dir, session_name, new_session
        self.epoch_nb, self.batch_nb, self.batch_size = epoch_nb, batch_nb, batch_size
        self.stats_writers, self.histograms = list(stats), histograms
        self.replay_when_starved = replay_when_starved
        self.seed = seed
        self.progress = progress
        self.allow_changes = allow_changes
        self.validation_split, self.patience, self.min_delta = float(validation_split), patience, float(min_delta)
        self.disable_plugins = list(disable_plugins)
        self.session_path: Path | None = None

    # -- set-up ------------------------------------------------------------------------

    def prepare(self) -> SetUp:
        """Check every component and the data to train on; nothing is written (see dpx.core.preflight)."""
        setup = SetUp()
        network = self.network_config
        check_session_location("Training", self.session_dir, self.session_name)
        check_stats_writers(self.stats_writers)
        check_disabled("Training", self.disable_plugins)
        check_storage(self.database_config)
        existing = self.database_config.existing_dir
        source = existing_dataset(existing) if existing is not None else None
        # with an environment the run extends the dataset in its session (see Session.for_dataset);
        # without, it reads the dataset and writes to its own session
        producing = self.environment_config is not None and not self._feeds_only
        reopened = Session.reopened(existing if producing else None, self.session_dir,
                                    self.session_name, self.new_session)
        if producing:
            source_name = self._check_production(setup, source, reopened)
        else:
            declared = {}
            if self.environment_config is not None:  # fed stored samples: the dataset read gives the fields
                check_environment(self.environment_config, setup)
                declared = setup.fields
            source_name = self._check_stored_dataset(setup, source or self._own_dataset(reopened))
            feeding.check_fields(self.environment_config, declared, setup.fields, setup.dataset, "training")
        if setup.fields_complete:
            check_network_fields(setup.fields, network.input_fields, network.target_fields, source_name)
        check_network(network, setup.fields if setup.fields_complete else None)
        setup.checked.append(f"network {network.network_class} on backend {network.backend}, loss {network.loss}, "
                             f"optimizer {network.optimizer}")
        setup.checkpoint = self._resume_point(reopened)
        if setup.checkpoint is not None:
            check_same_network(network, setup.checkpoint, load_backend(network))
            setup.checked.append(f"starting from {setup.checkpoint}")
            setup.read("the network", setup.checkpoint)
        setup.checked.append(f"stats {', '.join(self.stats_writers) or 'none'}")
        check_batch_memory("Training", self.batch_size, setup.fields)
        return setup

    def _check_production(self, setup: SetUp, source: Path | None, reopened: Path | None) -> str:
        """Check the environments and the dataset they extend; returns what the data is, for messages."""
        environment = self.environment_config
        check_environment(environment, setup)
        dataset = source or (reopened / "dataset" if reopened is not None else None)
        check_extension(setup, environment, self.database_config, dataset, "training", self.allow_changes)
        check_partitions(self.database_config, setup.fields)
        return f"the samples of {environment.environment_name}"

    def _check_stored_dataset(self, setup: SetUp, dataset: Path) -> str:
        """Check the dataset training reads; returns what the data is, for messages."""
        setup.dataset = dataset
        setup.fields, count = stored_fields(dataset, self.database_config, "training")
        setup.fields_complete = True
        if count == 0:
            raise ConfigError(
                f"DatabaseConfig: the dataset {dataset} holds no training samples; generate data first "
                "(python -m dpx generate ...) or give an [environment] to produce them while training"
            )
        setup.checked.append(f"dataset {dataset} ({count} training samples)")
        if self.validation_split and not stored_fields(dataset, self.database_config, "validation")[1]:
            held = held_out(count, self.validation_split)
            setup.checked.append(f"validation split: {held} of them held out")
        setup.read("the dataset", dataset)
        return f"the dataset {dataset}"

    def _own_dataset(self, reopened: Path | None) -> Path:
        """The dataset of the session this run resumes, when training without environment nor existing_dir."""
        if reopened is None:
            raise ConfigError(
                "DatabaseConfig: Training without an environment reads a stored dataset: set existing_dir to a "
                "session made by `python -m dpx generate` (or give an [environment] to produce the samples)"
            )
        dataset = reopened / "dataset"
        if not (dataset / "dataset.json").exists():
            raise ConfigError(
                f"Training: session_name={self.session_name!r}: {reopened} holds no dataset to resume training on; "
                "set DatabaseConfig(existing_dir=...) to a generated session"
            )
        return dataset

    @property
    def _feeds_only(self) -> bool:
        return feeding.feeds_only(self.environment_config, self.database_config.existing_dir)

    def _open(self, setup: SetUp) -> tuple[Session, Database]:
        if self.environment_config is not None and not self._feeds_only:
            existing = self.database_config.existing_dir
            session = Session.for_dataset(existing, self.session_dir, self.session_name, self.new_session)
            return session, Database(session.dataset_dir, self.database_config)
        session = Session.start(self.session_dir, self.session_name, self.new_session)
        return session, Database(setup.dataset, self.database_config, readonly=True)

    def _resume_point(self, reopened: Path | None) -> Path | None:
        """The checkpoint to start from: the config's network, else the resumed session's last one."""
        config = self.network_config
        if config.network_dir is not None:
            try:
                return find_checkpoint(config.network_dir, config.network_name, config.which_network)
            except FileNotFoundError as exc:
                raise ConfigError(f"NetworkConfig: {exc}") from None
        if reopened is None:
            return None
        last = checkpoint_path(reopened / "network", config.network_name)
        return last if last.exists() else None

    def _seed(self, session: Session) -> int:
        """The given seed, else the one this session's previous training used (a resume continues its streams)."""
        previous = None if self.new_session or self.seed is not None else session.last_run("Training")
        if previous and previous.get("seed") is not None:
            return int(previous["seed"])
        return resolve_seed(self.seed)[0]

    # -- running -----------------------------------------------------------------------

    def execute(self, setup: SetUp | None = None) -> TrainingSummary:
        """Train; ``setup`` is what :meth:`prepare` returned (prepared here when None)."""
        setup = setup or self.prepare()
        backend_class = load_backend(self.network_config)
        session, database = self._open(setup)
        if database.path != session.dataset_dir:  # the network's session keeps the constants of its data
            parameters.write_parameters(session.dataset_dir, parameters.read_parameters(database.path))
        self.session_path = session.path
        checkpoint = setup.checkpoint
        seed = self._seed(session)
        environment_seed = environment_key = None
        if setup.runner_class is not None:
            environment_seed, environment_key = resolve_seed(setup.seed if setup.seed is not None else seed)
        lifecycle = Lifecycle("Training", self.disable_plugins)
        configs = {
            "network": as_record(self.network_config),
            "database": as_record(self.database_config),
            "environment": as_record(self.environment_config) if self.environment_config else None,
            "pipeline": {"epoch_nb": self.epoch_nb, "batch_nb": self.batch_nb, "batch_size": self.batch_size,
                         "validation_split": self.validation_split, "patience": self.patience,
                         "min_delta": self.min_delta},
        }
        run = _Run(self, session, database, seed, lifecycle)
        session.record_run(
            "Training",
            configs,
            seed=seed,
            environment_seed=environment_seed,
            checkpoint=str(checkpoint) if checkpoint else None,
            **run.split_record(),
            run_id=lifecycle.run_id,
            joined_plugins=lifecycle.joined,
            outcome="started",
        )
        outcome, summary, error = "completed", None, None
        try:
            lifecycle.start(session.path, configs, seed)
            if setup.runner_class is not None:
                run.runner = setup.runner_class(self.environment_config, environment_key)
                parameters.give(run.runner, database.path)
                run.runner.start()
                parameters.keep(run.runner, None if self._feeds_only else database.path)
                with contextlib.suppress(NotImplementedError):  # a runner routing no request: its environments hear of no network
                    run.runner.connect(run.predictor)
            summary = run.train(backend_class, checkpoint)
            return summary
        except BaseException as exc:
            outcome, error = outcome_of(exc), exc
            raise
        finally:
            run.close()
            steps = run.progress.done - run.progress.initial if run.progress is not None else 0
            stopped = {"stopped": summary.stopped} if summary is not None and summary.stopped else {}
            session.finish_run(outcome, steps=steps, samples=run.samples, **stopped)
            lifecycle.end(outcome, summary, error)
            if outcome == "interrupted":
                log.warning("dpx: interrupted; the network of the last complete epoch is saved in %s: %s.",
                            session.network_dir, session.resume_hint("Training"))


class _Run:
    """The state of one execution of a Training pipeline."""

    def __init__(self, pipeline: Training, session: Session, database: Database, seed: int, lifecycle: Lifecycle) -> None:
        self.p = pipeline
        self.lifecycle = lifecycle
        #: Looked up once: with no plugin implementing it, a step pays one test of None.
        self.on_step = lifecycle.hook("dpx_training_step_end")
        self.session, self.database = session, database
        self.config = pipeline.network_config
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.runner: Any = None
        self.feed: _Feed | None = None
        self.backend: Any = None
        #: Answers the environments' ``get_prediction`` with the network trained here; steps hold its lock.
        self.predictor = TrainingPredictor()
        self.lock = self.predictor.lock
        #: Whether the first produced batch is still awaited (the trainer then blocks on it, uncounted).
        self.awaiting_first = False
        self.stats: Stats | None = None
        self.progress: Progress | None = None
        self.step = self.samples = self.starved = self.replayed = 0
        self.last_loss = math.nan
        self.fields = self.config.input_fields + self.config.target_fields
        #: The first sample id the next producing epoch makes (what is stored before it stays).
        self.next_sample = self._stored()
        #: With ``validation_split``: the stored training samples trained on, and those held out.
        self.train_ids, self.validation_ids = self._split()
        self.best = {"loss": math.inf, "epoch": -1, "waited": 0}

    def _split(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The seeded hold-out of ``validation_split``, when the dataset has no validation samples."""
        if not self.p.validation_split or self._count("validation"):
            if self.p.validation_split:
                log.info("dpx: the dataset has validation samples: validation_split=%s is not used", self.p.validation_split)
            return None, None
        count = self._stored()
        held = held_out(count, self.p.validation_split)
        order = np.random.default_rng([self.seed, SPLIT_STREAM]).permutation(count)
        return np.sort(order[held:]), np.sort(order[:held])

    def split_record(self) -> dict[str, Any]:
        """What ``session.json`` records of the validation split (nothing without one)."""
        if self.validation_ids is None:
            return {}
        return {"validation_split": {"fraction": self.p.validation_split, "validation_samples": len(self.validation_ids),
                                     "training_samples": len(self.train_ids), "seed": self.seed, "stream": SPLIT_STREAM}}

    def _count(self, mode: str) -> int:
        return self.database.count(mode) if mode in self.database.modes else 0

    def train(self, backend_class: type, checkpoint: Path | None) -> TrainingSummary:
        first_epoch, extra, continuing = 0, None, False
        if checkpoint is not None:
            extra = backend_class.read_extra(checkpoint)
            self.config = with_saved_kwargs(self.config, extra)
            continuing = self.session.path.resolve() in checkpoint.resolve().parents
            if continuing:  # this session's own checkpoint: exact continuation
                try:
                    first_epoch = _epoch_of(extra) + 1
                    self.step = int(extra.get("step", 0))
                    self.rng.bit_generator.state = extra["shuffle_rng"]
                    self.next_sample = int(extra.get("next_sample", self.next_sample))
                    self.best = _best_state(extra.get("best"), self.best)
                except (KeyError, TypeError, ValueError) as exc:
                    raise CheckpointError(f"{checkpoint}: the checkpoint's training state is unreadable ({exc!r})") from None
        self.stats = Stats(self.session.stats_dir, self.p.stats_writers, self.p.histograms)
        self.stats.resume(self.step, first_epoch - 1, extra.get("stats") if continuing else None)
        moments = self.database.normalization  # before this run stores anything
        producing = first_epoch < self.p.epoch_nb and self._producing(first_epoch)
        first_batch, waits = None, self._network_waits(extra, moments) if producing else None
        if waits is None:  # built before production, so the environments can ask it from their first sample
            self._build(backend_class, checkpoint, extra, moments, None)
        else:
            self.predictor.unavailable = f"the network is built from the first batch, which this sample is part of: {waits}"
        # held until the network is saved, and while it is built from the first batch (the next would ask it)
        batches = self._epoch_batches(first_epoch, hold=not continuing or waits is not None)
        if producing:
            self.awaiting_first = True
            first_batch = next(batches)
            self.awaiting_first = False
        if self.backend is None:
            self._build(backend_class, checkpoint, extra, moments, first_batch)
        if producing and not continuing:
            self._save(first_epoch - 1)  # the resume point of an epoch 0 interrupted before its end
        if producing and self.feed is not None:
            self.feed.release()
        per_epoch = self._batches_per_epoch()
        total = per_epoch * self.p.epoch_nb
        self.progress = Progress(total, desc="train", unit="batch", initial=per_epoch * first_epoch, enabled=self.p.progress,
                                 postfix=self._progress_figures)
        epoch_loss, validation, stopped, epochs = math.nan, None, None, 0
        start = time.perf_counter()
        for epoch in range(first_epoch, self.p.epoch_nb):
            losses = []
            if epoch > first_epoch:
                batches = self._epoch_batches(epoch)
            elif first_batch is not None:
                losses.append(self._train_batch(epoch, first_batch))
            for batch in batches:
                losses.append(self._train_batch(epoch, batch))
            epoch_loss = float(np.mean(losses)) if losses else math.nan
            validation = self._validation_loss()
            metrics = self.stats.epoch(epoch, epoch_loss, validation)
            if self.p.histograms:
                self.stats.parameters(epoch, self.backend.parameter_histograms())
            end_epoch = getattr(self.backend, "end_epoch", None)
            if end_epoch is not None:  # e.g. a learning-rate schedule, saved with the checkpoint below
                end_epoch(epoch_loss, validation)
            improved = self._track_best(epoch, validation if validation is not None else epoch_loss)
            self._save(epoch, best=improved)
            epochs += 1
            stopped = self._early_stop() or self.lifecycle.call(
                "dpx_epoch_end", epoch=epoch, loss=epoch_loss, validation_loss=validation,
                metrics={**metrics, "learning_rate": self.backend.learning_rate},
            )
            if stopped:
                log.info("dpx: training stopped after epoch %d: %s", epoch, stopped)
                break
        elapsed = time.perf_counter() - start
        return TrainingSummary(
            self.session.path, epochs, self.progress.done - self.progress.initial,
            epoch_loss, validation, elapsed, self.samples, self.starved, self.replayed, str(stopped) if stopped else None,
        )

    def _build(self, backend_class: type, checkpoint: Path | None, extra: dict | None, moments: dict,
               first_batch: dict[str, np.ndarray] | None) -> None:
        """Build the backend (from ``checkpoint`` when given) and let the environments ask it."""
        self.specs = self._field_specs(first_batch)
        self.normalization = self._normalization(checkpoint, extra, moments, first_batch)
        self.backend = backend_class(self.config, self.specs, self.normalization, seed=self.seed)
        if checkpoint is not None:
            self.backend.load(checkpoint, training=True)
        path = checkpoint_path(self.session.network_dir, self.config.network_name)
        self.predictor.serve(Predictor(self.backend, self.specs, path, self.config))

    def _network_waits(self, extra: dict | None, moments: dict) -> str | None:
        """Why the network can only be built from the first produced batch, and what to change; None when it need not."""
        if "training" not in self.database.modes and self._declared_specs() is None:
            return (f"declare the dtype and shape of the fields {self.fields} in define_training_fields() "
                    "(e.g. ('input', np.float32, (3,))) to have it built before")
        if self.p.database_config.normalize and not moments and not (extra and extra.get("normalization") is not None):
            return ("with DatabaseConfig(normalize=True) and no stored sample, the normalisation comes from that batch; "
                    "start from a trained network (NetworkConfig(network_dir=...)), extend a dataset holding samples "
                    "(existing_dir=...) or set normalize=False")
        return None

    def _declared_specs(self) -> dict[str, tuple[np.dtype, tuple[int, ...]]] | None:
        """The network's fields as the environments declared them, or None when one lacks its dtype or shape."""
        declared = self.runner.fields if self.runner is not None else {}
        specs = {}
        for name in self.fields:
            field = declared.get(name)
            if field is None or field.dtype is None or field.shape is None:
                return None
            specs[name] = (field.dtype, tuple(field.shape))
        return specs

    def _track_best(self, epoch: int, loss: float) -> bool:
        """Whether ``loss`` beats the best so far by more than ``min_delta`` (the best network is then this one)."""
        best = self.best
        if math.isfinite(loss) and loss < best["loss"] - self.p.min_delta:
            best.update(loss=loss, epoch=epoch, waited=0)
            return True
        best["waited"] += 1
        return False

    def _early_stop(self) -> str | None:
        patience, best = self.p.patience, self.best
        if patience is None or best["waited"] < patience:
            return None
        which = "validation loss" if self._has_validation() else "training loss"
        return (f"the {which} has not improved by more than {self.p.min_delta:g} for {best['waited']} epochs "
                f"(best {best['loss']:.4g} at epoch {best['epoch']})")

    def _stored(self) -> int:
        return self.database.count("training") if "training" in self.database.modes else 0

    def _producing(self, epoch: int) -> bool:
        return self.runner is not None and not self.p._feeds_only and (
            epoch == 0 or self.p.environment_config.always_produce)

    def _field_specs(self, first_batch: dict[str, np.ndarray] | None) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        if first_batch is not None:
            specs = {name: (a.dtype, a.shape[1:]) for name, a in first_batch.items()}
        elif "training" in self.database.modes:
            specs = self.database.fields("training")
        elif (declared := self._declared_specs()) is not None:
            specs = declared
        else:
            raise TrainingError(f"the dataset {self.database.path} holds no training samples; generate data first")
        missing = [name for name in self.fields if name not in specs]
        if missing:
            raise ConfigError(
                f"NetworkConfig names field(s) {missing} that the data does not have; fields are {sorted(specs)}"
            )
        return specs

    def _normalization(self, checkpoint: Path | None, extra: dict | None, moments: dict, first_batch: dict | None):
        if extra and extra.get("normalization") is not None:
            return saved_normalization(extra, checkpoint)
        if not self.p.database_config.normalize:
            return {}
        if not moments and first_batch is not None:
            from dpx.core.database import Moments

            moments = {n: Moments.of(a) for n, a in first_batch.items() if a.dtype.kind == "f"}
            log.info("dpx: normalising with the statistics of the first produced batch")
        return normalization_from(moments, self.fields)

    def _batches_per_epoch(self) -> int:
        if self.p.batch_nb is not None:
            return self.p.batch_nb
        count = self._count("training") if self.train_ids is None else len(self.train_ids)
        if count == 0:
            raise TrainingError(f"the dataset {self.database.path} holds no training samples; generate data first")
        return math.ceil(count / self.p.batch_size)

    def _epoch_batches(self, epoch: int, hold: bool = False) -> Iterator[dict[str, np.ndarray]]:
        if self._producing(epoch):
            yield from self._produced_batches(hold)
            return
        count = self.database.count("training")
        if count == 0:
            raise TrainingError(f"the dataset {self.database.path} holds no training samples; generate data first")
        limit = self.p.batch_nb if self.p.batch_nb is not None else math.inf
        done = 0
        while done < limit:  # with batch_nb set, an epoch may span several passes
            for batch in self._stored_batches(epoch, count):
                yield batch
                done += 1
                if done >= limit:
                    return
            if limit is math.inf:
                return

    def _stored_batches(self, epoch: int, count: int) -> Iterator[dict[str, np.ndarray]]:
        """One pass over the stored samples; fed to the environments in the epochs ``load_samples`` says."""
        if self.runner is None or not feeding.feeds(self.p.environment_config, epoch):
            return self.database.batches("training", self.p.batch_size, fields=self.fields, rng=self.rng,
                                         indices=self.train_ids)
        order = self.rng.permutation(count) if self.p.database_config.shuffle else np.arange(count)
        return feeding.fed_batches(self.runner, self.database, "training", self.p.batch_size, self.fields, order)

    def _produced_batches(self, hold: bool) -> Iterator[dict[str, np.ndarray]]:
        """The epoch's batches of sample ids ``next_sample + k * batch_size``: stored ones read back, the rest produced.

        Samples an interrupted run stored are replayed rather than produced
        again; a ``hold`` feed stores nothing until :meth:`_Feed.release`.
        """
        size, first = self.p.batch_size, self.next_sample
        end, stored = first + self.p.batch_nb * size, self._stored()
        if stored > first:
            log.info("dpx: replaying the %d samples stored before the interruption", min(stored, end) - first)
        chunks = [np.arange(max(start, stored), start + size) for start in range(first, end, size) if start + size > stored]
        self.feed = _Feed(self.runner, self.database, chunks, hold) if chunks else None
        for start in range(first, end, size):
            head = self.database.read("training", self.fields, np.arange(start, min(start + size, stored))) if start < stored else None
            if start + size <= stored:
                yield head
                continue
            while True:
                batch = self.feed.get(block=self.awaiting_first)  # the first batch is awaited, not counted
                if batch is not None:
                    break
                count = self._stored()
                if self.p.replay_when_starved and count >= size:
                    self.replayed += 1
                    yield self.database.read("training", self.fields, np.sort(self.rng.choice(count, size, replace=False)))
                    continue
                self.starved += 1
                batch = self.feed.get(block=True)
                break
            if head is not None:  # a batch cut by the interruption: its stored part, then the rest
                batch = {name: np.concatenate([head[name], batch[name]]) for name in self.fields}
            yield batch
        if self.feed is not None:
            self.feed.close()
            self.feed = None
        self.next_sample = self._stored()

    def _train_batch(self, epoch: int, batch: dict[str, np.ndarray]) -> float:
        try:
            with self.lock:  # environments asking for predictions wait for the step's end
                metrics = self.backend.train_batch(batch)
        except NonFiniteLossError as exc:
            path = self._save(epoch - 1, last_good=True)
            raise TrainingError(
                f"{exc} at epoch {epoch}, step {self.step}: training stopped before applying it. "
                f"The network as it was before this step is saved in {path}. Lower the learning rate, "
                "normalise the data (DatabaseConfig(normalize=True)) or check the samples for outliers."
            ) from exc
        loss = float(metrics.pop("loss"))
        self.step += 1
        self.samples += len(next(iter(batch.values())))
        values = self.stats.batch(self.step, loss, metrics, self.backend.learning_rate)
        if self.on_step is not None:
            self.on_step(run=self.lifecycle.run, epoch=epoch, step=self.step, loss=loss, values=values)
        self.last_loss = loss
        self.progress.update(1)
        return loss

    def _progress_figures(self) -> dict[str, Any]:
        """What the progress line shows after the count (computed only when it is drawn)."""
        online = {"replayed": self.replayed, "waited": self.starved} if self.feed is not None else {}
        return {"loss": f"{self.last_loss:.4g}", **online}

    def _has_validation(self) -> bool:
        return self.validation_ids is not None or self._count("validation") > 0

    def _validation_loss(self) -> float | None:
        if not self._has_validation():
            return None
        mode = "validation" if self.validation_ids is None else "training"
        losses, weights = [], []
        for batch in self.database.batches(mode, self.p.batch_size, shuffle=False, fields=self.fields,
                                           indices=self.validation_ids):
            with self.lock:
                losses.append(self.backend.validation_loss(batch))
            weights.append(len(batch[self.fields[0]]))
        return float(np.average(losses, weights=weights))

    def _save(self, epoch: int, last_good: bool = False, best: bool = False) -> Path:
        extra = {
            "epoch": epoch,
            "step": self.step,
            "next_sample": self.next_sample,
            "shuffle_rng": self.rng.bit_generator.state,
            "normalization": {n: {"mean": m.tolist(), "std": s.tolist()} for n, (m, s) in self.normalization.items()},
            "fields": {n: {"dtype": str(d), "shape": list(shape)} for n, (d, shape) in self.specs.items() if n in self.fields},
            "network_config": _jsonable(as_record(self.config)),
            "last_good": last_good,
            "stats": self.stats.state(),
            "best": dict(self.best),
        }
        network_dir, name = self.session.network_dir, self.config.network_name
        path = checkpoint_path(network_dir, name)
        self.backend.save(path, extra)
        self.lifecycle.call("dpx_checkpoint_saved", path=path, epoch=epoch, best=False)
        if self.config.save_each_epoch and epoch >= 0 and not last_good:
            each = checkpoint_path(network_dir, name, epoch)
            self.backend.save(each, extra)
            self.lifecycle.call("dpx_checkpoint_saved", path=each, epoch=epoch, best=False)
        if best:  # a copy of the file just written: cheaper than saving again
            best_path = checkpoint_path(network_dir, name, "best")
            tmp = best_path.with_suffix(".tmp")
            shutil.copyfile(path, tmp)
            os.replace(tmp, best_path)
            self.lifecycle.call("dpx_checkpoint_saved", path=best_path, epoch=epoch, best=True)
        return path

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.feed is not None:
            self.feed.close()
        if self.runner is not None:
            self.runner.close()
        if self.stats is not None:
            self.stats.close()
        self.database.close()


def held_out(count: int, fraction: float) -> int:
    """How many of ``count`` samples ``validation_split=fraction`` holds out; both parts must keep one or more."""
    held = round(count * fraction)
    if held < 1 or held >= count:
        raise ConfigError(f"Training: validation_split={fraction} of {count} training samples leaves {held} for "
                          f"validation and {count - held} to train on; both need one or more")
    return held


def _best_state(saved: Any, default: dict[str, Any]) -> dict[str, Any]:
    """The best-network record of a checkpoint (untrusted), or ``default`` for an older checkpoint."""
    if saved is None:
        return default
    return {"loss": float(saved["loss"]), "epoch": int(saved["epoch"]), "waited": int(saved["waited"])}


def _epoch_of(extra: dict | None) -> int:
    return int(extra.get("epoch", -1)) if extra else -1


def _jsonable(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, (str, int, float, bool, list, dict, type(None))) else str(v) for k, v in record.items()}


class _Feed:
    """Produce ``chunks`` of sample ids in a thread, queue copies for the trainer and store them.

    A feed built with ``hold`` produces its first chunk but stores nothing
    until :meth:`release`: the trainer first saves the checkpoint that an
    interrupted epoch resumes from, so no stored sample predates it.
    """

    def __init__(self, runner: Any, database: Database, chunks: list[np.ndarray], hold: bool = False, mode: str = "training"):
        self.runner, self.database, self.mode, self.chunks = runner, database, mode, chunks
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._released = threading.Event()
        if not hold:
            self._released.set()
        self.thread = threading.Thread(target=self._run, name="dpx-producer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            stream = MODE_STREAMS[self.mode]
            for k, ids in enumerate(self.chunks):
                if self._stop.is_set():
                    return
                batch = self.runner.produce(ids, stream)
                self._put({name: array.copy() for name, array in batch.items()})
                while not self._released.wait(0.1):
                    if self._stop.is_set():
                        return
                if k == 0:
                    self.database.prepare(self.mode, {n: (a.dtype, a.shape[1:]) for n, a in batch.items()})
                self.database.append(self.mode, batch)
        except BaseException as exc:  # handed to the trainer, which raises it
            self.error = exc
        finally:
            self._put(None)

    def release(self) -> None:
        """Let a held feed store what it produces."""
        self._released.set()

    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def get(self, block: bool = True) -> dict[str, np.ndarray] | None:
        """The next produced batch, or None when none is ready yet (``block=False``).

        The trainer asks only for batches it expects, so the end of production
        here means the environments failed: their error is raised.
        """
        try:
            item = self.queue.get(block=block)
        except queue.Empty:
            return None
        if item is None:
            self.queue.put(None)  # later calls see the end too
            if self.error is not None:
                raise self.error
            raise TrainingError("the environments stopped producing before the epoch was complete")
        return item

    def close(self) -> None:
        """Stop producing and publish every stored sample to the readers."""
        self._stop.set()
        self.thread.join()
        self.database.commit()
