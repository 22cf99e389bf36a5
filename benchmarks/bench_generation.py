"""Generation throughput through dpx against a bare loop doing the same work.

The bare loop builds the same ``toy.mean`` environment, calls ``step()`` and
copies its arrays into preallocated batch buffers: dpx's producer (per-sample
seeding, field checks, NaN checks) is compared with it. The full pipeline also
stores the batches (memmap storage, crash-safe commits, a session): it is
compared with the bare loop appending its batches to raw files.

Each row is measured side by side at batch 32 and 256 (``--batch-sizes``).

    .venv/bin/python benchmarks/bench_generation.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import dpx  # noqa: E402
from dpx.core.producer import SampleRng, resolve_seed  # noqa: E402
from dpx.core.runners import InProcessRunner  # noqa: E402
from dpx_toy.mean import Mean  # noqa: E402
from measure import HEADER, row, side_by_side  # noqa: E402

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
        setup = pipeline.prepare()  # checks before the run (they build an environment): not the loop
        start = time.perf_counter()
        pipeline.execute(setup)
        return samples / (time.perf_counter() - start)


def plan_cost(batch_size: int, calls: int = 2_000) -> tuple[float, float]:
    """Microseconds per call of ``SampleRng.plan`` over consecutive batches, and of computing the states afresh."""
    rng = SampleRng(resolve_seed(0)[1])
    batches = [np.arange(first, first + batch_size) for first in range(0, calls * batch_size, batch_size)]
    start = time.perf_counter()
    for ids in batches:
        rng.plan(ids)
    planned = time.perf_counter() - start
    start = time.perf_counter()
    for ids in batches[: calls // 10]:
        rng.states(ids)
    fresh = time.perf_counter() - start
    return 1e6 * planned / calls, 1e6 * fresh / (calls // 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, one repetition, for a smoke run")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256])
    args = parser.parse_args()
    repeats = 1 if args.quick else 3
    for batch_size in (1, 32, 256):
        planned, fresh = plan_cost(batch_size)
        print(f"plan() at batch {batch_size}: {planned:.1f} us a call over consecutive batches "
              f"(computing the states afresh: {fresh:.1f} us)")
    print(HEADER)
    for batch_size in args.batch_sizes:
        for case, n_points in CASES.items():
            samples = (8_000 if args.quick else 32_000) if n_points < 1000 else (1_024 if args.quick else 4_096)
            samples -= samples % batch_size
            rates = side_by_side(repeats, {
                "bare": lambda: bare_loop(n_points, samples, batch_size),
                "bare+write": lambda: bare_loop(n_points, samples, batch_size, True),
                "producer": lambda: dpx_producer(n_points, samples, batch_size),
                "pipeline": lambda: dpx_pipeline(n_points, samples, batch_size, False),
                "normalize": lambda: dpx_pipeline(n_points, samples, batch_size, True),
            })
            where = f"{case}, batch {batch_size}"
            print(row(f"{where}: producer / bare", rates["bare"], rates["producer"]))
            print(row(f"{where}: DataGeneration / bare", rates["bare"], rates["pipeline"]))
            print(row(f"{where}: DataGeneration / bare+write", rates["bare+write"], rates["pipeline"]))
            print(row(f"{where}: normalize=True / bare+write", rates["bare+write"], rates["normalize"]))


if __name__ == "__main__":
    main()
