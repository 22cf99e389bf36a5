"""Does active learning pay? Held-out error against simulations spent: random, Sobol, active learning.

Every method ends with the same model: an ensemble of ``ENSEMBLE`` small FC
networks from the samples' parameters to the target, trained from scratch with
the same recipe (the Training pipeline, ``warm_start=False``), scored by the
root mean square error of the ensemble's mean on the same held-out random
samples (per seed). Only which samples were simulated differs:

* ``random`` and ``sobol``: the first ``n`` points of the sampler's sequence
  (nested designs, so a curve is one design growing);
* ``active``: a Sobol initial design, then rounds picking ``BATCH`` candidates
  of a Sobol pool by ensemble disagreement with the diversity term.

Environments whose output varies unevenly over the parameters:
``toy.resonance`` (a resonance ridge) and a small ``fem.beam`` (displacements
under a patch load, with the load's node among the parameters).

    .venv/bin/python benchmarks/bench_active_learning.py [--quick] [--seeds 3] [--plot benchmarks/active_learning.png]

The goal (issue 12): active learning reaches the error random sampling
reaches at the full budget with at most half the simulations, on one of them.
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

ENSEMBLE = 3
BATCH = 32
INITIAL = 32
CASES = {
    "toy.resonance": {"env_kwargs": {}, "budgets": [32, 64, 128, 192, 256]},
    "fem.beam": {"env_kwargs": {"nx": 8, "ny": 2, "nz": 2}, "budgets": [32, 64, 128, 192, 256]},
}
#: Each member's training, the same for every method and budget: 2000 steps of 16 samples, from scratch.
TRAINING = {"epoch_nb": 1, "train_batch_nb": 2000, "train_batch_size": 16, "warm_start": False}
HIDDEN = [64, 64]


def run(case: str, folder: Path, seed: int, name: str, **kwargs) -> list[tuple[int, float]]:
    """(simulations, validation error) after each round of one ActiveLearning run."""
    spec = CASES[case]
    network = dpx.NetworkConfig(network_kwargs={"hidden": HIDDEN}, lr=3e-3)
    pipeline = ActiveLearning(dpx.EnvironmentConfig(case, seed=seed, env_kwargs=spec["env_kwargs"]), network,
                              session_dir=str(folder), session_name=name, ensemble=ENSEMBLE, validation_samples=512,
                              pool_size=2048, echo=False, seed=seed, **TRAINING, **kwargs)
    return [(r.simulations, r.validation_error) for r in pipeline.execute().rounds]


def curves(case: str, seed: int, budgets: list[int]) -> dict[str, dict[int, float]]:
    """Each method's error at each budget, for one seed."""
    with tempfile.TemporaryDirectory() as folder:
        results: dict[str, dict[int, float]] = {}
        for sampler in ("random", "sobol"):
            results[sampler] = {n: run(case, Path(folder), seed, f"{sampler}{n}", initial_sampler=sampler,
                                       initial_samples=n, max_simulations=n)[0][1] for n in budgets}
        active = run(case, Path(folder), seed, "active", initial_sampler="sobol", initial_samples=INITIAL,
                     batch_size=BATCH, max_simulations=budgets[-1])
        results["active"] = {n: error for n, error in active if n in budgets}
        return results


def first_budget_reaching(errors: dict[int, float], target: float) -> int | None:
    return next((n for n, error in sorted(errors.items()) if error <= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, the smaller budgets")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--plot", type=Path, help="write the curves as a PNG (matplotlib)")
    args = parser.parse_args()
    seeds = list(range(1 if args.quick else args.seeds))
    table: dict[str, dict[str, dict[int, list[float]]]] = {}
    for case, spec in CASES.items():
        budgets = spec["budgets"][:2] if args.quick else spec["budgets"]
        started = time.perf_counter()
        per_seed = [curves(case, seed, budgets) for seed in seeds]
        table[case] = {method: {n: [c[method][n] for c in per_seed] for n in budgets} for method in per_seed[0]}
        print(f"\n{case} ({len(seeds)} seeds, ensembles of {ENSEMBLE}, {time.perf_counter() - started:.0f}s): "
              "held-out RMSE, median (min-max) over seeds", flush=True)
        print("| simulations | " + " | ".join(table[case]) + " |")
        print("|---:|" + "---:|" * len(table[case]))
        for n in budgets:
            cells = [f"{statistics.median(v[n]):.4g} ({min(v[n]):.3g}-{max(v[n]):.3g})" for v in table[case].values()]
            print(f"| {n} | " + " | ".join(cells) + " |", flush=True)
        medians = {method: {n: statistics.median(v) for n, v in errors.items()} for method, errors in table[case].items()}
        full = budgets[-1]
        target = medians["random"][full]
        for method in ("sobol", "active"):
            reached = first_budget_reaching(medians[method], target)
            verdict = "never, within the budget" if reached is None else f"at {reached} simulations ({reached / full:.0%})"
            print(f"{method} reaches random's error at {full} simulations ({target:.4g}): {verdict}", flush=True)
    if args.plot:
        plot(table, args.plot)
        print(f"\nplot: {args.plot}")


def plot(table: dict[str, dict[str, dict[int, list[float]]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(table), figsize=(5.5 * len(table), 4.2))
    for axis, (case, methods) in zip(axes, table.items()):
        for method, errors in methods.items():
            budgets = sorted(errors)
            axis.plot(budgets, [statistics.median(errors[n]) for n in budgets], marker="o", label=method)
            axis.fill_between(budgets, [min(errors[n]) for n in budgets], [max(errors[n]) for n in budgets], alpha=0.2)
        axis.set(title=case, xlabel="simulations", ylabel="held-out RMSE (median, min-max over seeds)", yscale="log")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
