"""save_parameters / load_parameters: constants stored once with the dataset.

The environment saves its ``n_points`` and cloud ``origin`` when it starts
(``init``); they are stored in the dataset (``dataset/parameters/``, no
pickles), shown by ``dpx info``, and loaded by the environments of later
pipelines, worker processes included. (Not a sampler's parameter space: those
values change per sample.)

    python examples/features/parameters.py [--quick]
"""

from dpx.cli import main as dpx_cli
from common import arguments, dataset
from dpx.core.parameters import read_parameters


def main(out: str = "sessions/features", quick: bool = False) -> dict:
    data = dataset(out, quick)
    stored = read_parameters(data / "dataset")
    print(f"stored with the dataset: {stored}")
    dpx_cli(["info", str(data)])
    return stored


if __name__ == "__main__":
    main(**arguments())
