"""Compare storage candidates for dpx datasets: raw memmap partitions, HDF5, zarr and SQLite.

A dpx dataset is a growing list of samples, each carrying the same named fields
(here ``input`` and ``ground_truth``, float32). Simulations append samples in
batches; training reads random shuffled batches. This script measures, for each
candidate storage layout:

* write throughput: append 32-sample batches until N samples, committing after
  every batch (the data of a committed batch must survive a killed writer);
* random read throughput: 64-sample shuffled batches of both fields (fixed seed;
  a slow candidate stops after ``--max-read-seconds``), also given as a ratio
  against a bare baseline, ``np.take`` from a single ``np.memmap`` over one raw
  file holding the same bytes (1.00 = as fast);
* crash safety: a writer in a subprocess is SIGKILLed 0.4, 0.5 and 0.6 s after its
  first commit; each time the store is reopened and every readable sample checked;
* concurrent reads: a reader process opens the store several times while a writer
  appends, and reports whether it opens, errors, blocks or sees wrong data.

Sample ``i`` holds ``i + 1`` plus noise in ``[0, 0.5)`` in every element, so any
reader can check a sample (``floor(x) == i + 1``) and zero-filled rows are caught;
the noise keeps zarr's default compressor from shrinking the data to nothing.
All stores live in temporary directories under /tmp, removed at exit. Every
store is read back in full and checked before its reads are timed, so timed reads
find the data in the page cache: this compares the software paths, not the disk.

Run from the repository root, in an environment with numpy, h5py and zarr (v3)::

    python benchmarks/storage_candidates.py            # full run (5-7 minutes on 2 cores)
    python benchmarks/storage_candidates.py --quick    # smoke run (1-2 minutes)

``--help`` lists the knobs (sample counts, number of read batches, partition size).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import shutil
import signal
import sqlite3
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import BinaryIO, ClassVar

import h5py
import numpy as np
import zarr

DTYPE = np.dtype(np.float32)
WRITE_BATCH = 32
READ_BATCH = 64
CHUNK = 64
CRASH_DELAYS_S = (0.4, 0.5, 0.6)
READER_POLLS = 10
READER_TIMEOUT_S = 30.0
CRASH_WRITER_MAX_BYTES = 4 << 30
# float32 holds every integer below 2**24; keep sample values (i + 1 + noise) well under it.
CRASH_WRITER_MAX_SAMPLES = 1 << 23

Shapes = dict[str, tuple[int, ...]]
Batch = dict[str, np.ndarray]


@dataclass(frozen=True)
class Workload:
    name: str
    shapes: Shapes
    n_samples: int

    @property
    def sample_nbytes(self) -> int:
        return sum(int(np.prod(shape)) * DTYPE.itemsize for shape in self.shapes.values())


def make_batch(start: int, count: int, shapes: Shapes, rng: np.random.Generator) -> Batch:
    """Samples ``start .. start+count-1``: sample ``i`` is ``i + 1`` plus noise in [0, 0.5)."""
    values = np.arange(start + 1, start + count + 1, dtype=DTYPE)
    batch = {}
    for name, shape in shapes.items():
        noise = rng.random((count, *shape), dtype=DTYPE) * DTYPE.type(0.5)
        batch[name] = noise + values.reshape(-1, *([1] * len(shape)))
    return batch


def count_bad(batch: Batch, indices: np.ndarray) -> int:
    """How many of the samples ``indices`` (read as ``batch``) do not hold their expected value."""
    bad = np.zeros(len(indices), dtype=bool)
    expected = (indices + 1).astype(DTYPE)[:, None]
    for data in batch.values():
        bad |= ~(np.floor(data.reshape(len(indices), -1)) == expected).all(axis=1)
    return int(bad.sum())


# --------------------------------------------------------------------------- stores


class Store(ABC):
    """One storage candidate, opened either to write a new store or to read an existing one."""

    name: ClassVar[str]

    def __init__(self, path: Path, shapes: Shapes, writable: bool) -> None:
        """Create a new store at ``path`` (``writable``), or open an existing one to read it."""
        self.path = path
        self.shapes = shapes

    @abstractmethod
    def append(self, batch: Batch) -> None:
        """Add the samples of ``batch`` after the existing ones."""

    @abstractmethod
    def commit(self) -> None:
        """Make every appended sample visible to readers and safe from a killed writer."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of committed samples."""

    @abstractmethod
    def read(self, indices: np.ndarray) -> Batch:
        """The samples ``indices`` (distinct, any order), in that order, one array per field."""

    @abstractmethod
    def close(self) -> None:
        """Release files and connections."""


