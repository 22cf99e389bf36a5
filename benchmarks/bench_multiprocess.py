"""The multiprocess runner against in-process generation and a bare loop.

1. An environment burning ~5 ms of CPU per sample: speed-up of 2 workers over 1.
2. ``toy.mean`` 30x3 with 2 workers against the in-process bare loop.
3. ``toy.mean`` 10000x3: the multiprocess runner against the in-process one.
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
from bench_generation import bare_loop  # noqa: E402
from dpx.core.producer import resolve_seed  # noqa: E402
from dpx.plugins import load  # noqa: E402


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


def latency(samples: int) -> tuple[float, float]:
    from bench_envs import Asking

    config = dpx.EnvironmentConfig(Asking, runner="multiprocess", workers=1, seed=0)
    runner = load("runners", "multiprocess")(config, resolve_seed(0)[1])
    runner.start()
    runner.connect(lambda inputs: {"prediction": inputs["input"].mean(axis=0)})
    try:
        values = np.concatenate([runner.produce(np.arange(i, i + 100))["latency"].copy() for i in range(0, samples, 100)])
    finally:
        runner.close()
    return 1e6 * float(np.median(values)), 1e6 * float(np.percentile(values, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    scale = 5 if args.quick else 1
    from bench_envs import Burn

    one = rate(Burn, 1, 400 // scale, 20)
    two = rate(Burn, 2, 400 // scale, 20)
    print(f"5 ms CPU environment: 1 worker {one:,.0f}/s, 2 workers {two:,.0f}/s, speed-up {two / one:.2f}x")
    bare = max(bare_loop(30, 100_000 // scale, 256) for _ in range(2))
    multi = max(rate("toy.mean", 2, 100_000 // scale, 1024, n_points=30) for _ in range(2))
    print(f"toy.mean 30x3: bare loop {bare:,.0f}/s, 2 workers {multi:,.0f}/s, ratio {multi / bare:.2f}")
    inproc = rate("toy.mean", 1, 4096 // scale, 256, runner="inprocess", n_points=10_000)
    multi = rate("toy.mean", 2, 4096 // scale, 256, n_points=10_000)
    print(f"toy.mean 10000x3: in-process {inproc:,.0f}/s, 2 workers {multi:,.0f}/s, ratio {multi / inproc:.2f}")
    median, p99 = latency(2000 // scale)
    print(f"get_prediction round trip from a worker: median {median:.0f} us, p99 {p99:.0f} us")


if __name__ == "__main__":
    main()
