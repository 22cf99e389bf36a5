"""Training throughput through dpx against a bare PyTorch loop, and get_prediction overhead.

Training: the same FC network, batch size, optimiser and samples; the bare
loop holds the samples as tensors in memory and shuffles indices each epoch,
dpx reads them from the session's memmap storage through the Training
pipeline. At batch 32 dpx also runs with a no-op plugin implementing every
lifecycle hook (the per-step one included), the price of a plugin joining the
run. ``get_prediction``: one sample through the environment's request
path (NumPy in, backend, NumPy out) against calling the model directly.

    .venv/bin/python benchmarks/bench_training.py [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
import timeit
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

import dpx  # noqa: E402
from dpx.core.database import Database  # noqa: E402
from dpx.core.lifecycle import lifecycle_plugins  # noqa: E402
from dpx.plugins import get_plugins  # noqa: E402
from measure import HEADER, row, side_by_side  # noqa: E402

CASES = {
    "small FC 90-64-64-3, batch 32": ([64, 64], 32),
    "small FC 90-64-64-3, batch 256": ([64, 64], 256),
    "wide FC 90-512-512-3, batch 256": ([512, 512], 256),
}


#: The case also measured with :class:`NoOpPlugin` installed, under this name.
WITH_PLUGIN, NOOP = "small FC 90-64-64-3, batch 32", "bench-noop"


class NoOpPlugin:
    """Implements every lifecycle hook, doing nothing: what joining a run costs."""

    @dpx.hookimpl
    def dpx_run_start(self, run): pass

    @dpx.hookimpl
    def dpx_training_step_end(self, run, step, loss): pass

    @dpx.hookimpl
    def dpx_epoch_end(self, run, epoch, loss): pass

    @dpx.hookimpl
    def dpx_checkpoint_saved(self, run, path): pass

    @dpx.hookimpl
    def dpx_run_end(self, run, outcome): pass


def with_noop_plugin(run):
    """``run`` with :class:`NoOpPlugin` registered for its duration."""

    def measured() -> float:
        plugins = get_plugins()
        plugins.register(NoOpPlugin(), name=NOOP)
        try:
            return run()
        finally:
            plugins.unregister(NOOP)

    return measured


def alternating(repeats: int, runs: dict) -> dict[str, list[float]]:
    """:func:`side_by_side`, the order reversed every other repetition: the machine's drift
    within a repetition then favours no run (the last of three ran ~10 % slow otherwise)."""
    results: dict[str, list[float]] = {name: [] for name in runs}
    for repetition in range(repeats):
        names = list(runs) if repetition % 2 == 0 else list(reversed(runs))
        for name, rates in side_by_side(1, {name: runs[name] for name in names}).items():
            results[name] += rates
    return results


def make_dataset(folder: str, count: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    inputs = rng.random((count, 30, 3), dtype=np.float32)
    with Database(f"{folder}/data/dataset", dpx.DatabaseConfig()) as db:
        db.prepare("training", {"input": (np.float32, (30, 3)), "ground_truth": (np.float32, (3,))})
        db.append("training", {"input": inputs, "ground_truth": inputs.mean(axis=1)})
    return inputs


def bare_loop(inputs: np.ndarray, hidden: list[int], batch_size: int, epochs: int) -> float:
    torch.manual_seed(0)
    layers, width = [], 90
    for size in hidden:
        layers += [torch.nn.Linear(width, size), torch.nn.ReLU()]
        width = size
    model = torch.nn.Sequential(*layers, torch.nn.Linear(width, 3))
    optimizer, loss_fn = torch.optim.Adam(model.parameters(), lr=1e-3), torch.nn.MSELoss()
    x, y = torch.from_numpy(inputs), torch.from_numpy(inputs.mean(axis=1))
    start = time.perf_counter()
    for _ in range(epochs):
        for ids in torch.randperm(len(x)).split(batch_size):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[ids].flatten(1)), y[ids])
            loss.backward()
            optimizer.step()
            loss.item()  # dpx logs every loss
    return epochs * len(x) / (time.perf_counter() - start)


def through_dpx(folder: str, hidden: list[int], batch_size: int, epochs: int, name: str) -> float:
    """dpx's own loop: the lifecycle plugins installed here (dpx-mlflow...) stay out, the benchmark's joins."""
    network = dpx.NetworkConfig("fc", network_kwargs={"hidden": hidden}, lr=1e-3, device="cpu")
    installed = [plugin for plugin in lifecycle_plugins() if plugin != NOOP]
    summary = dpx.Training(network, dpx.DatabaseConfig(existing_dir=f"{folder}/data"), session_dir=folder,
                           session_name=name, epoch_nb=epochs, batch_size=batch_size, progress=False, seed=0,
                           disable_plugins=installed).execute()
    return summary.samples / summary.seconds


def get_prediction_overhead(folder: str) -> tuple[float, float]:
    """Median microseconds per call: through the request path, and the model called directly."""
    predictor = dpx.load_predictor(f"{folder}/case0_0")
    sample = np.random.default_rng(1).random((30, 3), dtype=np.float32)
    request = lambda: predictor({"input": sample})  # noqa: E731
    model = predictor.backend.network

    def direct():
        with torch.no_grad():
            return model(torch.from_numpy(sample)[None]).numpy()

    runs = [timeit.timeit(request, number=200) / 200 for _ in range(7)]
    bare = [timeit.timeit(direct, number=200) / 200 for _ in range(7)]
    return 1e6 * float(np.median(runs)), 1e6 * float(np.median(bare))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, one repetition, for a smoke run")
    args = parser.parse_args()
    count, epochs, repeats = (4096, 1, 1) if args.quick else (16384, 3, 5)
    with tempfile.TemporaryDirectory() as folder:
        inputs = make_dataset(folder, count)
        print(HEADER)
        for index, (case, (hidden, batch_size)) in enumerate(CASES.items()):
            bare_loop(inputs, hidden, batch_size, 1)  # warm-up
            runs = itertools.count()
            measured = {
                "bare": lambda: bare_loop(inputs, hidden, batch_size, epochs),
                "dpx": lambda: through_dpx(folder, hidden, batch_size, epochs, f"case{index}_{next(runs)}"),
            }
            if case == WITH_PLUGIN:
                measured["plugin"] = with_noop_plugin(measured["dpx"])
            rates = alternating(repeats, measured)
            print(row(f"{case} (samples/s)", rates["bare"], rates["dpx"]))
            if "plugin" in rates:
                print(row(f"{case}, no-op plugin (samples/s)", rates["bare"], rates["plugin"]))
        request, direct = get_prediction_overhead(folder)
        print(f"get_prediction in-process: {request:.1f} us per call, model called directly {direct:.1f} us "
              f"(overhead {request - direct:.1f} us)")


if __name__ == "__main__":
    main()
