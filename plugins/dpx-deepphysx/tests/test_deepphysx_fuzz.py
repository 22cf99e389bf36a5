"""Fuzzing a shared DeepPhysX dataset: mutate dataset.json, the rows and the partition files.

Whatever the mutation, opening and reading through the deepphysx backend
either returns arrays of the declared layout or raises the storage's error:
never another exception, never code run from a pickle, nothing read or
written outside the dataset folder.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sqlite3
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpx.core.database import Database
from dpx.core.config import DatabaseConfig
from dpx.core.storage import StorageError

#: What the crafted pickle creates in the current folder (each example runs in its own) if it runs.
MARKER = "ran"
HOSTILE_NAMES = ["../outside/victim", "/tmp/victim", "..", ".", "", "a/b", "tiny_training_0.db", "tiny_training_1",
                 "input\x00", "ok", 'x"; DROP TABLE training; --']


class RunsCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


json_values = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=8),
                        st.lists(st.integers(-3, 2**40), max_size=4))
names = st.one_of(st.sampled_from(HOSTILE_NAMES), st.text(max_size=8))


@st.composite
def index_mutations(draw):
    """A function changing a parsed dataset.json in place."""
    kind = draw(st.sampled_from(["partition", "count", "column", "shape", "normalization", "drop", "replace"]))
    mode = draw(st.sampled_from(["training", "validation"]))
    value = draw({"partition": names, "count": json_values, "column": st.one_of(names.map(lambda n: f"{n} (NUMPY)"),
                                                                                 json_values, st.just("x (STR)")),
                  "shape": json_values, "normalization": json_values,
                  "drop": st.sampled_from(["partitions", "nb_samples", "architecture", "data_shape", "normalization"]),
                  "replace": json_values}[kind])

    def mutate(index: dict) -> None:
        try:
            change(index)
        except (KeyError, TypeError, AttributeError):
            pass  # an earlier mutation removed what this one changes

    def change(index: dict) -> None:
        if kind == "partition" and index["partitions"].get(mode):
            index["partitions"][mode][0] = value
        elif kind == "count" and index["nb_samples"].get(mode):
            index["nb_samples"][mode][0] = value
        elif kind == "column":
            index["architecture"]["Training"].append(value)
        elif kind == "shape":
            index["data_shape"]["Training.input"] = value
        elif kind == "normalization":
            index["normalization"]["input"] = value
        elif kind == "drop":
            index.pop(value, None)
        elif kind == "replace":
            index["architecture"] = value

    return mutate


def cell_values():
    arrays = st.sampled_from([np.zeros((4, 3)), np.zeros((4, 2)), np.zeros((4, 3), np.float32), np.zeros(3),
                              np.array([1, None], dtype=object), np.zeros(2, dtype=[("a", "<f4")])])
    evil = pickle.dumps(RunsCommand(f"touch {MARKER}"), protocol=2)
    return st.one_of(
        st.just(evil), st.just(evil.replace(b"cposix\nsystem", b"cos\nsystem")),
        arrays.map(lambda a: pickle.dumps(a, protocol=2)),
        st.binary(max_size=64), st.none(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=8), st.just(pickle.dumps({"a": 1})),
    )


@st.composite
def row_mutations(draw):
    """A function changing one cell, or the ids, of a partition."""
    partition = draw(st.sampled_from(["tiny_training_0", "tiny_training_1", "tiny_validation_0"]))
    table, column = draw(st.sampled_from([("training", "input"), ("training", "ground_truth"), ("training", "env_id"),
                                          ("additional", "sample_index"), ("training", "id")]))
    row = draw(st.integers(1, 3))
    value = draw(cell_values() if column != "id" else st.integers(-2, 9))
    truncate = draw(st.integers(0, 70000))
    kind = draw(st.sampled_from(["cell", "cell", "cell", "delete", "truncate", "link", "garbage"]))

    def mutate(dataset: Path, outside: Path) -> None:
        path = dataset / f"{partition}.db"
        if path.is_symlink():  # an earlier mutation linked it outside: the fuzzer itself writes nothing there
            return
        if kind in ("cell", "delete"):
            connection = sqlite3.connect(path)
            try:
                with connection:
                    if kind == "delete":
                        connection.execute(f'DELETE FROM "{table}" WHERE id = ?', (row,))
                    else:
                        connection.execute(f'UPDATE "{table}" SET "{column}" = ? WHERE id = ?', (value, row))
            except sqlite3.Error:  # an earlier mutation damaged the file
                pass
            finally:
                connection.close()
        elif kind == "truncate":
            os.truncate(path, min(truncate, path.stat().st_size))
        elif kind == "link":
            path.unlink()
            path.symlink_to(outside / "victim.db")
        elif kind == "garbage":
            path.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 8)

    return mutate


@pytest.fixture(scope="module")
def template(tmp_path_factory, deepphysx_writer) -> Path:
    folder = tmp_path_factory.mktemp("template") / "dataset"
    deepphysx_writer(folder)
    return folder


def check_reads(dataset: Path) -> None:
    try:
        with Database(dataset, DatabaseConfig(storage="deepphysx"), readonly=True) as database:
            for mode in database.modes:
                layout = database.fields(mode)
                values = database.read(mode)
                for name, (dtype, shape) in layout.items():
                    assert values[name].dtype == dtype and values[name].shape == (database.count(mode), *shape)
                    assert dtype.kind in "biufc"
                for batch in database.batches(mode, batch_size=3, shuffle=True):
                    assert all(len(v) <= 3 for v in batch.values())
    except StorageError:
        pass


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow,
                                                                               HealthCheck.function_scoped_fixture])
@given(st.lists(index_mutations(), max_size=2), st.lists(row_mutations(), min_size=1, max_size=2))
def test_mutated_deepphysx_datasets_read_or_raise_the_storage_error(template, index_changes, row_changes):
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        dataset, outside = work / "session" / "dataset", work / "session" / "outside"
        shutil.copytree(template, dataset)
        outside.mkdir()
        shutil.copy(dataset / "tiny_training_0.db", outside / "victim.db")
        victim = (outside / "victim.db").read_bytes()
        index = json.loads((dataset / "dataset.json").read_text())
        for change in index_changes:
            change(index)
        (dataset / "dataset.json").write_text(json.dumps(index))
        for change in row_changes:
            change(dataset, outside)

        previous = os.getcwd()
        os.chdir(work)
        try:
            check_reads(dataset)
        finally:
            os.chdir(previous)

        assert not (work / MARKER).exists(), "a pickle ran a command"
        assert sorted(p.name for p in outside.iterdir()) == ["victim.db"]
        assert (outside / "victim.db").read_bytes() == victim
        assert sorted(p.name for p in work.iterdir()) == ["session"]
