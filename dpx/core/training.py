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

After every epoch the last network is saved as a checkpoint holding what an
exact resume needs: weights, optimiser state, the epoch and step reached, the
RNG states and the normalisation. Running the same pipeline again with
``new_session=False`` continues from it.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dpx.core.config import (
    MODE_STREAMS,
    ConfigError,
    DatabaseConfig,
    EnvironmentConfig,
    NetworkConfig,
    as_record,
)
from dpx.core.database import Database, dataset_path
from dpx.core.network import checkpoint_path, find_checkpoint, load_backend, normalization_from
from dpx.core.producer import resolve_seed
from dpx.core.progress import Progress
from dpx.core.session import Session
from dpx.core.stats import Stats

log = logging.getLogger("dpx.training")


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

    def __str__(self) -> str:
        text = (
            f"{self.epochs} epochs, {self.steps} steps in {self.seconds:.1f}s "
            f"({self.samples / max(self.seconds, 1e-9):,.0f} samples/s); last epoch loss {self.loss:.4g}"
        )
        if self.validation_loss is not None:
            text += f", validation loss {self.validation_loss:.4g}"
        if self.replayed_steps or self.starved_steps:
            text += f"; {self.replayed_steps} steps replayed stored samples, {self.starved_steps} waited for data"
        return f"{text}\nsession: {self.session_path}"