class MemmapStore(Store):
    """Raw binary partitions per field, plus a JSON index: committed sample count, partition sizes.

    Field ``f`` lives in ``f.00000.bin``, ``f.00001.bin``, ... each holding as many whole
    samples as fit in ``capacity_bytes`` (set when the store is created, then read from
    the index). Data are appended with plain ``file.write``; :meth:`commit` flushes them,
    then replaces ``index.json`` atomically, so the index never counts a sample whose
    bytes are not in the files yet.
    """

    name = "memmap"
    capacity_bytes = 128 << 20

    def __init__(self, path: Path, shapes: Shapes, writable: bool) -> None:
        super().__init__(path, shapes, writable)
        self._files: dict[str, tuple[int, BinaryIO]] = {}
        self._maps: dict[tuple[str, int], np.ndarray] = {}
        if writable:
            path.mkdir(parents=True)
            self._rows_per_part = {
                name: max(1, self.capacity_bytes // (int(np.prod(shape)) * DTYPE.itemsize))
                for name, shape in shapes.items()
            }
            self._count = 0
            self._appended = 0
            self._write_index()
        else:
            index = json.loads((path / "index.json").read_text())
            self._rows_per_part = index["rows_per_part"]
            self._count = index["count"]

    def _part_path(self, name: str, part: int) -> Path:
        return self.path / f"{name}.{part:05d}.bin"

    def _write_index(self) -> None:
        tmp = self.path / "index.json.tmp"
        tmp.write_text(json.dumps({"count": self._count, "rows_per_part": self._rows_per_part}))
        os.replace(tmp, self.path / "index.json")

    def _file(self, name: str, part: int) -> BinaryIO:
        current = self._files.get(name)
        if current is None or current[0] != part:
            if current is not None:
                current[1].close()
            current = (part, open(self._part_path(name, part), "wb"))  # noqa: SIM115 - kept open across appends
            self._files[name] = current
        return current[1]

    def append(self, batch: Batch) -> None:
        for name, data in batch.items():
            rows = self._rows_per_part[name]
            done = 0
            while done < len(data):
                part, offset = divmod(self._appended + done, rows)
                take = min(len(data) - done, rows - offset)
                self._file(name, part).write(data[done : done + take])
                done += take
        self._appended += len(next(iter(batch.values())))

    def commit(self) -> None:
        for _, file in self._files.values():
            file.flush()
        self._count = self._appended
        self._write_index()

    def __len__(self) -> int:
        return self._count

    def _map(self, name: str, part: int, min_rows: int) -> np.ndarray:
        """The partition mapped read-only, as a plain ndarray (np.memmap's subclass overhead shows
        in row-by-row reads); remapped if a writer has grown it since."""
        mapped = self._maps.get((name, part))
        if mapped is None or len(mapped) < min_rows:
            shape = self.shapes[name]
            rows = os.path.getsize(self._part_path(name, part)) // (int(np.prod(shape)) * DTYPE.itemsize)
            mapped = np.asarray(np.memmap(self._part_path(name, part), dtype=DTYPE, mode="r", shape=(rows, *shape)))
            self._maps[(name, part)] = mapped
        return mapped

    def read(self, indices: np.ndarray) -> Batch:
        lowest, highest = int(indices.min()), int(indices.max())
        if lowest < 0 or highest >= self._count:
            raise IndexError(f"sample indices must lie in [0, {self._count})")
        # Indices are checked above, so np.take can use mode="clip": with the default mode="raise"
        # NumPy gathers into a temporary buffer before copying to out (~10x slower for large samples).
        batch = {}
        for name, shape in self.shapes.items():
            rows_per_part = self._rows_per_part[name]
            out = np.empty((len(indices), *shape), dtype=DTYPE)
            first = lowest // rows_per_part
            if highest // rows_per_part == first:  # all in one partition: gather straight into out
                offset = first * rows_per_part
                local = indices - offset if offset else indices
                np.take(self._map(name, first, highest - offset + 1), local, axis=0, out=out, mode="clip")
            else:  # row by row: one copy, where a gather per partition then a scatter would take two
                parts, local = np.divmod(indices, rows_per_part)
                for k, (part, row) in enumerate(zip(parts.tolist(), local.tolist(), strict=True)):
                    out[k] = self._map(name, part, row + 1)[row]
            batch[name] = out
        return batch

    def close(self) -> None:
        for _, file in self._files.values():
            file.close()
        self._files.clear()
        self._maps.clear()


class HDF5Store(Store):
    """One HDF5 file (h5py defaults), one resizable dataset per field, chunked by 64 samples."""

    name = "hdf5"

    def __init__(self, path: Path, shapes: Shapes, writable: bool) -> None:
        super().__init__(path, shapes, writable)
        if writable:
            path.mkdir(parents=True)
            self._file = h5py.File(path / "data.h5", "w")
            for name, shape in shapes.items():
                self._file.create_dataset(
                    name, shape=(0, *shape), maxshape=(None, *shape), chunks=(CHUNK, *shape), dtype=DTYPE
                )
        else:
            self._file = h5py.File(path / "data.h5", "r")
        self._datasets = {name: self._file[name] for name in shapes}

    def append(self, batch: Batch) -> None:
        for name, data in batch.items():
            dataset = self._datasets[name]
            start = dataset.shape[0]
            dataset.resize(start + len(data), axis=0)
            dataset[start:] = data

    def commit(self) -> None:
        self._file.flush()

    def __len__(self) -> int:
        return min(dataset.shape[0] for dataset in self._datasets.values())

    def read(self, indices: np.ndarray) -> Batch:
        # Row by row: h5py's fancy indexing (sorted indices) was slower in both workloads.
        batch = {}
        for name, shape in self.shapes.items():
            dataset = self._datasets[name]
            out = np.empty((len(indices), *shape), dtype=DTYPE)
            for k, index in enumerate(indices):
                out[k] = dataset[index]
            batch[name] = out
        return batch

    def close(self) -> None:
        self._file.close()


class ZarrStore(Store):
    """A zarr (v3, defaults: zstd compression) group, one array per field, chunked by 64 samples."""

    name = "zarr"

    def __init__(self, path: Path, shapes: Shapes, writable: bool) -> None:
        super().__init__(path, shapes, writable)
        if writable:
            group = zarr.open_group(str(path), mode="w")
            self._arrays = {
                name: group.create_array(name, shape=(0, *shape), chunks=(CHUNK, *shape), dtype=DTYPE)
                for name, shape in shapes.items()
            }
        else:
            group = zarr.open_group(str(path), mode="r")
            self._arrays = {name: group[name] for name in shapes}

    def append(self, batch: Batch) -> None:
        for name, data in batch.items():
            self._arrays[name].append(data, axis=0)

    def commit(self) -> None:
        """Nothing to do: zarr writes chunks and metadata during :meth:`append`."""

    def __len__(self) -> int:
        return min(array.shape[0] for array in self._arrays.values())

    def read(self, indices: np.ndarray) -> Batch:
        return {name: array.oindex[indices] for name, array in self._arrays.items()}

    def close(self) -> None:
        """Nothing to release: zarr keeps no open file between calls."""


class SQLiteStore(Store):
    """SQLite in WAL mode, one row per sample, each field a raw-bytes blob (no pickle)."""

    name = "sqlite"

    def __init__(self, path: Path, shapes: Shapes, writable: bool) -> None:
        super().__init__(path, shapes, writable)
        columns = ", ".join(shapes)
        if writable:
            path.mkdir(parents=True)
            self._db = sqlite3.connect(path / "data.sqlite")
            self._db.execute("PRAGMA journal_mode=WAL")
            # Durable against a killed process (what the crash test checks), not against power loss,
            # like the other candidates, none of which calls fsync.
            self._db.execute("PRAGMA synchronous=NORMAL")
            blobs = ", ".join(f"{name} BLOB NOT NULL" for name in shapes)
            self._db.execute(f"CREATE TABLE samples (id INTEGER PRIMARY KEY, {blobs})")
            self._db.commit()
            self._count = 0
        else:
            self._db = sqlite3.connect(f"file:{path / 'data.sqlite'}?mode=ro", uri=True)
        self._insert = f"INSERT INTO samples (id, {columns}) VALUES (?, {', '.join('?' * len(shapes))})"
        self._select = f"SELECT id, {columns} FROM samples WHERE id IN "

    def append(self, batch: Batch) -> None:
        arrays = [batch[name] for name in self.shapes]
        rows = [(self._count + k, *(memoryview(array[k]) for array in arrays)) for k in range(len(arrays[0]))]
        self._db.executemany(self._insert, rows)
        self._count += len(rows)

    def commit(self) -> None:
        self._db.commit()

    def __len__(self) -> int:
        return self._db.execute("SELECT count(*) FROM samples").fetchone()[0]

    def read(self, indices: np.ndarray) -> Batch:
        position = {int(index): k for k, index in enumerate(indices)}
        outs = [np.empty((len(indices), *shape), dtype=DTYPE) for shape in self.shapes.values()]
        query = self._select + f"({', '.join('?' * len(indices))})"
        for index, *blobs in self._db.execute(query, [int(i) for i in indices]):
            k = position[index]
            for out, blob in zip(outs, blobs, strict=True):
                out[k] = np.frombuffer(blob, dtype=DTYPE).reshape(out.shape[1:])
        return dict(zip(self.shapes, outs, strict=True))

    def close(self) -> None:
        self._db.close()


BACKENDS: dict[str, type[Store]] = {cls.name: cls for cls in (MemmapStore, HDF5Store, ZarrStore, SQLiteStore)}


# --------------------------------------------------------------------------- throughput


@dataclass
class Throughput:
    write_per_s: float
    read_per_s: float
    batches_read: int
    disk_mb: float


def disk_mb(path: Path) -> float:
    """Size of the files under the directory ``path``, in MB."""
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file()) / 1e6


