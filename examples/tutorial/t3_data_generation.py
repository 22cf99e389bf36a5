"""Step 3: generate a dataset from the simulation.

The samples go to ``sessions/tutorial/spring/dataset``. Interrupted (Ctrl-C),
the same command resumes: ``new_session=False`` completes the session.

    python examples/tutorial/t3_data_generation.py
    python -m dpx info sessions/tutorial/spring       # what was stored
"""

import sys

import dpx
from t2_configuration import DATABASE, ENVIRONMENT, batches


def main(out: str = "sessions/tutorial", quick: bool = False):
    summary = dpx.DataGeneration(ENVIRONMENT, DATABASE, session_dir=out, session_name="spring", new_session=False,
                                 **batches(quick)).execute()
    print(summary)
    return summary


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
