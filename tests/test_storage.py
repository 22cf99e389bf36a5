"""The memmap storage: round trips, partitions, crash safety, concurrent readers, damage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from dpx.core.storage import CorruptDatasetError, MemmapStorage, StorageError

FIELDS = {"input": (np.float32, (4, 3)), "ground_truth": (np.float64, (2,))}


def batch(start: int, count: int) -> dict[str, np.ndarray]:
    """Samples whose every value is their own index, so any mix-up shows."""
    ids = np.arange(start, start + count)
    return {
        "input": np.broadcast_to(ids[:, None, None], (count, 4, 3)).astype(np.float32),
        "ground_truth": np.broadcast_to(ids[:, None], (count, 2)).astype(np.float64),
    }


def test_round_trip_across_partitions(tmp_path):
    # 48-byte input samples in 100-byte partitions: 2 samples per partition file
    with MemmapStorage(tmp_path, readonly=False, max_file_bytes=100, commit_interval=0) as storage:
        storage.add_mode("training", FIELDS)
        for start in range(0, 23, 5):
            storage.append("training", {k: v[: min(5, 23 - start)] for k, v in batch(start, 5).items()})
    assert len(list((tmp_path / "training" / "input").glob("*.raw"))) == 12
    reader = MemmapStorage(tmp_path)
    assert reader.count("training") == 23
    indices = np.random.default_rng(0).permutation(23)
    assert np.array_equal(reader.read("training", "input", indices)[:, 0, 0], indices)
    assert np.array_equal(reader.read("training", "ground_truth", indices)[:, 1], indices)
    with pytest.raises(IndexError, match="23 committed"):
        reader.read("training", "input", [23])


def test_samples_are_invisible_until_committed(tmp_path):
    writer = MemmapStorage(tmp_path, readonly=False, commit_interval=3600)
    writer.add_mode("training", FIELDS)
    writer.append("training", batch(0, 4))
    writer.commit()  # within the interval: deferred
    assert MemmapStorage(tmp_path).count("training") == 0
    writer.commit(force=True)
    assert MemmapStorage(tmp_path).count("training") == 4
    writer.close()


def test_second_writer_is_refused_and_mismatched_fields_too(tmp_path):
    with MemmapStorage(tmp_path, readonly=False) as storage:
        storage.add_mode("training", FIELDS)
        with pytest.raises(StorageError, match="being written by another process"):
            MemmapStorage(tmp_path, readonly=False)
    with MemmapStorage(tmp_path, readonly=False) as storage:
        with pytest.raises(StorageError, match=r"stores fields input float32 \(4, 3\)"):
            storage.add_mode("training", {"input": (np.float32, (5, 3)), "ground_truth": (np.float64, (2,))})
        with pytest.raises(StorageError, match="needs fields"):
            storage.append("training", {"input": batch(0, 2)["input"]})


WRITER = """
import sys, time
import numpy as np
from dpx.core.storage import MemmapStorage
sys.path.insert(0, {tests!r})
from test_storage import FIELDS, batch
storage = MemmapStorage({path!r}, readonly=False, max_file_bytes=4000, commit_interval=0)
storage.add_mode("training", FIELDS)
start = storage.count("training")
print("ready", flush=True)
while True:
    storage.append("training", batch(start, 7))
    storage.commit()
    start += 7