def read_plan(n_samples: int, n_batches: int, seed: int) -> list[np.ndarray]:
    """Shuffled 64-sample batches, epoch after epoch (last partial batch dropped), no repeat in a batch."""
    rng = np.random.default_rng(seed)
    full = n_samples // READ_BATCH * READ_BATCH
    plan: list[np.ndarray] = []
    while len(plan) < n_batches:
        plan.extend(rng.permutation(n_samples)[:full].reshape(-1, READ_BATCH))
    return plan[:n_batches]


def batches_of(workload: Workload, seed: int) -> Iterator[Batch]:
    rng = np.random.default_rng(seed)
    for start in range(0, workload.n_samples, WRITE_BATCH):
        yield make_batch(start, min(WRITE_BATCH, workload.n_samples - start), workload.shapes, rng)


def count_bad_all(read: Callable[[np.ndarray], Batch], n_samples: int) -> int:
    """How many of samples ``0 .. n_samples-1`` are wrong, reading them all in order with ``read``."""
    bad = 0
    for start in range(0, n_samples, 1024):
        indices = np.arange(start, min(n_samples, start + 1024))
        bad += count_bad(read(indices), indices)
    return bad


def timed_reads(
    read: Callable[[np.ndarray], Batch], plan: Sequence[np.ndarray], max_seconds: float
) -> tuple[float, int]:
    """(samples/s, batches read) of ``read`` over ``plan``, stopping early after ``max_seconds``."""
    start = time.perf_counter()
    done = 0
    for indices in plan:
        read(indices)
        done += 1
        if time.perf_counter() - start > max_seconds:
            break
    return done * READ_BATCH / (time.perf_counter() - start), done


