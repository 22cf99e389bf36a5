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
half-written sample. Nothing is ever unpickled, and the index is untrusted input: see
``docs/security.md``.

Partitions are bounded in bytes (``max_file_bytes``) so a partition holds many
small samples (few partitions to touch per random batch) and few large ones.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import math
import numbers
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dpx.core.environment import FieldError, check_field_dtype, check_field_name

log = logging.getLogger("dpx.storage")

INDEX = "dataset.json"
PREVIOUS_INDEX = "dataset.json.prev"
LOCK = ".writer.lock"
FORMAT = "dpx-dataset"
FORMAT_VERSION = 1
#: From this size on, samples spread over several partitions are gathered one by one.
LARGE_SAMPLE_BYTES = 4096
#: Bounds on what an index may declare; a shared dataset.json is untrusted input.
MAX_INDEX_BYTES = 64 << 20
MAX_DIMENSIONS = 32
MAX_SAMPLE_BYTES = 1 << 40
MAX_PARTITION_SAMPLES = 1 << 40
#: Write errors that mean "no room": stop keeping what fits, never crash half-written.
FULL_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class StorageError(RuntimeError):
    """The dataset cannot be opened or written as asked."""


class CorruptDatasetError(StorageError):
    """A dataset file is damaged; the message says which and what is still readable."""


class StorageFullError(StorageError):
    """The disk filled up: the whole samples that fitted are committed, nothing half-written remains."""


def check_field_layout(name: object, dtype: object, shape: object) -> tuple[np.dtype, tuple[int, ...]]:
    """The checks every storage backend owes a field it stores or reads back from disk.

    The name must be an identifier (it becomes a folder name: no separator, no
    ``..``), the dtype plain numeric or bool (an object dtype mapped from a file
    turns its bytes into pointers), the shape a short list of non-negative
    integers with a bounded sample size. Raises :class:`FieldError`.
    """
    name = check_field_name(name)
    parsed = check_field_dtype(name, dtype)
    if (
        not isinstance(shape, (list, tuple))
        or len(shape) > MAX_DIMENSIONS
        or not all(isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 0 for n in shape)
    ):
        raise FieldError(f"field {name!r}: shape {shape!r} must be at most {MAX_DIMENSIONS} non-negative integers")
    shape = tuple(int(n) for n in shape)
    if parsed.itemsize * math.prod(shape) > MAX_SAMPLE_BYTES:
        raise FieldError(f"field {name!r}: samples of shape {shape} and dtype {parsed} exceed {MAX_SAMPLE_BYTES} bytes")
    return parsed, shape


