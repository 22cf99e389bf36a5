"""get_prediction inside step: the environment asks the network while it computes a sample.

Each step, the environment asks the network for the mean of the cloud it just
drew (``self.get_prediction(input=cloud)``) before the step ends. In a
Prediction pipeline the request travels to the process holding the network
(here from 2 worker processes) and back; a simulator running its own loop
connects the network itself with ``connect_predictor``.

    python examples/features/get_prediction.py [--quick]
"""

import numpy as np

import dpx
from common import NETWORK, arguments, environment, trained
from dpx.testing import prepare_environment
from mean_environment import MeanEnvironment


def main(out: str = "sessions/features", quick: bool = False) -> float:
    session = trained(out, quick)
    asking = environment(env_kwargs={"ask": True}, runner="multiprocess", workers=2)
    print(dpx.Prediction(NETWORK, asking, session_dir=out, session_name=session.name,
                         step_nb=10 if quick else 500).execute())
    # Outside a pipeline: the environment is set up as a pipeline would, then given the network.
    alone = prepare_environment(MeanEnvironment(ask=True))
    alone.connect_predictor(dpx.load_predictor(session))
    alone.step()
    distance = float(np.linalg.norm(alone.sample["asked"] - alone.sample["ground_truth"]))
    print(f"asked from inside step(): {alone.sample['asked']}, true mean {alone.sample['ground_truth']}")
    return distance


if __name__ == "__main__":  # worker processes import this script again: the guard keeps them from running it
    main(**arguments())
