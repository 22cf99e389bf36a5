"""Data generation in one process: a dataset of point clouds and their means.

    python examples/features/generation_single.py [--quick]
"""

import dpx
from common import arguments, environment, sizes


def main(out: str = "sessions/features", quick: bool = False):
    batch_nb, batch_size = sizes(quick)
    summary = dpx.DataGeneration(environment(), dpx.DatabaseConfig(normalize=True), session_dir=out,
                                 session_name="single", batch_nb=batch_nb, batch_size=batch_size).execute()
    print(summary)
    return summary


if __name__ == "__main__":
    main(**arguments())
