"""The DataGeneration pipeline: run environments, store their samples.

``batch_nb * batch_size`` is the number of samples the dataset's mode should
hold. Running the pipeline again on the same session (``new_session=False``)
resumes: it produces only the samples still missing, with the seed recorded
by the first run, so the dataset equals the one an uninterrupted run makes.
Everything is checked by :meth:`DataGeneration.prepare` before the session
folder is created.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dpx.core import parameters
from dpx.core.config import MODE_STREAMS, ConfigError, DatabaseConfig, EnvironmentConfig, as_record
from dpx.core.database import Database
from dpx.core.lifecycle import Lifecycle, check_disabled
from dpx.core.preflight import (
    SetUp,
    check_batch_memory,
    check_environment,
    check_extension,
    check_partitions,
    check_session_location,
    check_storage,
)
from dpx.core.producer import resolve_seed
from dpx.core.sampling import DEFAULT_SAMPLER, ask_checked, build_sampler, check_same_sampler, sampler_seed
from dpx.core.progress import Progress
from dpx.core.session import Session, existing_dataset, outcome_of
from dpx.core.storage import StorageError, StorageFullError

log = logging.getLogger("dpx.generation")

#: Batches smaller than this are gathered into blocks of about this size before they are stored.
STAGE_BYTES = 1 << 20


@dataclass
class GenerationSummary:
    session_path: Path
    mode: str
    produced: int
    total: int
    seconds: float
    refused: int = 0
    non_finite: int = 0

    @property
    def rate(self) -> float:
        return self.produced / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        text = (
            f"{self.produced} {self.mode} samples in {self.seconds:.2f}s ({self.rate:,.0f} samples/s); "
            f"the dataset holds {self.total}"
        )
        if self.refused or self.non_finite:
            text += f"; {self.refused} refused by check_sample, {self.non_finite} dropped as non-finite"
        return f"{text}\nsession: {self.session_path}"


class DataGeneration:
    """Generate ``batch_nb`` batches of ``batch_size`` samples into a session's dataset.

    Resuming (``new_session=False``) adds samples to the session's dataset only
    with the environment, ``env_kwargs`` and seed recorded by its last run;
    ``allow_changes=True`` mixes samples of other settings on purpose.
    """

    def __init__(
        self,
        environment_config: EnvironmentConfig,
        database_config: DatabaseConfig | None = None,
        session_dir: str = "sessions",
        session_name: str = "generation",
        new_session: bool = True,
        batch_nb: int = 1,
        batch_size: int = 1,
        progress: bool | None = None,
        allow_changes: bool = False,
        disable_plugins: tuple[str, ...] | list[str] = (),
        sampler: str = DEFAULT_SAMPLER,
        sampler_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(batch_nb, int) or batch_nb < 0:
            raise ConfigError(f"DataGeneration: batch_nb={batch_nb!r} must be a non-negative integer")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"DataGeneration: batch_size={batch_size!r} must be a positive integer")
        self.environment_config = environment_config
        self.database_config = database_config or DatabaseConfig()
        self.session_dir, self.session_name, self.new_session = session_dir, session_name, new_session
        self.batch_nb, self.batch_size = batch_nb, batch_size
        self.progress = progress
        self.allow_changes = allow_changes
        self.disable_plugins = list(disable_plugins)
        #: Which parameter vectors the samples get (hook ``dpx_samplers``), for environments declaring parameters.
        self.sampler, self.sampler_kwargs = sampler, dict(sampler_kwargs or {})
        self.session_path: Path | None = None

    @property
    def mode(self) -> str:
        return self.database_config.mode or "training"

    def prepare(self) -> SetUp:
        """Check every component and what the run would extend; nothing is written (see dpx.core.preflight)."""
        setup = SetUp()
        config, database_config = self.environment_config, self.database_config
        check_session_location("DataGeneration", self.session_dir, self.session_name)
        check_disabled("DataGeneration", self.disable_plugins)
        check_environment(config, setup)
        if config.load_samples:
            raise ConfigError("EnvironmentConfig: load_samples=True feeds stored samples to the environments in "
                              "Training and Prediction; DataGeneration produces new ones: drop load_samples")
        check_storage(database_config)
        source = existing_dataset(database_config.existing_dir) if database_config.existing_dir is not None else None
        reopened = Session.reopened(database_config.existing_dir, self.session_dir, self.session_name, self.new_session)
        dataset = source or (reopened / "dataset" if reopened is not None else None)
        check_extension(setup, config, database_config, dataset, self.mode, self.allow_changes)
        check_batch_memory("DataGeneration", self.batch_size, setup.fields)
        check_partitions(database_config, setup.fields)
        if self.sampler != DEFAULT_SAMPLER or len(setup.space):
            build_sampler("DataGeneration", self.sampler, setup.space, 0, self._total, self.sampler_kwargs)
            setup.checked.append(f"sampler {self.sampler} over {', '.join(setup.space.names)}")
            if dataset is not None and dataset.name == "dataset" and not self.allow_changes:
                check_same_sampler(Session(dataset.parent).last_producing_run(self.mode), self.sampler,
                                   self.sampler_kwargs, dataset)
        return setup

    @property
    def _total(self) -> int:
        return self.batch_nb * self.batch_size

    def execute(self, setup: SetUp | None = None) -> GenerationSummary:
        """Run the generation; ``setup`` is what :meth:`prepare` returned (prepared here when None)."""
        setup = setup or self.prepare()
        session = self._open_session()
        self.session_path = session.path
        mode = self.mode
        seed, key = resolve_seed(setup.seed)
        total = self._total
        space = setup.space
        # "random" is drawn by the environments' producers, seeded per sample id; other samplers here
        sampler = None
        if len(space) and self.sampler != DEFAULT_SAMPLER:
            sampler = build_sampler("DataGeneration", self.sampler, space, sampler_seed(seed, MODE_STREAMS[mode]),
                                    total, self.sampler_kwargs)
        sampling = {"sampler": {"name": self.sampler, "kwargs": self.sampler_kwargs},
                    "parameter_space": space.describe()} if len(space) else {}
        # opened first: it drops a killed run's uncommitted tail, which makes room on a full disk
        database = Database(session.dataset_dir, self.database_config)
        lifecycle = Lifecycle("DataGeneration", self.disable_plugins)
        configs = {
            "environment": as_record(self.environment_config),
            "database": as_record(self.database_config),
            "pipeline": {"batch_nb": self.batch_nb, "batch_size": self.batch_size},
        }
        recorded_state = _recorded_sampler_state(session, mode) if sampler is not None else {}
        try:
            session.record_run("DataGeneration", configs, seed=seed, mode=mode, run_id=lifecycle.run_id,
                               joined_plugins=lifecycle.joined, outcome="started", **sampling)
            lifecycle.start(session.path, configs, seed)
        except BaseException:
            database.close()
            raise
        on_stored = lifecycle.hook("dpx_batch_stored")
        sink = _WrongSampleSink(session.dataset_dir / "wrong_samples") if self.environment_config.record_wrong_samples else None
        runner = setup.runner_class(self.environment_config, key, on_wrong_sample=sink)
        progress = None
        produced = 0
        outcome, error = "completed", None
        full = False
        try:
            parameters.give(runner, session.dataset_dir)
            runner.start()
            parameters.keep(runner, session.dataset_dir)
            start = database.count(mode) if mode in database.modes else 0
            if sampler is not None:  # positions are sample ids: a resumed run continues the sequence
                sampler.restore({**recorded_state, "position": start})
            if start > 0:
                log.info("dpx: resuming %s at sample %d of %d", session.path, start, total)
            progress = Progress(total, desc=f"generate {mode}", initial=min(start, total), enabled=self.progress)
            stream = MODE_STREAMS[mode]
            with ThreadPoolExecutor(1, thread_name_prefix="dpx-writer") as writer:
                store = _Store(database, mode, writer)
                try:
                    for first in range(start, total, self.batch_size):
                        ids = np.arange(first, min(first + self.batch_size, total))
                        if sampler is None:
                            batch = runner.produce(ids, stream)
                        else:
                            batch = runner.produce(ids, stream, parameters=ask_checked(sampler, self.sampler, space, len(ids)))
                        if first == start:
                            database.prepare(mode, {name: (a.dtype, a.shape[1:]) for name, a in batch.items()})
                            if len(space):
                                database.record_parameter_space(space)
                        store.add(batch, len(ids))
                        if on_stored is not None:
                            on_stored(run=lifecycle.run, mode=mode, sample_ids=ids, batch=batch)
                        produced += len(ids)
                        progress.update(len(ids))
                except BaseException as exc:
                    if not isinstance(exc, StorageError):  # the whole batches made before the failure are kept
                        store.flush()
                    raise
                store.flush()
        except StorageFullError as exc:
            outcome, full = outcome_of(exc), True
            raise StorageFullError(f"{exc} ({session.resume_hint('DataGeneration')})") from None
        except BaseException as exc:
            outcome, error = outcome_of(exc), exc
            raise
        finally:
            if progress is not None:
                progress.close()
            try:
                runner.close()
            finally:
                if self.database_config.normalize and self.database_config.recompute_normalization and produced and not full:
                    database.recompute_normalization()
                database.close()
                stored = database.count(mode) if mode in database.modes else 0
                ended = {"sampler_state": sampler.state()} if sampler is not None else {}
                session.finish_run(outcome, produced=produced, samples=stored, **ended)
                if outcome == "interrupted":
                    log.warning("dpx: interrupted; %d %s samples are stored in %s: %s.", stored, mode,
                                session.path, session.resume_hint("DataGeneration"))
                if error is not None:
                    lifecycle.end(outcome, None, error)
        stats = runner.stats
        summary = GenerationSummary(
            session.path,
            mode,
            produced,
            database.count(mode),
            progress.elapsed,
            refused=stats.get("refused", 0),
            non_finite=stats.get("non_finite", 0),
        )
        lifecycle.end(outcome, summary)
        return summary

    def _open_session(self) -> Session:
        return Session.for_dataset(
            self.database_config.existing_dir, self.session_dir, self.session_name, self.new_session
        )


def _recorded_sampler_state(session: Session, mode: str) -> dict[str, Any]:
    """The sampler state the session's last run of ``mode`` ended with (empty when none)."""
    run = session.last_producing_run(mode)
    state = (run or {}).get("sampler_state")
    return state if isinstance(state, dict) else {}


