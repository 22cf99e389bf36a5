"""Fuzzing a shared dataset: mutate a valid dataset.json and its partition files.

Whatever the mutation, opening, reading, iterating and resuming either work on
data the files really hold or raise the storage's error: never another
exception, never a crash, never a read or write outside the dataset folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpx.core.database import Database
from dpx.core.storage import MemmapStorage, StorageError

FIELDS = {"input": (np.float32, (4, 3)), "ground_truth": (np.float64, (2,))}
COUNT = 25
#: Names aimed at the folder beside the dataset, and names no filesystem likes.
HOSTILE_NAMES = ["../outside", "../../outside", "..", ".", "", "a/b", "/tmp", "input\x00", "training", "input", "ok"]
DTYPES = ["|O", "<f2", "<f4", "<f8", "<i4", "<i8", "|b1", "<c8", "<U4", "|S3", "|V8", "<M8[s]", "(2,)<f4", "f4,f4", "?"]


def build_template(folder: Path) -> None:
    """25 samples whose every value is their index, in 10-sample input partitions."""
    with MemmapStorage(folder, readonly=False, max_file_bytes=480, commit_interval=0) as storage:
        storage.add_mode("training", FIELDS)
        ids = np.arange(COUNT)
        storage.append("training", {
            "input": np.broadcast_to(ids[:, None, None], (COUNT, 4, 3)).astype(np.float32),
            "ground_truth": np.broadcast_to(ids[:, None], (COUNT, 2)).astype(np.float64),
        })


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=6))
names = st.one_of(st.sampled_from(HOSTILE_NAMES), st.text(max_size=8))
dims = st.integers(-3, 2**40)
shapes = st.one_of(st.lists(st.integers(-2, 30), max_size=4), st.lists(dims, max_size=3), json_scalars)
counts = st.one_of(st.integers(-3, 60), st.sampled_from([2**40, 2**63]), json_scalars)


@st.composite
def index_mutations(draw):
    """A function changing a parsed dataset.json in place."""
    kind = draw(st.sampled_from(["rename_field", "rename_mode", "dtype", "shape", "partition_samples", "count",
                                 "closed", "drop_key", "version", "replace_fields", "metadata"]))
    field = draw(st.sampled_from(list(FIELDS)))
    value = draw({
        "rename_field": names, "rename_mode": names, "dtype": st.one_of(st.sampled_from(DTYPES), json_scalars),
        "shape": shapes, "partition_samples": st.one_of(st.integers(-2, 40), json_scalars), "count": counts,
        "closed": json_scalars, "drop_key": st.sampled_from(["dtype", "shape", "partition_samples", "count", "fields"]),
        "version": json_scalars, "replace_fields": json_scalars,
        "metadata": st.one_of(json_scalars, st.just({"normalization": {"input": {"count": 3, "mean": [[1]], "m2": 2}}})),
    }[kind])

    def mutate(index: dict) -> None:
        mode = index["modes"].get("training")
        if mode is None:
            return
        fields = mode["fields"] if isinstance(mode.get("fields"), dict) else {}
        if kind == "rename_field" and field in fields:
            fields[value] = fields.pop(field)
        elif kind == "rename_mode":
            index["modes"][value] = index["modes"].pop("training")
        elif kind in ("dtype", "shape", "partition_samples") and isinstance(fields.get(field), dict):
            fields[field][kind] = value
        elif kind == "count":
            mode["count"] = value
        elif kind == "closed":
            index["closed"] = value
        elif kind == "drop_key":
            target = mode if value in ("count", "fields") else fields.get(field, {})
            target.pop(value, None)
        elif kind == "version":
            index["version"] = value
        elif kind == "replace_fields":
            mode["fields"] = value
        elif kind == "metadata":
            index["metadata"] = value

    return mutate


@st.composite
def file_mutations(draw):
    """A function changing the partition files of a dataset folder."""
    kind = draw(st.sampled_from(["delete", "truncate", "extend", "link", "extra", "folder", "fifo"]))
    field = draw(st.sampled_from(list(FIELDS)))
    part = draw(st.integers(0, 3))
    size = draw(st.integers(0, 600))

    def mutate(dataset: Path, outside: Path) -> None:
        path = dataset / "training" / field / f"{part:05d}.raw"
        plain = path.is_file() and not path.is_symlink()
        if kind in ("delete", "link", "folder", "fifo") and path.is_dir() and not path.is_symlink():
            path.rmdir()
        if kind == "delete":
            path.unlink(missing_ok=True)
        elif kind == "truncate" and plain:
            os.truncate(path, min(size, path.stat().st_size))
        elif kind == "extend" and plain:
            with open(path, "ab") as file:
                file.write(b"\xff" * size)
        elif kind == "link":
            path.unlink(missing_ok=True)
            path.symlink_to(outside / "00000.raw")
        elif kind == "extra" and path.parent.is_dir():
            (dataset / "training" / field / f"{part + 10:05d}.raw").write_bytes(b"\x01" * size)
        elif kind == "folder":
            path.unlink(missing_ok=True)
            path.mkdir()
        elif kind == "fifo":  # opening a FIFO to read blocks until someone writes: a hang
            path.unlink(missing_ok=True)
            os.mkfifo(path)

    return mutate


def expected_bytes(dataset: Path, mode: str, name: str, layout, count: int) -> bytes:
    """What reading samples 0..count-1 must return: the partition bytes the layout points at."""
    size, per = layout.sample_bytes, layout.partition_samples
    chunks = []
    for part in range(-(-count // per)):
        data = (dataset / mode / name / f"{part:05d}.raw").read_bytes()
        chunks.append(data[: min(per, count - part * per) * size])
    return b"".join(chunks)


def check_reads(dataset: Path) -> None:
    """Open and read everything; what a read returns must be the bytes the layout points at."""
    try:
        storage = MemmapStorage(dataset)
        for mode in storage.modes:
            count = storage.count(mode)
            for name, layout in storage.layout(mode).items():
                values = storage.read(mode, name, np.arange(count))
                assert values.dtype == layout.dtype and values.shape == (count, *layout.shape)
                assert not os.path.islink(dataset / mode / name / "00000.raw"), "a link was followed"
                assert values.tobytes() == expected_bytes(dataset, mode, name, layout, count)
                if storage.index.get("closed") is True and count:
                    last = (count - 1) // layout.partition_samples
                    tail = (count - last * layout.partition_samples) * layout.sample_bytes
                    assert (dataset / mode / name / f"{last:05d}.raw").stat().st_size == tail, "bytes past the count"
        storage.close()
        with Database(dataset, readonly=True) as database:
            for mode in database.modes:
                for batch in database.batches(mode, batch_size=8, shuffle=True):
                    assert all(len(values) <= 8 for values in batch.values())
    except StorageError:
        pass


def check_resume(dataset: Path) -> None:
    """A writer opens the dataset, appends one batch of its own layout, closes; it then reads back."""
    try:
        with MemmapStorage(dataset, readonly=False, max_file_bytes=480) as storage:
            for mode in storage.modes:
                layout = storage.layout(mode)
                if layout and all(f.sample_bytes <= 1 << 16 for f in layout.values()):
                    storage.append(mode, {name: np.zeros((3, *f.shape), f.dtype) for name, f in layout.items()})
    except StorageError:
        return
    reread = MemmapStorage(dataset)
    for mode in reread.modes:
        for name in reread.layout(mode):
            reread.read(mode, name, np.arange(reread.count(mode)))


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("template")
    build_template(folder)
    return folder


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(index_mutations(), max_size=3), st.lists(file_mutations(), max_size=2))
def test_mutated_datasets_work_or_raise_the_storage_error(template, index_changes, file_changes):
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        dataset, outside = work / "session" / "dataset", work / "session" / "outside"
        shutil.copytree(template, dataset, symlinks=True)
        # files named like partitions beside the dataset: hostile names point here
        outside.mkdir()
        victims = {outside / f"{part:05d}.raw": bytes([part + 1]) * 1000 for part in range(4)}
        for path, content in victims.items():
            path.write_bytes(content)
        index = json.loads((dataset / "dataset.json").read_text())
        for change in index_changes:
            change(index)
        (dataset / "dataset.json").write_text(json.dumps(index))
        for change in file_changes:
            change(dataset, outside)

        check_reads(dataset)
        check_resume(dataset)

        assert sorted(outside.iterdir()) == sorted(victims), "a file outside the dataset was created or deleted"
        for path, content in victims.items():
            assert path.read_bytes() == content, f"{path} outside the dataset was modified"
        assert sorted(p.name for p in work.iterdir()) == ["session"]