class Training:
    """Train the network of ``network_config`` for ``epoch_nb`` epochs of ``batch_nb`` batches.

    ``batch_nb=None`` means one full pass over the stored samples per epoch
    (it is required when an environment produces the data).
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
    ) -> None:
        for name, value, minimum in (("epoch_nb", epoch_nb, 1), ("batch_size", batch_size, 1)):
            if not isinstance(value, int) or value < minimum:
                raise ConfigError(f"Training: {name}={value!r} must be an integer >= {minimum}")
        if batch_nb is not None and (not isinstance(batch_nb, int) or batch_nb < 1):
            raise ConfigError(f"Training: batch_nb={batch_nb!r} must be a positive integer or None")
        if environment_config is not None and batch_nb is None:
            raise ConfigError("Training: batch_nb is required when an environment produces the data")
        self.network_config = network_config
        self.database_config = database_config or DatabaseConfig()
        self.environment_config = environment_config
        self.session_dir, self.session_name, self.new_session = session_dir, session_name, new_session
        self.epoch_nb, self.batch_nb, self.batch_size = epoch_nb, batch_nb, batch_size
        self.stats_writers, self.histograms = list(stats), histograms
        self.replay_when_starved = replay_when_starved
        self.seed = seed
        self.progress = progress
        self.session_path: Path | None = None

    # -- set-up ------------------------------------------------------------------------

    def _open(self) -> tuple[Session, Database]:
        existing = self.database_config.existing_dir
        if self.environment_config is not None:
            session = Session.for_dataset(existing, self.session_dir, self.session_name, self.new_session)
            return session, Database(session.dataset_dir, self.database_config)
        own = Path(self.session_dir) / self.session_name / "dataset"
        source = dataset_path(existing) if existing is not None else own
        if not (source / "dataset.json").exists() or (existing is None and self.new_session):
            raise FileNotFoundError(
                f"Training without an environment needs a dataset: {source} has none; "
                "set DatabaseConfig(existing_dir=...) or give an EnvironmentConfig"
            )
        session = Session.start(self.session_dir, self.session_name, self.new_session)
        return session, Database(source, self.database_config, readonly=True)

    def _resume_point(self, session: Session) -> Path | None:
        """The checkpoint to start from: the config's network, else this session's last one."""
        config = self.network_config
        if config.network_dir is not None:
            return find_checkpoint(config.network_dir, config.network_name, config.which_network)
        last = checkpoint_path(session.network_dir, config.network_name)
        return last if not self.new_session and last.exists() else None

    # -- running -----------------------------------------------------------------------

    def execute(self) -> TrainingSummary:
        backend_class = load_backend(self.network_config)
        runner_class = None
        if self.environment_config is not None:
            from dpx.plugins import get_plugins

            runner_class = get_plugins().load("runners", self.environment_config.runner)
            runner_class.check_options(self.environment_config)
            self.environment_config.resolve_environment()
        session, database = self._open()
        self.session_path = session.path
        checkpoint = self._resume_point(session)
        seed, _ = resolve_seed(self.seed)
        session.record_run(
            "Training",
            {
                "network": as_record(self.network_config),
                "database": as_record(self.database_config),
                "environment": as_record(self.environment_config) if self.environment_config else None,
                "pipeline": {"epoch_nb": self.epoch_nb, "batch_nb": self.batch_nb, "batch_size": self.batch_size},
            },
            seed=seed,
            checkpoint=str(checkpoint) if checkpoint else None,
        )
        run = _Run(self, session, database, seed)
        try:
            if runner_class is not None:
                env_seed = self.environment_config.seed if self.environment_config.seed is not None else seed
                run.runner = runner_class(self.environment_config, resolve_seed(env_seed)[1])
                run.runner.start()
            return run.train(backend_class, checkpoint)
        finally:
            run.close()


class _Run:
    """The state of one execution of a Training pipeline."""

    def __init__(self, pipeline: Training, session: Session, database: Database, seed: int) -> None:
        self.p = pipeline
        self.session, self.database = session, database
        self.config = pipeline.network_config
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.runner: Any = None
        self.feed: _Feed | None = None
        self.stats = Stats(session.stats_dir, pipeline.stats_writers, pipeline.histograms)
        self.progress: Progress | None = None
        self.step = self.samples = self.starved = self.replayed = 0
        self.fields = self.config.input_fields + self.config.target_fields

    def train(self, backend_class: type, checkpoint: Path | None) -> TrainingSummary:
        first_epoch, first_batch, extra = 0, None, None
        if checkpoint is not None:
            extra = backend_class.read_extra(checkpoint)
            if self.session.path.resolve() in checkpoint.resolve().parents:  # this session: exact continuation
                first_epoch = _epoch_of(extra) + 1
                self.step = int(extra.get("step", 0))
                self.rng.bit_generator.state = extra["shuffle_rng"]
        if self.runner is not None and (first_epoch == 0 or self.p.environment_config.always_produce):
            self.feed = _Feed(self.runner, self.database, self.p.batch_nb, self.p.batch_size)
            first_batch = self.feed.get()
        self.specs = self._field_specs(first_batch)
        self.normalization = self._normalization(extra, first_batch)
        self.backend = backend_class(self.config, self.specs, self.normalization, seed=self.seed)
        if checkpoint is not None:
            self.backend.load(checkpoint, training=True)
        per_epoch = self._batches_per_epoch()
        total = per_epoch * self.p.epoch_nb
        self.progress = Progress(total, desc="train", unit="batch", initial=per_epoch * first_epoch, enabled=self.p.progress)
        epoch_loss, validation = math.nan, None
        start = time.perf_counter()
        for epoch in range(first_epoch, self.p.epoch_nb):
            losses = []
            for batch in self._epoch_batches(epoch, first_batch if epoch == first_epoch else None):
                losses.append(self._train_batch(epoch, batch))
            epoch_loss = float(np.mean(losses)) if losses else math.nan
            validation = self._validation_loss()
            self.stats.epoch(epoch, epoch_loss, validation)
            if self.p.histograms:
                self.stats.parameters(epoch, self.backend.parameter_histograms())
            self._save(epoch)
        elapsed = time.perf_counter() - start
        return TrainingSummary(
            self.session.path, self.p.epoch_nb - first_epoch, self.progress.done - self.progress.initial,
            epoch_loss, validation, elapsed, self.samples, self.starved, self.replayed,
        )

    def _field_specs(self, first_batch: dict[str, np.ndarray] | None) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        if first_batch is not None:
            specs = {name: (a.dtype, a.shape[1:]) for name, a in first_batch.items()}
        elif "training" in self.database.modes:
            specs = self.database.fields("training")
        else:
            raise TrainingError(f"the dataset {self.database.path} holds no training samples; generate data first")
        missing = [name for name in self.fields if name not in specs]
        if missing:
            raise ConfigError(
                f"NetworkConfig names field(s) {missing} that the data does not have; fields are {sorted(specs)}"
            )
        return specs

    def _normalization(self, extra: dict | None, first_batch: dict | None):
        if extra and extra.get("normalization") is not None:
            return {name: (np.asarray(v["mean"]), np.asarray(v["std"])) for name, v in extra["normalization"].items()}
        if not self.p.database_config.normalize:
            return {}
        moments = self.database.normalization
        if not moments and first_batch is not None:
            from dpx.core.database import Moments

            moments = {n: Moments.of(a) for n, a in first_batch.items() if a.dtype.kind == "f"}
            log.info("dpx: normalising with the statistics of the first produced batch")
        return normalization_from(moments, self.fields)

    def _batches_per_epoch(self) -> int:
        if self.p.batch_nb is not None:
            return self.p.batch_nb
        count = self.database.count("training") if "training" in self.database.modes else 0
        if count == 0:
            raise TrainingError(f"the dataset {self.database.path} holds no training samples; generate data first")
        return math.ceil(count / self.p.batch_size)

    def _epoch_batches(self, epoch: int, first_batch: dict | None) -> Iterator[dict[str, np.ndarray]]:
        producing = self.runner is not None and (epoch == 0 or self.p.environment_config.always_produce)
        if producing:
            yield from self._produced_batches(first_batch)
            return
        if self.feed is not None:
            self.feed.close()
            self.feed = None
        count = self.database.count("training")
        if count == 0:
            raise TrainingError(f"the dataset {self.database.path} holds no training samples; generate data first")
        limit = self.p.batch_nb if self.p.batch_nb is not None else math.inf
        done = 0
        while done < limit:  # with batch_nb set, an epoch may span several passes
            for batch in self.database.batches("training", self.p.batch_size, fields=self.fields, rng=self.rng):
                yield batch
                done += 1
                if done >= limit:
                    return
            if limit is math.inf:
                return

    def _produced_batches(self, first_batch: dict | None) -> Iterator[dict[str, np.ndarray]]:
        if self.feed is None:
            self.feed = _Feed(self.runner, self.database, self.p.batch_nb, self.p.batch_size)
        fresh = 0
        if first_batch is not None:
            fresh += 1
            yield first_batch
        while fresh < self.p.batch_nb:
            batch = self.feed.get(block=False)
            if batch is None:
                stored = self.database.count("training") if "training" in self.database.modes else 0
                if self.p.replay_when_starved and stored >= self.p.batch_size:
                    self.replayed += 1
                    ids = np.sort(self.rng.choice(stored, self.p.batch_size, replace=False))
                    yield self.database.read("training", self.fields, ids)
                    continue
                self.starved += 1
                batch = self.feed.get(block=True)
            fresh += 1
            yield batch
        self.feed.close()
        self.feed = None

    def _train_batch(self, epoch: int, batch: dict[str, np.ndarray]) -> float:
        try:
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
        self.stats.batch(self.step, loss, metrics, self.backend.learning_rate)
        online = {"replayed": self.replayed, "waited": self.starved} if self.feed is not None else {}
        self.progress.update(1, loss=f"{loss:.4g}", **online)
        return loss

    def _validation_loss(self) -> float | None:
        if "validation" not in self.database.modes or self.database.count("validation") == 0:
            return None
        losses, weights = [], []
        for batch in self.database.batches("validation", self.p.batch_size, shuffle=False, fields=self.fields):
            losses.append(self.backend.validation_loss(batch))
            weights.append(len(batch[self.fields[0]]))
        return float(np.average(losses, weights=weights))

    def _save(self, epoch: int, last_good: bool = False) -> Path:
        extra = {
            "epoch": epoch,
            "step": self.step,
            "shuffle_rng": self.rng.bit_generator.state,
            "normalization": {n: {"mean": m.tolist(), "std": s.tolist()} for n, (m, s) in self.normalization.items()},
            "fields": {n: {"dtype": str(d), "shape": list(shape)} for n, (d, shape) in self.specs.items() if n in self.fields},
            "network_config": _jsonable(as_record(self.config)),
            "last_good": last_good,
        }
        network_dir = self.session.network_dir
        path = checkpoint_path(network_dir, self.config.network_name)
        self.backend.save(path, extra)
        if self.config.save_each_epoch and epoch >= 0 and not last_good:
            self.backend.save(checkpoint_path(network_dir, self.config.network_name, epoch), extra)
        return path

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.feed is not None:
            self.feed.close()
        if self.runner is not None:
            self.runner.close()
        self.stats.close()
        self.database.close()


def _epoch_of(extra: dict | None) -> int:
    return int(extra.get("epoch", -1)) if extra else -1


def _jsonable(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, (str, int, float, bool, list, dict, type(None))) else str(v) for k, v in record.items()}


class _Feed:
    """Produce ``batch_nb`` batches in a thread, store them, queue copies for the trainer."""

    def __init__(self, runner: Any, database: Database, batch_nb: int, batch_size: int, mode: str = "training"):
        self.runner, self.database, self.mode = runner, database, mode
        self.batch_nb, self.batch_size = batch_nb, batch_size
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="dpx-producer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            first = self.database.count(self.mode) if self.mode in self.database.modes else 0
            stream = MODE_STREAMS[self.mode]
            for k in range(self.batch_nb):
                if self._stop.is_set():
                    return
                ids = np.arange(first + k * self.batch_size, first + (k + 1) * self.batch_size)
                batch = self.runner.produce(ids, stream)
                if k == 0:
                    self.database.prepare(self.mode, {n: (a.dtype, a.shape[1:]) for n, a in batch.items()})
                self.database.append(self.mode, batch)
                self._put({name: array.copy() for name, array in batch.items()})
        except BaseException as exc:  # handed to the trainer, which raises it
            self.error = exc
        finally:
            self._put(None)

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
