"""The onnx backend (an exported network on onnxruntime) against the torch backend it was exported from.

Two networks: the demo's FC (5-64-64-1) inside ``toy.spring`` and a UNet
(depth 3, 16 first channels) inside ``toy.heat`` (1x32x32), each trained one
epoch, exported with ``dpx export``, then run by both backends:

- per-call latency at batch 1: ``backend.predict`` on one sample (µs/call);
- throughput at batch 64: ``backend.predict`` on 64 samples (samples/s);
- the Prediction loop inside the environment, batch 1 (steps/s).

One thread for both (torch's and onnxruntime's), as every benchmark here.

    .venv/bin/python benchmarks/bench_onnx.py [--quick]
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

sys.path.insert(0, str(Path(__file__).parent))

import dpx  # noqa: E402
from dpx.core.network import find_trained_network  # noqa: E402
from dpx.core.predictor import load_network  # noqa: E402
from measure import side_by_side, spread  # noqa: E402

CASES = {
    "FC in toy.spring": ("toy.spring", {}, dpx.NetworkConfig("fc", network_kwargs={"hidden": [64, 64]}, device="cpu")),
    "UNet in toy.heat": ("toy.heat", {}, dpx.NetworkConfig("unet", network_kwargs={"depth": 3, "first_channels": 16},
                                                           device="cpu")),
}
ONNX = dpx.NetworkConfig(backend="onnx", network_kwargs={"threads": 1})


def train_and_export(folder: Path, environment: str, env_kwargs: dict, network: dpx.NetworkConfig) -> tuple:
    """Train one epoch on 256 samples; return both networks' configs (network_dir set) and validation inputs."""
    env = dpx.EnvironmentConfig(environment, seed=0, env_kwargs=env_kwargs)
    common = {"session_dir": str(folder), "session_name": "trained", "progress": False}
    dpx.DataGeneration(env, dpx.DatabaseConfig(normalize=True), batch_nb=4, batch_size=64, **common).execute()
    dpx.Training(network, dpx.DatabaseConfig(existing_dir=str(folder / "trained"), normalize=True), new_session=False,
                 epoch_nb=1, batch_size=64, seed=0, **common).execute()
    exported = dpx.export(folder / "trained", "onnx")
    with dpx.open_database(folder / "trained") as database:
        inputs = database.read("training", ["input"], np.arange(64))["input"]
    return (dataclasses.replace(network, network_dir=str(folder / "trained")),
            dataclasses.replace(ONNX, network_dir=str(exported)), inputs)


def predict_rate(backend, batch: np.ndarray, calls: int) -> float:
    """Calls of ``backend.predict`` on ``batch`` per second."""
    request = {"input": batch}
    backend.predict(request)
    start = time.perf_counter()
    for _ in range(calls):
        backend.predict(request)
    return calls / (time.perf_counter() - start)


def prediction_loop(folder: Path, environment: str, env_kwargs: dict, network: dpx.NetworkConfig, steps: int,
                    runs=itertools.count()) -> float:
    """Steps per second of a Prediction in ``environment`` (one environment: batch 1)."""
    pipeline = dpx.Prediction(network, dpx.EnvironmentConfig(environment, seed=1, env_kwargs=env_kwargs),
                              session_dir=str(folder), session_name=f"predict{next(runs)}", new_session=True,
                              step_nb=steps, progress=False)
    setup = pipeline.prepare()
    start = time.perf_counter()
    pipeline.execute(setup)
    return steps / (time.perf_counter() - start)


def line(case: str, torch_rates: list[float], onnx_rates: list[float], unit: str, scale: float = 1.0) -> str:
    """Both figures (``scale`` converts a rate into the unit shown) and the speed ratio onnx / torch."""
    ratios = [o / t for o, t in zip(onnx_rates, torch_rates)]
    shown = (lambda rates: [scale / r for r in rates]) if scale != 1.0 else (lambda rates: rates)
    fmt = ",.1f" if scale != 1.0 else ",.0f"
    return (f"{case:52s} {spread(shown(torch_rates), fmt) + unit:>30s} {spread(shown(onnx_rates), fmt) + unit:>30s} "
            f"{spread(ratios, '.2f'):>16s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repetition, fewer calls")
    args = parser.parse_args()
    repeats, scale = (1, 0.2) if args.quick else (3, 1.0)
    print(f"{'case':52s} {'torch (min/med/max)':>30s} {'onnx (min/med/max)':>30s} {'onnx/torch speed':>16s}")
    for name, (environment, env_kwargs, network) in CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            torch_config, onnx_config, inputs = train_and_export(folder, environment, env_kwargs, network)
            backends = {label: load_network(config, find_trained_network(config, folder))[0]
                        for label, config in (("torch", torch_config), ("onnx", onnx_config))}
            small = name.startswith("FC")
            calls_1, calls_64, steps = (int(n * scale) for n in ((5000, 1000, 5000) if small else (300, 20, 300)))
            for batch, calls, unit, per in ((inputs[:1], calls_1, " µs", 1e6), (inputs, calls_64, "/s", 1.0)):
                result = side_by_side(repeats, {label: (lambda b=backend, x=batch, n=calls: predict_rate(b, x, n))
                                                for label, backend in backends.items()})
                if per != 1.0:
                    print(line(f"{name}: predict, batch 1 (µs/call)", result["torch"], result["onnx"], unit, per))
                else:
                    samples = {label: [r * len(batch) for r in rates] for label, rates in result.items()}
                    print(line(f"{name}: predict, batch 64 (samples/s)", samples["torch"], samples["onnx"], unit))
            result = side_by_side(repeats, {
                label: (lambda c=config: prediction_loop(folder, environment, env_kwargs, c, steps))
                for label, config in (("torch", torch_config), ("onnx", onnx_config))})
            print(line(f"{name}: Prediction loop, batch 1 (steps/s)", result["torch"], result["onnx"], "/s"))


if __name__ == "__main__":
    main()
