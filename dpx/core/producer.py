"""Turn an environment's steps into rows of batch buffers: the generation hot path.

One :class:`SampleProducer` drives one environment. For each requested sample
id it re-seeds the environment's generator, steps it, asks ``check_sample``,
and copies every field straight into a preallocated batch buffer, casting when
the dtype is compatible. Finite-ness is checked once per batch, vectorised.

Seeds are per sample, not per worker: the generator of sample ``k`` of dataset
mode ``m`` is a Philox stream whose counter starts at ``(0, m, attempt, k)``
under a key derived from the run's root seed. The same root seed therefore yields the same dataset
whatever the number or order of workers, and re-running a lost sample id
reproduces it exactly. Moving a Philox counter costs well under a microsecond;
building a fresh ``default_rng`` per sample would cost more than a small
simulation step.
"""

from __future__ import annotations

import asyncio
import inspect
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from dpx.core.environment import Environment, Field, FieldError

NonFinitePolicy = Literal["error", "drop"]
NON_FINITE_POLICIES = ("error", "drop")
#: Stream reserved for draws outside samples (e.g. in ``create``).
SETUP_STREAM = 2**63


class EnvironmentFailure(RuntimeError):
    """An environment raised; carries its instance and formatted traceback."""


class SampleError(RuntimeError):
    """A sample could not be produced (refused too often, non-finite values...)."""


def resolve_seed(seed: int | None) -> tuple[int, np.ndarray]:
    """The root seed of a run (fresh entropy when ``None``) and its Philox key.

    The seed is recorded in the session, so a run seeded by chance can be
    reproduced and a resumed run continues the same streams.
    """
    entropy = int(np.random.SeedSequence(seed).entropy)
    return entropy, np.random.SeedSequence(entropy).generate_state(2, np.uint64)


class SampleRng:
    """A Philox generator moved to the start of a sample's own stream."""

    def __init__(self, key: np.ndarray) -> None:
        self.bit_generator = np.random.Philox(key=key)
        self.generator = np.random.Generator(self.bit_generator)
        self._state = self.bit_generator.state
        self._counter = self._state["state"]["counter"]

    def seek(self, sample_id: int, attempt: int = 0, stream: int = 0) -> None:
        self._counter[:] = (0, stream, attempt, sample_id)
        self._state["buffer_pos"] = 4
        self._state["has_uint32"] = 0
        self.bit_generator.state = self._state


