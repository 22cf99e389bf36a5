"""load_samples: the environment steps on stored samples instead of drawing its own.

Prediction replays the stored validation clouds through the environment (it
moves each stored cloud a little): the network's error in the simulation is
measured on a fixed, reproducible set. Training can feed its stored batches
the same way (``only_first_epoch`` as in DeepPhysX).

    python examples/features/load_samples.py [--quick]
"""

import dpx
from common import NETWORK, arguments, dataset, environment, trained


def main(out: str = "sessions/features", quick: bool = False) -> tuple:
    session = trained(out, quick)
    stored = dpx.DatabaseConfig(existing_dir=str(dataset(out, quick)), mode="validation")
    replayed = dpx.Prediction(NETWORK, environment(load_samples=True), stored, session_dir=out,
                              session_name=session.name).execute()  # step_nb=-1: every stored sample once
    print(f"replaying the validation set: {replayed}")
    fed = dpx.Training(NETWORK, dpx.DatabaseConfig(existing_dir=str(dataset(out, quick)), normalize=True),
                       environment(load_samples=True), session_dir=out, session_name="fed", epoch_nb=2,
                       batch_size=64).execute()
    print(f"training on stored clouds moved by the environment in the first epoch: {fed}")
    return replayed, fed


if __name__ == "__main__":
    main(**arguments())
