"""Online training: the environment produces the samples while the network trains on them.

The first epoch trains on batches as they are produced (and stores them),
later epochs re-read them; ``always_produce=True`` would keep producing.

    python examples/features/online_training.py [--quick]
"""

import dpx
from common import NETWORK, arguments, environment, sizes


def main(out: str = "sessions/features", quick: bool = False):
    batch_nb, batch_size = sizes(quick)
    summary = dpx.Training(NETWORK, dpx.DatabaseConfig(normalize=True), environment(), session_dir=out,
                           session_name="online", epoch_nb=2 if quick else 10, batch_nb=batch_nb,
                           batch_size=batch_size).execute()
    print(summary)
    return summary


if __name__ == "__main__":
    main(**arguments())