@dataclass
class Batch:
    """Buffers for ``size`` samples, one array per field, reused batch after batch."""

    fields: dict[str, Field]
    size: int
    arrays: dict[str, np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        self.arrays = {name: np.empty((self.size, *f.shape), f.dtype) for name, f in self.fields.items()}

    def view(self, count: int) -> dict[str, np.ndarray]:
        return {name: array[:count] for name, array in self.arrays.items()}


@dataclass
class ProducerStats:
    produced: int = 0
    refused: int = 0
    non_finite: int = 0


class SampleProducer:
    """Drive one environment to fill batches of samples."""

    def __init__(
        self,
        environment: Environment,
        key: np.ndarray,
        *,
        simulations_per_step: int = 1,
        max_wrong_samples_per_step: int = 10,
        non_finite: NonFinitePolicy = "error",
        on_wrong_sample: Callable[[int, dict[str, np.ndarray]], None] | None = None,
    ) -> None:
        self.env = environment
        self.rng = SampleRng(key)
        environment.rng = self.rng.generator
        self.simulations_per_step = simulations_per_step
        self.max_wrong = max_wrong_samples_per_step
        self.non_finite = non_finite
        self.on_wrong_sample = on_wrong_sample
        self.stats = ProducerStats()
        self.stream = 0
        self.fields: dict[str, Field] = {}
        self.batch: Batch | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._checks = type(environment).check_sample is not Environment.check_sample
        self._good_dtypes: dict[str, set[np.dtype]] = {}

    # -- set-up ----------------------------------------------------------------------

    def start(self) -> None:
        """Create the environment and read its field declarations."""
        env = self.env
        self.rng.seek(env.instance_id, stream=SETUP_STREAM)
        self._call(env.create)
        self._call(env.init)
        self._call(env.init_database)
        self.fields = env.fields
        self._step = env.step
        if inspect.iscoroutinefunction(env.step):
            self._loop = asyncio.new_event_loop()
            self._step = lambda: self._loop.run_until_complete(env.step())

    def close(self) -> None:
        try:
            self._call(self.env.close)
        finally:
            if self._loop is not None:
                self._loop.close()

    # -- producing ---------------------------------------------------------------------

    def produce(self, sample_ids: np.ndarray, stream: int = 0) -> dict[str, np.ndarray]:
        """Produce the samples ``sample_ids`` of ``stream`` (the dataset mode's number).

        Returns views of the batch buffers, valid until the next call.
        """
        self.stream = stream
        count = len(sample_ids)
        first_row = 0
        if self.batch is None or self.batch.size < count:
            first_row = self._allocate(int(sample_ids[0]), count)
        arrays = self.batch.arrays
        for row in range(first_row, count):
            sample_id = int(sample_ids[row])
            self._copy(self._step_until_accepted(sample_id), arrays, row, sample_id)
        self._check_finite(arrays, sample_ids, count)
        self.stats.produced += count
        return self.batch.view(count)

    def _allocate(self, first_id: int, count: int) -> int:
        """Allocate the batch and return how many rows it already holds.

        Fields declared without shape or dtype learn them from the first sample,
        which is then kept as row 0 rather than computed twice.
        """
        first = None
        if any(f.shape is None or f.dtype is None for f in self.fields.values()):
            first = self._step_until_accepted(first_id)
            for name, f in self.fields.items():
                f.learn(self._as_array(name, first))
        self.batch = Batch(self.fields, count)
        self._slots = [(name, f.shape, f.dtype) for name, f in self.fields.items()]
        if first is None:
            return 0
        self._copy(first, self.batch.arrays, 0, first_id)
        return 1

    def _step_until_accepted(self, sample_id: int) -> dict[str, np.ndarray]:
        env, sample = self.env, self.env.sample
        for attempt in range(self.max_wrong + 1):
            self.rng.seek(sample_id, attempt, self.stream)
            sample.clear()
            try:
                for _ in range(self.simulations_per_step):
                    self._step()
                accepted = env.check_sample() if self._checks else True
            except (FieldError, SampleError):
                raise
            except Exception as exc:
                raise self._env_error(f"step() raised while producing sample {sample_id}", exc) from exc
            if accepted:
                return sample
            self.stats.refused += 1
            if self.on_wrong_sample is not None:
                self.on_wrong_sample(sample_id, {k: np.array(v) for k, v in sample.items()})
        raise SampleError(
            f"{env!r}: check_sample() refused sample {sample_id} {self.max_wrong + 1} times in a row "
            f"(max_wrong_samples_per_step={self.max_wrong})"
        )

    def _copy(self, sample: dict[str, Any], arrays: dict[str, np.ndarray], row: int, sample_id: int) -> None:
        for name, shape, dtype in self._slots:
            value = self._as_array(name, sample)
            if value.shape != shape:
                raise FieldError(
                    f"{self.env!r}: field {name!r} of sample {sample_id} has shape {value.shape}, "
                    f"but the field is {shape}"
                )
            good = self._good_dtypes.setdefault(name, set())
            if value.dtype not in good:
                if not np.can_cast(value.dtype, dtype, "same_kind"):
                    raise FieldError(
                        f"{self.env!r}: field {name!r} of sample {sample_id} has dtype {value.dtype}, "
                        f"which cannot be stored as the field's {dtype}"
                    )
                good.add(value.dtype)
            arrays[name][row] = value

    def _as_array(self, name: str, sample: dict[str, Any]) -> np.ndarray:
        try:
            value = sample[name]
        except KeyError:
            setter = "set_training_data" if self.fields[name].training else "set_additional_data"
            raise FieldError(
                f"{self.env!r}: field {name!r} was never set; call self.{setter}({name}=...) in step()"
            ) from None
        return value if isinstance(value, np.ndarray) else np.asarray(value)

    def _check_finite(self, arrays: dict[str, np.ndarray], sample_ids: np.ndarray, count: int) -> None:
        for name, f in self.fields.items():
            if f.dtype.kind not in "fc":
                continue
            values = arrays[name][:count]
            if np.isfinite(values).all():
                continue
            bad_rows = np.flatnonzero(~np.isfinite(values.reshape(count, -1)).all(axis=1))
            if self.non_finite == "error":
                raise SampleError(
                    f"{self.env!r}: field {name!r} holds NaN or inf in sample(s) "
                    f"{[int(sample_ids[r]) for r in bad_rows[:5]]}; fix the simulation, or set "
                    "EnvironmentConfig(non_finite='drop') to drop such samples"
                )
            for row in bad_rows:
                self._redo_non_finite(arrays, int(row), int(sample_ids[row]))

    def _redo_non_finite(self, arrays: dict[str, np.ndarray], row: int, sample_id: int) -> None:
        """Drop a non-finite sample and step again under a later attempt number."""
        for attempt in range(1, self.max_wrong + 1):
            self.stats.non_finite += 1
            self.rng.seek(sample_id, self.max_wrong + attempt, self.stream)
            self.env.sample.clear()
            for _ in range(self.simulations_per_step):
                self._step()
            self._copy(self.env.sample, arrays, row, sample_id)
            if all(np.isfinite(arrays[n][row]).all() for n, f in self.fields.items() if f.dtype.kind in "fc"):
                return
        raise SampleError(
            f"{self.env!r}: sample {sample_id} was non-finite {self.max_wrong} times in a row "
            f"(max_wrong_samples_per_step={self.max_wrong})"
        )

    def _call(self, method: Callable[[], Any]) -> Any:
        try:
            result = method()
            if inspect.isawaitable(result):
                result = asyncio.run(result)
            return result
        except (FieldError, SampleError):
            raise
        except Exception as exc:
            raise self._env_error(f"{method.__name__}() raised", exc) from exc

    def _env_error(self, what: str, exc: BaseException) -> EnvironmentFailure:
        tb = "".join(traceback.format_exception(exc))
        return EnvironmentFailure(f"{self.env!r}: {what}: {exc!r}\n\nEnvironment traceback:\n{tb}")
