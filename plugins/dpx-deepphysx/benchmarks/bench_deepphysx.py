"""Reading a DeepPhysX dataset through the ``deepphysx`` backend, against the bare ways.

A DeepPhysX-format dataset (one SQLite partition, arrays pickled with
protocol 2) is written, then:

* loading: the backend's first read loads and checks every sample of the two
  array fields, against bare ``pickle.loads`` of the same rows (what DeepPhysX
  does, and what no shared file should get);
* batches: shuffled batches of 32 through ``Database.batches`` on the backend
  (in memory once loaded) and on the dataset ``dpx import deepphysx`` wrote
  (dpx's memmap storage).

    .venv/bin/python plugins/dpx-deepphysx/benchmarks/bench_deepphysx.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import pickle
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np

import dpx
from dpx.core.config import DatabaseConfig
from dpx.core.database import Database
from dpx_deepphysx.importer import import_session

CASES = {"small (30x3)": ((30, 3), 20_000), "large (10000x3)": ((10_000, 3), 1_000)}
BATCH = 32


def write(dataset: Path, shape: tuple[int, ...], count: int) -> None:
    dataset.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with sqlite3.connect(dataset / "bench_training_0.db") as connection:
        connection.execute('CREATE TABLE "training" ("id" INTEGER NOT NULL PRIMARY KEY, "env_id" INTEGER, '
                           '"input" NUMPY, "ground_truth" NUMPY)')
        for start in range(0, count, 1000):
            rows = []
            for row in range(start + 1, min(start + 1000, count) + 1):
                cloud = rng.random(shape)
                rows.append((row, 1, pickle.dumps(cloud, protocol=2), pickle.dumps(cloud.mean(axis=0), protocol=2)))
            connection.executemany("INSERT INTO training VALUES (?, ?, ?, ?)", rows)
    connection.close()
    (dataset / "dataset.json").write_text(json.dumps({
        "partitions": {"training": ["bench_training_0"]}, "nb_samples": {"training": [count]},
        "architecture": {"Training": ["env_id (INT)", "input (NUMPY)", "ground_truth (NUMPY)"]},
        "data_shape": {"Training.input": list(shape), "Training.ground_truth": [shape[-1]]}, "normalization": {},
    }))


def bare_unpickling(dataset: Path) -> float:
    start = time.perf_counter()
    with sqlite3.connect(dataset / "bench_training_0.db") as connection:
        rows = connection.execute("SELECT input, ground_truth FROM training ORDER BY id").fetchall()
    count = len([(pickle.loads(a), pickle.loads(b)) for a, b in rows])
    connection.close()
    return count / (time.perf_counter() - start)


def backend_loading(dataset: Path) -> tuple[float, Database]:
    start = time.perf_counter()
    database = Database(dataset, DatabaseConfig(storage="deepphysx"), readonly=True)
    database.read("training", ["input", "ground_truth"], [0])
    return database.count("training") / (time.perf_counter() - start), database


def batches(database: Database, seed: int) -> float:
    start = time.perf_counter()
    count = sum(len(batch["input"]) for batch in database.batches(
        "training", BATCH, fields=["input", "ground_truth"], rng=np.random.default_rng(seed)))
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller datasets, one repetition, for a smoke run")
    args = parser.parse_args()
    repetitions = 1 if args.quick else 3
    print(f"{'case':16s} {'pickle.loads':>14s} {'deepphysx load':>15s} {'deepphysx batches':>18s} {'memmap batches':>15s}")
    for name, (shape, count) in CASES.items():
        count = count // 10 if args.quick else count
        with tempfile.TemporaryDirectory() as folder:
            source = Path(folder) / "data"
            write(source / "dataset", shape, count)
            bare = max(bare_unpickling(source / "dataset") for _ in range(repetitions))
            loads = []
            for _ in range(repetitions):
                rate, database = backend_loading(source / "dataset")
                loads.append(rate)
                read = max(batches(database, seed) for seed in range(repetitions))
                database.close()
            import_session(source, Path(folder) / "imported")
            with dpx.open_database(Path(folder) / "imported") as imported:
                memmap = max(batches(imported, seed) for seed in range(repetitions))
        print(f"{name:16s} {bare:>12,.0f}/s {max(loads):>13,.0f}/s {read:>16,.0f}/s {memmap:>13,.0f}/s")


if __name__ == "__main__":
    main()
