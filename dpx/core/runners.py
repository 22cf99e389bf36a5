"""Runners decide where environments live; the in-process one ships with the core.

A runner builds the environments of an :class:`~dpx.EnvironmentConfig` and hands
the pipeline whole batches of samples (``produce``), so the pipeline does not
care whether they were made in its own process, in worker processes or on a
cluster. Other runners arrive through the ``dpx_runners`` hook.
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import fields
from types import MappingProxyType
from typing import Any, TypeVar

import numpy as np

from dpx.core.config import ConfigError, EnvironmentConfig
from dpx.core.environment import Environment, Field, FieldError
from dpx.core.parameters import for_instance
from dpx.core.producer import BUFFERS, SampleError, SampleProducer
from dpx.plugins import PluginError

WrongSampleSink = Callable[[int, dict[str, np.ndarray]], None]


def make_environment(config: EnvironmentConfig, instance_id: int, instance_nb: int) -> Environment:
    """Build environment ``instance_id`` of a run, with the config's ``env_kwargs``."""
    cls = config.resolve_environment()
    try:
        env = cls(**config.env_kwargs)
    except TypeError as exc:
        raise ConfigError(f"{config.environment_name}: env_kwargs={config.env_kwargs!r} rejected: {exc}") from exc
    env.instance_id, env.instance_nb = instance_id, instance_nb
    return env


def make_producer(
    config: EnvironmentConfig,
    key: np.ndarray,
    instance_id: int = 0,
    instance_nb: int = 1,
    on_wrong_sample: WrongSampleSink | None = None,
    optional_fields: frozenset[str] = frozenset(),
    parameters: Mapping[str, Any] | None = None,
) -> SampleProducer:
    """The producer of environment ``instance_id``; ``parameters`` answer its ``load_parameters()``."""
    environment = make_environment(config, instance_id, instance_nb)
    environment._stored_parameters = dict(parameters or {})
    return SampleProducer(
        environment,
        key,
        simulations_per_step=config.simulations_per_step,
        max_wrong_samples_per_step=config.max_wrong_samples_per_step,
        non_finite=config.non_finite,
        on_wrong_sample=on_wrong_sample,
        optional_fields=optional_fields,
    )


Predictor = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


Options = TypeVar("Options")


