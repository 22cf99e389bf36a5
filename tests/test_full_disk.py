"""A full disk, for real: `dpx generate` on a 1 MB tmpfs, the storage alone on 256 KB.

The tmpfs is mounted inside a private mount namespace (``unshare --mount``), so
it exists only for the processes of one scenario and disappears with them: no
mount is left behind even if the test is killed, and nothing else on the
machine sees it. Root may mount there; another user maps itself to root in a
user namespace (``--map-root-user``). The scenario runs in a driver process
inside the namespace and reports what it found as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

DRIVER = """
import json, subprocess, sys
from pathlib import Path

import pytest
import numpy as np
import dpx

SPRING = {spring!r}
work = Path({work!r})
report = {{}}


def mount(name, size="1m"):
    disk = work / name
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={{size}}", "tmpfs", str(disk)], check=True)
    return disk


def generate(cwd, *args):
    result = subprocess.run([sys.executable, "-m", "dpx", "generate", SPRING, *args, "--no-progress"],
                            capture_output=True, text=True, cwd=cwd)
    return {{"returncode": result.returncode, "stdout": result.stdout, "stderr": result.stderr}}


def describe(disk, count_reference):
    session = disk / "sessions" / "spring"
    database = dpx.open_database(session)
    count = database.count("training")
    reference = dpx.open_database(count_reference(count)).read("training", indices=range(count))
    stored = database.read("training")
    return {{
        "count": count,
        "partition_bytes": {{p.parent.name: p.stat().st_size for p in (session / "dataset" / "training").glob("*/*.raw")}},
        "sample_bytes": {{name: int(np.prod(shape)) * dtype.itemsize for name, (dtype, shape) in database.fields().items()}},
        "same_as_reference": all(np.array_equal(stored[name], reference[name]) for name in stored),
        "leftovers": sorted(str(p) for p in disk.rglob("*.tmp")),
    }}


def reference(count):
    # the same seed on a roomy disk: the samples a full disk kept must be these
    batches = -(-count // 64)
    result = generate(work, "pipeline.session_dir=ref", f"pipeline.session_name=ref{{batches}}", f"pipeline.batch_nb={{batches}}")
    assert result["returncode"] == 0, result
    return work / "ref" / f"ref{{batches}}"


# 1. generating more than fits stops with the whole samples that fitted committed
disk = mount("full")
report["stop"] = generate(disk, "pipeline.batch_nb=100000")
report["stop"].update(describe(disk, reference))

# 2. a killed writer's uncommitted tail filled the disk: a resume drops it first, then continues
disk = mount("tail")
assert generate(disk, "pipeline.batch_nb=10")["returncode"] == 0
dataset = disk / "sessions" / "spring" / "dataset"
index = json.loads((dataset / "dataset.json").read_text())
index["closed"] = False  # as a writer killed before closing leaves it
(dataset / "dataset.json").write_text(json.dumps(index))
with open(dataset / "training" / "input" / "00000.raw", "ab", buffering=0) as partition:
    try:
        while True:
            partition.write(b"u" * 4096)
    except OSError as exc:
        report["filled"] = exc.strerror
report["resume"] = generate(disk, "pipeline.batch_nb=20", "pipeline.new_session=false")
report["resume"].update(describe(disk, reference))

# 3. the index itself does not fit: samples not yet published are dropped until it does
from dpx.core.storage import MemmapStorage, StorageFullError
disk = mount("index", "256k")
storage = MemmapStorage(disk, readonly=False, commit_interval=3600)  # no periodic commit: all in the air
storage.add_mode("training", {{"value": (np.int64, ())}})
appended = 0
try:
    while True:
        storage.append("training", {{"value": np.array([appended])}})
        appended += 1
except StorageFullError as exc:
    report["index"] = {{"message": str(exc)}}
storage.close()
reader = MemmapStorage(disk)
count = reader.count("training")
report["index"].update(
    appended=appended, count=count, partition_bytes=(disk / "training" / "value" / "00000.raw").stat().st_size,
    values_are_ids=bool(np.array_equal(reader.read("training", "value", np.arange(count)), np.arange(count))),
)
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    """Run the scenarios once; each test checks its part of the report."""
    tmp_path = tmp_path_factory.mktemp("disks")
    code = textwrap.dedent(DRIVER).format(spring=str(EXAMPLES / "spring_generate.toml"), work=str(tmp_path))
    namespace = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        namespace.append("--map-root-user")
    result = subprocess.run([*namespace, sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_full_disk_keeps_whole_samples_says_how_to_resume_and_resumes(report):
    stop = report["stop"]
    count, sample_bytes = stop["count"], stop["sample_bytes"]
    assert stop["returncode"] == 2, stop
    message = stop["stderr"].strip()
    assert message.startswith("dpx generate: error: ") and len(message.splitlines()) == 1, message
    assert "sessions/spring/dataset: no space left on the device" in message
    assert f"training: {count})" in message and "pipeline.new_session=false" in message
    # the whole samples that fitted are committed: most of the 1 MB holds samples. Not all: a staged block
    # (~1 MB) is written field by field, and the rows of the fields written before the one that hit the
    # limit are truncated back to the committed count (with spring's `parameters` field, 80 % is kept)
    assert count * sum(sample_bytes.values()) > 0.75 * 2**20, count
    # and nothing else lies in the partitions: no half-written or uncommitted bytes
    assert stop["partition_bytes"] == {name: count * size for name, size in sample_bytes.items()}
    assert stop["same_as_reference"], "the kept samples differ from the same seed's on a roomy disk"
    assert stop["leftovers"] == [], "temporary files left on the full disk"

    assert report["filled"] == "No space left on device"
    resume = report["resume"]
    assert resume["returncode"] == 0, resume["stderr"]
    assert "640 training samples" in resume["stdout"] and resume["count"] == 1280
    assert resume["same_as_reference"] and resume["leftovers"] == []


def test_full_disk_drops_unpublished_samples_until_the_index_fits(report):
    index = report["index"]
    # 8-byte samples, one per append, none committed before the disk filled: publishing needs room for
    # dataset.json, which a partial 8-byte sample cannot free; a few pages of samples are given up for it
    assert "no space left on the device" in index["message"] and f"training: {index['count']})" in index["message"]
    assert index["appended"] - 2048 < index["count"] < index["appended"], index
    assert index["partition_bytes"] == 8 * index["count"] and index["values_are_ids"]
