"""Validation: a validation mode in the dataset gives a validation loss after every epoch.

    python examples/features/validation.py [--quick]
"""

import dpx
from common import NETWORK, arguments, dataset
from dpx.core.stats import read_csv_curves


def main(out: str = "sessions/features", quick: bool = False) -> list[tuple[int, float]]:
    data = dataset(out, quick)  # holds 'training' and 'validation' samples
    with dpx.open_database(data) as database:
        print(f"{database.count('training')} training and {database.count('validation')} validation samples")
    summary = dpx.Training(NETWORK, dpx.DatabaseConfig(existing_dir=str(data), normalize=True), session_dir=out,
                           session_name="validated", epoch_nb=3 if quick else 10, batch_size=64).execute()
    curve = read_csv_curves(summary.session_path / "stats")["loss/validation"]
    for epoch, loss in curve:
        print(f"epoch {epoch}: validation loss {loss:.3g}")
    return curve


if __name__ == "__main__":
    main(**arguments())
