"""Step 5 (another way): train while the simulation produces the samples.

No dataset is needed beforehand: the first epoch trains on batches as they
are produced (and stores them in the session), later epochs re-read them.

    python examples/tutorial/t5_online_training.py
"""

import sys

import dpx
from t2_configuration import DATABASE, ENVIRONMENT, NETWORK, batches


def main(out: str = "sessions/tutorial", quick: bool = False):
    summary = dpx.Training(NETWORK, DATABASE, ENVIRONMENT, session_dir=out, session_name="spring_online",
                           epoch_nb=3 if quick else 30, **batches(quick)).execute()
    print(summary)
    return summary


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
