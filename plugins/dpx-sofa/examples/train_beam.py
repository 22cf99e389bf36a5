"""Learn a SOFA beam's deformation: the ``sofa.beam`` scenario of dpx-sofa.

The FEM beam scenario (as in dpx's ``examples/fem_beam.py`` and DeepPhysX.Sofa's
beam demo), simulated by SOFA: generates training and validation samples
(random forces on the free end -> displacement of every node), trains an FC
network on them, then runs it inside new SOFA simulations with dpx.Prediction
and prints its error against SOFA's solution.

Needs SOFA with SofaPython3 (see plugins/dpx-sofa/README.md) and the dpx,
dpx-torch and dpx-sofa distributions::

    python plugins/dpx-sofa/examples/train_beam.py --quick       # a smoke run
    python plugins/dpx-sofa/examples/train_beam.py --workers 4   # 4 SOFA processes generate the data

Sessions go to ``sessions/sofa_beam/<date-time>/`` (``--out`` changes the parent).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import dpx

#: A 10 x 3 x 3 grid: 90 nodes, 270 values per field.
BEAM = {"grid_resolution": [10, 3, 3], "size": [40.0, 6.0, 6.0], "young_modulus": 4000.0, "force_range": [5.0, 20.0]}
BATCH_SIZE = 32


def environment(seed: int, workers: int) -> dpx.EnvironmentConfig:
    """The beam, in this process or in ``workers`` worker processes (one SOFA simulation each)."""
    runner = {"runner": "multiprocess", "workers": workers} if workers > 1 else {}
    return dpx.EnvironmentConfig("sofa.beam", env_kwargs=BEAM, seed=seed, **runner)


def generate(run: Path, samples: int, seed: int, workers: int) -> Path:
    """Training samples and a tenth as many validation samples, in one session."""
    for mode, count, new in (("training", samples, True), ("validation", max(BATCH_SIZE, samples // 10), False)):
        summary = dpx.DataGeneration(environment(seed, workers), dpx.DatabaseConfig(mode=mode, normalize=True),
                                     session_dir=str(run), session_name="data", new_session=new,
                                     batch_nb=count // BATCH_SIZE, batch_size=BATCH_SIZE).execute()
        print(summary)
    return summary.session_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8x fewer samples and epochs: a smoke run")
    parser.add_argument("--workers", type=int, default=1, help="SOFA worker processes generating the data")
    parser.add_argument("--out", default="sessions/sofa_beam", help="parent folder of the run's sessions")
    parser.add_argument("--steps", type=int, default=100, help="prediction steps (new loads)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    scale = 8 if args.quick else 1

    run = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    dataset = generate(run, 4096 // scale, args.seed, args.workers)

    n_values = 3 * int(np.prod(BEAM["grid_resolution"]))
    network = dpx.NetworkConfig("fc", network_kwargs={"dim_layers": [n_values, 512, 512, n_values]}, lr=1e-3)
    trained = dpx.Training(network, dpx.DatabaseConfig(existing_dir=str(dataset), normalize=True),
                           session_dir=str(run), session_name="fc", epoch_nb=max(2, 40 // scale),
                           batch_size=BATCH_SIZE, seed=args.seed).execute()
    print(trained)

    # New loads (another seed), solved by SOFA and predicted by the network; each
    # prediction is shown on the scene's "prediction" grid (apply_prediction).
    predicted = dpx.Prediction(network, environment(args.seed + 1, workers=1), session_dir=str(run),
                               session_name=trained.session_path.name, step_nb=args.steps, record=True).execute()
    print(predicted)
    recorded = dpx.open_database(trained.session_path).read("prediction", ["ground_truth", "prediction"])
    truth = recorded["ground_truth"].reshape(args.steps, -1).astype(np.float64)
    error = recorded["prediction"].reshape(args.steps, -1) - truth
    relative = np.linalg.norm(error, axis=1) / np.linalg.norm(truth, axis=1)
    print(f"mean relative error of the network against SOFA over {args.steps} new loads: "
          f"{100 * relative.mean():.2f} %; sessions in {run}")


if __name__ == "__main__":
    main()