class _Store:
    """Store batches in a thread while the environment produces the next ones.

    Writing releases the GIL, so storage hides behind simulation. A store call
    costs ~13 µs whatever its size, as much as a few small samples: batches
    under :data:`STAGE_BYTES` are first copied into a block of about that size
    (two blocks in turn, one filling while the other is written), and a block
    is stored when full or at :meth:`flush`. A batch handed over as it is stays
    untouched until the next :meth:`add` returns: the runner's buffers alternate.
    """

    def __init__(self, database: Database, mode: str, writer: ThreadPoolExecutor) -> None:
        self.database, self.mode, self.writer = database, mode, writer
        self.storing: Future | None = None
        self.blocks: list[dict[str, np.ndarray]] = []
        self.filled = 0

    def add(self, batch: dict[str, np.ndarray], count: int) -> None:
        if sum(a.nbytes for a in batch.values()) >= STAGE_BYTES:
            self._submit(batch)
            return
        if not self.blocks or len(next(iter(self.blocks[0].values()))) < count:
            self._submit_block()
            rows = max(count, STAGE_BYTES // max(1, sum(a[0].nbytes for a in batch.values())))
            self.blocks = [{n: np.empty((rows, *a.shape[1:]), a.dtype) for n, a in batch.items()} for _ in range(2)]
        block = self.blocks[0]
        if self.filled + count > len(next(iter(block.values()))):
            self._submit_block()
            block = self.blocks[0]
        for name, array in batch.items():
            block[name][self.filled : self.filled + count] = array
        self.filled += count

    def flush(self) -> None:
        """Store what is gathered and wait until everything handed over is stored."""
        self._submit_block()
        self._wait()

    def _submit_block(self) -> None:
        if self.filled:
            self._submit({name: array[: self.filled] for name, array in self.blocks[0].items()})
            self.blocks.reverse()  # fill the other block while this one is written
            self.filled = 0

    def _submit(self, arrays: dict[str, np.ndarray]) -> None:
        self._wait()
        self.storing = self.writer.submit(self.database.append, self.mode, arrays)

    def _wait(self) -> None:
        if self.storing is not None:
            storing, self.storing = self.storing, None
            storing.result()


class _WrongSampleSink:
    """Keep samples refused by ``check_sample`` aside, as ``.npz`` files (no pickle)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0

    def __call__(self, sample_id: int, arrays: dict[str, np.ndarray]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.folder.is_symlink():  # a shared dataset must not steer writes elsewhere
            raise StorageError(f"{self.folder} is a symbolic link; dpx writes only inside the dataset folder")
        path = self.folder / f"sample{sample_id:08d}_{self.count:04d}.npz"
        path.unlink(missing_ok=True)  # replaced, never written through a link in its place
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644), "wb") as file:
            np.savez(file, **arrays)
        self.count += 1
