"""Step 6: the trained network inside its simulation.

Each step the environment makes a sample, the network predicts the position
from its input, and the prediction goes back through ``apply_prediction``;
the summary gives the network's error against the solver and the time of each.

    python examples/tutorial/t6_prediction.py
"""

import sys

import dpx
from t2_configuration import ENVIRONMENT, NETWORK


def main(out: str = "sessions/tutorial", quick: bool = False):
    new_states = dpx.EnvironmentConfig(ENVIRONMENT.environment_class, env_kwargs=ENVIRONMENT.env_kwargs, seed=1)
    summary = dpx.Prediction(NETWORK, new_states, session_dir=out, session_name="spring_fc",
                             step_nb=50 if quick else 1000).execute()
    print(summary)
    return summary


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