def open_dir(root: Path, parts: tuple[str, ...], create: bool = False) -> int | None:
    """A descriptor of the folder ``parts`` below the dataset folder ``root``, reached without
    following any symbolic link; None when it does not exist and ``create`` is False."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for depth, part in enumerate(parts):
            if create:
                try:
                    os.mkdir(part, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                os.close(fd)
                return None
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                raise CorruptDatasetError(
                    f"{root.joinpath(*parts[: depth + 1])} is a symbolic link or not a folder; "
                    "dpx follows no links inside a dataset"
                ) from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file(root: Path, parts: tuple[str, ...], flags: int) -> int:
    """A descriptor of the regular file ``parts`` below the dataset (never through a link)."""
    folder = open_dir(root, parts[:-1], create=bool(flags & os.O_CREAT))
    path = root.joinpath(*parts)
    if folder is None:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
    try:
        fd = os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644, dir_fd=folder)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise CorruptDatasetError(f"{path} is a symbolic link; dpx opens only regular files inside a dataset") from None
    finally:
        os.close(folder)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CorruptDatasetError(f"{path} is not a regular file; dpx opens only regular files inside a dataset")
    return fd


def read_json(fd: int, limit: int = MAX_INDEX_BYTES) -> Any:
    """The JSON document in the open file ``fd`` (closed after reading), refused unparsed when it is
    over ``limit`` bytes: a crafted file must not make dpx read or parse gigabytes.

    Raises ValueError (too long, not JSON) or RecursionError (nested too deep).
    """
    with open(fd, "rb") as file:
        text = file.read(limit + 1)
    if len(text) > limit:
        raise ValueError(f"larger than {limit} bytes")
    return json.loads(text)


@dataclass(frozen=True)
class FieldLayout:
    """How one field of one mode is laid out on disk."""

    dtype: np.dtype
    shape: tuple[int, ...]
    partition_samples: int

    @property
    def sample_bytes(self) -> int:
        return self.dtype.itemsize * math.prod(self.shape)

    def as_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype.str, "shape": list(self.shape), "partition_samples": self.partition_samples}

    @classmethod
    def from_json(cls, name: str, data: Any) -> FieldLayout:
        """The layout an index declares for field ``name``, checked (ValueError otherwise)."""
        if not isinstance(data, dict) or not isinstance(data.get("dtype"), str):
            raise ValueError(f"field {name!r}: {data!r} is not a layout (dtype, shape, partition_samples)")
        dtype, shape = check_field_layout(name, data["dtype"], data.get("shape"))
        partition_samples = data.get("partition_samples")
        if type(partition_samples) is not int or not 1 <= partition_samples <= MAX_PARTITION_SAMPLES:
            raise ValueError(f"field {name!r}: partition_samples={partition_samples!r} must be an integer from 1")
        return cls(dtype, shape, partition_samples)


class MemmapStorage:
    """Append-only dataset storage, one writer and any number of readers.

    ``commit`` publishes the samples appended so far; it is cheap but not free
    (an index file is rewritten), so a writer asks for it after each batch and
    it happens at most every ``commit_interval`` seconds, plus at ``close``.

    A dataset folder may come from someone else: the index is validated when
    read (names, dtypes, shapes, counts against the files' sizes), and files
    are opened through folder descriptors with ``O_NOFOLLOW``, so nothing
    outside the folder is read or written through it. These checks happen when
    the index is read or a partition is opened, never per batch.
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
        self._lock: int | None = None
        self._last_commit = 0.0
        self._index_stamp: tuple[int, int] | None = None
        self._full = False
        self._recovered = False
        if not readonly:
            self.path.mkdir(parents=True, exist_ok=True)
            self._acquire_lock()
        try:
            if self._exists(INDEX) or self._exists(PREVIOUS_INDEX):
                self.index = self._read_index(recover)
            elif readonly:
                raise StorageError(f"{self.path} holds no dataset ({INDEX} not found)")
            else:
                self._refuse_stray_partitions(self._folders(self.path))
                self.index = {"format": FORMAT, "version": FORMAT_VERSION, "storage": "memmap", "modes": {}, "metadata": {}}
            self.written = {mode: entry["count"] for mode, entry in self.index["modes"].items()}
            #: counts in the index on disk, what a reader sees
            self._published = dict(self.written)
            #: the index on disk says a writer closed it: the files hold exactly the committed samples
            self._closed_on_disk = self.index.get("closed") is True and not self._recovered
            self._dirty = self._recovered  # a writer publishes the recovered index
            self._check_partitions(truncate=not readonly)
        except BaseException:
            self._release_lock()
            raise

    # -- safe file access ------------------------------------------------------------

    def _open_dir(self, parts: tuple[str, ...], create: bool = False) -> int | None:
        return open_dir(self.path, parts, create)

    def _open_file(self, parts: tuple[str, ...], flags: int) -> int:
        return open_file(self.path, parts, flags)

    def _exists(self, name: str) -> bool:
        return os.path.lexists(self.path / name)

    def _partitions(self, mode: str, name: str) -> dict[int, int]:
        """``{partition number: size in bytes}`` of a field's partition files."""
        folder = self._open_dir((mode, name))
        if folder is None:
            return {}
        sizes = {}
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    part = _partition_number(entry.name)
                    if part is None:
                        continue
                    info = entry.stat(follow_symlinks=False)
                    if not stat.S_ISREG(info.st_mode):
                        raise CorruptDatasetError(
                            f"{self.path / mode / name / entry.name} is not a regular file (a symbolic link?); "
                            "dpx opens only regular files inside a dataset"
                        )
                    sizes[part] = info.st_size
        finally:
            os.close(folder)
        return sizes

    def _folders(self, path: Path) -> Iterator[tuple[str, str]]:
        """``(mode, field)`` folders found on disk, without following links."""
        with os.scandir(path) as modes:
            for mode in modes:
                if mode.is_dir(follow_symlinks=False):
                    with os.scandir(mode.path) as fields:
                        yield from ((mode.name, f.name) for f in fields if f.is_dir(follow_symlinks=False))

    def _refuse_stray_partitions(self, folders: Iterator[tuple[str, str]]) -> None:
        """Appending after bytes no index describes would make every new sample garbage."""
        stray = [
            self.path / mode / name / f"{part:05d}.raw"
            for mode, name in folders
            for part in sorted(self._partitions(mode, name))
        ]
        if stray:
            shown = ", ".join(str(p) for p in stray[:3]) + (f" and {len(stray) - 3} more" if len(stray) > 3 else "")
            raise StorageError(
                f"{self.path} holds partition files that no {INDEX} describes ({shown}); "
                "move them away or write to an empty folder"
            )

    # -- index -----------------------------------------------------------------------

    def _read_index(self, recover: bool) -> dict[str, Any]:
        path = self.path / INDEX
        try:
            index, self._index_stamp = self._load_index(INDEX)
            return index
        except (OSError, ValueError, RecursionError) as exc:
            previous = self._read_previous()
            if recover and previous is not None:
                log.warning("dpx: %s is unreadable (%s); using %s", path, exc, PREVIOUS_INDEX)
                self._recovered = True
                return previous
            hint = ""
            if previous is not None:
                counts = ", ".join(f"{m}: {e['count']}" for m, e in previous["modes"].items())
                hint = (
                    f"; the previous index {PREVIOUS_INDEX} is intact ({counts} samples): "
                    f"`python -m dpx repair {self.path}` restores it"
                )
            raise CorruptDatasetError(f"{path} is unreadable: {exc}{hint}") from exc

    def _load_index(self, name: str) -> tuple[dict[str, Any], tuple[int, int]]:
        """The index file ``name``, validated, and its stamp (see :meth:`_stamp`)."""
        fd = self._open_file((name,), os.O_RDONLY)
        info = os.fstat(fd)
        index = read_json(fd)
        validate_index(index)
        return index, (info.st_ino, info.st_mtime_ns)

    def _stamp(self) -> tuple[int, int] | None:
        """Identifies the index file now on disk: each commit replaces it with a new file."""
        try:
            info = os.stat(self.path / INDEX, follow_symlinks=False)
        except FileNotFoundError:
            return None
        return info.st_ino, info.st_mtime_ns

    def _read_previous(self) -> dict[str, Any] | None:
        try:
            return self._load_index(PREVIOUS_INDEX)[0]
        except (OSError, ValueError, RecursionError):
            return None

    def refresh(self) -> bool:
        """Re-read the index if a writer committed since; True when it changed."""
        stamp = self._stamp()
        if stamp is None or stamp == self._index_stamp:
            return False
        before = {mode: entry["fields"] for mode, entry in self.index["modes"].items()}
        self.index = self._read_index(recover=False)
        self._layouts.clear()
        self.written = {mode: entry["count"] for mode, entry in self.index["modes"].items()}
        self._closed_on_disk = self.index.get("closed") is True
        for mode, entry in self.index["modes"].items():
            if before.get(mode, entry["fields"]) != entry["fields"]:
                self._maps = {key: m for key, m in self._maps.items() if key[0] != mode}
        self._check_partitions(truncate=False)
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
            layouts = self._layouts[mode] = {
                name: FieldLayout.from_json(name, f) for name, f in entry["fields"].items()
            }
        return layouts

    def count(self, mode: str) -> int:
        """Committed samples of ``mode`` (0 for a mode never written)."""
        entry = self.index["modes"].get(mode)
        return entry["count"] if entry else 0

    def add_mode(self, mode: str, fields: Mapping[str, tuple[np.dtype, tuple[int, ...]]]) -> None:
        """Declare ``mode`` with its fields, or check they match the stored ones."""
        self._check_writable()
        try:
            check_field_name(mode, "mode")
            wanted = {name: check_field_layout(name, dtype, shape) for name, (dtype, shape) in fields.items()}
        except FieldError as exc:
            raise StorageError(f"{self.path}: {exc}") from None
        if mode in self.index["modes"]:
            stored = {name: (f.dtype, f.shape) for name, f in self.layout(mode).items()}
            if stored != wanted:
                raise StorageError(
                    f"{self.path}: mode {mode!r} stores fields {_describe(stored)}, "
                    f"but the samples have {_describe(wanted)}"
                )
            return
        self._refuse_stray_partitions((mode, name) for name in wanted)
        layouts = {}
        for name, (dtype, shape) in wanted.items():
            sample_bytes = max(1, dtype.itemsize * math.prod(shape))
            layouts[name] = FieldLayout(dtype, shape, max(1, self.max_file_bytes // sample_bytes)).as_json()
        self.index["modes"][mode] = {"count": 0, "fields": layouts}
        self.written[mode] = 0
        for name in layouts:
            os.close(self._open_dir((mode, name), create=True))
        self._dirty = True
        self.commit(force=True)

    # -- writing ---------------------------------------------------------------------

    def append(self, mode: str, arrays: Mapping[str, np.ndarray]) -> None:
        """Write a batch (one array per field, same length); published by :meth:`commit`.

        On a full disk it keeps the whole samples that fit, commits them and
        raises :class:`StorageFullError` saying how many.
        """
        self._check_writable()
        layout = self.layout(mode)
        counts = {len(array) for array in arrays.values()}
        if set(arrays) != set(layout) or len(counts) != 1:
            raise StorageError(
                f"{self.path}: a batch of mode {mode!r} needs fields {sorted(layout)} of one length, "
                f"got {', '.join(f'{n}: {len(a)}' for n, a in arrays.items())}"
            )
        (count,) = counts
        # every field is checked before any is written: a refused batch leaves no bytes behind
        arrays = {name: np.ascontiguousarray(arrays[name], dtype=f.dtype) for name, f in layout.items()}
        for name, f in layout.items():
            if arrays[name].shape[1:] != f.shape:
                raise StorageError(f"{self.path}: field {name!r} has samples of shape {arrays[name].shape[1:]}, not {f.shape}")
        if self._closed_on_disk:  # a writer killed from now on may leave bytes past the count
            self._dirty = True
            self.commit(force=True)
        start = self.written[mode]
        last = list(layout)[-1]
        for name, f in layout.items():
            array = arrays[name]
            done = 0
            while done < count:
                part, offset = divmod(start + done, f.partition_samples)
                chunk = min(count - done, f.partition_samples - offset)
                try:
                    handle = self._file(mode, name, part, offset * f.sample_bytes)
                    _write_all(handle, memoryview(array[done : done + chunk]).cast("B"))
                except OSError as exc:
                    if exc.errno not in FULL_DISK_ERRORS:
                        self._close_files(mode)  # the next append checks the partitions' sizes again
                        raise
                    # fields are written one after the other: the later ones hold none of this batch
                    if name == last:
                        written = self._partitions(mode, name).get(part, 0) - offset * f.sample_bytes
                        self.written[mode] = start + done + max(written, 0) // f.sample_bytes
                    self._stop_full(exc)
                done += chunk
        self.written[mode] = start + count
        self._dirty = True

    def _close_files(self, mode: str | None = None) -> None:
        for key in [key for key in self._files if mode is None or key[0] == mode]:
            self._files.pop(key)[1].close()

    def _file(self, mode: str, name: str, part: int, offset: int):
        """The open partition file ``part``, which must hold exactly ``offset`` bytes."""
        current = self._files.get((mode, name))
        if current is not None and current[0] == part:
            return current[1]
        if current is not None:
            current[1].close()
            del self._files[(mode, name)]
        fd = self._open_file((mode, name, f"{part:05d}.raw"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        size = os.fstat(fd).st_size
        if size != offset:
            os.close(fd)
            raise CorruptDatasetError(
                f"{self._partition_path(mode, name, part)} holds {size} bytes where {offset} were expected; "
                "refusing to append after bytes the index does not describe"
            )
        handle = open(fd, "ab", buffering=0)
        self._files[(mode, name)] = (part, handle)
        return handle

    def commit(self, *, force: bool = False, metadata: Mapping[str, Any] | None = None) -> bool:
        """Publish appended samples (and ``metadata``); returns whether the index was written."""
        self._check_writable()
        if metadata is not None:
            self.index["metadata"].update(metadata)
            self._dirty = True
        now = time.monotonic()
        if not self._dirty or (not force and now - self._last_commit < self.commit_interval):
            return False
        try:
            self._write_index(closed=False)
        except OSError as exc:
            if exc.errno not in FULL_DISK_ERRORS:
                raise
            self._stop_full(exc)
        self._last_commit = now
        return True

    def _write_index(self, *, closed: bool) -> None:
        """Replace the index atomically, keeping the one it replaces as the previous index."""
        for mode, count in self.written.items():
            self.index["modes"][mode]["count"] = count
        self.index["closed"] = closed
        index_path = self.path / INDEX
        if self._exists(INDEX):
            backup = self.path / (PREVIOUS_INDEX + ".tmp")
            backup.unlink(missing_ok=True)
            os.link(index_path, backup, follow_symlinks=False)
            os.replace(backup, self.path / PREVIOUS_INDEX)
        tmp = self.path / (INDEX + ".tmp")
        tmp.unlink(missing_ok=True)  # never write through a planted link
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            with open(fd, "wb", buffering=0) as file:
                _write_all(file, json.dumps(self.index, indent=1).encode())
            os.replace(tmp, index_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._index_stamp = self._stamp()
        self._published = dict(self.written)
        self._closed_on_disk = closed
        self._dirty = False

    def _stop_full(self, error: OSError) -> None:
        """Commit the whole samples that fit on a full disk, then raise StorageFullError.

        The index needs room too: samples not yet published are dropped from the
        end, a few more each try, until the index fits; at worst the index on disk
        stays as it was. Either way no byte past the committed count remains.
        """
        self._full = True
        self._close_files()
        drop = 1
        while True:
            self._truncate_to(self.written)
            try:
                self._write_index(closed=False)
                break
            except OSError as exc:
                if exc.errno not in FULL_DISK_ERRORS:
                    raise
            if all(count <= self._published.get(mode, 0) for mode, count in self.written.items()):
                self._dirty = False  # the index on disk stands, and no byte lies past it
                break
            for mode in self.written:
                self.written[mode] = max(self._published.get(mode, 0), self.written[mode] - drop)
            drop *= 2
        kept = ", ".join(f"{mode}: {count}" for mode, count in self._published.items())
        raise StorageFullError(
            f"{self.path}: no space left on the device ({error.strerror}); the whole samples that fitted "
            f"are committed and readable ({kept}), nothing half-written remains. Free space, then run "
            "again on this dataset to continue"
        ) from None

    def _truncate_to(self, counts: Mapping[str, int]) -> None:
        """Drop every byte past ``counts`` samples (files beyond are removed)."""
        for mode, count in counts.items():
            for name, f in self.layout(mode).items():
                for part, size in self._partitions(mode, name).items():
                    keep = _committed_bytes(count, part, f)
                    if size > keep:
                        self._cut(mode, name, part, keep)
                        log.info("dpx: dropped %d uncommitted bytes of %s", size - keep, self._partition_path(mode, name, part))

    def _cut(self, mode: str, name: str, part: int, keep: int) -> None:
        if keep:
            fd = self._open_file((mode, name, f"{part:05d}.raw"), os.O_WRONLY)
            try:
                os.ftruncate(fd, keep)
            finally:
                os.close(fd)
            return
        folder = self._open_dir((mode, name))
        if folder is not None:
            try:
                os.unlink(f"{part:05d}.raw", dir_fd=folder)
            finally:
                os.close(folder)

    def _check_partitions(self, *, truncate: bool) -> None:
        """Check the files' sizes against the index; a writer drops what lies past the count.

        A file larger than its layout allows, or larger than the count when the
        last writer closed cleanly, means the index does not describe the data
        (a dtype or shape changed): refused, nothing is cut. Bytes past the count
        of a writer that did not close are its uncommitted tail. A first partition
        shorter than its samples is refused at once; later ones when read (the
        message says which samples are still readable), or here by a writer.
        """
        for mode in self.modes:
            count = self.count(mode)
            for name, f in self.layout(mode).items():
                capacity = f.partition_samples * f.sample_bytes
                sizes = self._partitions(mode, name)
                for part, size in sorted(sizes.items()):
                    keep = _committed_bytes(count, part, f)
                    file = self._partition_path(mode, name, part)
                    # a writer may have reopened the dataset since the index was read: then its bytes are new
                    grown = self._closed_on_disk and size > keep and self._stamp() == self._index_stamp
                    if size > capacity or grown:
                        raise CorruptDatasetError(
                            f"{file} holds {size} bytes where {INDEX} commits {keep} "
                            f"(field {name!r}: {f.dtype} {f.shape}, {f.partition_samples} per partition): "
                            "the index does not describe this data"
                        )
                    if size < keep and (truncate or part == 0):
                        raise CorruptDatasetError(
                            f"{file} is truncated: {size} bytes where {keep} are committed; samples of {mode!r} "
                            f"from {part * f.partition_samples + size // max(f.sample_bytes, 1)} on are lost"
                        )
                needed = -(-count // f.partition_samples) if f.sample_bytes else 0
                present = sorted(part for part in sizes if part < needed)
                if len(present) < needed and (truncate or not present or present[0] != 0):
                    missing = next((i for i, part in enumerate(present) if i != part), len(present))
                    raise CorruptDatasetError(
                        f"{self._partition_path(mode, name, missing)} is missing: samples of {mode!r} "
                        f"from {missing * f.partition_samples} on are lost ({count} are committed)"
                    )
        if truncate and not self._closed_on_disk:
            self._truncate_to(self.written)

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
        if len(indices) == 0:
            return np.empty((0, *f.shape), f.dtype) if out is None else out
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
            mapped = self._map(mode, name, 0, f, count)  # before allocating: it checks the file holds the samples
            if out is None:
                out = np.empty((len(indices), *f.shape), f.dtype)
            # mode="clip": bounds are checked above, and the default mode copies through a temporary
            return np.take(mapped, indices, axis=0, out=out, mode="clip")
        parts = indices // size
        maps = {int(part): self._map(mode, name, int(part), f, count) for part in np.unique(parts)}
        if out is None:
            out = np.empty((len(indices), *f.shape), f.dtype)
        if f.sample_bytes >= LARGE_SAMPLE_BYTES:  # one plain copy per sample beats fancy indexing's temporaries
            for row, (part, index) in enumerate(zip(parts.tolist(), (indices - parts * size).tolist())):
                out[row] = maps[part][index]
            return out
        for part, mapped in maps.items():
            rows = np.flatnonzero(parts == part)
            out[rows] = mapped[indices[rows] - part * size]
        return out

    def reader(self, mode: str, name: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """A gather function ``(indices, out) -> out`` over the samples committed now.

        For batch loops: it resolves the partition maps once instead of per
        batch. Indices must be valid (below the current :meth:`count`).
        """
        f = self.layout(mode)[name]
        count = self.count(mode)
        if 0 < count <= f.partition_samples:
            # a plain ndarray view of the map, and its own take: np.take on the np.memmap subclass
            # costs ~1 µs more a call, the np.take wrapper another
            take = self._map(mode, name, 0, f, count).view(np.ndarray).take
            return lambda indices, out: take(indices, axis=0, out=out, mode="clip")
        return lambda indices, out: self.read(mode, name, np.asarray(indices), out, checked=True)

    def _map(self, mode: str, name: str, part: int, f: FieldLayout, count: int) -> np.ndarray:
        """The memory map of a partition, covering its committed samples."""
        need = min(count - part * f.partition_samples, f.partition_samples)
        key = (mode, name, part)
        mapped = self._maps.get(key)
        if mapped is not None and len(mapped) >= need:
            return mapped
        if need * f.sample_bytes == 0:  # nothing to map (np.memmap refuses empty files)
            return np.empty((need, *f.shape), f.dtype)
        file = self._partition_path(mode, name, part)
        size, mapped = 0, None
        try:
            fd = self._open_file((mode, name, f"{part:05d}.raw"), os.O_RDONLY)
        except FileNotFoundError:
            pass
        else:
            with open(fd, "rb") as handle:
                size = os.fstat(fd).st_size
                if size >= need * f.sample_bytes:
                    # a plain ndarray view: indexing an np.memmap subclass costs microseconds a sample
                    mapped = np.memmap(handle, dtype=f.dtype, mode="r", shape=(need, *f.shape)).view(np.ndarray)
        if mapped is None:
            readable = part * f.partition_samples + size // f.sample_bytes
            raise CorruptDatasetError(
                f"{file} is truncated: {size} bytes where {need * f.sample_bytes} are committed; "
                f"samples 0..{readable - 1} of mode {mode!r} field {name!r} are readable, later ones are lost"
            )
        self._maps[key] = mapped
        return mapped

    def _partition_path(self, mode: str, name: str, part: int) -> Path:
        return self.path / mode / name / f"{part:05d}.raw"

    # -- life cycle ------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self.readonly:
            raise StorageError(f"{self.path} is open read-only")

    def _acquire_lock(self) -> None:
        self._lock = self._open_file((LOCK,), os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._release_lock()
            raise StorageError(f"{self.path} is being written by another process; open it read-only") from None

    def _release_lock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def close(self) -> None:
        """Commit what was appended, mark the dataset closed, release files and the writer lock."""
        try:
            self._close_files()
            if not self.readonly and self._lock is not None and not self._full:
                if self._dirty or not self._closed_on_disk:
                    try:
                        self._write_index(closed=True)
                    except OSError as exc:
                        if exc.errno not in FULL_DISK_ERRORS:
                            raise
                        self._stop_full(exc)
        finally:
            self._maps.clear()
            self._release_lock()

    def __enter__(self) -> MemmapStorage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def validate_index(index: Any) -> None:
    """Check an index read from disk before anything trusts it; ValueError says what is wrong.

    Mode and field names are identifiers (they become folder names), layouts
    pass :func:`check_field_layout`, counts are non-negative integers.
    """
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} index")
    if index.get("version") != FORMAT_VERSION:
        raise ValueError(f"format version {index.get('version')!r} is not supported (this dpx reads {FORMAT_VERSION})")
    modes, metadata = index.get("modes"), index.get("metadata", {})
    if not isinstance(modes, dict) or not isinstance(metadata, dict):
        raise ValueError("'modes' and 'metadata' must be objects")
    index.setdefault("metadata", metadata)
    for mode, entry in modes.items():
        check_field_name(mode, "mode")
        if not isinstance(entry, dict) or not isinstance(entry.get("fields"), dict):
            raise ValueError(f"mode {mode!r} has no 'fields' object")
        count = entry.get("count")
        if type(count) is not int or count < 0:
            raise ValueError(f"mode {mode!r} has an invalid count {count!r}")
        for name, layout in entry["fields"].items():
            FieldLayout.from_json(name, layout)


def _committed_bytes(count: int, part: int, f: FieldLayout) -> int:
    """Bytes of partition ``part`` that hold some of the first ``count`` samples."""
    return min(max(count - part * f.partition_samples, 0), f.partition_samples) * f.sample_bytes


def _partition_number(filename: str) -> int | None:
    """The number of a partition file named as dpx names them (``00042.raw``), else None."""
    stem, dot, suffix = filename.partition(".")
    if suffix != "raw" or len(stem) < 5 or not stem.isdecimal() or not stem.isascii():
        return None
    part = int(stem)
    return part if f"{part:05d}" == stem else None


def _write_all(file: Any, data: memoryview) -> None:
    """Write every byte; an unbuffered write may take only part of them before the disk fills."""
    while data:
        data = data[file.write(data) :]


def copy_dataset(source: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Copy a dataset folder, leaving out links and special files, which are never followed.

    A shared dataset may carry a link to a file elsewhere: copied as a link it
    would still point there, and followed it would copy that file's bytes in.
    """

    def left_out(folder: str, names: list[str]) -> set[str]:
        skipped = {LOCK, INDEX + ".tmp", PREVIOUS_INDEX + ".tmp"}
        for name in names:
            mode = os.lstat(os.path.join(folder, name)).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                log.warning("dpx: not copying %s: only regular files and folders are", os.path.join(folder, name))
                skipped.add(name)
        return skipped

    shutil.copytree(source, destination, dirs_exist_ok=True, ignore=left_out)


def repair_dataset(path: str | os.PathLike) -> str:
    """Restore a dataset whose index is unreadable from the previous index; says what it did.

    The samples committed after the previous index are dropped (their count
    was in the lost index). An intact dataset is left as it is.
    """
    try:
        MemmapStorage(path).close()
        return f"{Path(path) / INDEX} is intact: nothing to repair"
    except CorruptDatasetError as exc:
        problem = str(exc)
    storage = MemmapStorage(path, readonly=False, recover=True)
    try:
        if not storage._recovered:
            raise CorruptDatasetError(problem)
        counts = ", ".join(f"{mode}: {storage.count(mode)}" for mode in storage.modes) or "no samples"
    finally:
        storage.close()
    return f"restored {Path(path) / INDEX} from {PREVIOUS_INDEX} ({counts} samples)"


def _describe(fields: Mapping[str, tuple[np.dtype, tuple[int, ...]]]) -> str:
    return ", ".join(f"{name} {dtype} {shape}" for name, (dtype, shape) in fields.items())
