"""DeepPhysX-format datasets for the tests: the real sessions in shared/ and a small one written here.

The small dataset follows the format of the real one (dataset.json's keys,
SQLite tables ``training`` and ``additional`` with ids 1..n, arrays pickled
with protocol 2 as NumPy 1.x names them), so the backend is tested on every
machine, with or without the shared folder.
"""

from __future__ import annotations

import json
import os
import pickle
import sqlite3
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[3]
ARCHIVE = "deepphysx-22.12.1-sessions.tar.gz"


def shared_deepphysx() -> Path:
    """shared/deepphysx: $DPX_SHARED, else beside this checkout, else beside the main checkout of a worktree."""
    if os.environ.get("DPX_SHARED"):
        return Path(os.environ["DPX_SHARED"]) / "deepphysx"
    beside = ROOT.parent / "shared" / "deepphysx"
    if beside.is_dir():
        return beside
    try:
        common = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--path-format=absolute", "--git-common-dir"],
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return beside
    return Path(common).parent.parent / "shared" / "deepphysx"


def numpy1_pickle(array: np.ndarray) -> bytes:
    """``array`` pickled as DeepPhysX 22.12 with NumPy 1.x stores it (protocol 2, ``numpy.core.multiarray``)."""
    blob = pickle.dumps(array, protocol=2)
    return blob.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


SCHEMA = {
    "training": '("id" INTEGER NOT NULL PRIMARY KEY, "env_id" INTEGER, "input" NUMPY, "ground_truth" NUMPY)',
    "additional": '("id" INTEGER NOT NULL PRIMARY KEY, "env_id" INTEGER, "sample_index" NUMPY)',
}


def write_deepphysx_dataset(folder: Path, counts: dict[str, list[int]] | None = None, seed: int = 0,
                            session: str = "tiny") -> dict[str, dict[str, np.ndarray]]:
    """A DeepPhysX dataset of point clouds (4, 3) and their means; returns what it holds, by mode and field."""
    counts = counts or {"training": [5, 3], "validation": [4]}
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, dict[str, np.ndarray]] = {}
    partitions: dict[str, list[str]] = {"training": [], "validation": [], "prediction": []}
    for mode, sizes in counts.items():
        fields: dict[str, list] = {"env_id": [], "input": [], "ground_truth": [], "sample_index": []}
        for number, size in enumerate(sizes):
            name = f"{session}_{mode}_{number}"
            partitions[mode].append(name)
            connection = sqlite3.connect(folder / f"{name}.db")
            for table, columns in SCHEMA.items():
                connection.execute(f'CREATE TABLE "{table}" {columns}')
            for row in range(1, size + 1):
                cloud = np.pi * rng.random((4, 3))
                index = np.array([len(fields["input"])], dtype=np.int64)
                env_id = 1 + row % 2
                connection.execute('INSERT INTO training VALUES (?, ?, ?, ?)',
                                   (row, env_id, numpy1_pickle(cloud), numpy1_pickle(cloud.mean(axis=0))))
                connection.execute('INSERT INTO additional VALUES (?, ?, ?)', (row, env_id, numpy1_pickle(index)))
                for key, value in (("env_id", env_id), ("input", cloud), ("ground_truth", cloud.mean(axis=0)),
                                   ("sample_index", index)):
                    fields[key].append(value)
            connection.commit()
            connection.close()
        written[mode] = {key: np.array(values) for key, values in fields.items()}
    training = written["training"]
    index = {
        "partitions": partitions,
        "nb_samples": {mode: list(counts.get(mode, [])) for mode in partitions},
        "architecture": {"Additional": ["env_id (INT)", "sample_index (NUMPY)"],
                         "Training": ["env_id (INT)", "input (NUMPY)", "ground_truth (NUMPY)"]},
        "data_shape": {"Additional.sample_index": [1], "Training.input": [4, 3], "Training.ground_truth": [3]},
        "normalization": {name: [float(training[name].mean()), float(training[name].std())]
                          for name in ("input", "ground_truth")},
    }
    (folder / "dataset.json").write_text(json.dumps(index, indent=3))
    return written


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> tuple[Path, dict[str, dict[str, np.ndarray]]]:
    """A DeepPhysX session folder ``tiny`` with its dataset, and what the dataset holds."""
    session = tmp_path / "tiny"
    return session, write_deepphysx_dataset(session / "dataset")


@pytest.fixture(scope="module")
def real_sessions(tmp_path_factory) -> Path:
    """The real DeepPhysX 22.12.1 sessions, unpacked into a temporary folder (shared/ may be read-only)."""
    archive = shared_deepphysx() / ARCHIVE
    if not archive.is_file():
        pytest.skip(f"the real DeepPhysX sessions are not here ({archive}); set DPX_SHARED to the shared folder")
    folder = tmp_path_factory.mktemp("deepphysx")
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    return folder


@pytest.fixture(scope="session")
def deepphysx_writer():
    """:func:`write_deepphysx_dataset`, for tests that build their own (test modules do not import each other)."""
    return write_deepphysx_dataset


def write_fc_network(session: Path, dim_layers: list[int], seed: int = 0) -> dict:
    """A DeepPhysX FC's state dict (``linear.N.*``: Linear, PReLU, ..., Linear) saved as DeepPhysX saves it."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for number, (a, b) in enumerate(zip(dim_layers[:-1], dim_layers[1:])):
        state[f"linear.{2 * number}.weight"] = torch.randn(b, a, generator=generator)
        state[f"linear.{2 * number}.bias"] = torch.randn(b, generator=generator)
        if number < len(dim_layers) - 2:
            state[f"linear.{2 * number + 1}.weight"] = torch.rand(b, generator=generator)
    (session / "network").mkdir(parents=True, exist_ok=True)
    torch.save(state, session / "network" / "network.pth")
    (session / "info.txt").write_text(
        "## DeepPhysX Training Session ##\n\n# BaseTraining\n    Number of epochs: 3\n\n# NetworkManager\n"
        f"  FC\n    Name: FCNetwork\n    Type: FC\n    Layers dimensions: {dim_layers}\n"
    )
    return state


@pytest.fixture(scope="session")
def fc_writer():
    return write_fc_network
