"""Generation throughput through dpx against a bare loop doing the same work.

The bare loop builds the same ``toy.mean`` environment, calls ``step()`` and
copies its arrays into preallocated batch buffers: dpx's producer (per-sample
seeding, field checks, NaN checks) is compared with it. The full pipeline also
stores the batches (memmap storage, crash-safe commits, a session): it is
compared with the bare loop appending its batches to raw files.

    .venv/bin/python benchmarks/bench_generation.py [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

import dpx
from dpx.core.producer import resolve_seed
from dpx.core.runners import InProcessRunner
from dpx_toy.mean import Mean

CASES = {"small (30x3)": 30, "large (10000x3)": 10_000}


def bare_loop(n_points: int, samples: int, batch_size: int, write: bool = False) -> float:
    """Step, copy into batch buffers and, with ``write``, append each batch to raw files."""
    env = Mean(n_points=n_points)
    env.rng = np.random.default_rng(0)
    env.init_database()
    buffers = {name: np.empty((batch_size, *f.shape), f.dtype) for name, f in env.fields.items()}
    with tempfile.TemporaryDirectory() as folder:
        files = {name: open(f"{folder}/{name}.raw", "ab") for name in buffers} if write else {}
        start = time.perf_counter()
        for first in range(0, samples, batch_size):
            for row in range(min(batch_size, samples - first)):
                env.step()
                for name, value in env.sample.items():
                    buffers[name][row] = value
            for name, file in files.items():
                file.write(buffers[name])
        for file in files.values():
            file.close()
        return samples / (time.perf_counter() - start)


def dpx_producer(n_points: int, samples: int, batch_size: int) -> float:
    config = dpx.EnvironmentConfig("toy.mean", env_kwargs={"n_points": n_points}, seed=0)
    with InProcessRunner(config, resolve_seed(0)[1]) as runner:
        start = time.perf_counter()
        for first in range(0, samples, batch_size):
            runner.produce(np.arange(first, min(first + batch_size, samples)))
        return samples / (time.perf_counter() - start)


def dpx_pipeline(n_points: int, samples: int, batch_size: int, normalize: bool) -> float:
    with tempfile.TemporaryDirectory() as folder:
        pipeline = dpx.DataGeneration(
            dpx.EnvironmentConfig("toy.mean", env_kwargs={"n_points": n_points}, seed=0),
            dpx.DatabaseConfig(normalize=normalize),
            session_dir=folder, batch_nb=samples // batch_size, batch_size=batch_size, progress=False,
        )
        start = time.perf_counter()
        pipeline.execute()
        return samples / (time.perf_counter() - start)


def best_of(repeats: int, run, *args) -> float:
    return max(run(*args) for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, for a smoke run")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    repeats = 1 if args.quick else 3
    print(f"{'case':16s} {'bare/s':>10s} {'producer/s':>11s} {'ratio':>6s} {'bare+write/s':>13s} "
          f"{'pipeline/s':>11s} {'ratio':>6s} {'+normalize/s':>13s} {'ratio':>6s}")
    for case, n_points in CASES.items():
        samples = (20_000 if args.quick else 100_000) if n_points < 1000 else (1_024 if args.quick else 8_192)
        samples -= samples % args.batch_size
        bare = best_of(repeats, bare_loop, n_points, samples, args.batch_size)
        producer = best_of(repeats, dpx_producer, n_points, samples, args.batch_size)
        written = best_of(repeats, bare_loop, n_points, samples, args.batch_size, True)
        pipeline = best_of(repeats, dpx_pipeline, n_points, samples, args.batch_size, False)
        normalized = best_of(repeats, dpx_pipeline, n_points, samples, args.batch_size, True)
        print(f"{case:16s} {bare:10,.0f} {producer:11,.0f} {producer / bare:6.2f} {written:13,.0f} "
              f"{pipeline:11,.0f} {pipeline / written:6.2f} {normalized:13,.0f} {normalized / written:6.2f}")


if __name__ == "__main__":
    main()
