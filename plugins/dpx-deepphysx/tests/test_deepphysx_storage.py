"""The deepphysx storage backend on a DeepPhysX-format dataset written by the tests (every machine)."""

from __future__ import annotations

import json
import os
import pickle
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

import dpx
from dpx.core.database import Database
from dpx.core.storage import CorruptDatasetError, StorageError
from dpx_deepphysx.unpickle import RefusedPickle, load_array


class RunsCommand:
    """A pickle that runs a shell command when loaded with pickle.loads."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def set_cell(dataset, partition: str, table: str, row: int, column: str, value) -> None:
    with sqlite3.connect(dataset / f"{partition}.db") as connection:
        connection.execute(f'UPDATE "{table}" SET "{column}" = ? WHERE id = ?', (value, row))


def test_every_mode_field_and_count_reads_as_written(tiny_dataset):
    session, written = tiny_dataset
    with dpx.open_database(session, storage="deepphysx") as database:
        assert database.modes == ["training", "validation"]
        assert {mode: database.count(mode) for mode in database.modes} == {"training": 8, "validation": 4}
        assert database.fields("training") == {"env_id": (np.dtype(np.int64), ()), "input": (np.dtype("<f8"), (4, 3)),
                                               "ground_truth": (np.dtype("<f8"), (3,)),
                                               "sample_index": (np.dtype("<i8"), (1,))}
        for mode, fields in written.items():
            read = database.read(mode)
            for name, values in fields.items():
                np.testing.assert_array_equal(read[name], values, err_msg=f"{mode}.{name}")
            np.testing.assert_allclose(read["ground_truth"], read["input"].mean(axis=1), rtol=1e-15)
        shuffled = [b["sample_index"].ravel().copy() for b in database.batches("training", 3, shuffle=True)]
        assert sorted(np.concatenate(shuffled).tolist()) == list(range(8))


def test_deepphysx_scalar_normalisation_is_broadcast_per_component(tiny_dataset):
    session, written = tiny_dataset
    stored = json.loads((session / "dataset" / "dataset.json").read_text())["normalization"]
    with dpx.open_database(session, storage="deepphysx") as database:
        moments = database.normalization
    for name in ("input", "ground_truth"):
        np.testing.assert_allclose(moments[name].mean, [stored[name][0]] * 3)
        np.testing.assert_allclose(moments[name].std, [stored[name][1]] * 3)
    assert moments["input"].count == 8 * 4 and moments["ground_truth"].count == 8


def test_pickles_of_numpy_1_and_2_load_and_anything_else_is_refused():
    arrays = [np.arange(6, dtype=">i4").reshape(2, 3), np.asfortranarray(np.ones((2, 3), np.float32)),
              np.zeros((0, 3)), np.array(3.5), np.array([True, False])]
    for protocol in (2, 3, 4, 5):
        for array in arrays:
            blob = pickle.dumps(array, protocol=protocol)
            # protocols 2 and 3 name globals as text lines: NumPy 1.x's module name can be put in
            for old_name in (blob, blob.replace(b"\nnumpy._core.", b"\nnumpy.core.").replace(b"cnumpy._core.", b"cnumpy.core.")
                             if protocol < 4 else blob):
                loaded = load_array(old_name)
                assert loaded.dtype == array.dtype and loaded.shape == array.shape and (loaded == array).all()
    refused = [pickle.dumps(np.array([1, None], dtype=object), protocol=2), pickle.dumps({"a": 1}),
               pickle.dumps(np.zeros(2, dtype=[("a", "<f4")]), protocol=2), pickle.dumps(np.ma.zeros(2), protocol=2),
               pickle.dumps(print, protocol=2)]
    for blob in refused:
        with pytest.raises(RefusedPickle):
            load_array(blob)


def test_a_crafted_pickle_is_refused_naming_partition_table_and_row_and_runs_nothing(tiny_dataset, tmp_path):
    session, _ = tiny_dataset
    marker = tmp_path / "ran"
    evil = pickle.dumps(RunsCommand(f"touch {marker}"), protocol=2)
    # the crafted pickle is real: plain pickle.loads runs it
    subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"], input=evil,
                   check=True)
    assert marker.exists()
    marker.unlink()
    set_cell(session / "dataset", "tiny_training_1", "training", 2, "input", evil)
    with dpx.open_database(session, storage="deepphysx") as database:
        with pytest.raises(CorruptDatasetError, match=r"tiny_training_1\.db: table 'training', row 2, field 'input': "
                                                      r"refused \(it names posix\.system.*nothing in it was run"):
            database.read("training", ["input"])
        np.testing.assert_array_equal(database.read("validation", ["input"])["input"].shape, (4, 4, 3))
    assert not marker.exists()


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: set_cell(d, "tiny_training_0", "training", 3, "input", pickle.dumps(np.zeros((4, 2)), protocol=2)),
     r"row 3, field 'input': an array of shape \(4, 2\) where dataset.json declares \(4, 3\)"),
    (lambda d: set_cell(d, "tiny_training_0", "training", 3, "input", pickle.dumps(np.zeros((4, 3), np.float32))),
     r"row 3, field 'input': an array of float32 where the field's first sample is float64"),
    (lambda d: set_cell(d, "tiny_training_0", "additional", 4, "sample_index", b"\x80\x02garbage"),
     r"tiny_training_0\.db: table 'additional', row 4, field 'sample_index': refused"),
    (lambda d: set_cell(d, "tiny_training_0", "training", 5, "env_id", "one"), r"row 5, field 'env_id': 'one' is not a INT"),
])
def test_damaged_rows_are_refused_when_read(tiny_dataset, change, message):
    session, _ = tiny_dataset
    change(session / "dataset")
    with dpx.open_database(session, storage="deepphysx") as database:
        with pytest.raises(CorruptDatasetError, match=message):
            database.read("training")


def edit_index(dataset, edit) -> None:
    index = json.loads((dataset / "dataset.json").read_text())
    edit(index)
    (dataset / "dataset.json").write_text(json.dumps(index))


@pytest.mark.parametrize(("edit", "message"), [
    (lambda i: i["partitions"].update(training=["../outside", "tiny_training_1"]), r"partition '../outside' of mode "
     r"'training' is not a plain file name"),
    (lambda i: i["nb_samples"].update(training=[5, 4]), r"tiny_training_1\.db: table 'training' holds 3 rows \(ids 1..3\) "
     r"where dataset.json declares 4 samples"),
    (lambda i: i["architecture"]["Training"].append("os.system (NUMPY)"), r"lists 'os.system \(NUMPY\)', not 'name \(TYPE\)'"),
    (lambda i: i["architecture"]["Training"].append("velocity (NUMPY)"), r"table 'training' has no column 'velocity'"),
    (lambda i: i["normalization"].update(input=[0.0, float("nan")]), r"'normalization.input' is \[0.0, nan\]"),
    (lambda i: i["partitions"].update(testing=[]), r"unknown mode 'testing'"),
])
def test_a_damaged_dataset_json_is_refused_when_opened(tiny_dataset, edit, message):
    session, _ = tiny_dataset
    edit_index(session / "dataset", edit)
    with pytest.raises(CorruptDatasetError, match=message):
        dpx.open_database(session, storage="deepphysx")


def test_nothing_is_allocated_for_more_data_than_the_files_hold(tiny_dataset):
    session, _ = tiny_dataset
    dataset = session / "dataset"
    set_cell(dataset, "tiny_training_0", "training", 1, "input", pickle.dumps(np.zeros((4, 30000)), protocol=2))
    edit_index(dataset, lambda index: index["data_shape"].update({"Training.input": [4, 30000]}))
    with pytest.raises(CorruptDatasetError, match=r"tiny_training_0\.db holds \d+ bytes, fewer than the 4800\d+ bytes of "
                                                  r"array data that 5 samples"):
        dpx.open_database(session, storage="deepphysx")


def test_no_link_is_followed_out_of_the_dataset(tiny_dataset, tmp_path):
    session, _ = tiny_dataset
    outside = tmp_path / "outside.db"
    os.replace(session / "dataset" / "tiny_validation_0.db", outside)
    (session / "dataset" / "tiny_validation_0.db").symlink_to(outside)
    with pytest.raises(CorruptDatasetError, match=r"tiny_validation_0\.db cannot be opened .*never through a link"):
        dpx.open_database(session, storage="deepphysx")
    training = tmp_path / "training_session"
    training.mkdir()
    (training / "dataset").symlink_to(session / "dataset")
    with pytest.raises(StorageError, match=r"dataset is a link to .*name the dataset itself"):
        dpx.open_database(training, storage="deepphysx")


def test_the_backend_is_read_only(tiny_dataset):
    session, _ = tiny_dataset
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (session / "dataset").iterdir())
    with pytest.raises(StorageError, match=r"read-only; convert it with `python -m dpx import deepphysx PATH`"):
        Database(session / "dataset", dpx.DatabaseConfig(storage="deepphysx"))
    with dpx.open_database(session, storage="deepphysx") as database:
        database.read("training")
        with pytest.raises(StorageError, match="read-only"):
            database.append("training", database.read("training", indices=[0]))
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (session / "dataset").iterdir()) == before


def test_training_runs_on_a_deepphysx_dataset_as_it_is(tiny_dataset, tmp_path):
    pytest.importorskip("dpx_torch")
    session, _ = tiny_dataset
    stored = json.loads((session / "dataset" / "dataset.json").read_text())["normalization"]
    training = dpx.Training(
        dpx.NetworkConfig(network_class="fc", network_kwargs={"hidden": [8], "activation": "prelu"}),
        dpx.DatabaseConfig(existing_dir=str(session), storage="deepphysx", normalize=True),
        session_dir=str(tmp_path / "sessions"), session_name="on_deepphysx", epoch_nb=2, batch_size=4, progress=False,
    )
    summary = training.execute()
    assert summary.validation_loss is not None and np.isfinite(summary.validation_loss)
    import torch

    extra = torch.load(training.session_path / "network" / "network.pt", weights_only=True)["extra"]
    assert extra["normalization"]["input"] == {"mean": [stored["input"][0]] * 3, "std": [pytest.approx(stored["input"][1])] * 3}


def test_the_plugin_module_is_light_and_registers_the_backend():
    import dpx.testing
    from dpx.plugins import Plugins

    dpx.testing.assert_light_import("dpx_deepphysx", heavy=["torch", "sqlite3", "dpx_deepphysx.storage"])
    info = Plugins(strict=True).plugins["deepphysx"]
    assert info.status == "ok" and set(info.provides["storage_backends"]) == {"deepphysx"}
    assert set(info.provides["importers"]) == {"deepphysx"}