def bench_baseline(workload: Workload, batches: Sequence[Batch], plan: Sequence[np.ndarray], root: Path) -> float:
    """Read samples/s of ``np.take`` from one ``np.memmap`` per field over one raw file.

    Like the candidates, it first reads every sample once: timed reads find the pages cached and mapped.
    ``mode="clip"`` (the plan's indices are in range) spares NumPy's temporary buffer, as in MemmapStore.
    """
    maps = {}
    for name, shape in workload.shapes.items():
        file_path = root / f"baseline.{name}.bin"
        with open(file_path, "wb") as file:
            for batch in batches:
                file.write(batch[name])
        maps[name] = np.memmap(file_path, dtype=DTYPE, mode="r", shape=(workload.n_samples, *shape))

    def read(indices: np.ndarray) -> Batch:
        return {
            name: np.take(
                mapped, indices, axis=0, out=np.empty((len(indices), *mapped.shape[1:]), dtype=DTYPE), mode="clip"
            )
            for name, mapped in maps.items()
        }

    if count_bad_all(read, workload.n_samples):
        raise RuntimeError("baseline: raw files do not read back what was written")
    os.sync()
    rate, _ = timed_reads(read, plan, max_seconds=float("inf"))
    for name in workload.shapes:
        (root / f"baseline.{name}.bin").unlink()
    return rate


