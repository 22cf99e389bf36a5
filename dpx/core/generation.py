"""The DataGeneration pipeline: run environments, store their samples.

``batch_nb * batch_size`` is the number of samples the dataset's mode should
hold. Running the pipeline again on the same session (``new_session=False``)
resumes: it produces only the samples still missing, with the seed recorded
by the first run, so the dataset equals the one an uninterrupted run makes.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dpx.core.config import MODE_STREAMS, ConfigError, DatabaseConfig, EnvironmentConfig, as_record
from dpx.core.database import Database
from dpx.core.producer import resolve_seed
from dpx.core.progress import Progress
from dpx.core.session import Session

log = logging.getLogger("dpx.generation")

#: Batches from this size on are stored by a background thread.
BACKGROUND_WRITE_BYTES = 4 << 20


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
    """Generate ``batch_nb`` batches of ``batch_size`` samples into a session's dataset."""

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
        self.session_path: Path | None = None

    def execute(self) -> GenerationSummary:
        from dpx.plugins import get_plugins

        # resolve names first: a typo must not leave an empty session behind
        runner_class = get_plugins().load("runners", self.environment_config.runner)
        runner_class.check_options(self.environment_config)
        self.environment_config.resolve_environment()
        session = self._open_session()
        self.session_path = session.path
        mode = self.database_config.mode or "training"
        seed = self._seed(session)
        _, key = resolve_seed(seed)
        total = self.batch_nb * self.batch_size
        session.record_run(
            "DataGeneration",
            {
                "environment": as_record(self.environment_config),
                "database": as_record(self.database_config),
                "pipeline": {"batch_nb": self.batch_nb, "batch_size": self.batch_size},
            },
            seed=seed,
            mode=mode,
        )
        database = Database(session.dataset_dir, self.database_config)
        sink = _WrongSampleSink(session.dataset_dir / "wrong_samples") if self.environment_config.record_wrong_samples else None
        runner = runner_class(self.environment_config, key, on_wrong_sample=sink)
        progress = None
        produced = 0
        interrupted = False
        try:
            runner.start()
            start = database.count(mode) if mode in database.modes else 0
            if start > 0:
                log.info("dpx: resuming %s at sample %d of %d", session.path, start, total)
            progress = Progress(total, desc=f"generate {mode}", initial=min(start, total), enabled=self.progress)
            stream = MODE_STREAMS[mode]
            # A thread stores batch k while the environment produces batch k+1:
            # writing releases the GIL, so storage hides behind simulation. Small
            # batches are stored at once: handing them over would cost more.
            with ThreadPoolExecutor(1, thread_name_prefix="dpx-writer") as writer:
                storing = None  # the batch the thread is storing, if any
                for first in range(start, total, self.batch_size):
                    ids = np.arange(first, min(first + self.batch_size, total))
                    batch = runner.produce(ids, stream)
                    if first == start:
                        database.prepare(mode, {name: (a.dtype, a.shape[1:]) for name, a in batch.items()})
                    if storing is not None:
                        storing.result()
                        storing = None
                    if sum(a.nbytes for a in batch.values()) >= BACKGROUND_WRITE_BYTES:
                        storing = writer.submit(database.append, mode, batch)
                    else:
                        database.append(mode, batch)
                    produced += len(ids)
                    progress.update(len(ids))
                if storing is not None:
                    storing.result()
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            if progress is not None:
                progress.close()
            try:
                runner.close()
            finally:
                if self.database_config.normalize and self.database_config.recompute_normalization and produced:
                    database.recompute_normalization()
                database.close()
                if interrupted:
                    log.warning("dpx: interrupted; %d %s samples are stored in %s. Run again with "
                                "new_session=False to resume.", database.count(mode), mode, session.path)
        stats = runner.stats
        return GenerationSummary(
            session.path,
            mode,
            produced,
            database.count(mode),
            progress.elapsed,
            refused=stats.get("refused", 0),
            non_finite=stats.get("non_finite", 0),
        )

    def _open_session(self) -> Session:
        return Session.for_dataset(
            self.database_config.existing_dir, self.session_dir, self.session_name, self.new_session
        )

    def _seed(self, session: Session) -> int:
        """The config's seed, else the one a previous run of this session used, else a fresh one."""
        previous = session.last_run("DataGeneration")
        if self.environment_config.seed is not None:
            if previous and previous.get("seed") not in (None, self.environment_config.seed):
                log.warning("dpx: this session was generated with seed %s; continuing with seed %s",
                            previous["seed"], self.environment_config.seed)
            return self.environment_config.seed
        if previous and previous.get("seed") is not None:
            return int(previous["seed"])
        seed, _ = resolve_seed(None)
        return seed


class _WrongSampleSink:
    """Keep samples refused by ``check_sample`` aside, as ``.npz`` files (no pickle)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0

    def __call__(self, sample_id: int, arrays: dict[str, np.ndarray]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        np.savez(self.folder / f"sample{sample_id:08d}_{self.count:04d}.npz", **arrays)
        self.count += 1
