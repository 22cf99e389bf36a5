"""The SOFA beam demo: learn a SOFA beam's deformation and run the networks inside SOFA.

As DeepPhysX.Sofa's beam demo does, with dpx: generates a dataset from
``sofa.beam`` (random forces on the free end -> displacement of every node)
with SOFA running in 2 worker processes, trains an FC network on the nodes
and a 3D UNet on the beam's grid, then runs each network inside new SOFA
simulations with dpx.Prediction (each step SOFA solves a new load and the
network's displacement is applied to the scene's ``prediction`` grid), prints
the error against SOFA's solution and the time per step of SOFA against the
network, and renders a frame of the network's beam (red) beside SOFA's
(green) with dpx-vedo, offscreen, checking that the picture shows both.
Then, as a runSofa scene does, SOFA's own animate loop runs each network:
the scene is built with ``attach(root)``, the network connected with
``dpx.load_predictor`` / ``connect_predictor``, and the scene's controller
applies the network's displacement after every load SOFA solves; no dpx
pipeline is involved.

Needs SOFA importable (see plugins/dpx-sofa/README.md) and the dpx, dpx-torch,
dpx-vedo and dpx-sofa distributions; ``bash scripts/sofa_demo.sh`` sets all of
it up from a fresh clone beside the shared SOFA build and runs::

    python plugins/dpx-sofa/examples/beam_demo.py            # about 2 min on 2 CPU cores
    python plugins/dpx-sofa/examples/beam_demo.py --quick    # a smoke run, about 20 s

Sessions and frames go to ``sessions/sofa_beam/<date-time>/`` (``--out`` changes the parent).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import dpx

#: A 10 x 3 x 3 grid: 90 nodes, 270 values per field.
BEAM = {"grid_resolution": [10, 3, 3], "size": [40.0, 6.0, 6.0], "force_range": [10.0, 40.0]}
WORKERS = 2


@dataclass
class Case:
    """One network trained on one layout of the beam's fields."""

    name: str
    layout: str
    network: dpx.NetworkConfig
    epochs: int
    batch_size: int


@dataclass
class InSofa:
    """The network run by SOFA's own loop: its error against SOFA and the time per step (one load)."""

    relative_error: float
    step_ms: float
    network_ms: float


@dataclass
class Result:
    case: Case
    train_seconds: float
    relative_error: float
    sofa_ms: float
    network_ms: float
    frame: Path
    in_sofa: InSofa


