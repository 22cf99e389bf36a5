"""Active learning's two scorings side by side: an ensemble's disagreement against one network's MC dropout.

The settings of ``examples/resonance_learn.toml`` on ``toy.resonance``: a 32-point
Sobol design, then rounds of 16 picked from 1024 Sobol candidates, up to 128
simulations; FC networks 32-32 trained 2 epochs of 150 batches of 16 per round
(warm-started). ``ensemble``: 3 members; ``mc_dropout``: one network with
dropout 0.1, 20 passes. Prints, per seed, the wall time of the whole run and
the held-out RMSE (256 random samples) after each round: what the cheaper
option costs in accuracy, if anything.

    .venv/bin/python benchmarks/bench_mc_dropout.py [--seeds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import measure  # noqa: E402,F401  one torch thread, as every benchmark

import dpx  # noqa: E402
from dpx.core.learning import ActiveLearning  # noqa: E402

SCORINGS = {
    "ensemble": ({"ensemble": 3}, {"hidden": [32, 32]}),
    "mc_dropout": ({"mc_samples": 20}, {"hidden": [32, 32], "dropout": 0.1}),
}


def run(seed: int, scoring: str) -> tuple[float, list[tuple[int, float]]]:
    pipeline_kwargs, network_kwargs = SCORINGS[scoring]
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        summary = ActiveLearning(
            dpx.EnvironmentConfig("toy.resonance", seed=seed), dpx.NetworkConfig(network_kwargs=network_kwargs, lr=3e-3),
            session_dir=folder, initial_samples=32, batch_size=16, max_simulations=128, pool_size=1024,
            validation_samples=256, epoch_nb=2, train_batch_nb=150, train_batch_size=16, seed=seed, echo=False,
            scoring=scoring, **pipeline_kwargs).execute()
        return time.perf_counter() - started, [(r.simulations, r.validation_error) for r in summary.rounds]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    final: dict[str, list[float]] = {scoring: [] for scoring in SCORINGS}
    seconds: dict[str, list[float]] = {scoring: [] for scoring in SCORINGS}
    print("| seed | scoring | seconds | held-out RMSE after each round (32, 48, ... 128 simulations) |")
    print("|---:|---|---:|---|")
    for seed in range(args.seeds):
        for scoring in SCORINGS:
            elapsed, rounds = run(seed, scoring)
            final[scoring].append(rounds[-1][1])
            seconds[scoring].append(elapsed)
            errors = ", ".join(f"{error:.3g}" for _, error in rounds)
            print(f"| {seed} | {scoring} | {elapsed:.1f} | {errors} |", flush=True)
    for scoring in SCORINGS:
        print(f"{scoring}: median {statistics.median(seconds[scoring]):.1f}s, "
              f"median error at 128 simulations {statistics.median(final[scoring]):.3g}")


if __name__ == "__main__":
    main()
