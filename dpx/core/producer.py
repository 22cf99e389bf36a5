"""Turn an environment's steps into rows of batch buffers: the generation hot path.

One :class:`SampleProducer` drives one environment. For each requested sample
id it re-seeds the environment's generator, steps it, asks ``check_sample``,
and copies every field straight into a preallocated batch buffer, casting when
the dtype is compatible. Finite-ness is checked once per batch, vectorised.

Seeds are per sample, not per worker: see :class:`SampleRng`. The same root
seed therefore yields the same dataset whatever the number or order of
workers, and re-running a lost sample id reproduces it exactly.
"""

from __future__ import annotations

import asyncio
import ctypes
import inspect
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from dpx.core.config import ConfigError
from dpx.core.environment import Environment, Field, FieldError
from dpx.core.space import PARAMETERS_FIELD

NonFinitePolicy = Literal["error", "drop"]
#: Batch buffers used in turn: a batch stays valid while the next is produced.
BUFFERS = 2
#: Stream reserved for draws outside samples (e.g. in ``create``).
SETUP_STREAM = 2**32 - 1
#: Consecutive sample ids whose states :meth:`SampleRng.plan` computes in one pass.
PLAN_AHEAD = 4096


class EnvironmentFailure(RuntimeError):
    """An environment raised; carries its instance and formatted traceback."""


class SampleError(RuntimeError):
    """A sample could not be produced (refused too often, non-finite values...)."""


#: Raised through as they are, not wrapped with the environment's traceback: the environment broke
#: dpx's contract (a field, a sample), or asked what the pipeline cannot give (get_prediction() in
#: Training before its network exists).
CONTRACT_BREACHES = (FieldError, SampleError, ConfigError)


def resolve_seed(seed: int | None) -> tuple[int, np.ndarray]:
    """The root seed of a run (fresh entropy when ``None``) and its 128-bit key.

    The seed is recorded in the session, so a run seeded by chance can be
    reproduced and a resumed run continues the same streams.
    """
    entropy = int(np.random.SeedSequence(seed).entropy)
    return entropy, np.random.SeedSequence(entropy).generate_state(2, np.uint64)