def bench_store(
    cls: type[Store],
    workload: Workload,
    batches: Sequence[Batch],
    plan: Sequence[np.ndarray],
    max_read_seconds: float,
    root: Path,
) -> Throughput:
    """Write ``batches`` into a new store, check every sample (this also warms the caches), time reads.

    ``os.sync()`` before each timed phase keeps earlier writes' background flushing out of it.
    """
    path = root / cls.name
    os.sync()
    start = time.perf_counter()
    store = cls(path, workload.shapes, writable=True)
    for batch in batches:
        store.append(batch)
        store.commit()
    store.close()
    write_s = time.perf_counter() - start

    store = cls(path, workload.shapes, writable=False)
    if len(store) != workload.n_samples or count_bad_all(store.read, workload.n_samples):
        raise RuntimeError(f"{cls.name}: store does not read back what was written")
    os.sync()
    read_per_s, batches_read = timed_reads(store.read, plan, max_read_seconds)
    store.close()
    size = disk_mb(path)
    shutil.rmtree(path)
    return Throughput(workload.n_samples / write_s, read_per_s, batches_read, size)


# --------------------------------------------------------------------------- crash and concurrency


def write_until_killed(
    backend: str,
    path: Path,
    shapes: Shapes,
    committed: Synchronized,
    started: Event,
    max_samples: int,
    partition_bytes: int,
) -> None:
    """Subprocess body: append and commit batches, publishing the committed count, until killed."""
    MemmapStore.capacity_bytes = partition_bytes  # a fresh interpreter: pass on the --partition-mb setting
    store = BACKENDS[backend](path, shapes, writable=True)
    rng = np.random.default_rng(0)
    for start in range(0, max_samples, WRITE_BATCH):
        store.append(make_batch(start, WRITE_BATCH, shapes, rng))
        store.commit()
        committed.value = start + WRITE_BATCH
        started.set()
    store.close()


