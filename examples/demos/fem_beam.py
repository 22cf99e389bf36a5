"""Learn a finite-element solve: the ``fem.beam`` cantilever of dpx-fem.

Generates training and validation samples (random patch loads -> FEM nodal
displacements), trains an FC network on the nodal layout and a small 3D UNet
on the grid layout, runs each inside the simulator with dpx.Prediction, and
prints, side by side, the networks' error against the FEM solution and the
time of one network prediction against one FEM solve. The last loads are
rendered (FEM solution green, network red) in ``frames_<network>/``.

Needs the dpx, dpx-torch, dpx-fem and dpx-vedo distributions installed::

    python examples/demos/fem_beam.py --quick     # a smoke run, under a minute
    python examples/demos/fem_beam.py             # a few minutes on 2 CPU cores

Sessions go to ``sessions/fem_beam/<date-time>/`` (``--out`` changes the parent).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import dpx
from dpx.core.prediction import replay
from dpx.testing import prepare_environment
from dpx_fem.beam import Beam

BEAM = {"nx": 20, "ny": 4, "nz": 4}


@dataclass
class Case:
    """One network trained on one layout of the beam's fields."""

    name: str
    layout: str
    network: dpx.NetworkConfig
    samples: int
    epochs: int
    batch_size: int


@dataclass
class Result:
    case: Case
    train_seconds: float
    mean_relative_error: float
    rms_relative_error: float
    prediction_ms: float
    batched_ms: float
    picture: Path


