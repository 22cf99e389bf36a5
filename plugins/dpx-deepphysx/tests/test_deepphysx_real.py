"""Against the real thing: sessions written by DeepPhysX 22.12.1 itself (shared/deepphysx, see its README).

Skipped with a reason where the shared folder is absent; the same format facts
are covered everywhere by the tests on the dataset written in conftest.py.
"""

from __future__ import annotations

import json
import pickle
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

import dpx
from dpx.core.storage import MemmapStorage


def sqlite_rows(dataset, partition: str, table: str, column: str) -> list[np.ndarray]:
    """The rows as DeepPhysX reads them (plain pickle.loads: the shared fixture is trusted, a user's file is not)."""
    with sqlite3.connect(dataset / f"{partition}.db") as connection:
        return [pickle.loads(blob) for (blob,) in connection.execute(f'SELECT "{column}" FROM "{table}" ORDER BY id')]


def check_against_sqlite(read, dataset) -> None:
    """Every sample of ``read(mode, field)`` is the SQLite row's array, and ground_truth == input.mean(axis=0)."""
    index = json.loads((dataset / "dataset.json").read_text())
    for mode, partitions in index["partitions"].items():
        tables = {"input": "training", "ground_truth": "training", "sample_index": "additional"}
        for name, table in tables.items():
            rows = [row for partition in partitions for row in sqlite_rows(dataset, partition, table, name)]
            values = read(mode, name) if partitions else []
            assert len(values) == len(rows) == sum(index["nb_samples"][mode])
            for sample, row in zip(values, rows):
                np.testing.assert_array_equal(sample, row)
        if partitions:
            for points, mean in zip(read(mode, "input"), read(mode, "ground_truth")):
                np.testing.assert_array_equal(mean, points.mean(axis=0))


def test_the_backend_reads_the_real_dataset_as_its_sqlite_rows(real_sessions):
    dataset = real_sessions / "deepphysx_mean" / "dataset"
    with dpx.open_database(real_sessions / "deepphysx_mean", storage="deepphysx") as database:
        assert database.modes == ["training", "validation"]
        assert (database.count("training"), database.count("validation")) == (48, 16)
        check_against_sqlite(lambda mode, name: database.read(mode, [name])[name], dataset)
        np.testing.assert_array_equal(database.read("training", ["sample_index"])["sample_index"].ravel(), np.arange(48))


def test_training_runs_on_the_real_dataset_directly(real_sessions, tmp_path):
    pytest.importorskip("dpx_torch")
    summary = dpx.Training(
        dpx.NetworkConfig(network_class="fc", network_kwargs={"dim_layers": [30, 16, 3], "activation": "prelu"}),
        dpx.DatabaseConfig(existing_dir=str(real_sessions / "deepphysx_mean"), storage="deepphysx", normalize=True),
        session_dir=str(tmp_path), session_name="dpx_on_deepphysx", epoch_nb=2, batch_size=16, progress=False,
    ).execute()
    assert summary.steps == 6 and np.isfinite(summary.loss) and np.isfinite(summary.validation_loss)


def test_the_imported_session_holds_the_data_and_predicts_as_deepphysx(real_sessions, tmp_path):
    pytest.importorskip("dpx_torch")
    out = tmp_path / "sessions" / "mean_fc"
    imported = subprocess.run(
        [sys.executable, "-m", "dpx", "import", "deepphysx", str(real_sessions / "deepphysx_mean_fc"),
         "--dataset", str(real_sessions / "deepphysx_mean"), "--out", str(out)],
        capture_output=True, text=True, check=False,
    )
    assert imported.returncode == 0, imported.stderr
    assert "not converted" not in imported.stdout
    assert "network: network.pth (DeepPhysX FC [30, 16, 3], PReLU)" in imported.stdout
    with MemmapStorage(out / "dataset") as stored:
        check_against_sqlite(lambda mode, name: stored.read(mode, name, np.arange(stored.count(mode))),
                             real_sessions / "deepphysx_mean" / "dataset")
    expected = np.load(real_sessions / "expected_predictions.npz")
    predictor = dpx.load_predictor(out)
    got = np.stack([predictor({"input": x})["prediction"] for x in expected["input"]])
    np.testing.assert_allclose(got, expected["prediction"], rtol=1e-5, atol=1e-6)

    config = tmp_path / "predict.toml"
    config.write_text(
        '[environment]\nenvironment_class = "toy.mean"\nenv_kwargs = {n_points = 10, dim = 3}\n\n'
        f'[network]\nnetwork_class = "fc"\n\n[pipeline]\nsession_dir = "{out.parent}"\nsession_name = "mean_fc"\n'
        "step_nb = 5\n"
    )
    predicted = subprocess.run([sys.executable, "-m", "dpx", "predict", str(config), "--no-progress"],
                               capture_output=True, text=True, check=False, cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    assert "5 prediction steps" in predicted.stdout
