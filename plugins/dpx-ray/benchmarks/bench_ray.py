"""Throughput of the ray runner against the in-process and multiprocess runners.

Each runner produces batches of ``toy.mean`` samples (a small 30x3 cloud, about
0.4 KB, and a large 10000x3 one, about 120 KB) through ``Runner.produce``, the
call the pipelines make; storage is left out. Start-up (processes, actors, a
local Ray) is timed apart.

    .venv/bin/python plugins/dpx-ray/benchmarks/bench_ray.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import ray

import dpx
from dpx.core.multiprocess import MultiprocessRunner
from dpx.core.producer import resolve_seed
from dpx.core.runners import InProcessRunner
from dpx_ray.runner import RayRunner

CASES = {"small (30x3)": 30, "large (10000x3)": 10_000}
RUNNERS = {  # name: runner, workers, runner_kwargs
    "inprocess": (InProcessRunner, 1, {}),
    "multiprocess": (MultiprocessRunner, 2, {}),
    "ray": (RayRunner, 2, {}),
    "ray, chunk_size=128": (RayRunner, 2, {"chunk_size": 128}),  # one call per actor per batch of 256
    "ray, chunk_size=1": (RayRunner, 2, {"chunk_size": 1}),  # one call per sample: Ray's per-call cost
}


def measure(runner_class: type, workers: int, options: dict, n_points: int, samples: int,
            batch_size: int) -> tuple[float, float]:
    """Samples per second, and seconds to start."""
    config = dpx.EnvironmentConfig("toy.mean", env_kwargs={"n_points": n_points}, seed=0, workers=workers,
                                   runner_kwargs=options)
    started = time.perf_counter()
    runner = runner_class(config, resolve_seed(0)[1])
    try:
        runner.start()
        ready = time.perf_counter()
        runner.produce(np.arange(batch_size))  # warm-up: buffers allocated, workers imported everything
        start = time.perf_counter()
        for first in range(0, samples, batch_size):
            runner.produce(np.arange(first, min(first + batch_size, samples)))
        return samples / (time.perf_counter() - start), ready - started
    finally:
        runner.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, for a smoke run")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    ray.init(include_dashboard=False, log_to_driver=False)  # once: the ray runners join it
    print(f"{'case':16s} {'runner':18s} {'samples/s':>10s} {'vs inprocess':>13s} {'start s':>8s}")
    for case, n_points in CASES.items():
        samples = (10_240 if args.quick else 51_200) if n_points < 1000 else (1_024 if args.quick else 4_096)
        baseline = None
        for name, (runner_class, workers, options) in RUNNERS.items():
            count = samples // 20 if options.get("chunk_size") == 1 else samples  # slow: fewer samples
            runs = [measure(runner_class, workers, options, n_points, count, args.batch_size) for _ in range(repeats)]
            rate, start = max(r[0] for r in runs), min(r[1] for r in runs)
            baseline = baseline or rate
            print(f"{case:16s} {name:18s} {rate:10.0f} {rate / baseline:12.2f}x {start:8.2f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