def parse_options(cls: type[Options], options: dict[str, Any], runner: str) -> Options:
    """Build a runner's options dataclass from ``runner_kwargs``, naming unknown keys
    (a typo in a runner option must not be silently ignored)."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"runner_kwargs: unknown option(s) {unknown} for the {runner} runner; options: {sorted(known)}")
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"runner_kwargs for the {runner} runner: {exc}") from exc


#: Errors that break the environment's contract (a field of the wrong shape, samples refused every
#: time, a config the environment rejects): deterministic, so a restarted worker would not cure them,
#: only hide them. A remote runner stops on them as the in-process one does.
CONTRACT_ERRORS: tuple[type[Exception], ...] = (FieldError, SampleError, ConfigError, PluginError)


#: Most characters of an error message, and of a traceback's end, that travel back from a worker.
ERROR_CHARS, TRACEBACK_CHARS = 4_000, 64_000


def describe_failure(exc: BaseException) -> dict[str, str]:
    """An exception raised in a worker, as it travels to the runner: message, traceback (their ends
    when very long, as a deep recursion's are) and, for a :data:`CONTRACT_ERRORS` one, its class (``contract``)."""
    error, trace = f"{type(exc).__name__}: {exc}", "".join(traceback.format_exception(exc))
    report = {"error": error[:ERROR_CHARS], "traceback": trace[-TRACEBACK_CHARS:]}
    if isinstance(exc, CONTRACT_ERRORS):
        report["contract"] = next(cls.__name__ for cls in CONTRACT_ERRORS if isinstance(exc, cls))
    return report


def raise_contract_error(who: str, report: dict[str, Any]) -> None:
    """Raise, as in-process, the contract error a worker reported (``describe_failure``); else nothing."""
    cls = {cls.__name__: cls for cls in CONTRACT_ERRORS}.get(report.get("contract"))
    if cls is not None:
        message = str(report.get("error", ""))[:ERROR_CHARS]
        raise cls(f"{message.partition(': ')[2] or message} (in {who})")


def cut_batch(count: int, instance_nb: int, chunk_size: int | None = None, pinned: bool = False) -> list[tuple[int, int]]:
    """Rows ``(first, last)`` of a batch of ``count`` samples, one chunk per remote call.

    Chunks are consecutive rows, so one call carries several samples and its
    arrays land in one slice of the batch. By default a batch is cut into two
    chunks per environment: enough to keep every environment busy when some are
    slower, few enough that the per-call cost stays small. ``pinned`` gives row
    ``i`` alone to environment ``i``.
    """
    if pinned:
        if count > instance_nb:
            raise ValueError(f"{count} pinned samples for {instance_nb} environments")
        return [(row, row + 1) for row in range(count)]
    size = chunk_size or max(1, math.ceil(count / (2 * instance_nb)))
    return [(row, min(row + size, count)) for row in range(0, count, size)]


def make_visualizer(config: EnvironmentConfig) -> Any:
    """The viewer named in ``config.visualizer``, or None."""
    if config.visualizer is None:
        return None
    from dpx.plugins import get_plugins

    return get_plugins().load("visualizers", config.visualizer)(**config.visualizer_kwargs)


class Runner:
    """Base of every runner: start, produce batches, pass predictions back, close.

    ``optional_fields`` may be left unset by the environments (in prediction,
    the ground truth): they come back as NaN instead of raising.
    """

    def __init__(
        self,
        config: EnvironmentConfig,
        key: np.ndarray,
        on_wrong_sample: WrongSampleSink | None = None,
        optional_fields: frozenset[str] = frozenset(),
    ):
        self.config, self.key, self.on_wrong_sample = config, key, on_wrong_sample
        self.optional_fields = optional_fields

    #: Named parameters stored with the dataset, by instance id (see :mod:`dpx.core.parameters`): set by
    #: the pipeline before :meth:`start`, handed to each environment's ``load_parameters()``
    #: (:func:`dpx.core.parameters.for_instance`).
    stored_parameters: Mapping[int, Mapping[str, Any]] = MappingProxyType({})
    #: What the environments passed to ``save_parameters()``, by instance id, once :meth:`start` returned.
    saved_parameters: Mapping[int, Mapping[str, Any]] = MappingProxyType({})

    @classmethod
    def check_options(cls, config: EnvironmentConfig) -> None:
        """Refuse invalid ``runner_kwargs`` (``ConfigError``) before a pipeline writes anything."""

    def start(self) -> dict[str, Field]:
        """Build and initialise the environments; return their declared fields."""
        raise NotImplementedError

    #: How many environments run (row ``i`` of a pinned batch comes from environment ``i``).
    instance_nb = 1

    def produce(self, sample_ids: np.ndarray, stream: int = 0, pinned: bool = False,
                parameters: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Produce samples ``sample_ids`` of ``stream``, as arrays by field.

        The arrays must stay valid until the call after next: the pipeline
        stores a batch while the next one is being produced. ``pinned`` asks
        for sample ``i`` from environment ``i`` (prediction steps every
        environment once and hands each its own prediction back).
        ``parameters`` (``(n, d)``, for environments declaring parameters,
        passed only when a sampler other than ``random`` chose them) go with
        the ids: row ``i`` is sample ``i``'s.
        """
        raise NotImplementedError

    def feed(self, stored: dict[str, np.ndarray], sample_ids: np.ndarray, stream: int = 0,
             pinned: bool = False) -> dict[str, np.ndarray]:
        """Like :meth:`produce`, each environment stepping on the rows of ``stored`` it is given
        (``load_samples``; see :meth:`dpx.core.producer.SampleProducer.feed`)."""
        raise NotImplementedError(f"the {type(self).__name__} runner cannot feed stored samples to its environments")

    @property
    def stats(self) -> dict[str, int]:
        """Counts of produced, refused and non-finite samples, over every environment."""
        raise NotImplementedError

    @property
    def fields(self) -> dict[str, Field]:
        """Fields with shape and dtype known once the first batch is produced."""
        raise NotImplementedError

    def apply(self, predictions: np.ndarray) -> None:
        """Give row ``i`` of the last batch's predictions to the environment that produced sample ``i``."""
        raise NotImplementedError

    def connect(self, predictor: Predictor | None) -> None:
        """Route the environments' ``get_prediction`` requests to ``predictor``."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop the environments."""

    def __enter__(self) -> Runner:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class WorkerError(RuntimeError):
    """Remote environments failed more often than ``max_restarts`` allows, or never started."""


class RemoteRunner(Runner):
    """Base of runners whose environments live in other processes or machines.

    It cuts each batch into chunks of consecutive rows (see :func:`cut_batch`)
    for the subclass's ``_run_chunks`` to hand to free environments, keeps two
    batch buffers in turn, and holds the run's restart budget.
    """

    log = logging.getLogger("dpx.runners")

    #: Wall time of remote work one request should carry at least: consecutive small batches are then
    #: produced ahead in one request (see :meth:`produce`). 0 turns reading ahead off.
    read_ahead_seconds = 0.0
    #: Most bytes of one read-ahead buffer (there are two).
    READ_AHEAD_BYTES = 16 << 20

    def _prepare(self, max_restarts: int) -> None:
        self.instance_nb = self.config.workers
        self.max_restarts, self.restarts = max_restarts, 0
        self._batches: list[dict[str, np.ndarray]] = [{} for _ in range(BUFFERS)]
        self._turn = 0
        self._fields: dict[str, Field] = {}
        self._ahead: tuple[int, int, int, int] | None = None  # buffer, first id, stream, samples held
        self.chunk_parameters: np.ndarray | None = None  # the parameter vectors of the batch being produced
        self._seconds_per_sample = 0.0
        #: Set by the subclass when an environment asks for a prediction: reading ahead stops then.
        self.predictions_asked = False

    @property
    def fields(self) -> dict[str, Field]:
        return self._fields

    @property
    def stats(self) -> dict[str, int]:
        totals: Counter[str] = Counter()
        for counts in self._instance_stats():
            totals.update(counts)  # update keeps zero counts, where + would drop them
        return dict(totals)

    def _instance_stats(self) -> Iterator[dict[str, int]]:
        """Each environment's counts, as it last reported them."""
        raise NotImplementedError

    def produce(self, sample_ids: np.ndarray, stream: int = 0, pinned: bool = False,
                parameters: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Produce ``sample_ids`` across the environments; ``pinned`` gives row ``i`` to environment ``i``.

        A request costs a round trip per chunk, more than a few small samples
        take to make: with ``read_ahead_seconds``, a batch of consecutive ids is
        made together with the batches that follow it, enough for about that
        much work, and the next calls asking for them are served from the
        buffer. Samples depend only on their id, so the batches are the same.
        Nothing is read ahead for pinned batches, nor once an environment has
        asked for a prediction (in Training, samples made ahead would carry an
        older network's answers), nor while environments hand back refused
        samples or show samples (samples never asked for would be recorded or
        shown), nor when ``parameters`` are given (later samples' are not known
        yet); :attr:`chunk_parameters` holds them for ``_run_chunks``.
        """
        ids = np.asarray(sample_ids)
        count = len(ids)
        self.chunk_parameters = None if parameters is None else np.ascontiguousarray(parameters, dtype=np.float64)
        consecutive = parameters is None and count > 0 and int(ids[-1]) - int(ids[0]) == count - 1 and (count < 3 or bool((np.diff(ids) == 1).all()))
        if self._ahead is not None and consecutive and not pinned:
            turn, first, ahead_stream, held = self._ahead
            offset = int(ids[0]) - first
            if ahead_stream == stream and 0 <= offset and offset + count <= held:
                return {name: array[offset : offset + count] for name, array in self._batches[turn].items()}
        span = self._read_ahead_span(count) if consecutive and not pinned and self._may_read_ahead() else count
        if span > count:
            ids = np.arange(int(ids[0]), int(ids[0]) + span)
        return self._make(ids, count, span, stream, pinned, None)

    def feed(self, stored: dict[str, np.ndarray], sample_ids: np.ndarray, stream: int = 0,
             pinned: bool = False) -> dict[str, np.ndarray]:
        """Each chunk travels with its rows of ``stored`` (raw buffers); nothing is read ahead."""
        ids = np.asarray(sample_ids)
        self._ahead = None
        return self._make(ids, len(ids), len(ids), stream, pinned, stored)

    def _make(self, ids: np.ndarray, count: int, span: int, stream: int, pinned: bool,
              stored: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        turn = self._turn
        batch = self._batches[turn]
        if batch and len(next(iter(batch.values()))) < span:
            batch.clear()  # allocated again, larger, as the chunks arrive
        self._turn = (turn + 1) % BUFFERS
        chunks = deque(cut_batch(span, self.instance_nb, getattr(self.options, "chunk_size", None), pinned))
        started = time.perf_counter()
        if stored is None:
            self._run_chunks(chunks, ids, stream, batch, span, pinned)
        else:
            self._run_chunks(chunks, ids, stream, batch, span, pinned, stored=stored)
        self._seconds_per_sample = (time.perf_counter() - started) / span
        self._ahead = (turn, int(ids[0]), stream, span) if span > count else None
        return {name: array[:count] for name, array in batch.items()}

    def _may_read_ahead(self) -> bool:
        return (self.read_ahead_seconds > 0 and self.on_wrong_sample is None
                and not self.predictions_asked and getattr(self, "visualizer", None) is None)

    def _read_ahead_span(self, count: int) -> int:
        """Samples to make for a batch of ``count``: whole batches, about ``read_ahead_seconds`` of work,
        at most 8 times the last span (the measure starts from one batch) and ``READ_AHEAD_BYTES``."""
        if not self._seconds_per_sample or not self._fields:
            return count
        batches = self.read_ahead_seconds / (self._seconds_per_sample * count)
        sample_bytes = sum(max(1, f.dtype.itemsize * math.prod(f.shape)) if f.dtype is not None and f.shape is not None
                           else 1 for f in self._fields.values())
        most = max(1, self.READ_AHEAD_BYTES // (sample_bytes * count))
        previous = self._ahead[3] // count if self._ahead is not None else 1
        return count * max(1, min(int(batches), most, 8 * previous))

    def _run_chunks(self, pending: deque, sample_ids: np.ndarray, stream: int, batch: dict[str, np.ndarray],
                    count: int, pinned: bool, stored: dict[str, np.ndarray] | None = None) -> None:
        """Produce every chunk of ``pending`` into the rows of ``batch``; with ``stored``, feed each
        chunk its rows of it instead (``stored`` is passed only then, so older subclasses still produce)."""
        raise NotImplementedError

    def _count_failure(self, who: str, reason: str) -> None:
        """Report a failed environment; raise once the run's ``max_restarts`` are spent."""
        self.restarts += 1
        if self.restarts > self.max_restarts:
            raise WorkerError(
                f"{who} {reason}\n(max_restarts={self.max_restarts} reached; the samples stored so far are intact)"
            )
        self.log.warning("dpx: %s failed (restart %d of %d; the samples it was producing are discarded): %s",
                         who, self.restarts, self.max_restarts, reason)


class InProcessRunner(Runner):
    """One environment stepped in the pipeline's own process: no transport at all."""

    def start(self) -> dict[str, Field]:
        if self.config.workers != 1:
            raise ConfigError(
                f"EnvironmentConfig: workers={self.config.workers} needs a runner with worker processes "
                "(e.g. runner='multiprocess'); the 'inprocess' runner runs one environment"
            )
        self.producer = make_producer(
            self.config, self.key, on_wrong_sample=self.on_wrong_sample, optional_fields=self.optional_fields,
            parameters=for_instance(self.stored_parameters, 0),
        )
        self.visualizer = make_visualizer(self.config)
        self.producer.start(visual=self.visualizer is not None)
        self.saved_parameters = {0: getattr(self.producer.env, "_saved_parameters", {})}
        if self.visualizer is not None:
            env = self.producer.env
            self.visualizer.add_scene(env.instance_id, env.factory.scene())
            env._connect(viewer=self.visualizer.update)
        return self.producer.fields

    def produce(self, sample_ids: np.ndarray, stream: int = 0, pinned: bool = False,
                parameters: np.ndarray | None = None) -> dict[str, np.ndarray]:
        return self.producer.produce(sample_ids, stream, parameters)

    def feed(self, stored: dict[str, np.ndarray], sample_ids: np.ndarray, stream: int = 0,
             pinned: bool = False) -> dict[str, np.ndarray]:
        return self.producer.feed(stored, sample_ids, stream)

    @property
    def stats(self) -> dict[str, int]:
        return vars(self.producer.stats)

    @property
    def fields(self) -> dict[str, Field]:
        return self.producer.fields

    @property
    def environment(self) -> Environment:
        return self.producer.env

    def apply(self, predictions: np.ndarray) -> None:
        for row in predictions:
            self.producer.apply_prediction(row)

    def connect(self, predictor: Predictor | None) -> None:
        self.producer.env._connect(predictor=predictor)

    def close(self) -> None:
        producer = getattr(self, "producer", None)
        try:
            if producer is not None:
                producer.close()
        finally:
            if getattr(self, "visualizer", None) is not None:
                self.visualizer.close()
