"""Step 2: the configurations every later step uses.

``EnvironmentConfig`` says which environment to run and how (its
``env_kwargs``, a seed, the runner); ``DatabaseConfig`` how samples are stored
and read (normalised here); ``NetworkConfig`` the network (an FC of dpx-torch,
input and output sizes taken from the fields) and its optimisation. Running
this file makes every check a real run makes, and writes nothing:

    python examples/tutorial/t2_configuration.py
"""

import sys

import dpx
from t1_environment import Spring

ENVIRONMENT = dpx.EnvironmentConfig(Spring, env_kwargs={"dt": 0.1}, seed=0)
DATABASE = dpx.DatabaseConfig(normalize=True)
NETWORK = dpx.NetworkConfig("fc", network_kwargs={"hidden": [32, 32]}, lr=3e-3)


def batches(quick: bool) -> dict:
    """How many samples to make: ``batch_nb`` batches of ``batch_size``."""
    return {"batch_nb": 4 if quick else 100, "batch_size": 64}


def main(out: str = "sessions/tutorial", quick: bool = False) -> list[str]:
    setup = dpx.DataGeneration(ENVIRONMENT, DATABASE, session_dir=out, session_name="spring",
                               **batches(quick)).prepare()  # what --dry-run does
    print("\n".join(setup.checked))
    return setup.checked


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