def start_writer(
    ctx: mp.context.SpawnContext, cls: type[Store], workload: Workload, path: Path
) -> tuple[mp.process.BaseProcess, Synchronized]:
    """Start ``write_until_killed`` in a fresh interpreter; return once it has committed a batch."""
    committed = ctx.Value("q", 0)
    started = ctx.Event()
    max_samples = min(CRASH_WRITER_MAX_SAMPLES, CRASH_WRITER_MAX_BYTES // workload.sample_nbytes)
    process = ctx.Process(
        target=write_until_killed,
        args=(cls.name, path, workload.shapes, committed, started, max_samples, MemmapStore.capacity_bytes),
        daemon=True,
    )
    process.start()
    if not started.wait(timeout=60):
        process.kill()
        raise RuntimeError(f"{cls.name}: writer did not commit a first batch")
    return process, committed


@dataclass
class CrashResult:
    committed_at_kill: int
    error: str | None = None
    readable: int = 0
    bad: int = 0


def crash_test(cls: type[Store], workload: Workload, delay_s: float, root: Path) -> CrashResult:
    """SIGKILL a writer ``delay_s`` after its first commit, then reopen the store and check every sample."""
    path = root / f"crash-{cls.name}"
    ctx = mp.get_context("spawn")
    process, committed = start_writer(ctx, cls, workload, path)
    time.sleep(delay_s)
    if not process.is_alive():
        raise RuntimeError(f"{cls.name}: writer finished before the kill; raise CRASH_WRITER_MAX_BYTES")
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    result = CrashResult(committed.value)
    try:
        store = cls(path, workload.shapes, writable=False)
        result.readable = len(store)
        result.bad = count_bad_all(store.read, result.readable)
        store.close()
    except Exception as exc:  # noqa: BLE001 - any failure to reopen is the finding
        result.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
    shutil.rmtree(path)
    return result


def crash_row(results: Sequence[CrashResult]) -> list[str]:
    """Table cells summing up the kills of one candidate."""
    opened = [r for r in results if r.error is None]
    errors = sorted({r.error for r in results if r.error is not None})
    lost = sum(max(0, r.committed_at_kill - r.readable) for r in opened)
    return [
        ", ".join(f"{r.committed_at_kill:,}" for r in results),
        f"{len(opened)}/{len(results)}" + (f" ({'; '.join(errors)})" if errors else ""),
        ", ".join(f"{r.readable:,}" for r in opened) or "-",
        f"{lost:,}",
        f"{sum(r.bad for r in opened):,}",
    ]


def poll_reader(backend: str, path: Path, shapes: Shapes, results: mp.Queue) -> None:
    """Subprocess body: open the store, read its newest and some random samples, close; repeat."""
    seen, bad, errors = [], 0, []
    rng = np.random.default_rng(1)
    for _ in range(READER_POLLS):
        try:
            store = BACKENDS[backend](path, shapes, writable=False)
            n = len(store)
            newest = np.arange(max(0, n - READ_BATCH), n)
            indices = np.union1d(newest, rng.choice(n, min(n, READ_BATCH), replace=False))
            bad += count_bad(store.read(indices), indices)
            store.close()
            seen.append(n)
        except Exception as exc:  # noqa: BLE001 - any failure to open or read is the finding
            errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
        time.sleep(0.05)
    results.put((seen, bad, errors))


def concurrency_test(cls: type[Store], workload: Workload, root: Path) -> str:
    """Run ``poll_reader`` while a writer appends; describe what the reader got (or that it blocked)."""
    path = root / f"concurrent-{cls.name}"
    ctx = mp.get_context("spawn")
    writer, _ = start_writer(ctx, cls, workload, path)
    results: mp.Queue = ctx.Queue()
    reader = ctx.Process(target=poll_reader, args=(cls.name, path, workload.shapes, results), daemon=True)
    reader.start()
    try:
        seen, bad, errors = results.get(timeout=READER_TIMEOUT_S)
        verdict = f"{len(seen)}/{READER_POLLS} opens ok"
        if seen:
            verdict += f", saw {seen[0]}..{seen[-1]} samples, {bad} bad"
        if errors:
            verdict += f"; {len(errors)} errors, e.g. {errors[0]}"
    except queue.Empty:
        verdict = f"reader blocked (> {READER_TIMEOUT_S:.0f} s)"
    for process in (reader, writer):
        if process.is_alive():
            os.kill(process.pid, signal.SIGKILL)
        process.join()
    shutil.rmtree(path)
    return verdict


# --------------------------------------------------------------------------- report


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)) for line in (headers, *rows)
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 5000 / 500 samples, 200 read batches (overrides those flags)"
    )
    parser.add_argument("--small-n", type=int, default=200_000, help="samples of shape (30,3)+(3,)")
    parser.add_argument("--large-n", type=int, default=4_000, help="samples of shape (10000,3)+(3,)")
    parser.add_argument("--read-batches", type=int, default=2000, help="random 64-sample batches to read")
    parser.add_argument(
        "--max-read-seconds", type=float, default=60.0, help="stop a candidate's reads early after this long"
    )
    parser.add_argument("--partition-mb", type=int, default=128, help="memmap partition capacity in MB")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.small_n, args.large_n, args.read_batches = 5_000, 500, 200
    if min(args.small_n, args.large_n) < READ_BATCH:
        parser.error(f"--small-n and --large-n must be at least {READ_BATCH} (one read batch)")
    return args


