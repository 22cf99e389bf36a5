"""Samplers: which parameter vectors the next simulations run (hook ``dpx_samplers``).

A sampler is built as ``cls(space, seed=..., size=...)`` and speaks ask/tell:
``ask(n)`` returns the next ``n`` parameter vectors (an ``(n, d)`` array of
values, or ``{name: values}``), ``tell(parameters, scores)`` feeds back what a
pipeline learned about some of them (active learning's disagreement scores),
and ``state()`` / ``restore(state)`` carry its position in JSON so that a
resumed run continues the same sequence.

The first-party samplers are *positional*: point ``i`` of a run depends only
on the seed and ``i`` (and, for ``lhs`` and ``grid``, on the design's
``size``), never on the batch size or the number of workers. ``random`` is
seeded per sample id exactly like an environment's ``rng``, so the pipeline
lets each worker draw its own samples' parameters (nothing travels); the
others are asked in the pipeline's process and their vectors travel with the
sample ids.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dpx.core.producer import PLAN_AHEAD, SampleRng, _splitmix64, resolve_seed
from dpx.core.space import ParameterError, ParameterSpace

#: Added to a dataset mode's stream number for the parameter draws of the ``random`` sampler:
#: they never share a state with the environment's own ``rng``.
PARAMETER_STREAM = 1 << 30
#: Uniforms one state row yields: its three mixed 64-bit words (the fourth, SFC64's counter, is the
#: same for every id).
WORDS = 3


class PositionalSampler:
    """A sampler whose ``i``-th point is a function of ``i``: :meth:`at` is the design, ``ask`` walks it."""

    def __init__(self, space: ParameterSpace, seed: int | None = None, size: int | None = None) -> None:
        if len(space) == 0:
            raise ParameterError(f"{type(self).__name__}: the environment declares no parameters to sample")
        self.space = space
        self.seed, _ = resolve_seed(seed)
        self.size = size
        self.position = 0

    def unit(self, indices: np.ndarray) -> np.ndarray:
        """Points ``indices`` of the design in the unit cube, ``(n, d)``."""
        raise NotImplementedError

    def at(self, indices: np.ndarray) -> np.ndarray:
        """Parameter values of points ``indices``, ``(n, d)``."""
        return self.space.from_unit(self.unit(np.asarray(indices, dtype=np.int64)))

    def ask(self, n: int) -> np.ndarray:
        values = self.at(np.arange(self.position, self.position + n))
        self.position += n
        return values

    def tell(self, parameters: Any, scores: Any) -> None:
        """A fixed design learns nothing."""

    def state(self) -> dict[str, Any]:
        return {"position": self.position}

    def restore(self, state: dict[str, Any]) -> None:
        position = state.get("position", 0)
        if isinstance(position, bool) or not isinstance(position, int) or position < 0:
            raise ParameterError(f"{type(self).__name__}: a recorded position must be a non-negative integer, not {position!r}")
        self.position = position


class RandomSampler(PositionalSampler):
    """Independent uniform draws (in each parameter's scale), seeded per sample id like ``Environment.rng``.

    Point ``i`` of dataset-mode stream ``stream`` comes from a state computed
    from the root seed and ``i`` alone; states are computed ahead in blocks of
    :data:`~dpx.core.producer.PLAN_AHEAD` ids, so drawing costs a fraction of
    a microsecond a sample.
    """

    def __init__(self, space: ParameterSpace, seed: int | None = None, size: int | None = None,
                 key: np.ndarray | None = None, stream: int = 0) -> None:
        super().__init__(space, seed, size)
        self.rng = SampleRng(resolve_seed(self.seed)[1] if key is None else key)
        self.stream = stream
        self.blocks = math.ceil(len(space) / WORDS)
        self._ahead_first, self._ahead_stream = -1, stream
        self._ahead = np.empty((0, len(space)))

    def unit(self, indices: np.ndarray) -> np.ndarray:
        ids = np.asarray(indices, dtype=np.int64)
        if not len(ids):
            return np.empty((0, len(self.space)))
        first = int(ids.min())
        if first < self._ahead_first or int(ids.max()) >= self._ahead_first + len(self._ahead) \
                or self.stream != self._ahead_stream:
            if int(ids.max()) - first >= PLAN_AHEAD:  # scattered ids: no table would cover them
                return self._draw(ids)
            self._ahead = self._draw(np.arange(first, first + PLAN_AHEAD))
            self._ahead_first, self._ahead_stream = first, self.stream
        return self._ahead[ids - self._ahead_first]

    def _draw(self, ids: np.ndarray) -> np.ndarray:
        """Uniforms in [0, 1) from the per-id states, 53 bits each, three per state row."""
        columns = []
        for block in range(self.blocks):
            words = self.rng.states(ids.astype(np.uint64), PARAMETER_STREAM + self.stream, block)[:, :WORDS]
            columns.append((_splitmix64(words) >> np.uint64(11)).astype(np.float64) * 2.0**-53)
        return np.concatenate(columns, axis=1)[:, : len(self.space)]

    def at(self, indices: np.ndarray) -> np.ndarray:
        return self.space.from_unit(self.unit(indices))


class _QmcSampler(PositionalSampler):
    """A scipy.stats.qmc sequence, scrambled and seeded, generated ahead in powers of two."""

    engine: str

    def __init__(self, space: ParameterSpace, seed: int | None = None, size: int | None = None) -> None:
        super().__init__(space, seed, size)
        self._table = np.empty((0, len(space)))

    def _make(self) -> Any:
        from scipy.stats import qmc

        return getattr(qmc, self.engine)(len(self.space), scramble=True, rng=np.random.default_rng(self.seed))

    def unit(self, indices: np.ndarray) -> np.ndarray:
        needed = int(indices.max()) + 1 if len(indices) else 0
        if needed > len(self._table):
            exponent = max(6, math.ceil(math.log2(needed)))
            engine = self._make()
            self._table = engine.random_base2(exponent) if self.engine == "Sobol" else engine.random(2**exponent)
        return self._table[indices]


class SobolSampler(_QmcSampler):
    """A scrambled Sobol' sequence: best balanced over the first 2^m points (batch sizes of powers of two)."""

    engine = "Sobol"


class HaltonSampler(_QmcSampler):
    """A scrambled Halton sequence: balanced at any number of points."""

    engine = "Halton"


class LatinHypercubeSampler(PositionalSampler):
    """Latin hypercube designs of ``size`` points (the run's sample count), one after another.

    Each block of ``size`` points is a Latin hypercube (every parameter's range
    cut into ``size`` strata, one point in each); the ``b``-th block is seeded
    from ``(seed, b)``, so extending a run adds whole new designs.
    """

    def __init__(self, space: ParameterSpace, seed: int | None = None, size: int | None = None) -> None:
        super().__init__(space, seed, size)
        if size is None or size < 1:
            raise ParameterError("lhs: a Latin hypercube needs its size (the number of samples of the design)")
        self._blocks: dict[int, np.ndarray] = {}

    def unit(self, indices: np.ndarray) -> np.ndarray:
        from scipy.stats import qmc

        blocks, rows = np.divmod(indices, self.size)
        out = np.empty((len(indices), len(self.space)))
        for block in np.unique(blocks).tolist():
            if block not in self._blocks:
                rng = np.random.default_rng([self.seed, block])
                self._blocks[block] = qmc.LatinHypercube(len(self.space), rng=rng).random(self.size)
            chosen = blocks == block
            out[chosen] = self._blocks[block][rows[chosen]]
        return out


class GridSampler(PositionalSampler):
    """A full factorial grid: ``levels`` values per parameter (an int, or one per parameter), cell centres.

    Without ``levels`` the grid is the smallest with at least ``size`` points;
    points go in row-major order (the last parameter fastest) and the grid
    repeats past its end. Integer parameters get at most one level per value.
    """

    def __init__(self, space: ParameterSpace, seed: int | None = None, size: int | None = None,
                 levels: int | list[int] | None = None) -> None:
        super().__init__(space, seed, size)
        d = len(space)
        if levels is None:
            if size is None or size < 1:
                raise ParameterError("grid: give levels=... (points per parameter) or the number of samples")
            levels = max(2, math.ceil(size ** (1.0 / d) - 1e-9))
        counts = [levels] * d if isinstance(levels, int) else list(levels)
        if len(counts) != d or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in counts):
            raise ParameterError(f"grid: levels={levels!r} must be a positive integer or one per parameter ({d})")
        self.levels = [min(c, int(p.high - p.low + 1)) if p.integer else c for c, p in zip(counts, space)]
        self.count = math.prod(self.levels)

    def unit(self, indices: np.ndarray) -> np.ndarray:
        cells = np.unravel_index(np.asarray(indices) % self.count, self.levels)
        return np.stack([(c + 0.5) / n for c, n in zip(cells, self.levels)], axis=1)

    def state(self) -> dict[str, Any]:
        return {"position": self.position, "levels": self.levels}