"""


def start_writer(path) -> subprocess.Popen:
    code = textwrap.dedent(WRITER).format(path=str(path), tests=os.path.dirname(__file__))
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    return process


def wait_for_samples(path, count: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if MemmapStorage(path).count("training") >= count:
                return
        except StorageError:
            pass
        time.sleep(0.01)
    raise AssertionError(f"the writer did not reach {count} samples")


def test_writer_killed_mid_run_leaves_only_whole_samples(tmp_path):
    writer = start_writer(tmp_path)
    wait_for_samples(tmp_path, 2000)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    reader = MemmapStorage(tmp_path)
    count = reader.count("training")
    assert count >= 2000 and count % 7 == 0
    everything = np.arange(count)
    assert np.array_equal(reader.read("training", "input", everything)[:, :, :].reshape(count, -1).max(axis=1), everything)
    assert np.array_equal(reader.read("training", "ground_truth", everything)[:, 0], everything)
    # a new writer drops the uncommitted tail and continues seamlessly
    with MemmapStorage(tmp_path, readonly=False, max_file_bytes=4000) as storage:
        storage.append("training", batch(count, 3))
    reader = MemmapStorage(tmp_path)
    assert reader.count("training") == count + 3
    assert np.array_equal(reader.read("training", "input", np.arange(count + 3))[:, 3, 2], np.arange(count + 3))


def test_reader_sees_the_count_grow_while_a_writer_appends(tmp_path):
    writer = start_writer(tmp_path)
    try:
        wait_for_samples(tmp_path, 7)
        reader = MemmapStorage(tmp_path)
        seen = [reader.count("training")]
        while len(set(seen)) < 4:
            reader.refresh()
            count = reader.count("training")
            seen.append(count)
            values = reader.read("training", "ground_truth", np.arange(count))[:, 0]
            assert np.array_equal(values, np.arange(count)), "a reader saw a half-written sample"
    finally:
        writer.kill()
        writer.wait()
    assert seen == sorted(seen)


def test_truncated_partition_names_the_file_and_keeps_the_rest_readable(tmp_path):
    with MemmapStorage(tmp_path, readonly=False, max_file_bytes=480, commit_interval=0) as storage:
        storage.add_mode("training", FIELDS)
        storage.append("training", batch(0, 30))  # input: 10 samples per partition
    damaged = tmp_path / "training" / "input" / "00001.raw"
    os.truncate(damaged, 100)
    reader = MemmapStorage(tmp_path)
    assert np.array_equal(reader.read("training", "input", [0, 9, 25])[:, 0, 0], [0, 9, 25])
    with pytest.raises(CorruptDatasetError, match=r"00001.raw is truncated: 100 bytes where 480 are committed"):
        reader.read("training", "input", [12])
    with pytest.raises(CorruptDatasetError, match="00001.raw is truncated"):
        MemmapStorage(tmp_path, readonly=False)


def test_corrupt_index_is_reported_and_the_previous_one_recovers(tmp_path):
    with MemmapStorage(tmp_path, readonly=False, commit_interval=0) as storage:
        storage.add_mode("training", FIELDS)
        storage.append("training", batch(0, 5))
        storage.commit()
        storage.append("training", batch(5, 5))
    (tmp_path / "dataset.json").write_text('{"format": "dpx-dataset", "modes": {')
    with pytest.raises(CorruptDatasetError, match=r"dataset.json is unreadable.*previous index .* intact \(training: 5 samples\)"):
        MemmapStorage(tmp_path)
    recovered = MemmapStorage(tmp_path, recover=True)
    assert recovered.count("training") == 5
    assert np.array_equal(recovered.read("training", "input", np.arange(5))[:, 0, 0], np.arange(5))


def test_index_holds_no_pickles_and_readable_dtypes(tmp_path):
    with MemmapStorage(tmp_path, readonly=False) as storage:
        storage.add_mode("training", FIELDS)
        storage.append("training", batch(0, 2))
    index = json.loads((tmp_path / "dataset.json").read_text())
    assert index["modes"]["training"]["fields"]["input"] == {"dtype": "<f4", "shape": [4, 3], "partition_samples": 250_000_000 // 48}


def test_a_refused_batch_leaves_no_bytes_behind(tmp_path):
    with MemmapStorage(tmp_path, readonly=False, commit_interval=0) as storage:
        storage.add_mode("training", FIELDS)
        storage.append("training", batch(0, 3))
        bad = batch(3, 2)
        bad["ground_truth"] = bad["ground_truth"][:, :1]  # the second field is refused after the first was checked
        with pytest.raises(StorageError, match=r"field 'ground_truth' has samples of shape \(1,\), not \(2,\)"):
            storage.append("training", bad)
        storage.append("training", batch(3, 2))
    reader = MemmapStorage(tmp_path)
    assert np.array_equal(reader.read("training", "input", np.arange(5))[:, 2, 1], np.arange(5))