_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A bijective 64-bit mixer (SplitMix64's finaliser), vectorised."""
    with np.errstate(over="ignore"):
        z = x + _GAMMA
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


#: Below this many values, ``isfinite().all()`` beats entering ``np.errstate`` for a dot product.
_SMALL_CHECK = 1 << 14


def _all_finite(values: np.ndarray) -> bool:
    """Whether every value is finite, in one pass without a temporary.

    NaN and inf make the dot product of the values with themselves non-finite;
    so can a huge but finite value (its square overflows), which the exact,
    slower check then clears.
    """
    flat = values.reshape(-1)
    if flat.size >= _SMALL_CHECK and values.dtype in (np.float32, np.float64):
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite(np.dot(flat, flat)):
                return True
    return bool(np.isfinite(values).all())


class SampleRng:
    """An SFC64 generator put at the start of each sample's own stream.

    The state of sample ``id`` (of dataset mode ``stream``, ``attempt``-th try)
    is ``a = mix(key0 ^ id)``, ``b = mix(key1 ^ (stream, attempt))``,
    ``c = mix(a ^ b)``, warmed up like NumPy's own SFC64 seeding. ``a`` and
    ``b`` are bijections of their inputs, so two samples never share a stream.
    States are computed for a whole batch at once with NumPy and written into
    the generator's C state (its documented ``ctypes.state_address``) in a
    fraction of a microsecond; building a ``default_rng`` per sample would cost
    more than a small simulation step. SFC64 is also among NumPy's fastest
    generators for bulk draws.

    Computing states costs NumPy's per-call overhead (~90 µs) whatever the
    number of ids up to a few thousand, so :meth:`plan` computes the states of
    :data:`PLAN_AHEAD` consecutive ids at once and serves later calls that fall
    among them from that table: batches of 32 and prediction steps of one
    sample then pay ~3 µs, and the states are the same ones.
    """

    def __init__(self, key: np.ndarray) -> None:
        self.key = np.asarray(key, dtype=np.uint64)
        self.bit_generator = np.random.SFC64(0)
        self.generator = np.random.Generator(self.bit_generator)
        #: The generator's C state as 5 words (None where it cannot be checked): assigning a row of
        #: :meth:`plan` puts the generator at that sample's stream.
        self.words = self._state_words()
        self._ahead_first, self._ahead_stream = 0, -1
        self._ahead = np.empty((0, 5), np.uint64)

    def _state_words(self) -> np.ndarray | None:
        """A view of the C state (4 words, then the 32-bit buffer flag), checked
        against the public ``state`` property; None means use that property."""
        words = np.ctypeslib.as_array((ctypes.c_uint64 * 5).from_address(self.bit_generator.ctypes.state_address))
        probe = np.array([11, 22, 33, 44], np.uint64)
        words[:4], words[4] = probe, 0
        state = self.bit_generator.state
        if np.array_equal(state["state"]["state"], probe) and state["has_uint32"] == 0:
            return words
        return None

    def plan(self, sample_ids: np.ndarray, stream: int = 0, attempt: int = 0) -> np.ndarray:
        """The SFC64 states of ``sample_ids``, one row each (4 state words and a zero)."""
        ids = np.asarray(sample_ids, dtype=np.uint64)
        if attempt or not len(ids):
            return self.states(ids, stream, attempt)
        if len(ids) == 1 and stream == self._ahead_stream:  # a prediction step: one sample
            offset = int(ids[0]) - self._ahead_first
            if 0 <= offset < len(self._ahead):
                return self._ahead[offset:offset + 1]
        offsets = ids - np.uint64(self._ahead_first)  # ids before the table wrap round to huge offsets
        if stream != self._ahead_stream or int(offsets.max()) >= len(self._ahead):
            first = int(ids.min())
            if int(ids.max()) - first >= PLAN_AHEAD:  # scattered ids: no table would cover them
                return self.states(ids, stream)
            self._ahead = self.states(np.arange(first, first + PLAN_AHEAD, dtype=np.uint64), stream)
            self._ahead_first, self._ahead_stream = first, stream
            offsets = ids - np.uint64(first)
        return self._ahead[offsets]

    def states(self, sample_ids: np.ndarray, stream: int = 0, attempt: int = 0) -> np.ndarray:
        """The states of ``sample_ids`` computed afresh: the seeding scheme itself."""
        ids = np.asarray(sample_ids, dtype=np.uint64)
        a = _splitmix64(self.key[0] ^ ids)
        b = np.full_like(a, _splitmix64(self.key[1] ^ np.uint64((stream << 32) | attempt)))
        c = _splitmix64(a ^ b)
        counter = np.ones_like(a)
        with np.errstate(over="ignore"):
            for _ in range(12):
                mixed = a + b + counter
                counter += np.uint64(1)
                a = b ^ (b >> np.uint64(11))
                b = c + (c << np.uint64(3))
                c = ((c << np.uint64(24)) | (c >> np.uint64(40))) + mixed
        # a fifth, zero word clears the 32-bit buffer flag in the same assignment
        return np.stack([a, b, c, counter, np.zeros_like(a)], axis=1)

    def set(self, state: np.ndarray) -> None:
        if self.words is not None:
            self.words[:] = state
        else:
            self.bit_generator.state = {
                "bit_generator": "SFC64", "state": {"state": state[:4]}, "has_uint32": 0, "uinteger": 0,
            }

    def seek(self, sample_id: int, attempt: int = 0, stream: int = 0) -> None:
        self.set(self.states(np.array([sample_id]), stream, attempt)[0])


@dataclass
class Batch:
    """Buffers for ``size`` samples, one array per field, reused batch after batch."""

    fields: dict[str, Field]
    size: int
    arrays: dict[str, np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        self.arrays = {name: np.empty((self.size, *f.shape), f.dtype) for name, f in self.fields.items()}

    def view(self, count: int) -> dict[str, np.ndarray]:
        if count == self.size:
            return dict(self.arrays)
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
        optional_fields: frozenset[str] = frozenset(),
    ) -> None:
        self.env = environment
        self.optional_fields = optional_fields
        self.rng = SampleRng(key)
        environment.rng = self.rng.generator
        self.simulations_per_step = simulations_per_step
        self.max_wrong = max_wrong_samples_per_step
        self.non_finite = non_finite
        self.on_wrong_sample = on_wrong_sample
        self.stats = ProducerStats()
        self.stream = 0
        self.fields: dict[str, Field] = {}
        self._batches: list[Batch] = []
        self._turn = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._checks = type(environment).check_sample is not Environment.check_sample
        self._good_dtypes: dict[str, set[np.dtype]] = {}
        self._draws: Any = None  # the random sampler of declared parameters (None: no parameter declared)
        self._table: np.ndarray | None = None  # the parameter vectors of the batch being produced

    # -- set-up ----------------------------------------------------------------------

    def start(self, visual: bool = False) -> None:
        """Create the environment and read its field declarations (and its visual
        objects, when ``visual``)."""
        env = self.env
        self.rng.seek(env.instance_id, stream=SETUP_STREAM)
        self._call(env.create)
        self._call(env.init)
        self._call(env.init_database)
        if visual:
            self._call(env.init_visualization)
        env._parameters_taken = True  # what save_parameters() stored so far is what the dataset keeps
        self.fields = env.fields
        if len(env.parameter_space):
            from dpx.core.sampling import RandomSampler

            self._draws = RandomSampler(env.parameter_space, key=self.rng.key)
        self._step = env.step
        if inspect.iscoroutinefunction(env.step):
            self._loop = asyncio.new_event_loop()
            self._step = lambda: self._loop.run_until_complete(env.step())

    def apply_prediction(self, prediction: np.ndarray) -> None:
        """Hand one sample's prediction back to the environment (``{"prediction": array}``)."""
        try:
            self.env.apply_prediction({"prediction": prediction})
        except Exception as exc:
            raise self._env_error("apply_prediction() raised", exc) from exc

    def close(self) -> None:
        try:
            self._call(self.env.close)
        finally:
            if self._loop is not None:
                self._loop.close()

    # -- producing ---------------------------------------------------------------------

    def produce(self, sample_ids: np.ndarray, stream: int = 0, parameters: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Produce the samples ``sample_ids`` of ``stream`` (the dataset mode's number).

        Returns views of the batch buffers. They stay valid during the next call
        too (the buffers alternate), so a pipeline can store one batch while the
        environment produces the next. An environment declaring parameters gets
        row ``i`` of ``parameters`` (checked values, ``(n, d)``) for sample ``i``,
        or, when None, draws of the ``random`` sampler seeded by sample id.
        """
        self.stream = stream
        count = len(sample_ids)
        table = self._parameter_table(sample_ids, stream, parameters)
        first_row = 0
        if not self._batches or self._batches[0].size < count:
            first_row = self._allocate(int(sample_ids[0]), count)
        turn = self._turn
        batch = self._batches[turn]
        self._turn = (turn + 1) % BUFFERS
        states = self.rng.plan(sample_ids, stream)
        slots = self._batch_slots[turn]
        ids = sample_ids.tolist()
        values = getattr(self.env, "sample_parameters", None)
        if self._checks or self.simulations_per_step != 1 or self.rng.words is None:
            for row in range(first_row, count):
                if table is not None:
                    values.array = table[row]
                self._copy(self._step_until_accepted(ids[row], states[row]), slots, row, ids[row])
        else:  # the common case without a function call per step: first tries are accepted
            words, sample, step, copy = self.rng.words, self.env.sample, self._step, self._copy
            for row in range(first_row, count):
                words[:] = states[row]
                if table is not None:
                    values.array = table[row]
                sample.clear()
                try:
                    step()
                except CONTRACT_BREACHES:
                    raise
                except Exception as exc:
                    raise self._step_error(ids[row], exc) from exc
                copy(sample, slots, row, ids[row])
        if table is not None:
            batch.arrays[PARAMETERS_FIELD][:count] = table
        self._check_finite(batch.arrays, sample_ids, count)
        self.stats.produced += count
        return batch.view(count)

    def feed(self, stored: dict[str, np.ndarray], sample_ids: np.ndarray, stream: int = 0) -> dict[str, np.ndarray]:
        """Hand stored samples (``EnvironmentConfig(load_samples=True)``) to the environment, one step each.

        Row ``i`` of ``stored`` is the environment's ``sample_training`` and
        ``sample_additional`` while it steps as sample ``sample_ids[i]``; the
        returned batch holds the fields it set and the stored values of the
        others. Same buffers, checks and seeding as :meth:`produce`.
        """
        env, fields = self.env, self.fields
        for name, f in fields.items():
            if name in stored and (f.shape is None or f.dtype is None):
                f.learn(stored[name][0])
        unknown = [name for name, f in fields.items() if f.shape is None or f.dtype is None]
        if unknown:
            raise FieldError(f"{env!r}: declare the dtype and shape of field(s) {unknown}: fed stored samples "
                             "do not hold them, so no first sample can tell")
        self.stream = stream
        count = len(sample_ids)
        if not self._batches or self._batches[0].size < count:
            self._allocate(int(sample_ids[0]), count)
        turn = self._turn
        batch = self._batches[turn]
        self._turn = (turn + 1) % BUFFERS
        slots = self._batch_slots[turn]
        training = [name for name, f in fields.items() if f.training and name in stored]
        additional = [name for name, f in fields.items() if not f.training and name in stored]
        ids = sample_ids.tolist()
        try:
            for row in range(count):
                kept = {name: values[row] for name, values in stored.items() if name in fields}
                env.sample_training = {name: kept[name] for name in training}
                env.sample_additional = {name: kept[name] for name in additional} or None
                kept.update(self._step_until_accepted(ids[row]))
                self._copy(kept, slots, row, ids[row])
        finally:
            env.sample_training = env.sample_additional = None
        for name in self._finite_checked:  # no stepping again here: that needs the stored row
            if not _all_finite(batch.arrays[name][:count]):
                raise SampleError(f"{env!r}: field {name!r} holds NaN or inf after stepping on stored samples "
                                  f"{ids[:5]}...; fix the simulation")
        self.stats.produced += count
        return batch.view(count)

    def _allocate(self, first_id: int, count: int) -> int:
        """Allocate the batch and return how many rows it already holds.

        Fields declared without shape or dtype learn them from the first sample,
        which is then kept as row 0 rather than computed twice.
        """
        first = None
        if any(f.shape is None or f.dtype is None for f in self.fields.values()):
            if self._table is not None:
                self.env.sample_parameters.array = self._table[0]
            first = self._step_until_accepted(first_id)
            for name, f in self.fields.items():
                if name == PARAMETERS_FIELD and self._draws is not None:
                    continue
                if name in self.optional_fields and name not in first and (f.shape is None or f.dtype is None):
                    raise FieldError(f"{self.env!r}: declare the dtype and shape of field {name!r}, it may be left unset")
                if name in first or name not in self.optional_fields:
                    f.learn(self._as_array(name, first))
        self._batches = [Batch(self.fields, count) for _ in range(BUFFERS)]
        # the parameters are copied in one go per batch, not sample by sample
        self._slots = [(name, f.shape, f.dtype) for name, f in self.fields.items()
                       if self._draws is None or name != PARAMETERS_FIELD]
        self._good_dtypes = {name: set() for name in self.fields}
        self._batch_slots = [self._slots_for(batch.arrays) for batch in self._batches]
        self._finite_checked = [
            name for name, f in self.fields.items() if f.dtype.kind in "fc" and name not in self.optional_fields
        ]
        if first is None:
            return 0
        self._copy(first, self._batch_slots[self._turn], 0, first_id)
        return 1

    def _slots_for(self, arrays: dict[str, np.ndarray]) -> list:
        """Per field: name, shape, dtype, its buffer in ``arrays`` and the dtypes already checked."""
        return [(name, shape, dtype, arrays[name], self._good_dtypes[name]) for name, shape, dtype in self._slots]

    def _parameter_table(self, sample_ids: np.ndarray, stream: int, parameters: np.ndarray | None) -> np.ndarray | None:
        """The batch's parameter vectors: those given (checked), else the random draws of ``sample_ids``."""
        if self._draws is None:
            if parameters is not None:
                raise FieldError(f"{self.env!r} declares no parameters, but parameters were given for its samples")
            self._table = None
            return None
        if parameters is None:
            self._draws.stream = stream
            self._table = self._draws.at(sample_ids)
        else:
            self._table = self.env.parameter_space.as_values(parameters, len(sample_ids), who="the pipeline")
        return self._table

    def _step_until_accepted(self, sample_id: int, state: np.ndarray | None = None) -> dict[str, np.ndarray]:
        env, sample = self.env, self.env.sample
        for attempt in range(self.max_wrong + 1):
            if attempt == 0 and state is not None:
                self.rng.set(state)
            else:
                self.rng.seek(sample_id, attempt, self.stream)
            sample.clear()
            try:
                for _ in range(self.simulations_per_step):
                    self._step()
                accepted = env.check_sample() if self._checks else True
            except CONTRACT_BREACHES:
                raise
            except Exception as exc:
                raise self._step_error(sample_id, exc) from exc
            if accepted:
                return sample
            self.stats.refused += 1
            if self.on_wrong_sample is not None:
                self.on_wrong_sample(sample_id, {k: np.array(v) for k, v in sample.items()})
        raise SampleError(
            f"{env!r}: check_sample() refused sample {sample_id} {self.max_wrong + 1} times in a row "
            f"(max_wrong_samples_per_step={self.max_wrong})"
        )

    def _step_error(self, sample_id: int, exc: Exception) -> EnvironmentFailure:
        return self._env_error(f"step() raised while producing sample {sample_id}", exc)

    def _copy(self, sample: dict[str, Any], slots: list, row: int, sample_id: int) -> None:
        """Check one sample's fields and copy them into row ``row`` of the batch.

        ``slots`` holds, per field, its name, shape, dtype, batch buffer and the
        set of dtypes already seen to cast safely (checked once per dtype).
        """
        for name, shape, dtype, buffer, good in slots:
            value = sample.get(name)
            if value is None:
                if name in self.optional_fields:
                    buffer[row] = np.nan if dtype.kind in "fc" else 0
                    continue
                value = self._as_array(name, sample)
            elif type(value) is not np.ndarray:
                value = np.asarray(value)
            if value.shape != shape:
                raise FieldError(
                    f"{self.env!r}: field {name!r} of sample {sample_id} has shape {value.shape}, "
                    f"but the field is {shape}"
                )
            if value.dtype not in good:
                if not np.can_cast(value.dtype, dtype, "same_kind"):
                    raise FieldError(
                        f"{self.env!r}: field {name!r} of sample {sample_id} has dtype {value.dtype}, "
                        f"which cannot be stored as the field's {dtype}"
                    )
                good.add(value.dtype)
            buffer[row] = value

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
        for name in self._finite_checked:
            values = arrays[name][:count]
            if _all_finite(values):
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
        if self._table is not None:
            self.env.sample_parameters.array = self._table[row]
        for attempt in range(1, self.max_wrong + 1):
            self.stats.non_finite += 1
            self.rng.seek(sample_id, self.max_wrong + attempt, self.stream)
            self.env.sample.clear()
            for _ in range(self.simulations_per_step):
                self._step()
            self._copy(self.env.sample, self._slots_for(arrays), row, sample_id)
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
        except CONTRACT_BREACHES:
            raise
        except Exception as exc:
            raise self._env_error(f"{method.__name__}() raised", exc) from exc

    def _env_error(self, what: str, exc: BaseException) -> EnvironmentFailure:
        tb = "".join(traceback.format_exception(exc))
        return EnvironmentFailure(f"{self.env!r}: {what}: {exc!r}\n\nEnvironment traceback:\n{tb}")