# -- what pipelines call ---------------------------------------------------------------------

#: The sampler a run uses when none is named: drawn in the workers, per sample id.
DEFAULT_SAMPLER = "random"


def sampler_seed(seed: int, stream: int) -> int:
    """The seed of a run's sampler for dataset-mode ``stream``: validation points are not training points."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1, np.uint64)[0])


def build_sampler(owner: str, name: str, space: ParameterSpace, seed: int | None, size: int | None,
                  sampler_kwargs: dict[str, Any] | None = None) -> Any:
    """The sampler ``name`` (hook ``dpx_samplers``) over ``space``; a ConfigError names what is wrong."""
    from dpx.core.config import ConfigError
    from dpx.plugins import PluginError, get_plugins

    if len(space) == 0:
        raise ConfigError(f"{owner}: sampler={name!r} needs an environment that declares parameters "
                          "(define_parameters() in its __init__); this one declares none")
    try:
        cls = get_plugins().load("samplers", name)
    except PluginError as exc:
        raise ConfigError(f"{owner}: sampler={name!r}: {exc}") from exc
    try:
        return cls(space, seed=seed, size=size, **dict(sampler_kwargs or {}))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{owner}: sampler={name!r} with sampler_kwargs={sampler_kwargs or {}!r}: {exc}") from exc


def ask_checked(sampler: Any, name: str, space: ParameterSpace, count: int) -> np.ndarray:
    """``sampler.ask(count)``, checked against ``space`` (unknown names, bounds, shape)."""
    return space.as_values(sampler.ask(count), count, who=f"sampler {name!r}")


def check_same_sampler(previous: dict[str, Any] | None, name: str, sampler_kwargs: dict[str, Any], where: Any) -> None:
    """Refuse to extend a dataset with another sampler than the one its samples came from: the
    sequence would not continue (``allow_changes`` skips this check)."""
    from dpx.core.config import ConfigError

    recorded = (previous or {}).get("sampler")
    if not isinstance(recorded, dict):
        return
    if recorded.get("name") != name or (recorded.get("kwargs") or {}) != sampler_kwargs:
        raise ConfigError(
            f"DataGeneration: sampler={name!r} with sampler_kwargs={sampler_kwargs!r}, but the dataset {where} holds "
            f"samples of sampler={recorded.get('name')!r} with sampler_kwargs={recorded.get('kwargs') or {}!r}: "
            "resume with the recorded sampler, start a new session, or pass --allow-changes to mix them")