def cases(quick: bool) -> list[Case]:
    scale = 8 if quick else 1
    return [
        Case("fc", "nodes", dpx.NetworkConfig("fc", network_kwargs={"hidden": [256, 256]}, lr=1e-3),
             samples=8192 // scale, epochs=max(2, 30 // scale), batch_size=64),
        Case("unet", "grid", dpx.NetworkConfig("unet", network_kwargs={"depth": 2, "first_channels": 8}, lr=1e-3),
             samples=2048 // scale, epochs=max(2, 10 // scale), batch_size=32),
    ]


def generate(run: Path, layout: str, samples: int, seed: int) -> Path:
    """Training samples and a tenth as many validation samples, in one session."""
    environment = dpx.EnvironmentConfig("fem.beam", env_kwargs={**BEAM, "layout": layout}, seed=seed)
    name = f"data_{layout}"
    for mode, count, new in (("training", samples, True), ("validation", max(64, samples // 10), False)):
        dpx.DataGeneration(environment, dpx.DatabaseConfig(mode=mode, normalize=True), session_dir=str(run),
                           session_name=name, new_session=new, batch_nb=count // 64, batch_size=64,
                           progress=False).execute()
    return run / name


def evaluate(run: Path, case: Case, seed: int, steps: int) -> Result:
    dataset = generate(run, case.layout, case.samples, seed)
    trained = dpx.Training(case.network, dpx.DatabaseConfig(existing_dir=str(dataset), normalize=True),
                           session_dir=str(run), session_name=case.name, epoch_nb=case.epochs,
                           batch_size=case.batch_size, seed=seed, progress=False).execute()
    print(f"{case.name}: {trained}")
    # New loads (another seed), solved by the FEM and predicted by the network, step by step.
    environment = dpx.EnvironmentConfig("fem.beam", env_kwargs={**BEAM, "layout": case.layout}, seed=seed + 1)
    predicted = dpx.Prediction(case.network, environment, session_dir=str(run), session_name=trained.session_path.name,
                               step_nb=steps, record=True, progress=False).execute()
    recorded = dpx.open_database(trained.session_path).read("prediction", ["ground_truth", "prediction"])
    truth = recorded["ground_truth"].reshape(steps, -1).astype(np.float64)
    error = recorded["prediction"].reshape(steps, -1) - truth
    relative = np.linalg.norm(error, axis=1) / np.linalg.norm(truth, axis=1)
    # The same network on all recorded inputs at once: the cost per sample when batched.
    started = time.perf_counter()
    replay(trained.session_path, case.network, batch_size=steps)
    batched = (time.perf_counter() - started) / steps
    return Result(case, trained.seconds, float(relative.mean()), predicted.error.relative_error,
                  1e3 * predicted.network_seconds / predicted.steps, 1e3 * batched,
                  picture(run, case, trained.session_path.name, seed))


def picture(run: Path, case: Case, session: str, seed: int, steps: int = 3) -> Path:
    """Render a few more loads offscreen (FEM green, network red; the viewer of dpx-vedo); the last frame."""
    frames = run / f"frames_{case.name}"
    viewer = {"offscreen": True, "frames_dir": str(frames)}
    environment = dpx.EnvironmentConfig("fem.beam", env_kwargs={**BEAM, "layout": case.layout}, seed=seed + 2,
                                        visualizer="vedo", visualizer_kwargs=viewer)
    dpx.Prediction(case.network, environment, session_dir=str(run), session_name=session, step_nb=steps,
                   progress=False).execute()
    return sorted(frames.glob("*.png"))[-1]


def time_fem(solves: int) -> tuple[Beam, float]:
    """Build the beam as dpx does and time ``solve`` (one back-substitution) on random loads."""
    beam = prepare_environment(Beam(**BEAM))
    loads = []
    for _ in range(solves):
        beam.step()
        loads.append(beam.forces)
    beam.solve(loads[0])
    started = time.perf_counter()
    for forces in loads:
        beam.solve(forces)
    return beam, 1e3 * (time.perf_counter() - started) / solves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8x fewer samples and epochs: a smoke run")
    parser.add_argument("--out", default="sessions/fem_beam", help="parent folder of the run's sessions")
    parser.add_argument("--steps", type=int, default=200, help="prediction steps (new loads) per network")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--networks", default="fc,unet", help="which networks to train, comma-separated")
    args = parser.parse_args()

    run = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    beam, solve_ms = time_fem(200)
    print(f"fem.beam {BEAM}: {beam.n_nodes} nodes, {3 * beam.n_nodes} DOFs; assembly "
          f"{1e3 * beam.assembly_seconds:.0f} ms, factorisation {1e3 * beam.factorization_seconds:.1f} ms (once), "
          f"one solve {solve_ms:.3f} ms")
    chosen = args.networks.split(",")
    results = [evaluate(run, case, args.seed, args.steps) for case in cases(args.quick) if case.name in chosen]

    print(f"\n{'':24}{'FEM':>12}" + "".join(f"{r.case.name + ' (' + r.case.layout + ')':>16}" for r in results))
    rows = [
        ("training samples", "", [f"{r.case.samples}" for r in results]),
        ("training time (s)", "", [f"{r.train_seconds:.0f}" for r in results]),
        ("mean relative error", "0 (reference)", [f"{100 * r.mean_relative_error:.2f} %" for r in results]),
        ("relative RMS error", "0 (reference)", [f"{100 * r.rms_relative_error:.2f} %" for r in results]),
        ("one prediction (ms)", f"{solve_ms:.3f}", [f"{r.prediction_ms:.3f}" for r in results]),
        ("batched, per sample (ms)", f"{solve_ms:.3f}", [f"{r.batched_ms:.3f}" for r in results]),
    ]
    for label, fem, values in rows:
        print(f"{label:24}{fem:>12}" + "".join(f"{v:>16}" for v in values))
    print(f"\nFEM set-up, paid once: assembly {1e3 * beam.assembly_seconds:.0f} ms + factorisation "
          f"{1e3 * beam.factorization_seconds:.1f} ms. Errors are over {args.steps} new loads; sessions in {run}")
    for result in results:
        print(f"{result.case.name}: picture of the last load (FEM green, network red): {result.picture}")


if __name__ == "__main__":
    main()
