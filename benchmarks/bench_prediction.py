"""The Prediction loop against a bare loop doing the same work, batch 1 (one environment).

A small FC (90-64-64-3, trained for one epoch here) runs inside ``toy.mean``
(30x3): each step the bare loop calls ``step()``, the model on the sample and
``apply_prediction``; dpx's ``Prediction`` does that through its runner, with
per-sample seeding, shape checks, error statistics against the ground truth
and progress.

    .venv/bin/python benchmarks/bench_prediction.py [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

import dpx  # noqa: E402
from bench_training import make_dataset  # noqa: E402
from dpx.core.network import find_trained_network  # noqa: E402
from dpx.core.predictor import load_network  # noqa: E402
from dpx_toy.mean import Mean  # noqa: E402
from measure import HEADER, row, side_by_side  # noqa: E402

NETWORK = dpx.NetworkConfig("fc", network_kwargs={"hidden": [64, 64]}, lr=1e-3, device="cpu")


def train(folder: str) -> None:
    make_dataset(folder, 1024)
    dpx.Training(NETWORK, dpx.DatabaseConfig(existing_dir=f"{folder}/data"), session_dir=folder,
                 session_name="trained", epoch_nb=1, batch_size=64, progress=False, seed=0).execute()


def bare_loop(model: torch.nn.Module, steps: int) -> float:
    """Step, run the model on the sample, hand the prediction back."""
    env = Mean()
    env.rng = np.random.default_rng(0)
    env.init_database()
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(steps):
            env.step()
            prediction = model(torch.from_numpy(env.sample["input"])[None]).numpy()
            env.apply_prediction({"prediction": prediction[0]})
    return steps / (time.perf_counter() - start)


def through_dpx(folder: str, steps: int, runs=itertools.count()) -> float:
    """A fresh session per run, as a user's prediction makes."""
    network = dataclasses.replace(NETWORK, network_dir=f"{folder}/trained")
    pipeline = dpx.Prediction(network, dpx.EnvironmentConfig("toy.mean", seed=0), session_dir=folder,
                              session_name=f"predict{next(runs)}", new_session=True, step_nb=steps, progress=False)
    setup = pipeline.prepare()  # loading the network is set-up, not the loop
    start = time.perf_counter()
    pipeline.execute(setup)
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, for a smoke run")
    args = parser.parse_args()
    repeats, step_counts = (1, (500,)) if args.quick else (3, (500, 5_000))
    with tempfile.TemporaryDirectory() as folder:
        train(folder)
        model = load_network(NETWORK, find_trained_network(NETWORK, f"{folder}/trained"))[0].network
        print(HEADER)
        for steps in step_counts:
            result = side_by_side(repeats, {"bare": lambda: bare_loop(model, steps),
                                            "dpx": lambda: through_dpx(folder, steps)})
            print(row(f"prediction loop, batch 1, {steps} steps (steps/s)", result["bare"], result["dpx"]))


if __name__ == "__main__":
    main()