def cases(quick: bool) -> list[Case]:
    scale = 8 if quick else 1
    return [
        Case("fc", "nodes", dpx.NetworkConfig("fc", network_kwargs={"hidden": [256, 256]}, lr=1e-3),
             epochs=max(2, 40 // scale), batch_size=32),
        Case("unet", "grid", dpx.NetworkConfig("unet", network_kwargs={"depth": 2, "first_channels": 8}, lr=1e-3),
             epochs=max(2, 16 // scale), batch_size=32),
    ]


def environment(layout: str, seed: int, workers: int = 1, **config: object) -> dpx.EnvironmentConfig:
    """The beam, in this process or in ``workers`` worker processes (one SOFA simulation each)."""
    runner = {"runner": "multiprocess", "workers": workers} if workers > 1 else {}
    return dpx.EnvironmentConfig("sofa.beam", env_kwargs={**BEAM, "layout": layout}, seed=seed, **runner, **config)


def generate(run: Path, layout: str, samples: int, seed: int) -> tuple[Path, float]:
    """Training samples and a tenth as many validation samples, in one session; returns it and samples/s."""
    name, started = f"data_{layout}", time.perf_counter()
    total = 0
    for mode, count, new in (("training", samples, True), ("validation", max(32, samples // 10), False)):
        summary = dpx.DataGeneration(environment(layout, seed, WORKERS), dpx.DatabaseConfig(mode=mode, normalize=True),
                                     session_dir=str(run), session_name=name, new_session=new,
                                     batch_nb=count // 32, batch_size=32, progress=False).execute()
        total += summary.total
    return run / name, total / (time.perf_counter() - started)


def evaluate(run: Path, case: Case, samples: int, seed: int, steps: int) -> Result:
    dataset, rate = generate(run, case.layout, samples, seed)
    print(f"{case.name}: {samples} training samples from SOFA in {WORKERS} worker processes, {rate:.0f} samples/s")
    trained = dpx.Training(case.network, dpx.DatabaseConfig(existing_dir=str(dataset), normalize=True),
                           session_dir=str(run), session_name=case.name, epoch_nb=case.epochs,
                           batch_size=case.batch_size, seed=seed, progress=False).execute()
    print(f"{case.name}: {trained}")
    # New loads (another seed): SOFA solves each, the network predicts it and its
    # displacement is written into the scene (SofaBeam.apply_prediction).
    predicted = dpx.Prediction(case.network, environment(case.layout, seed + 1), session_dir=str(run),
                               session_name=trained.session_path.name, step_nb=steps, progress=False).execute()
    print(f"{case.name}: {predicted}")
    # A few more steps with the viewer, offscreen, for a picture of both beams (not timed).
    frames = run / f"frames_{case.name}"
    viewer = {"visualizer": "vedo", "visualizer_kwargs": {"offscreen": True, "frames_dir": str(frames)}}
    dpx.Prediction(case.network, environment(case.layout, seed + 2, **viewer), session_dir=str(run),
                   session_name=trained.session_path.name, step_nb=3, progress=False).execute()
    frame = sorted(frames.glob("frame_*.png"))[-1]
    check_frame(frame)
    in_sofa = run_in_sofas_loop(trained.session_path, case.layout, seed + 3, steps)
    print(f"{case.name}: in SOFA's own loop, {steps} loads: relative RMS error {100 * in_sofa.relative_error:.2f} %, "
          f"per step {in_sofa.step_ms:.2f} ms (network {in_sofa.network_ms:.2f} ms)")
    return Result(case, trained.seconds, predicted.error.relative_error,
                  1e3 * predicted.environment_seconds / predicted.steps,
                  1e3 * predicted.network_seconds / predicted.steps, frame, in_sofa)


def run_in_sofas_loop(session: Path, layout: str, seed: int, steps: int) -> InSofa:
    """What a runSofa scene script does: SOFA animates, the scene's controller runs the network.

    Every ``animate_steps`` time steps the controller starts a sample (a new
    load), reads it and writes the network's displacement for that load into
    the scene's ``prediction`` grid; compared here with SOFA's own.
    """
    import Sofa.Core
    import Sofa.Simulation

    from dpx.core.prediction import ErrorStats
    from dpx_sofa.beam import SofaBeam

    beam = SofaBeam(**BEAM, layout=layout)
    root = Sofa.Core.Node("root")
    beam.attach(root, seed=seed)  # createScene(root) in a runSofa scene file
    Sofa.Simulation.init(root)
    predictor = dpx.load_predictor(session)
    beam.connect_predictor(predictor)
    rest, error, started = beam.read_positions(beam.shown, "rest_position"), ErrorStats(), time.perf_counter()
    try:
        for _ in range(steps):
            for _ in range(beam.animate_steps):
                Sofa.Simulation.animate(root, beam.dt)
            beam.controller.raise_failure()  # SOFA only logs what the controller's handlers raise
            shown = beam.read_positions(beam.shown) - rest
            error.add(shown[None], beam.to_nodes(beam.sample["ground_truth"])[None])
        elapsed = time.perf_counter() - started
    finally:
        beam.close()
    return InSofa(error.relative_error, 1e3 * elapsed / steps, 1e3 * predictor.seconds / predictor.calls)


def check_frame(path: Path) -> None:
    """Raise unless the picture shows SOFA's beam (green) and the network's (red)."""
    from PIL import Image

    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.int32)
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    greens = int(((green > red + 40) & (green > blue + 40)).sum())
    reds = int(((red > green + 40) & (red > blue + 40)).sum())
    if min(greens, reds) < 50:
        raise RuntimeError(f"{path}: the picture does not show both beams ({greens} green, {reds} red pixels)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8x fewer samples and epochs: a smoke run")
    parser.add_argument("--out", default="sessions/sofa_beam", help="parent folder of the run's sessions")
    parser.add_argument("--steps", type=int, default=100, help="prediction steps (new loads) per network")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    samples = 2048 // (8 if args.quick else 1)

    # The trained UNet's activations underflow to denormal floats, which x86 CPUs compute about 40x more
    # slowly (25 ms instead of 0.6 ms per prediction here): flush them to zero, as CPU inference usually does.
    torch.set_flush_denormal(True)
    run = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    results = [evaluate(run, case, samples, args.seed, args.steps) for case in cases(args.quick)]

    print(f"\nsofa.beam {BEAM}, {args.steps} new loads per network:")
    print(f"{'':26}" + "".join(f"{r.case.name + ' (' + r.case.layout + ')':>16}" for r in results))
    rows = [
        ("training time (s)", [f"{r.train_seconds:.0f}" for r in results]),
        ("relative RMS error", [f"{100 * r.relative_error:.2f} %" for r in results]),
        ("SOFA, per step (ms)", [f"{r.sofa_ms:.2f}" for r in results]),
        ("network, per step (ms)", [f"{r.network_ms:.2f}" for r in results]),
        ("speed-up over SOFA", [f"{r.sofa_ms / r.network_ms:.1f}x" for r in results]),
        ("in SOFA's loop: error", [f"{100 * r.in_sofa.relative_error:.2f} %" for r in results]),
        ("in SOFA's loop: step (ms)", [f"{r.in_sofa.step_ms:.2f}" for r in results]),
        ("  of which network (ms)", [f"{r.in_sofa.network_ms:.2f}" for r in results]),
    ]
    for label, values in rows:
        print(f"{label:26}" + "".join(f"{v:>16}" for v in values))
    print("\nframes (network in red beside SOFA in green): " + ", ".join(str(r.frame) for r in results))
    print(f"sessions in {run}")


if __name__ == "__main__":
    main()
