"""``sofa.beam`` against the real SOFA: generation rates and the network's step time against SOFA's.

1. Samples/s of the demo's beam (10 x 3 x 3 nodes, 20 SOFA time steps per
   sample): a bare loop calling ``step()``, dpx's in-process runner, and the
   multiprocess runner with 2 workers (one SOFA simulation each).
2. One prediction step, as dpx.Prediction times it: SOFA solving a new load
   (reset, 20 time steps, reading the sample, writing the prediction) against
   the FC network of the demo (270-256-256-270) predicting it.

Needs SOFA importable (``source ../shared/sofa/activate.sh``, or run under
``scripts/test.sh``'s environment)::

    .venv/bin/python benchmarks/bench_sofa.py [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

import dpx
from dpx.core.producer import resolve_seed
from dpx.plugins import load
from dpx.testing import prepare_environment
from dpx_sofa.beam import SofaBeam

BEAM = {"grid_resolution": [10, 3, 3], "size": [40.0, 6.0, 6.0], "force_range": [10.0, 40.0]}
BATCH = 32


def bare_rate(samples: int) -> float:
    """``step()`` in a loop, without dpx: SOFA's own speed on this beam."""
    env = prepare_environment(SofaBeam(**BEAM))
    env.step()
    start = time.perf_counter()
    for _ in range(samples):
        env.step()
    elapsed = time.perf_counter() - start
    env.close()
    return samples / elapsed


def runner_rate(samples: int, runner: str, workers: int) -> float:
    """Samples per second of a started runner (start-up, i.e. SOFA's import and scene set-up, excluded)."""
    config = dpx.EnvironmentConfig("sofa.beam", env_kwargs=BEAM, runner=runner, workers=workers, seed=0)
    started = load("runners", runner)(config, resolve_seed(0)[1])
    started.start()
    try:
        started.produce(np.arange(BATCH))
        start = time.perf_counter()
        for first in range(0, samples, BATCH):
            started.produce(np.arange(first, first + BATCH))
        return samples / (time.perf_counter() - start)
    finally:
        started.close()


def step_times(folder: str, samples: int, steps: int) -> tuple[float, float]:
    """(SOFA, network) milliseconds per prediction step, from dpx.Prediction on a briefly trained FC."""
    network = dpx.NetworkConfig("fc", network_kwargs={"hidden": [256, 256]}, lr=1e-3)
    data = dpx.DataGeneration(dpx.EnvironmentConfig("sofa.beam", env_kwargs=BEAM, seed=0),
                              dpx.DatabaseConfig(normalize=True), session_dir=folder, session_name="data",
                              batch_nb=samples // BATCH, batch_size=BATCH, progress=False).execute()
    trained = dpx.Training(network, dpx.DatabaseConfig(existing_dir=str(data.session_path), normalize=True),
                           session_dir=folder, session_name="fc", epoch_nb=1, batch_size=BATCH,
                           progress=False).execute()
    predicted = dpx.Prediction(network, dpx.EnvironmentConfig("sofa.beam", env_kwargs=BEAM, seed=1),
                               session_dir=folder, session_name=trained.session_path.name, step_nb=steps,
                               progress=False).execute()
    return 1e3 * predicted.environment_seconds / steps, 1e3 * predicted.network_seconds / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    samples = 64 if args.quick else 512

    bare = bare_rate(samples)
    inprocess = runner_rate(samples, "inprocess", 1)
    workers = runner_rate(samples, "multiprocess", 2)
    print(f"sofa.beam {BEAM['grid_resolution']}, {samples} samples of 20 SOFA steps:")
    print(f"  bare step() loop      {bare:7.1f} samples/s")
    print(f"  dpx in-process        {inprocess:7.1f} samples/s ({inprocess / bare:.2f} of the bare loop)")
    print(f"  dpx 2 workers         {workers:7.1f} samples/s ({workers / inprocess:.2f}x in-process)")
    with tempfile.TemporaryDirectory() as folder:
        sofa_ms, network_ms = step_times(folder, 2 * BATCH if args.quick else 8 * BATCH, 20 if args.quick else 200)
    print(f"prediction step: SOFA {sofa_ms:.2f} ms, FC network {network_ms:.3f} ms ({sofa_ms / network_ms:.0f}x)")


if __name__ == "__main__":
    main()
