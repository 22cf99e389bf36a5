"""Random-batch reads through dpx's storage against a bare NumPy memmap read.

Both read the same bytes: shuffled 64-sample batches of every field of a
dataset written by dpx. The bare baseline gathers with ``np.take`` from one
``np.memmap`` per field over a single raw file; dpx goes through
``Database.batches`` (index lookups, partitions, preallocated buffers).

    .venv/bin/python benchmarks/bench_storage_read.py [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import dpx
from dpx.core.database import Database

CASES = {"small (30x3)": ((30, 3), 200_000), "large (10000x3)": ((10_000, 3), 3_000)}
BATCH = 64


def write(folder: Path, shape: tuple[int, ...], count: int) -> None:
    with Database(folder, dpx.DatabaseConfig()) as db:
        db.prepare("training", {"input": (np.float32, shape), "ground_truth": (np.float32, (3,))})
        rng = np.random.default_rng(0)
        for start in range(0, count, 1000):
            n = min(1000, count - start)
            db.append("training", {"input": rng.random((n, *shape), np.float32), "ground_truth": rng.random((n, 3), np.float32)})


def bare(folder: Path, shape: tuple[int, ...], count: int, order: np.ndarray) -> float:
    maps = {
        "input": np.memmap(folder / "bare_input.raw", np.float32, "r", shape=(count, *shape)),
        "ground_truth": np.memmap(folder / "bare_gt.raw", np.float32, "r", shape=(count, 3)),
    }
    out = {name: np.empty((BATCH, *m.shape[1:]), m.dtype) for name, m in maps.items()}
    start = time.perf_counter()
    for first in range(0, len(order), BATCH):
        ids = order[first : first + BATCH]
        for name, mapped in maps.items():
            np.take(mapped, ids, axis=0, out=out[name][: len(ids)], mode="clip")  # the fastest bare gather
    return len(order) / (time.perf_counter() - start)


def through_dpx(folder: Path, order_seed: int) -> float:
    db = dpx.open_database(folder)
    start = time.perf_counter()
    count = sum(len(batch["input"]) for batch in db.batches(batch_size=BATCH, rng=np.random.default_rng(order_seed)))
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller datasets, for a smoke run")
    args = parser.parse_args()
    print(f"{'case':16s} {'bare samples/s':>15s} {'dpx samples/s':>14s} {'ratio':>6s}")
    for case, (shape, count) in CASES.items():
        count //= 10 if args.quick else 1
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            write(folder, shape, count)
            db = dpx.open_database(folder)
            # the bare baseline reads the very same bytes, laid out in one file per field
            db.read("training", ["input"])["input"].tofile(folder / "bare_input.raw")
            db.read("training", ["ground_truth"])["ground_truth"].tofile(folder / "bare_gt.raw")
            order = np.random.default_rng(0).permutation(count)
            bare(folder, shape, count, order), through_dpx(folder, 0)  # warm the page cache
            bare_rate = max(bare(folder, shape, count, order) for _ in range(3))
            dpx_rate = max(through_dpx(folder, 0) for _ in range(3))
            print(f"{case:16s} {bare_rate:15,.0f} {dpx_rate:14,.0f} {dpx_rate / bare_rate:6.2f}")


if __name__ == "__main__":
    main()
