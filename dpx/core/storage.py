"""The default storage backend: memory-mapped NumPy partitions and an atomic index.

Layout of a dataset folder::

    dataset.json                    the index: fields, counts, partition sizes, metadata
    dataset.json.prev               the index before the last commit (for recovery)
    <mode>/<field>/00000.raw ...    raw C-ordered samples, no header

Why this design (measured in ``benchmarks/storage_candidates.py``, see
``docs/storage.md``): appending is a plain ``file.write`` of a whole batch per
field, reading gathers random samples with ``np.take`` from memory maps, both
at memory bandwidth; and crash safety comes from ordering alone. Samples are
written first and published by replacing ``dataset.json`` atomically, so a
writer killed at any moment leaves an index that only counts complete samples;
the next writer truncates whatever lies past the committed count. A reader can
open the dataset while a writer appends: it sees the count grow, never a
half-written sample. Nothing is ever unpickled.

Partitions are bounded in bytes (``max_file_bytes``) so a partition holds many
small samples (few partitions to touch per random batch) and few large ones.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("dpx.storage")

INDEX = "dataset.json"
PREVIOUS_INDEX = "dataset.json.prev"
FORMAT = "dpx-dataset"
FORMAT_VERSION = 1
#: From this size on, samples spread over several partitions are gathered one by one.
LARGE_SAMPLE_BYTES = 4096


class StorageError(RuntimeError):
    """The dataset cannot be opened or written as asked."""


class CorruptDatasetError(StorageError):
    """A dataset file is damaged; the message says which and what is still readable."""


@dataclass(frozen=True)
class FieldLayout:
    """How one field of one mode is laid out on disk."""

    dtype: np.dtype
    shape: tuple[int, ...]
    partition_samples: int

    @property
    def sample_bytes(self) -> int:
        return int(self.dtype.itemsize * np.prod(self.shape, dtype=np.int64))

    def as_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype.str, "shape": list(self.shape), "partition_samples": self.partition_samples}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FieldLayout:
        return cls(np.dtype(data["dtype"]), tuple(data["shape"]), int(data["partition_samples"]))


class MemmapStorage:
    """Append-only dataset storage, one writer and any number of readers.

    ``commit`` publishes the samples appended so far; it is cheap but not free
    (an index file is rewritten), so a writer asks for it after each batch and
    it happens at most every ``commit_interval`` seconds, plus at ``close``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        readonly: bool = True,
        max_file_bytes: int = 250_000_000,
        commit_interval: float = 0.5,
        recover: bool = False,
    ) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.max_file_bytes = max_file_bytes
        self.commit_interval = commit_interval
        self._maps: dict[tuple[str, str, int], np.ndarray] = {}
        self._layouts: dict[str, dict[str, FieldLayout]] = {}
        self._files: dict[tuple[str, str], tuple[int, Any]] = {}
        self._lock = None
        self._last_commit = 0.0
        self._index_mtime: int | None = None
        if not readonly:
            self.path.mkdir(parents=True, exist_ok=True)
            self._acquire_lock()
        if (self.path / INDEX).exists() or (self.path / PREVIOUS_INDEX).exists():
            self.index = self._read_index(recover)
        elif readonly:
            raise StorageError(f"{self.path} holds no dataset ({INDEX} not found)")
        else:
            self.index = {"format": FORMAT, "version": FORMAT_VERSION, "storage": "memmap", "modes": {}, "metadata": {}}
        self.written = {mode: entry["count"] for mode, entry in self.index["modes"].items()}
        if not readonly:
            self._truncate_uncommitted()

    # -- index -----------------------------------------------------------------------

    def _read_index(self, recover: bool) -> dict[str, Any]:
        path = self.path / INDEX
        try:
            stat = path.stat()
            index = json.loads(path.read_text())
            _validate_index(index)
            self._index_mtime = stat.st_mtime_ns
            return index
        except (OSError, ValueError, KeyError, TypeError) as exc:
            previous = self._read_previous()
            if recover and previous is not None:
                log.warning("dpx: %s is unreadable (%s); using %s", path, exc, PREVIOUS_INDEX)
                return previous
            hint = ""
            if previous is not None:
                counts = ", ".join(f"{m}: {e['count']}" for m, e in previous["modes"].items())
                hint = f"; the previous index {PREVIOUS_INDEX} is intact ({counts} samples): open with recover=True"
            raise CorruptDatasetError(f"{path} is unreadable: {exc}{hint}") from exc

    def _read_previous(self) -> dict[str, Any] | None:
        try:
            index = json.loads((self.path / PREVIOUS_INDEX).read_text())
            _validate_index(index)
            return index
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def refresh(self) -> bool:
        """Re-read the index if a writer committed since; True when it changed."""
        try:
            mtime = (self.path / INDEX).stat().st_mtime_ns
        except FileNotFoundError:
            return False
        if mtime == self._index_mtime:
            return False
        self.index = self._read_index(recover=False)
        self._layouts.clear()
        self.written = {mode: entry["count"] for mode, entry in self.index["modes"].items()}
        return True

    @property
    def metadata(self) -> dict[str, Any]:
        """Free-form JSON metadata kept in the index (normalisation, provenance)."""
        return self.index["metadata"]

    # -- structure -------------------------------------------------------------------

    @property
    def modes(self) -> list[str]:
        return list(self.index["modes"])

    def layout(self, mode: str) -> dict[str, FieldLayout]:
        layouts = self._layouts.get(mode)
        if layouts is None:
            try:
                entry = self.index["modes"][mode]
            except KeyError:
                raise StorageError(f"{self.path}: no mode {mode!r}; modes are {self.modes}") from None
            layouts = self._layouts[mode] = {name: FieldLayout.from_json(f) for name, f in entry["fields"].items()}
        return layouts

    def count(self, mode: str) -> int:
        """Committed samples of ``mode`` (0 for a mode never written)."""
        entry = self.index["modes"].get(mode)
        return entry["count"] if entry else 0

    def add_mode(self, mode: str, fields: Mapping[str, tuple[np.dtype, tuple[int, ...]]]) -> None:
        """Declare ``mode`` with its fields, or check they match the stored ones."""
        self._check_writable()
        wanted = {name: (np.dtype(dtype), tuple(shape)) for name, (dtype, shape) in fields.items()}
        if mode in self.index["modes"]:
            stored = {name: (f.dtype, f.shape) for name, f in self.layout(mode).items()}
            if stored != wanted:
                raise StorageError(
                    f"{self.path}: mode {mode!r} stores fields {_describe(stored)}, "
                    f"but the samples have {_describe(wanted)}"
                )
            return
        layouts = {}
        for name, (dtype, shape) in wanted.items():
            sample_bytes = max(1, dtype.itemsize * int(np.prod(shape, dtype=np.int64)))
            layouts[name] = FieldLayout(dtype, shape, max(1, self.max_file_bytes // sample_bytes)).as_json()
        self.index["modes"][mode] = {"count": 0, "fields": layouts}
        self.written[mode] = 0
        for name in layouts:
            (self.path / mode / name).mkdir(parents=True, exist_ok=True)
        self.commit(force=True)

    # -- writing ---------------------------------------------------------------------

    def append(self, mode: str, arrays: Mapping[str, np.ndarray]) -> None:
        """Write a batch (one array per field, same length); published by :meth:`commit`."""
        self._check_writable()
        layout = self.layout(mode)
        counts = {len(array) for array in arrays.values()}
        if set(arrays) != set(layout) or len(counts) != 1:
            raise StorageError(
                f"{self.path}: a batch of mode {mode!r} needs fields {sorted(layout)} of one length, "
                f"got {', '.join(f'{n}: {len(a)}' for n, a in arrays.items())}"
            )
        (count,) = counts
        start = self.written[mode]
        for name, f in layout.items():
            array = np.ascontiguousarray(arrays[name], dtype=f.dtype)
            if array.shape[1:] != f.shape:
                raise StorageError(f"{self.path}: field {name!r} has samples of shape {array.shape[1:]}, not {f.shape}")
            done = 0
            while done < count:
                part, offset = divmod(start + done, f.partition_samples)
                chunk = min(count - done, f.partition_samples - offset)
                self._file(mode, name, part).write(memoryview(array[done : done + chunk]).cast("B"))
                done += chunk
        self.written[mode] = start + count

    def _file(self, mode: str, name: str, part: int):
        current = self._files.get((mode, name))
        if current is not None and current[0] == part:
            return current[1]
        if current is not None:
            current[1].close()
        handle = open(self._partition_path(mode, name, part), "ab")
        self._files[(mode, name)] = (part, handle)
        return handle

    def commit(self, *, force: bool = False, metadata: Mapping[str, Any] | None = None) -> bool:
        """Publish appended samples (and ``metadata``); returns whether the index was written."""
        self._check_writable()
        if metadata is not None:
            self.index["metadata"].update(metadata)
        now = time.monotonic()
        if not force and now - self._last_commit < self.commit_interval:
            return False
        for _, handle in self._files.values():
            handle.flush()
        for mode, count in self.written.items():
            self.index["modes"][mode]["count"] = count
        index_path = self.path / INDEX
        if index_path.exists():
            backup = self.path / (PREVIOUS_INDEX + ".tmp")
            backup.unlink(missing_ok=True)
            os.link(index_path, backup)
            os.replace(backup, self.path / PREVIOUS_INDEX)
        tmp = self.path / (INDEX + ".tmp")
        tmp.write_text(json.dumps(self.index, indent=1))
        os.replace(tmp, index_path)
        self._index_mtime = index_path.stat().st_mtime_ns
        self._last_commit = now
        return True

    def _truncate_uncommitted(self) -> None:
        """Drop bytes a killed writer left past the committed count."""
        for mode in self.modes:
            count = self.count(mode)
            for name, f in self.layout(mode).items():
                folder = self.path / mode / name
                folder.mkdir(parents=True, exist_ok=True)
                for file in sorted(folder.glob("*.raw")):
                    part = int(file.stem)
                    keep = min(max(count - part * f.partition_samples, 0), f.partition_samples) * f.sample_bytes
                    size = file.stat().st_size
                    if size > keep:
                        if keep:
                            os.truncate(file, keep)
                        else:
                            file.unlink()
                        log.info("dpx: dropped %d uncommitted bytes of %s", size - keep, file)
                    elif size < keep:
                        raise CorruptDatasetError(
                            f"{file} is truncated: {size} bytes where {keep} are committed; "
                            f"samples of {mode!r} from {part * f.partition_samples + size // f.sample_bytes} on are lost"
                        )

    # -- reading ---------------------------------------------------------------------

    def read(
        self, mode: str, name: str, indices: np.ndarray, out: np.ndarray | None = None, *, checked: bool = False
    ) -> np.ndarray:
        """Gather samples ``indices`` of one field into ``out`` (allocated if None).

        ``checked=True`` skips the bounds check, for callers whose indices come
        from :meth:`count` (a permutation of the committed samples).
        """
        f = self.layout(mode)[name]
        count = self.count(mode)
        if out is None:
            out = np.empty((len(indices), *f.shape), f.dtype)
        if len(indices) == 0:
            return out
        if not checked:
            indices = np.asarray(indices, dtype=np.int64)
            low, high = int(indices.min()), int(indices.max())
            if low < 0 or high >= count:
                raise IndexError(
                    f"{self.path}: sample {high if high >= count else low} of mode {mode!r} does not exist "
                    f"({count} committed)"
                )
        size = f.partition_samples
        if count <= size:  # one partition: the common case
            # mode="clip": bounds are checked above, and the default mode copies through a temporary
            return np.take(self._map(mode, name, 0, f, count), indices, axis=0, out=out, mode="clip")
        if f.sample_bytes >= LARGE_SAMPLE_BYTES:  # one plain copy per sample beats fancy indexing's temporaries
            parts, local = np.divmod(indices, size)
            maps = [self._map(mode, name, part, f, count) for part in range(int(parts.max()) + 1)]
            for row, (part, index) in enumerate(zip(parts.tolist(), local.tolist())):
                out[row] = maps[part][index]
            return out
        parts = indices // size
        for part in np.unique(parts):
            rows = np.flatnonzero(parts == part)
            out[rows] = self._map(mode, name, int(part), f, count)[indices[rows] - part * size]
        return out

    def reader(self, mode: str, name: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """A gather function ``(indices, out) -> out`` over the samples committed now.

        For batch loops: it resolves the partition maps once instead of per
        batch. Indices must be valid (below the current :meth:`count`).
        """
        f = self.layout(mode)[name]
        count = self.count(mode)
        if 0 < count <= f.partition_samples:
            mapped = self._map(mode, name, 0, f, count)
            return lambda indices, out: np.take(mapped, indices, axis=0, out=out, mode="clip")
        return lambda indices, out: self.read(mode, name, np.asarray(indices), out, checked=True)

    def _map(self, mode: str, name: str, part: int, f: FieldLayout, count: int) -> np.ndarray:
        """The memory map of a partition, covering its committed samples."""
        need = min(count - part * f.partition_samples, f.partition_samples)
        key = (mode, name, part)
        mapped = self._maps.get(key)
        if mapped is not None and len(mapped) >= need:
            return mapped
        file = self._partition_path(mode, name, part)
        size = file.stat().st_size if file.exists() else 0
        if size < need * f.sample_bytes:
            readable = part * f.partition_samples + size // f.sample_bytes
            raise CorruptDatasetError(
                f"{file} is truncated: {size} bytes where {need * f.sample_bytes} are committed; "
                f"samples 0..{readable - 1} of mode {mode!r} field {name!r} are readable, later ones are lost"
            )
        # a plain ndarray view: indexing an np.memmap subclass costs microseconds a sample
        mapped = np.memmap(file, dtype=f.dtype, mode="r", shape=(need, *f.shape)).view(np.ndarray)
        self._maps[key] = mapped
        return mapped

    def _partition_path(self, mode: str, name: str, part: int) -> Path:
        return self.path / mode / name / f"{part:05d}.raw"

    # -- life cycle ------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self.readonly:
            raise StorageError(f"{self.path} is open read-only")

    def _acquire_lock(self) -> None:
        self._lock = open(self.path / ".writer.lock", "a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise StorageError(f"{self.path} is being written by another process; open it read-only") from None

    def close(self) -> None:
        """Commit what was appended and release files and the writer lock."""
        if not self.readonly and self._lock is not None:
            self.commit(force=True)
        for _, handle in self._files.values():
            handle.close()
        self._files.clear()
        self._maps.clear()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> MemmapStorage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _validate_index(index: Any) -> None:
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} index")
    if index.get("version") != FORMAT_VERSION:
        raise ValueError(f"format version {index.get('version')} is not supported (this dpx reads {FORMAT_VERSION})")
    for mode, entry in index["modes"].items():
        if not isinstance(entry["count"], int) or entry["count"] < 0:
            raise ValueError(f"mode {mode!r} has an invalid count {entry['count']!r}")
        for name, f in entry["fields"].items():
            FieldLayout.from_json(f)


def _describe(fields: Mapping[str, tuple[np.dtype, tuple[int, ...]]]) -> str:
    return ", ".join(f"{name} {dtype} {shape}" for name, (dtype, shape) in fields.items())
