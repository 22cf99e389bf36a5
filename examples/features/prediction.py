"""Prediction: the trained network inside the environment, recorded, then replayed without it.

``record=True`` stores each step's input, ground truth and prediction;
``replay`` runs the network again on them (to compare networks on the same
trajectories without the simulation).

    python examples/features/prediction.py [--quick]
"""

import dpx
from common import NETWORK, arguments, environment, trained
from dpx.core.prediction import replay


def main(out: str = "sessions/features", quick: bool = False) -> tuple:
    session = trained(out, quick)
    summary = dpx.Prediction(NETWORK, environment(), session_dir=out, session_name=session.name,
                             step_nb=20 if quick else 500, record=True).execute()
    print(summary)
    predictions, error = replay(session, NETWORK)
    print(f"replayed {len(predictions)} recorded steps: relative RMS error {100 * error.relative_error:.2f} %")
    return summary, error


if __name__ == "__main__":
    main(**arguments())
