"""A session's dataset: modes, normalisation statistics and batch reading.

The database sits on a storage backend (``memmap`` by default, or any backend a
plugin registers) and adds what every backend would otherwise repeat:
streaming normalisation statistics, shuffled or ordered batches, and
:func:`open_database` for users who inspect what they generated.

Normalisation is kept per component: one mean and standard deviation per index
of a field's last axis (x, y, z of a point cloud), merged batch after batch
with Chan's parallel update in float64 and stored exactly (count, mean and sum
of squared deviations) in ``dataset.json``, so reloading gives the same numbers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dpx.core.config import DATABASE_MODES, DatabaseConfig
from dpx.core.storage import CorruptDatasetError

NORMALIZATION_KEY = "normalization"
#: Rows summed in a field's own precision before accumulating in float64.
_BLOCK = 64


@dataclass
class Moments:
    """Count, mean and sum of squared deviations per component, mergeable."""

    count: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def of(cls, values: np.ndarray) -> Moments:
        """Moments of a batch, one per index of the last axis.

        A column sum of an ``(n, 3)`` array walks memory with a stride and runs
        several times slower than a row of a wide array, so the values are
        viewed as rows of ``width`` (a multiple of the component count), summed
        block by block in their own precision (at most ``_BLOCK`` terms per
        partial sum) and accumulated in float64. Subtracting the first sample
        first keeps the sum of squares free of cancellation.
        """
        components = values.shape[-1] if values.ndim > 1 else 1
        flat = np.ascontiguousarray(values).reshape(-1)
        count = flat.size // components
        shift = flat[:components].astype(values.dtype)
        width = components * max(1, 4096 // components)
        body = flat[: flat.size - flat.size % width].reshape(-1, width)
        tiled = np.tile(shift, width // components)
        sums, squares = np.zeros(width), np.zeros(width)
        for start in range(0, len(body), _BLOCK):
            block = body[start : start + _BLOCK] - tiled
            sums += block.sum(axis=0)
            squares += np.einsum("ij,ij->j", block, block)
        tail = flat[body.size :].reshape(-1, components).astype(np.float64) - shift
        total = sums.reshape(-1, components).sum(axis=0) + tail.sum(axis=0)
        total_squares = squares.reshape(-1, components).sum(axis=0) + np.einsum("ij,ij->j", tail, tail)
        mean = shift + total / count
        m2 = np.maximum(total_squares - total * total / count, 0.0)
        return cls(count, mean, m2)

    def merge(self, other: Moments) -> Moments:
        if self.count == 0:
            return other
        total = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / total)
        m2 = self.m2 + other.m2 + delta * delta * (self.count * other.count / total)
        return Moments(total, mean, m2)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.count, 1))

    def as_json(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean.tolist(), "m2": self.m2.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Moments:
        return cls(int(data["count"]), np.asarray(data["mean"], np.float64), np.asarray(data["m2"], np.float64))


class Database:
    """Read and write the samples of one dataset folder."""

    def __init__(self, path: str | os.PathLike, config: DatabaseConfig | None = None, *, readonly: bool = False):
        from dpx.plugins import get_plugins

        self.config = config or DatabaseConfig()
        self.path = Path(path)
        storage_class = get_plugins().load("storage_backends", self.config.storage)
        self.storage = storage_class(self.path, readonly=readonly, max_file_bytes=self.config.max_file_bytes)
        self._moments = self._stored_moments()

    # -- structure ---------------------------------------------------------------------

    @property
    def modes(self) -> list[str]:
        return self.storage.modes

    def count(self, mode: str = "training") -> int:
        return self.storage.count(mode)

    def fields(self, mode: str = "training") -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        return {name: (f.dtype, f.shape) for name, f in self.storage.layout(mode).items()}

    def prepare(self, mode: str, fields: Mapping[str, tuple[Any, tuple[int, ...]]]) -> None:
        """Declare ``mode`` with the environment's fields (checked against stored ones)."""
        if mode not in DATABASE_MODES:
            raise ValueError(f"unknown database mode {mode!r}; modes are {', '.join(DATABASE_MODES)}")
        self.storage.add_mode(mode, fields)

    # -- writing -----------------------------------------------------------------------

    def append(self, mode: str, arrays: Mapping[str, np.ndarray]) -> None:
        """Store a batch; training batches update the normalisation when asked to."""
        self.storage.append(mode, arrays)
        metadata = None
        if mode == "training" and self.config.normalize:
            for name, values in arrays.items():
                if values.dtype.kind in "fc" and len(values):
                    self._moments[name] = self._moments.get(name, _EMPTY).merge(Moments.of(values))
            metadata = {NORMALIZATION_KEY: {name: m.as_json() for name, m in self._moments.items()}}
        self.storage.commit(metadata=metadata)

    def recompute_normalization(self, chunk: int = 4096) -> dict[str, Moments]:
        """Compute the training statistics again from every stored sample."""
        moments: dict[str, Moments] = {}
        count = self.count("training")
        for name, (dtype, _) in self.fields("training").items():
            if dtype.kind not in "fc":
                continue
            total = _EMPTY
            for start in range(0, count, chunk):
                total = total.merge(Moments.of(self.read("training", [name], np.arange(start, min(start + chunk, count)))[name]))
            moments[name] = total
        self._moments = moments
        self.storage.commit(force=True, metadata={NORMALIZATION_KEY: {n: m.as_json() for n, m in moments.items()}})
        return moments

    def commit(self) -> None:
        self.storage.commit(force=True)

    def record_parameter_space(self, space: Any) -> None:
        """Keep the names and bounds of the ``parameters`` field's columns with the data (see :attr:`parameter_space`)."""
        from dpx.core.space import PARAMETER_SPACE_KEY

        self.storage.commit(force=True, metadata={PARAMETER_SPACE_KEY: space.describe()})

    # -- reading -----------------------------------------------------------------------

    @property
    def parameter_space(self) -> Any:
        """The :class:`~dpx.core.space.ParameterSpace` the samples' ``parameters`` field follows (empty if none)."""
        from dpx.core.space import PARAMETER_SPACE_KEY, ParameterError, ParameterSpace

        try:
            return ParameterSpace.from_description(self.storage.metadata.get(PARAMETER_SPACE_KEY, []))
        except ParameterError as exc:
            raise CorruptDatasetError(f"{self.path}: the parameter space is unreadable ({exc})") from None

    def parameters(self, mode: str = "training", indices: Iterable[int] | None = None) -> dict[str, np.ndarray]:
        """Each sample's parameters (provenance: what the sampler chose), by parameter name."""
        names = self.parameter_space.names
        if not names:
            return {}
        values = self.read(mode, ["parameters"], indices)["parameters"]
        return {name: values[:, column] for column, name in enumerate(names)}

    @property
    def normalization(self) -> dict[str, Moments]:
        """Per-field training statistics (empty when never computed)."""
        return dict(self._moments)

    def read(
        self, mode: str = "training", fields: Iterable[str] | None = None, indices: Iterable[int] | None = None
    ) -> dict[str, np.ndarray]:
        """Samples ``indices`` (all when None) of ``fields`` (all when None), by field."""
        names = list(fields) if fields is not None else list(self.fields(mode))
        ids = np.arange(self.count(mode)) if indices is None else np.asarray(indices, dtype=np.int64)
        return {name: self.storage.read(mode, name, ids) for name in names}

    def batches(
        self,
        mode: str = "training",
        batch_size: int = 32,
        *,
        shuffle: bool | None = None,
        fields: Iterable[str] | None = None,
        rng: np.random.Generator | None = None,
        indices: np.ndarray | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """One pass over ``mode`` (or its samples ``indices``) in batches; the arrays are reused, copy them to keep them."""
        shuffle = self.config.shuffle if shuffle is None else shuffle
        layout = self.fields(mode)
        names = list(fields) if fields is not None else list(layout)
        if indices is None:
            count = self.count(mode)
            order = (rng or np.random.default_rng()).permutation(count) if shuffle else np.arange(count)
        else:
            count = len(indices)
            order = (rng or np.random.default_rng()).permutation(indices) if shuffle else np.asarray(indices)
        gathers = {name: self.storage.reader(mode, name) for name in names}  # checks the files before allocating
        rows = min(batch_size, count)
        readers = [(name, gathers[name], np.empty((rows, *layout[name][1]), layout[name][0])) for name in names]
        for start in range(0, count, batch_size):
            ids = order[start : start + batch_size]
            size = len(ids)
            yield {name: read(ids, buffer[:size]) for name, read, buffer in readers}

    def refresh(self) -> bool:
        """Pick up samples a concurrent writer committed since opening."""
        changed = self.storage.refresh()
        if changed:
            self._moments = self._stored_moments()
        return changed

    def _stored_moments(self) -> dict[str, Moments]:
        """The normalisation statistics kept in the dataset, checked: the index is untrusted input."""
        stored = self.storage.metadata.get(NORMALIZATION_KEY, {})
        try:
            moments = {name: Moments.from_json(data) for name, data in stored.items()}
            for name, m in moments.items():
                if m.count < 0 or m.mean.ndim != 1 or m.mean.shape != m.m2.shape:
                    raise ValueError(f"field {name!r}: count, mean and m2 do not fit together")
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            self.storage.close()
            raise CorruptDatasetError(f"{self.path}: the normalisation statistics are unreadable ({exc!r})") from None
        return moments

    def close(self) -> None:
        self.storage.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_EMPTY = Moments(0, np.zeros(1), np.zeros(1))


def dataset_path(path: str | os.PathLike) -> Path:
    """Accept a session folder or its ``dataset/`` folder."""
    path = Path(path)
    return path / "dataset" if (path / "dataset").is_dir() else path


def open_database(path: str | os.PathLike, storage: str = "memmap") -> Database:
    """Open a session's dataset read-only, to inspect, plot or export it.

    >>> db = dpx.open_database("sessions/spring")      # doctest: +SKIP
    >>> db.count("training"), db.read("training", ["input"], [0, 1])["input"].shape
    """
    return Database(dataset_path(path), DatabaseConfig(storage=storage), readonly=True)
