"""Data generation in worker processes, against one process: the same samples, made in parallel.

Seeds are per sample, so 1 or 2 workers make the same dataset.

    python examples/features/generation_multi.py [--quick]
"""

import numpy as np

import dpx
from common import arguments, environment, sizes


def main(out: str = "sessions/features", quick: bool = False) -> float:
    batch_nb, batch_size = sizes(quick)
    stored = {}
    for runner, workers in (("inprocess", 1), ("multiprocess", 2)):
        summary = dpx.DataGeneration(environment(runner=runner, workers=workers), session_dir=out,
                                     session_name=f"{runner}", batch_nb=batch_nb, batch_size=batch_size).execute()
        print(f"{runner} ({workers} worker(s)): {summary.rate:,.0f} samples/s")
        stored[runner] = dpx.open_database(summary.session_path).read("training", ["input"])["input"]
    same = np.array_equal(stored["inprocess"], stored["multiprocess"])
    print(f"same dataset: {same}")
    return same


if __name__ == "__main__":  # worker processes import this script again: the guard keeps them from running it
    main(**arguments())
