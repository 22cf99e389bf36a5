"""Step 4: train the network on the stored dataset.

The network and its checkpoints go to ``sessions/tutorial/spring_fc``.

    python examples/tutorial/t4_offline_training.py
"""

import sys

import dpx
from t2_configuration import NETWORK


def main(out: str = "sessions/tutorial", quick: bool = False):
    dataset = dpx.DatabaseConfig(existing_dir=f"{out}/spring", normalize=True)
    summary = dpx.Training(NETWORK, dataset, session_dir=out, session_name="spring_fc", new_session=False,
                           epoch_nb=3 if quick else 30, batch_size=64, seed=0).execute()
    print(summary)
    return summary


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
