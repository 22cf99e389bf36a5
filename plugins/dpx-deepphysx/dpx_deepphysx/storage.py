"""``deepphysx``: a DeepPhysX 22.12 dataset (SimulationSimpleDatabase), read as it is.

Layout of a DeepPhysX dataset folder::

    dataset.json                  partitions per mode, sample counts, fields and shapes, normalisation
    <session>_<mode>_<n>.db       SQLite; tables ``training`` (id, env_id, input, ground_truth) and
                                  ``additional`` (id, env_id, extra fields), one row per sample,
                                  ids 1..n, arrays stored as pickles

A shared dataset is untrusted input, so this backend applies the checks dpx's
own storage applies (see ``docs/security.md``): field and mode names are
identifiers, dtypes plain numeric or bool, shapes bounded, partitions plain
file names of regular files inside the folder, opened without following links
(the dataset folder itself may not be a link: DeepPhysX's ``dataset`` link in
a training session is followed only when the user names its target). Each
partition is opened read-only (``mode=ro&immutable=1``, no journal is ever
written) with SQLite's defensive settings, its row counts and ids are checked
against ``dataset.json`` when the dataset is opened, and every array goes
through :mod:`dpx_deepphysx.unpickle`, which runs no code.

Reading unpickles: to keep batches at memory speed, the first read of a
field loads it whole (each row checked), and later reads gather from memory.
Nothing is allocated before the files are known to hold that much data.

Normalisation: DeepPhysX keeps one scalar (mean, std) per field; dpx keeps one
per component (index of a field's last axis). The scalar is broadcast to every
component, with the count of values per component, so training through dpx
normalises exactly as DeepPhysX did.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import sqlite3
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dpx.core.environment import FieldError, check_field_name
from dpx.core.storage import CorruptDatasetError, FieldLayout, StorageError, check_field_layout, read_json
from dpx_deepphysx.unpickle import load_array

INDEX = "dataset.json"
MODES = ("training", "validation", "prediction")
#: dataset.json's table names -> the SQLite tables.
TABLES = {"Training": "training", "Additional": "additional"}
#: Columns of plain values, stored as one-value fields; NUMPY columns hold pickled arrays.
SCALAR_COLUMNS = {"INT": np.dtype(np.int64), "FLOAT": np.dtype(np.float64), "BOOL": np.dtype(np.bool_)}
#: ``"input (NUMPY)"`` in dataset.json's architecture.
COLUMN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*) \(([A-Z]+)\)")
#: A partition is a plain file name: no separator, no leading dot.
PARTITION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,200}")
#: A pickled array is its raw bytes (at most twice as long as latin1 text) and a header.
PICKLE_OVERHEAD = 4096
#: The widest plain dtype (complex128), bounding a sample's pickle before its dtype is known.
MAX_ITEMSIZE = 16
READ_ONLY_HINT = "convert it with `python -m dpx import deepphysx PATH` to add samples to it"


@dataclass(frozen=True)
class Column:
    """One field of a DeepPhysX dataset: where it is stored and what dataset.json says of it."""

    table: str
    kind: str
    shape: tuple[int, ...] | None


class DeepPhysXStorage:
    """Read-only storage over a DeepPhysX dataset folder (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, *, readonly: bool = True, max_file_bytes: int = 0) -> None:
        self.path = Path(path)
        if not readonly:
            raise StorageError(f"{self.path}: the deepphysx storage is read-only; {READ_ONLY_HINT}")
        self._fds: list[int] = []
        self._connections: dict[str, sqlite3.Connection] = {}
        self._partition_fds: dict[str, int] = {}
        self._loaded: dict[tuple[str, str], np.ndarray] = {}
        self._folder = self._open_folder()
        try:
            index = self._read_index()
            #: fields by name, and the columns of types dpx does not store (text, dates...) as ``table.name (TYPE)``
            self.columns, self.skipped = _columns(index, self.path)
            self.partitions = _partitions(index, self.path)
            self._layouts = {mode: self._layout(mode) for mode in self.partitions}
            self.metadata = {
                "normalization": _normalization(index, self._layouts.get("training", {}), self.count("training"), self.path),
                "deepphysx": {key: index[key] for key in ("partitions", "nb_samples", "architecture", "data_shape",
                                                          "normalization") if key in index},
            }
        except BaseException:
            self.close()
            raise

    # -- opening -------------------------------------------------------------------------

    def _open_folder(self) -> int:
        if self.path.is_symlink():
            target = os.readlink(self.path)
            raise StorageError(
                f"{self.path} is a link to {target}: dpx follows no link into a dataset; name the dataset "
                f"itself ({(self.path.parent / target).resolve()}) if that is the one you mean"
            )
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise StorageError(f"{self.path} holds no dataset (no such folder)") from None
        except NotADirectoryError:
            raise StorageError(f"{self.path} is not a folder") from None
        self._fds.append(fd)
        return fd

    def _open_file(self, name: str) -> int:
        """A descriptor of the regular file ``name`` in the dataset folder (never through a link)."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=self._folder)
        except FileNotFoundError:
            raise CorruptDatasetError(f"{self.path / name} is missing") from None
        except OSError as exc:
            raise CorruptDatasetError(
                f"{self.path / name} cannot be opened ({exc.strerror}); dpx opens only regular files inside a dataset, "
                "never through a link"
            ) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise CorruptDatasetError(f"{self.path / name} is not a regular file; dpx opens only regular files inside a dataset")
        return fd

    def _read_index(self) -> dict[str, Any]:
        try:
            fd = self._open_file(INDEX)
        except CorruptDatasetError:
            if not os.path.lexists(self.path / INDEX):
                raise StorageError(f"{self.path} holds no dataset ({INDEX} not found)") from None
            raise
        try:
            index = read_json(fd)
            if not isinstance(index, dict) or not isinstance(index.get("partitions"), dict):
                raise ValueError("no 'partitions' object: not a DeepPhysX dataset")
        except (ValueError, RecursionError) as exc:
            raise CorruptDatasetError(f"{self.path / INDEX} is unreadable: {exc}") from None
        return index

    def _connection(self, partition: str) -> sqlite3.Connection:
        """The partition's SQLite file, opened read-only through the descriptor checked above."""
        connection = self._connections.get(partition)
        if connection is not None:
            return connection
        fd = self._open_file(f"{partition}.db")
        self._fds.append(fd)
        self._partition_fds[partition] = fd
        proc = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"
        try:
            connection = sqlite3.connect(f"file:{proc}/{fd}?mode=ro&immutable=1", uri=True, check_same_thread=False)
            for pragma in ("trusted_schema=OFF", "cell_size_check=ON", "mmap_size=0", "query_only=ON"):
                connection.execute(f"PRAGMA {pragma}")
            kinds = dict(connection.execute("SELECT name, type FROM sqlite_master WHERE name IN ('training', 'additional')"))
        except sqlite3.Error as exc:
            raise CorruptDatasetError(f"{self._file(partition)} is not a readable SQLite database ({exc})") from None
        self._connections[partition] = connection
        for table, kind in kinds.items():
            if kind != "table":
                raise CorruptDatasetError(f"{self._file(partition)}: {table!r} is a {kind}, not a table")
        return connection

    def _file(self, partition: str) -> Path:
        return self.path / f"{partition}.db"

    def _query(self, partition: str, sql: str) -> list[tuple[Any, ...]]:
        try:
            return self._connection(partition).execute(sql).fetchall()
        except sqlite3.Error as exc:
            raise CorruptDatasetError(f"{self._file(partition)}: {exc} (running {sql!r})") from None

    def _layout(self, mode: str) -> dict[str, FieldLayout]:
        """Each field's dtype (from its first stored sample) and shape, with every partition's rows checked."""
        fields = self.columns
        dtypes: dict[str, np.dtype] = {name: SCALAR_COLUMNS[c.kind] for name, c in fields.items() if c.kind in SCALAR_COLUMNS}
        shapes = {name: c.shape if c.kind == "NUMPY" else () for name, c in fields.items()}
        for partition, count in self.partitions[mode]:
            for table in dict.fromkeys(c.table for c in fields.values()):
                self._check_rows(partition, table, count, [n for n, c in fields.items() if c.table == table])
            for name, column in fields.items():
                if column.kind == "NUMPY" and name not in dtypes and count:
                    ((blob,),) = self._query(partition, f'SELECT "{name}" FROM "{column.table}" WHERE id = 1')
                    first = self._array(partition, column.table, 1, name, blob, None)
                    dtypes[name] = first.dtype
                    if shapes[name] is None:
                        shapes[name] = first.shape
        layouts = {}
        for name in fields:
            dtype = dtypes.get(name, np.dtype(np.float64))
            try:
                dtype, shape = check_field_layout(name, dtype, shapes[name] if shapes[name] is not None else ())
            except FieldError as exc:
                raise CorruptDatasetError(f"{self.path / INDEX}: {exc}") from None
            layouts[name] = FieldLayout(dtype, shape, max(1, self.count(mode)))
        for partition, count in self.partitions[mode]:
            self._check_size(partition, count, layouts)
        return layouts

    def _check_rows(self, partition: str, table: str, count: int, names: list[str]) -> None:
        columns = {row[1] for row in self._query(partition, f'PRAGMA table_info("{table}")')}
        if not columns:
            raise CorruptDatasetError(f"{self._file(partition)} has no table {table!r}, which {INDEX} declares")
        missing = [name for name in ["id", *names] if name not in columns]
        if missing:
            raise CorruptDatasetError(
                f"{self._file(partition)}: table {table!r} has no column {', '.join(map(repr, missing))} "
                f"that {INDEX} declares"
            )
        ((rows, first, last),) = self._query(partition, f'SELECT count(*), min(id), max(id) FROM "{table}"')
        if rows != count or (count and (first, last) != (1, count)):
            raise CorruptDatasetError(
                f"{self._file(partition)}: table {table!r} holds {rows} rows (ids {first}..{last}) where {INDEX} "
                f"declares {count} samples (ids 1..{count})"
            )

    def _check_size(self, partition: str, count: int, layouts: Mapping[str, FieldLayout]) -> None:
        """The pickles of ``count`` samples are at least as long as their raw bytes: a file too small for them
        declares more than it holds (checked before anything is allocated for them)."""
        size = os.fstat(self._partition_fds[partition]).st_size
        needed = sum(f.sample_bytes for name, f in layouts.items() if self.columns[name].kind == "NUMPY") * count
        if needed > size:
            raise CorruptDatasetError(
                f"{self._file(partition)} holds {size} bytes, fewer than the {needed} bytes of array data that "
                f"{count} samples of {INDEX}'s fields need"
            )

    # -- the storage contract ------------------------------------------------------------

    @property
    def modes(self) -> list[str]:
        return list(self.partitions)

    def layout(self, mode: str) -> dict[str, FieldLayout]:
        try:
            return self._layouts[mode]
        except KeyError:
            raise StorageError(f"{self.path}: no mode {mode!r}; modes are {self.modes}") from None

    def count(self, mode: str) -> int:
        return sum(count for _, count in self.partitions.get(mode, ()))

    def read(self, mode: str, name: str, indices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Gather samples ``indices`` of one field (the field is loaded and checked on first use)."""
        values = self._load(mode, name)
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(values)):
            bad = int(indices.max() if indices.max() >= len(values) else indices.min())
            raise IndexError(f"{self.path}: sample {bad} of mode {mode!r} does not exist ({len(values)} stored)")
        if out is None:
            out = np.empty((len(indices), *values.shape[1:]), values.dtype)
        return np.take(values, indices, axis=0, out=out, mode="clip")

    def reader(self, mode: str, name: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        values = self._load(mode, name)
        return lambda indices, out: np.take(values, indices, axis=0, out=out, mode="clip")

    def refresh(self) -> bool:
        """A DeepPhysX dataset is read as a finished one: nothing to pick up."""
        return False

    def add_mode(self, mode: str, fields: Mapping[str, Any]) -> None:
        raise StorageError(f"{self.path}: the deepphysx storage is read-only; {READ_ONLY_HINT}")

    def append(self, mode: str, arrays: Mapping[str, np.ndarray]) -> None:
        raise StorageError(f"{self.path}: the deepphysx storage is read-only; {READ_ONLY_HINT}")

    def commit(self, *, force: bool = False, metadata: Mapping[str, Any] | None = None) -> bool:
        raise StorageError(f"{self.path}: the deepphysx storage is read-only; {READ_ONLY_HINT}")

    def close(self) -> None:
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()
        self._partition_fds.clear()
        self._loaded.clear()
        while self._fds:
            os.close(self._fds.pop())

    def __enter__(self) -> DeepPhysXStorage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- reading rows --------------------------------------------------------------------

    def _load(self, mode: str, name: str) -> np.ndarray:
        """Every sample of one field of ``mode``, read row by row and checked."""
        key = (mode, name)
        values = self._loaded.get(key)
        if values is not None:
            return values
        f = self.layout(mode).get(name)
        if f is None:
            raise StorageError(f"{self.path}: mode {mode!r} has no field {name!r}; fields are {sorted(self.layout(mode))}")
        column = self.columns[name]
        values = np.empty((self.count(mode), *f.shape), f.dtype)
        start = 0
        for partition, count in self.partitions[mode]:
            rows = self._query(partition, f'SELECT id, "{name}" FROM "{column.table}" ORDER BY id')
            for offset, (row, value) in enumerate(rows):
                if row != offset + 1:
                    raise CorruptDatasetError(f"{self._file(partition)}: table {column.table!r} changed while read")
                if column.kind == "NUMPY":
                    values[start + offset] = self._array(partition, column.table, row, name, value, f)
                else:
                    values[start + offset] = self._scalar(partition, column.table, row, name, value)
            start += count
        values.flags.writeable = False
        self._loaded[key] = values
        return values

    def _where(self, partition: str, table: str, row: int, name: str) -> str:
        return f"{self._file(partition)}: table {table!r}, row {row}, field {name!r}"

    def _array(self, partition: str, table: str, row: int, name: str, blob: Any, f: FieldLayout | None) -> np.ndarray:
        """The array pickled in one cell, checked against the field's layout (when known)."""
        where = self._where(partition, table, row, name)
        if not isinstance(blob, bytes):
            raise CorruptDatasetError(f"{where}: holds a {type(blob).__name__}, not a pickled array")
        shape = f.shape if f is not None else self.columns[name].shape
        itemsize = f.dtype.itemsize if f is not None else MAX_ITEMSIZE
        if shape is not None and len(blob) > 2 * itemsize * math.prod(shape) + PICKLE_OVERHEAD:
            raise CorruptDatasetError(f"{where}: a pickle of {len(blob)} bytes is too long for the field's samples")
        try:
            array = load_array(blob)
        except Exception as exc:  # a damaged or hostile pickle, whatever the unpickler raised
            raise CorruptDatasetError(f"{where}: refused ({exc}); nothing in it was run") from None
        if shape is not None and array.shape != tuple(shape):
            raise CorruptDatasetError(f"{where}: an array of shape {array.shape} where {INDEX} declares {tuple(shape)}")
        if f is not None and array.dtype != f.dtype:
            raise CorruptDatasetError(f"{where}: an array of {array.dtype} where the field's first sample is {f.dtype}")
        return array

    def _scalar(self, partition: str, table: str, row: int, name: str, value: Any) -> Any:
        kind = self.columns[name].kind
        wanted = {"INT": (int,), "FLOAT": (int, float), "BOOL": (int,)}[kind]
        if isinstance(value, bool) or not isinstance(value, wanted) or (kind == "BOOL" and value not in (0, 1)):
            raise CorruptDatasetError(f"{self._where(partition, table, row, name)}: {value!r} is not a {kind}")
        return value


# -- dataset.json, checked: it is untrusted input ----------------------------------------


def _corrupt(path: Path, problem: str) -> CorruptDatasetError:
    return CorruptDatasetError(f"{path / INDEX}: {problem}")


def _column_entries(index: dict[str, Any], path: Path) -> list[tuple[str, str, str]]:
    """``(table, name, kind)`` for every column dataset.json's architecture lists."""
    architecture = index.get("architecture", {})
    if not isinstance(architecture, dict):
        raise _corrupt(path, "'architecture' is not an object")
    unknown = [table for table in architecture if table not in TABLES]
    if unknown:
        raise _corrupt(path, f"unknown table {unknown[0]!r} in 'architecture' (DeepPhysX has {', '.join(TABLES)})")
    entries = []
    for table in TABLES:
        columns = architecture.get(table, [])
        if not isinstance(columns, list):
            raise _corrupt(path, f"'architecture.{table}' is not a list")
        for entry in columns:
            match = COLUMN.fullmatch(entry) if isinstance(entry, str) else None
            if match is None:
                raise _corrupt(path, f"'architecture.{table}' lists {entry!r}, not 'name (TYPE)'")
            entries.append((table, match.group(1), match.group(2)))
    return entries


def _columns(index: dict[str, Any], path: Path) -> tuple[dict[str, Column], list[str]]:
    """The fields of the dataset by name, and the columns skipped.

    ``env_id`` (which environment made a sample) is in both tables: it is read from the training one.
    """
    shapes = index.get("data_shape", {})
    if not isinstance(shapes, dict):
        raise _corrupt(path, "'data_shape' is not an object")
    columns: dict[str, Column] = {}
    skipped = []
    for table, name, kind in _column_entries(index, path):
        if kind != "NUMPY" and kind not in SCALAR_COLUMNS:
            skipped.append(f"{TABLES[table]}.{name} ({kind})")
            continue
        try:
            check_field_name(name)
        except FieldError as exc:
            raise _corrupt(path, str(exc)) from None
        if name == "id":
            raise _corrupt(path, "'id' is the row number, not a field")
        if name in columns:
            if name == "env_id" and kind == "INT":
                continue
            raise _corrupt(path, f"field {name!r} is listed in two tables")
        shape = shapes.get(f"{table}.{name}")
        if shape is not None and not (
            isinstance(shape, list) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
        ):
            raise _corrupt(path, f"'data_shape.{table}.{name}' is {shape!r}, not a list of non-negative integers")
        columns[name] = Column(TABLES[table], kind, tuple(shape) if shape is not None else None)
    if not columns:
        raise _corrupt(path, "'architecture' lists no field dpx can read")
    return columns, skipped


def _partitions(index: dict[str, Any], path: Path) -> dict[str, list[tuple[str, int]]]:
    """``{mode: [(partition, sample count), ...]}`` for the modes holding partitions."""
    counts = index.get("nb_samples")
    if not isinstance(counts, dict):
        raise _corrupt(path, "'nb_samples' is not an object")
    partitions: dict[str, list[tuple[str, int]]] = {}
    for mode, names in index["partitions"].items():
        if mode not in MODES:
            raise _corrupt(path, f"unknown mode {mode!r} in 'partitions' (DeepPhysX has {', '.join(MODES)})")
        numbers_of = counts.get(mode)
        if not isinstance(names, list) or not isinstance(numbers_of, list) or len(names) != len(numbers_of):
            raise _corrupt(path, f"'partitions.{mode}' and 'nb_samples.{mode}' are not lists of one length")
        for name, count in zip(names, numbers_of):
            if not isinstance(name, str) or PARTITION.fullmatch(name) is None:
                raise _corrupt(path, f"partition {name!r} of mode {mode!r} is not a plain file name")
            if type(count) is not int or count < 0:
                raise _corrupt(path, f"partition {name!r} declares {count!r} samples, not a non-negative integer")
        if names:
            partitions[mode] = list(zip(names, numbers_of))
    return partitions


def _normalization(index: dict[str, Any], layouts: Mapping[str, FieldLayout], count: int, path: Path) -> dict[str, Any]:
    """DeepPhysX's scalar (mean, std) per field as dpx's per-component statistics (see the module docstring)."""
    stored = index.get("normalization", {})
    if not isinstance(stored, dict):
        raise _corrupt(path, "'normalization' is not an object")
    moments = {}
    for name, pair in stored.items():
        f = layouts.get(name)
        if f is None or f.dtype.kind != "f":
            continue
        if not (isinstance(pair, list) and len(pair) == 2 and all(
                isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in pair)
                and pair[1] >= 0):
            raise _corrupt(path, f"'normalization.{name}' is {pair!r}, not [mean, std] (finite, std >= 0)")
        mean, std = float(pair[0]), float(pair[1])
        components = f.shape[-1] if f.shape else 1
        per_component = max(1, count * math.prod(f.shape[:-1]))
        moments[name] = {"count": per_component, "mean": [mean] * components, "m2": [std * std * per_component] * components,
                         "std": [std] * components}
    return moments