def main() -> None:
    args = parse_args()
    MemmapStore.capacity_bytes = args.partition_mb << 20
    workloads = [
        Workload("small", {"input": (30, 3), "ground_truth": (3,)}, args.small_n),
        Workload("large", {"input": (10000, 3), "ground_truth": (3,)}, args.large_n),
    ]
    throughput_rows, crash_rows, concurrency_rows = [], [], []
    with tempfile.TemporaryDirectory(prefix="dpx-storage-bench-", dir="/tmp") as tmp:
        root = Path(tmp)
        for workload in workloads:
            label = f"{workload.name} N={workload.n_samples}"
            print(f"[{label}] generating data", flush=True)
            batches = list(batches_of(workload, args.seed))
            plan = read_plan(workload.n_samples, args.read_batches, args.seed)
            baseline = bench_baseline(workload, batches, plan, root)
            throughput_rows.append([label, "baseline", "-", f"{baseline:,.0f}", f"{len(plan)}", "1.00", "-"])
            for cls in BACKENDS.values():
                print(f"[{label}] {cls.name}: throughput, crash, concurrent read", flush=True)
                result = bench_store(cls, workload, batches, plan, args.max_read_seconds, root)
                throughput_rows.append(
                    [
                        label,
                        cls.name,
                        f"{result.write_per_s:,.0f}",
                        f"{result.read_per_s:,.0f}",
                        f"{result.batches_read}",
                        f"{result.read_per_s / baseline:.2f}",
                        f"{result.disk_mb:,.0f}",
                    ]
                )
                crashes = [crash_test(cls, workload, delay, root) for delay in CRASH_DELAYS_S]
                crash_rows.append([label, cls.name, *crash_row(crashes)])
                concurrency_rows.append([label, cls.name, concurrency_test(cls, workload, root)])

    print(f"\nThroughput ({os.cpu_count()} cores; write = append {WRITE_BATCH}-sample batches + commit each;")
    print(f"read = random {READ_BATCH}-sample batches of both fields, at most {args.read_batches} batches")
    print(f"or {args.max_read_seconds:.0f} s per candidate, page cache warm)")
    headers = ["workload", "backend", "write samples/s", "read samples/s", "batches", "read vs baseline", "disk MB"]
    print(table(headers, throughput_rows))
    delays = "/".join(f"{delay}" for delay in CRASH_DELAYS_S)
    print(f"\nCrash test (writer SIGKILLed {delays} s after its first commit, then reopened and fully checked)")
    headers = ["workload", "backend", "committed at kill", "reopens", "readable", "committed lost", "bad samples"]
    print(table(headers, crash_rows))
    print(f"\nConcurrent read ({READER_POLLS} open+read polls while a writer appends)")
    print(table(["workload", "backend", "reader result"], concurrency_rows))


if __name__ == "__main__":
    main()
