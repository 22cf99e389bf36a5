"""A dataset folder is untrusted input: people share them.

Opening, reading, resuming or extending a dataset never touches a file outside
its folder, never follows a link, never maps bytes as objects, and never mixes
new samples with bytes no index describes. See docs/security.md.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dpx
from dpx.core.storage import CorruptDatasetError, MemmapStorage, StorageError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SPRING = str(EXAMPLES / "spring_generate.toml")


def dpx_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dpx", *args], capture_output=True, text=True, cwd=cwd, check=False)


@pytest.fixture
def session(tmp_path) -> Path:
    """A spring session of 128 samples made by the CLI, in ``tmp_path/sessions/spring``."""
    result = dpx_cli("generate", SPRING, "pipeline.batch_nb=2", "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return tmp_path / "sessions" / "spring"


def edit_index(dataset: Path, change) -> None:
    index = json.loads((dataset / "dataset.json").read_text())
    change(index)
    (dataset / "dataset.json").write_text(json.dumps(index))


def plant_victims(folder: Path) -> dict[Path, bytes]:
    """Files named like partitions outside the dataset; none may change."""
    folder.mkdir(parents=True, exist_ok=True)
    victims = {folder / "00000.raw": b"precious" * 64, folder / "00001.raw": b"also precious" * 64}
    for path, content in victims.items():
        path.write_bytes(content)
    return victims


def assert_untouched(victims: dict[Path, bytes]) -> None:
    for path, content in victims.items():
        assert path.exists(), f"{path} was deleted"
        assert path.read_bytes() == content, f"{path} was modified"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


TRAVERSAL = "../../../victim"


def add_traversal_field(index: dict) -> None:
    index["modes"]["training"]["fields"][TRAVERSAL] = {"dtype": "<f4", "shape": [1], "partition_samples": 32}


def test_resume_with_a_traversal_field_name_touches_nothing_outside(session):
    # training/../../../victim from the dataset folder is sessions/victim
    victims = plant_victims(session.parent / "victim")
    edit_index(session / "dataset", add_traversal_field)
    result = dpx_cli("generate", SPRING, "pipeline.batch_nb=3", "pipeline.new_session=false", "--no-progress",
                     cwd=session.parents[1])
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("dpx generate: error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "'../../../victim' must be a Python identifier" in result.stderr
    assert_untouched(victims)


@pytest.mark.parametrize("where", ["field", "mode"])
def test_traversal_names_are_refused_when_the_index_is_read(session, where):
    dataset = session / "dataset"
    victims = plant_victims(session.parent / "victim")
    if where == "field":
        edit_index(dataset, add_traversal_field)
    else:
        edit_index(dataset, lambda index: index["modes"].update({"../victim": index["modes"]["training"]}))
    with pytest.raises(CorruptDatasetError, match="must be a Python identifier"):
        dpx.open_database(session)
    with pytest.raises(CorruptDatasetError, match="must be a Python identifier"):
        MemmapStorage(dataset, readonly=False)
    assert_untouched(victims)


def test_extending_a_shared_dataset_leaves_the_original_and_the_outside_untouched(session, tmp_path):
    dataset = session / "dataset"
    edit_index(dataset, add_traversal_field)
    original = snapshot(dataset)
    # the copy lands in sessions/extended/dataset, whose training/../../../victim is sessions/victim too
    victims = plant_victims(session.parent / "victim")
    generation = dpx.DataGeneration(
        dpx.EnvironmentConfig("toy.spring", seed=0),
        dpx.DatabaseConfig(existing_dir=str(session)),
        session_dir=str(session.parent), session_name="extended", batch_nb=3, batch_size=64, progress=False,
    )
    with pytest.raises(CorruptDatasetError, match="must be a Python identifier"):
        generation.execute()
    assert_untouched(victims)
    assert snapshot(dataset) == original


def test_extending_a_valid_dataset_never_modifies_the_original(session):
    # the README's promise: extending into a new session copies, the original stays byte for byte
    original = snapshot(session / "dataset")
    summary = dpx.DataGeneration(
        dpx.EnvironmentConfig("toy.spring", seed=0),
        dpx.DatabaseConfig(existing_dir=str(session), normalize=True),
        session_dir=str(session.parent), session_name="extended", batch_nb=3, batch_size=64, progress=False,
    ).execute()
    assert summary.total == 192 and summary.session_path.name == "extended"
    assert snapshot(session / "dataset") == original


def test_symlinked_partition_is_neither_read_nor_cut(session, tmp_path):
    partition = session / "dataset" / "training" / "input" / "00000.raw"
    target = tmp_path / "outside.bin"
    target.write_bytes(b"secret!!" * 1000)  # more bytes than the partition: the link would be read and cut
    partition.unlink()
    partition.symlink_to(target)
    with pytest.raises(CorruptDatasetError, match="00000.raw is not a regular file"):
        dpx.open_database(session).read("training", ["input"])
    result = dpx_cli("generate", SPRING, "pipeline.batch_nb=3", "pipeline.new_session=false", "--no-progress",
                     cwd=session.parents[1])
    assert result.returncode == 2 and "not a regular file" in result.stderr, result.stderr
    assert target.read_bytes() == b"secret!!" * 1000


def test_symlinked_folders_and_index_are_refused(session, tmp_path):
    dataset = session / "dataset"
    outside = tmp_path / "outside"
    (dataset / "training").rename(outside)
    (dataset / "training").symlink_to(outside)
    with pytest.raises(CorruptDatasetError, match="training is a symbolic link or not a folder"):
        dpx.open_database(session)
    (dataset / "training").unlink()
    (outside).rename(dataset / "training")
    index = tmp_path / "index.json"
    (dataset / "dataset.json").rename(index)
    (dataset / "dataset.json").symlink_to(index)
    with pytest.raises(CorruptDatasetError, match="dataset.json is a symbolic link"):
        dpx.open_database(session)


def test_copying_a_dataset_copies_no_link_target(session, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    (session / "dataset" / "notes.txt").symlink_to(secret)
    summary = dpx.DataGeneration(
        dpx.EnvironmentConfig("toy.spring", seed=0), dpx.DatabaseConfig(existing_dir=str(session)),
        session_dir=str(session.parent), session_name="copy", batch_nb=2, batch_size=64, progress=False,
    ).execute()
    assert not os.path.lexists(summary.session_path / "dataset" / "notes.txt")


def test_object_dtype_is_refused_instead_of_crashing_the_reader(session):
    edit_index(session / "dataset", lambda index: index["modes"]["training"]["fields"]["input"].update(dtype="|O"))
    # in a child process: before the fix, mapping file bytes as object pointers killed the interpreter
    reader = subprocess.run(
        [sys.executable, "-c", f"import dpx; dpx.open_database({str(session)!r}).read('training', ['input'])"],
        capture_output=True, text=True, check=False,
    )
    assert reader.returncode == 1, reader.returncode
    assert "CorruptDatasetError" in reader.stderr and "object arrays cannot be stored" in reader.stderr


@pytest.mark.parametrize(
    ("field", "change", "message"),
    [
        ("input", {"dtype": "<f2"}, "the index does not describe this data"),
        ("input", {"dtype": "<f8"}, "is truncated"),
        ("input", {"shape": [2]}, "the index does not describe this data"),
        ("input", {"shape": [-5]}, "non-negative integers"),
        ("input", {"shape": [10**12, 10**12]}, "exceed"),
        ("input", {"dtype": "<U4"}, "cannot be stored"),
        ("input", {"dtype": [["a", "<f4"]]}, "is not a layout"),
        ("input", {"partition_samples": 0}, "partition_samples=0"),
        ("ground_truth", {"partition_samples": 7}, "the index does not describe this data"),
    ],
)
def test_layouts_that_do_not_match_the_files_are_refused(session, field, change, message):
    edit_index(session / "dataset", lambda index: index["modes"]["training"]["fields"][field].update(change))
    with pytest.raises(CorruptDatasetError, match=message):
        dpx.open_database(session).read("training")


@pytest.mark.parametrize("count", [-1, "128", True, 10**15, 129])
def test_counts_must_be_integers_the_files_hold(session, count):
    edit_index(session / "dataset", lambda index: index["modes"]["training"].update(count=count))
    with pytest.raises(CorruptDatasetError):
        dpx.open_database(session).read("training")


def test_stray_partitions_without_an_index_are_refused_not_appended_to(session):
    dataset = session / "dataset"
    (dataset / "dataset.json").unlink()
    (dataset / "dataset.json.prev").unlink(missing_ok=True)
    before = snapshot(dataset)
    result = dpx_cli("generate", SPRING, "pipeline.batch_nb=3", "pipeline.new_session=false", "--no-progress",
                     cwd=session.parents[1])
    assert result.returncode == 2, result.stdout + result.stderr
    assert "holds partition files that no dataset.json describes" in result.stderr
    assert re.search(r"training/\w+/00000\.raw", result.stderr), result.stderr
    assert snapshot(dataset) == before


def test_a_new_mode_refuses_stray_partitions_in_its_folders(tmp_path):
    with MemmapStorage(tmp_path, readonly=False) as storage:
        storage.add_mode("training", {"input": (np.float32, (3,))})
    (tmp_path / "validation" / "input").mkdir(parents=True)
    (tmp_path / "validation" / "input" / "00000.raw").write_bytes(b"junk")
    with MemmapStorage(tmp_path, readonly=False) as storage:
        with pytest.raises(StorageError, match=r"validation/input/00000.raw"):
            storage.add_mode("validation", {"input": (np.float32, (3,))})
    assert (tmp_path / "validation" / "input" / "00000.raw").read_bytes() == b"junk"


def test_environment_fields_follow_the_same_rules_as_a_stored_index():
    with pytest.raises(dpx.FieldError, match="must be a Python identifier"):
        dpx.Field("../up")
    with pytest.raises(dpx.FieldError, match="cannot be stored"):
        dpx.Field("text", "<U8")


def test_repair_restores_the_previous_index_from_the_cli(session):
    dataset = session / "dataset"
    count = json.loads((dataset / "dataset.json.prev").read_text())["modes"]["training"]["count"]
    (dataset / "dataset.json").write_text('{"format": "dpx-dataset", "modes": {')
    info = dpx_cli("info", str(session), cwd=session.parent)
    assert info.returncode == 2 and f"python -m dpx repair {dataset}" in info.stderr, info.stderr
    repaired = dpx_cli("repair", str(session), cwd=session.parent)
    assert repaired.returncode == 0, repaired.stderr
    assert f"restored {dataset / 'dataset.json'} from dataset.json.prev (training: {count} samples)" in repaired.stdout
    database = dpx.open_database(session)
    assert database.count("training") == count
    assert np.isfinite(database.read("training")["input"]).all()
    again = dpx_cli("repair", str(session), cwd=session.parent)
    assert again.returncode == 0 and "intact: nothing to repair" in again.stdout


def test_security_page_and_readme_point_at_tests_that_exist():
    import ast
    import re

    root = Path(__file__).resolve().parents[1]
    cited = []
    for page in ("docs/security.md", "README.md"):
        current = None
        for span in re.findall(r"`([^`]*::\w+)`", (root / page).read_text()):
            path, _, name = span.rpartition("::")
            if path:
                current = path if "/" in path else f"tests/{path}"
            cited.append((page, current, name))
    assert len(cited) >= 15
    for page, path, name in cited:
        tree = ast.parse((root / path).read_text())
        names = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
        assert name in names, f"{page} cites {path}::{name}, which does not exist"


class Picky(dpx.Environment):
    """Refuses about half its samples, so that refused ones are recorded."""

    def step(self):
        x = self.rng.normal(size=(3,)).astype(np.float32)
        self.set_training_data(input=x, ground_truth=x.sum(keepdims=True))

    def check_sample(self):
        return float(self.sample["input"][0]) > 0


def test_recorded_wrong_samples_are_never_written_through_a_link(tmp_path):
    def generate(batch_nb):
        return dpx.DataGeneration(
            dpx.EnvironmentConfig(Picky, seed=7, record_wrong_samples=True), session_dir=str(tmp_path),
            session_name="picky", new_session=False, batch_nb=batch_nb, batch_size=8, progress=False,
        ).execute()

    dataset = generate(1).session_path / "dataset"
    outside = tmp_path / "outside"
    outside.mkdir()
    wrong = dataset / "wrong_samples"
    for recorded in wrong.iterdir():
        recorded.unlink()
    wrong.rmdir()
    wrong.symlink_to(outside)
    with pytest.raises(StorageError, match="wrong_samples is a symbolic link"):
        generate(4)
    assert list(outside.iterdir()) == []
