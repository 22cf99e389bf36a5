"""get_prediction inside step: the environment asks the network while it computes a sample.

Each step, the environment asks the network for the mean of the cloud it just
drew (``self.get_prediction(input=cloud)``) before the step ends, and stores
the answer (the ``asked`` field). In a Prediction pipeline the request travels
to the process holding the network (here from 2 worker processes) and back; in
a Training pipeline the network being trained answers, with its weights of the
moment (here fine-tuning the trained network online); a simulator running its
own loop connects the network itself with ``connect_predictor``.

    python examples/features/get_prediction.py [--quick]
"""

import dataclasses

import numpy as np

import dpx
from common import NETWORK, arguments, environment, trained
from dpx.testing import prepare_environment
from mean_environment import MeanEnvironment


def main(out: str = "sessions/features", quick: bool = False) -> tuple[float, float]:
    session = trained(out, quick)
    asking = environment(env_kwargs={"ask": True}, runner="multiprocess", workers=2)
    print(dpx.Prediction(NETWORK, asking, session_dir=out, session_name=session.name,
                         step_nb=10 if quick else 500).execute())
    # In Training: the samples made while the network trains store what it answered for them.
    tuning = dpx.Training(dataclasses.replace(NETWORK, network_dir=str(session)), dpx.DatabaseConfig(normalize=True),
                          asking, session_dir=out, session_name="asking", epoch_nb=1, batch_nb=4 if quick else 50,
                          batch_size=32, progress=False).execute()
    print(tuning)
    stored = dpx.open_database(tuning.session_path).read("training", ["asked", "ground_truth"])
    asked_in_training = float(np.linalg.norm(stored["asked"] - stored["ground_truth"], axis=1).mean())
    print(f"while training, the network's answers were {asked_in_training:.3f} from the true means on average")
    # Outside a pipeline: the environment is set up as a pipeline would, then given the network.
    alone = prepare_environment(MeanEnvironment(ask=True))
    alone.connect_predictor(dpx.load_predictor(session))
    alone.step()
    distance = float(np.linalg.norm(alone.sample["asked"] - alone.sample["ground_truth"]))
    print(f"asked from inside step(): {alone.sample['asked']}, true mean {alone.sample['ground_truth']}")
    return distance, asked_in_training


if __name__ == "__main__":  # worker processes import this script again: the guard keeps them from running it
    main(**arguments())
