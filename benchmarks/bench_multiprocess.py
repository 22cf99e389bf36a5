"""The multiprocess runner against the in-process one, side by side.

1. ``toy.mean`` 30x3, 2 workers against the in-process runner, at batch 32 and 256.
2. An environment burning 5 ms of CPU per sample: 2 workers against the in-process runner.
3. ``toy.mean`` 10000x3, 2 workers against the in-process runner.
4. ``get_prediction`` round trip from a worker process: median and p99.

    .venv/bin/python benchmarks/bench_multiprocess.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))  # worker processes get sys.path: they find bench_envs

import dpx  # noqa: E402
from dpx.core.producer import resolve_seed  # noqa: E402
from dpx.plugins import load  # noqa: E402
from measure import HEADER, row, side_by_side  # noqa: E402


def rate(environment, workers: int, samples: int, batch_size: int, runner: str = "multiprocess", **env_kwargs) -> float:
    """Samples per second of a started runner producing ``samples`` (start-up excluded)."""
    config = dpx.EnvironmentConfig(environment, runner=runner, workers=workers, env_kwargs=env_kwargs, seed=0)
    runner_obj = load("runners", runner)(config, resolve_seed(0)[1])
    runner_obj.start()
    try:
        runner_obj.produce(np.arange(batch_size))  # warm-up: buffers, first messages
        start = time.perf_counter()
        for first in range(0, samples, batch_size):
            runner_obj.produce(np.arange(first, min(first + batch_size, samples)))
        return samples / (time.perf_counter() - start)
    finally:
        runner_obj.close()


def latency(samples: int) -> np.ndarray:
    """Microseconds of each get_prediction round trip from a worker (the predictor itself is trivial)."""
    from bench_envs import Asking

    config = dpx.EnvironmentConfig(Asking, runner="multiprocess", workers=1, seed=0)
    runner = load("runners", "multiprocess")(config, resolve_seed(0)[1])
    runner.start()
    runner.connect(lambda inputs: {"prediction": inputs["input"].mean(axis=0)})
    try:
        runner.produce(np.arange(100))  # warm-up
        return 1e6 * np.concatenate([runner.produce(np.arange(i, i + 100))["latency"].copy()
                                     for i in range(100, samples + 100, 100)])
    finally:
        runner.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, one repetition, for a smoke run")
    args = parser.parse_args()
    repeats, scale = (1, 4) if args.quick else (3, 1)
    from bench_envs import Burn

    print(HEADER)
    for batch_size in (32, 256):
        samples = 32_000 // scale
        rates = side_by_side(repeats, {
            "inprocess": lambda: rate("toy.mean", 1, samples, batch_size, runner="inprocess", n_points=30),
            "multi": lambda: rate("toy.mean", 2, samples, batch_size, n_points=30),
        })
        print(row(f"30x3, batch {batch_size}: 2 workers / in-process", rates["inprocess"], rates["multi"]))
    rates = side_by_side(repeats, {"inprocess": lambda: rate(Burn, 1, 160 // scale, 32, runner="inprocess"),
                                   "multi": lambda: rate(Burn, 2, 320 // scale, 32)})
    print(row("5 ms step, batch 32: 2 workers / in-process", rates["inprocess"], rates["multi"]))
    rates = side_by_side(repeats, {
        "inprocess": lambda: rate("toy.mean", 1, 2048 // scale, 256, runner="inprocess", n_points=10_000),
        "multi": lambda: rate("toy.mean", 2, 2048 // scale, 256, n_points=10_000),
    })
    print(row("10000x3, batch 256: 2 workers / in-process", rates["inprocess"], rates["multi"]))
    for _ in range(repeats):
        values = latency(2000 // scale)
        print(f"get_prediction round trip from a worker: median {np.median(values):.0f} us, "
              f"p99 {np.percentile(values, 99):.0f} us")


if __name__ == "__main__":
    main()
