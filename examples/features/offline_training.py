"""Offline training: an FC network on a stored dataset.

    python examples/features/offline_training.py [--quick]
"""

import dpx
from common import NETWORK, arguments, dataset


def main(out: str = "sessions/features", quick: bool = False):
    data = dataset(out, quick)
    summary = dpx.Training(NETWORK, dpx.DatabaseConfig(existing_dir=str(data), normalize=True), session_dir=out,
                           session_name="offline", epoch_nb=2 if quick else 10, batch_size=64).execute()
    print(summary)
    return summary


if __name__ == "__main__":
    main(**arguments())
