"""What the feature examples share: the sessions folder, the dataset and the network."""

from __future__ import annotations

import sys
from pathlib import Path

import dpx
from mean_environment import MeanEnvironment

#: The network of every example: 90 inputs (30 points), 3 outputs (their mean).
NETWORK = dpx.NetworkConfig("fc", network_kwargs={"hidden": [64, 64]}, lr=1e-3)


def arguments() -> dict:
    """``python example.py [--quick]``: a smaller run, as the tests make."""
    return {"quick": "--quick" in sys.argv[1:]}


def environment(**options) -> dpx.EnvironmentConfig:
    return dpx.EnvironmentConfig(MeanEnvironment, seed=0, **options)


def sizes(quick: bool) -> tuple[int, int]:
    """``(batch_nb, batch_size)`` of a dataset."""
    return (4, 32) if quick else (100, 64)


def dataset(out: str, quick: bool) -> Path:
    """The session ``out/dataset`` of training and validation samples, made by the first example that needs it."""
    session = Path(out) / "dataset"
    if (session / "dataset" / "dataset.json").exists():
        return session
    batch_nb, batch_size = sizes(quick)
    for mode, count in (("training", batch_nb), ("validation", max(1, batch_nb // 5))):
        dpx.DataGeneration(environment(), dpx.DatabaseConfig(mode=mode, normalize=True), session_dir=out,
                           session_name="dataset", new_session=False, batch_nb=count, batch_size=batch_size,
                           progress=False).execute()
    return session


def trained(out: str, quick: bool) -> Path:
    """A network trained on :func:`dataset`, in ``out/network`` (trained once)."""
    session = Path(out) / "network"
    if not (session / "network" / "network.pt").exists():
        dpx.Training(NETWORK, dpx.DatabaseConfig(existing_dir=str(dataset(out, quick)), normalize=True),
                     session_dir=out, session_name="network", new_session=False, epoch_nb=2 if quick else 10,
                     batch_size=64, progress=False, seed=0).execute()
    return session
